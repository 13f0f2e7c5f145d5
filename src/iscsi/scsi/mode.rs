//! MODE SENSE(6/10): the caching (0x08) and control (0x0a) pages.

use super::sense::Sense;

/// Page control field values.
const PC_CURRENT: u8 = 0;
const PC_CHANGEABLE: u8 = 1;
const PC_DEFAULT: u8 = 2;

/// Pages for `page_code` (0x3f = all) as the page control asks, or a sense.
fn pages(page_code: u8, subpage: u8, control: u8) -> Result<Vec<u8>, Sense> {
    if control == 3 {
        return Err(Sense::SAVING_PARAMETERS_NOT_SUPPORTED);
    }
    if subpage != 0 && !(page_code == 0x3f && subpage == 0xff) {
        return Err(Sense::INVALID_FIELD_IN_CDB);
    }
    let changeable = control == PC_CHANGEABLE;
    let caching = || {
        let mut page = vec![0u8; 20];
        page[0] = 0x08;
        page[1] = 18;
        if !changeable {
            // WCE: writes land in the page cache until SYNCHRONIZE CACHE / FUA.
            page[2] = 0x04;
        }
        page
    };
    let control_page = || {
        let mut page = vec![0u8; 12];
        page[0] = 0x0a;
        page[1] = 10;
        if !changeable {
            // Queue algorithm modifier 1: commands may be reordered.
            page[3] = 0x10;
            // Busy timeout period: unlimited.
            page[8..10].copy_from_slice(&0xffffu16.to_be_bytes());
        }
        page
    };
    debug_assert!(matches!(control, PC_CURRENT | PC_CHANGEABLE | PC_DEFAULT));
    match page_code {
        0x08 => Ok(caching()),
        0x0a => Ok(control_page()),
        0x3f => Ok([caching(), control_page()].concat()),
        _ => Err(Sense::INVALID_FIELD_IN_CDB),
    }
}

/// Device-specific parameter: DPOFUA (FUA is honoured), never write-protected.
const DEVICE_SPECIFIC: u8 = 0x10;

/// MODE SENSE(6) parameter data.
pub fn mode_sense6(cdb: &[u8], blocks: u64, block_size: u32) -> Result<Vec<u8>, Sense> {
    let dbd = cdb[1] & 0x08 != 0;
    let body = pages(cdb[2] & 0x3f, cdb[3], cdb[2] >> 6)?;
    let mut data = vec![0, 0, DEVICE_SPECIFIC, 0];
    if !dbd {
        data[3] = 8;
        data.extend_from_slice(&(blocks.min(0xffff_ffff) as u32).to_be_bytes());
        data.extend_from_slice(&block_size.to_be_bytes());
    }
    data.extend_from_slice(&body);
    data[0] = (data.len() - 1) as u8;
    Ok(data)
}

/// MODE SENSE(10) parameter data.
pub fn mode_sense10(cdb: &[u8], blocks: u64, block_size: u32) -> Result<Vec<u8>, Sense> {
    let long_lba = cdb[1] & 0x10 != 0;
    let dbd = cdb[1] & 0x08 != 0;
    let body = pages(cdb[2] & 0x3f, cdb[3], cdb[2] >> 6)?;
    let mut data = vec![0, 0, 0, DEVICE_SPECIFIC, 0, 0, 0, 0];
    if !dbd && long_lba {
        data[4] = 0x01;
        data[7] = 16;
        data.extend_from_slice(&blocks.to_be_bytes());
        data.extend_from_slice(&[0; 4]);
        data.extend_from_slice(&block_size.to_be_bytes());
    } else if !dbd {
        data[7] = 8;
        data.extend_from_slice(&(blocks.min(0xffff_ffff) as u32).to_be_bytes());
        data.extend_from_slice(&block_size.to_be_bytes());
    }
    data.extend_from_slice(&body);
    let length = (data.len() - 2) as u16;
    data[0..2].copy_from_slice(&length.to_be_bytes());
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_pages_with_block_descriptor() {
        let data = mode_sense6(&[0x1a, 0, 0x3f, 0, 255, 0], 1000, 512).unwrap();
        assert_eq!(data[0] as usize, data.len() - 1);
        assert_eq!(data[3], 8);
        assert_eq!(&data[4..8], &1000u32.to_be_bytes());
        assert_eq!(data[12], 0x08);
        assert_eq!(data[32], 0x0a);
    }

    #[test]
    fn unknown_page_and_saved_values_are_refused() {
        assert_eq!(
            mode_sense6(&[0x1a, 0, 0x19, 0, 255, 0], 1, 512),
            Err(Sense::INVALID_FIELD_IN_CDB)
        );
        assert_eq!(
            mode_sense10(&[0x5a, 0, 0xc8, 0, 0, 0, 0, 0, 255, 0], 1, 512),
            Err(Sense::SAVING_PARAMETERS_NOT_SUPPORTED)
        );
    }
}
