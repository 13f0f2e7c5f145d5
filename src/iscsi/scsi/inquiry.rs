//! INQUIRY: the standard data and the vital product data pages.

use sha2::{Digest, Sha256};

use super::{MAX_TRANSFER_BLOCKS, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS};

const VENDOR: &[u8; 8] = b"KILN    ";
const PRODUCT: &[u8; 16] = b"iSCSI disk      ";
const REVISION: &[u8; 4] = b"0001";
/// Peripheral device type of a direct-access block device, qualifier 0.
const DIRECT_ACCESS: u8 = 0x00;
/// Qualifier 3: no logical unit can exist at this LUN.
pub const NO_LUN: u8 = 0x7f;

/// Supported VPD pages, in ascending order.
pub const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

/// Identifiers of the logical unit, derived from the target name so the
/// same target name always reports the same disk identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub target_name: String,
    /// NAA 3 (locally assigned) 64-bit identifier.
    pub naa: [u8; 8],
    /// Unit serial number, 16 hex digits.
    pub serial: String,
}

impl Identity {
    pub fn from_target_name(target_name: &str) -> Identity {
        let hash = Sha256::digest(target_name.as_bytes());
        let mut naa = [0u8; 8];
        naa.copy_from_slice(&hash[..8]);
        naa[0] = 0x30 | (naa[0] & 0x0f);
        let serial = hash[8..16].iter().map(|b| format!("{b:02x}")).collect();
        Identity {
            target_name: target_name.to_string(),
            naa,
            serial,
        }
    }
}

/// Standard INQUIRY data (SPC-4 §6.6.2), 96 bytes.
pub fn standard(peripheral: u8) -> Vec<u8> {
    let mut data = vec![0u8; 96];
    data[0] = peripheral;
    data[2] = 0x06; // SPC-4
    data[3] = 0x12; // HiSup, response data format 2
    data[4] = (data.len() - 5) as u8;
    data[7] = 0x02; // CmdQue: several commands may be outstanding
    data[8..16].copy_from_slice(VENDOR);
    data[16..32].copy_from_slice(PRODUCT);
    data[32..36].copy_from_slice(REVISION);
    // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
    for (i, version) in [0x00a0u16, 0x0960, 0x0460, 0x04c0].iter().enumerate() {
        data[58 + 2 * i..60 + 2 * i].copy_from_slice(&version.to_be_bytes());
    }
    data
}

/// A VPD page, or None when the page code is not supported.
pub fn vpd_page(page: u8, identity: &Identity) -> Option<Vec<u8>> {
    let body = match page {
        0x00 => VPD_PAGES.to_vec(),
        0x80 => identity.serial.as_bytes().to_vec(),
        0x83 => device_identification(identity),
        0xb0 => block_limits(),
        0xb1 => {
            // Block device characteristics: non-rotating medium.
            let mut body = vec![0u8; 0x3c];
            body[1] = 0x01;
            body
        }
        0xb2 => {
            // Logical block provisioning: UNMAP and WRITE SAME(16/10) with
            // UNMAP are supported and unmapped blocks read as zeros (LBPRZ);
            // provisioning type 2, thin.
            vec![0x00, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0x00]
        }
        _ => return None,
    };
    let mut data = vec![DIRECT_ACCESS, page];
    data.extend_from_slice(&(body.len() as u16).to_be_bytes());
    data.extend_from_slice(&body);
    Some(data)
}

fn device_identification(identity: &Identity) -> Vec<u8> {
    let mut body = Vec::new();
    // NAA, binary, associated with the logical unit.
    body.extend_from_slice(&[0x01, 0x03, 0x00, 0x08]);
    body.extend_from_slice(&identity.naa);
    // T10 vendor id, ASCII: vendor + serial.
    let t10: Vec<u8> = VENDOR
        .iter()
        .copied()
        .chain(identity.serial.bytes())
        .collect();
    body.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
    body.extend_from_slice(&t10);
    // SCSI name string (UTF-8) of the target device, iSCSI protocol,
    // NUL-terminated and padded to a multiple of 4.
    let mut name: Vec<u8> = identity.target_name.bytes().take(251).collect();
    name.push(0);
    while !name.len().is_multiple_of(4) {
        name.push(0);
    }
    body.extend_from_slice(&[0x53, 0xa8, 0x00, name.len() as u8]);
    body.extend_from_slice(&name);
    body
}

fn block_limits() -> Vec<u8> {
    let mut body = vec![0u8; 0x3c];
    body[0] = 0x01; // WSNZ: WRITE SAME with zero blocks is refused
    body[2..4].copy_from_slice(&8u16.to_be_bytes()); // optimal granularity: 4 KiB
    body[4..8].copy_from_slice(&MAX_TRANSFER_BLOCKS.to_be_bytes());
    body[8..12].copy_from_slice(&MAX_TRANSFER_BLOCKS.to_be_bytes());
    body[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
    body[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
    body[24..28].copy_from_slice(&8u32.to_be_bytes()); // optimal unmap granularity
    body[32..40].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable_and_naa_3() {
        let a = Identity::from_target_name("iqn.2026-11.org.kiln:a");
        let b = Identity::from_target_name("iqn.2026-11.org.kiln:a");
        let c = Identity::from_target_name("iqn.2026-11.org.kiln:c");
        assert_eq!(a.naa, b.naa);
        assert_ne!(a.naa, c.naa);
        assert_eq!(a.naa[0] >> 4, 3);
        assert_eq!(a.serial.len(), 16);
    }

    #[test]
    fn vpd_pages_have_consistent_lengths() {
        let id = Identity::from_target_name("iqn.x");
        for page in VPD_PAGES {
            let data = vpd_page(page, &id).unwrap();
            assert_eq!(data[1], page);
            assert_eq!(
                u16::from_be_bytes([data[2], data[3]]) as usize,
                data.len() - 4
            );
        }
        assert!(vpd_page(0x99, &id).is_none());
        let b0 = vpd_page(0xb0, &id).unwrap();
        assert_eq!(b0.len(), 0x40);
    }
}
