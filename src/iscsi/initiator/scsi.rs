//! The SCSI commands the initiator sends (SBC-3 / SPC-4 CDBs) and the decoding
//! of what comes back: capacity, VPD limits, sense data.

/// CDB of READ(16) / WRITE(16) / WRITE SAME(16) / SYNCHRONIZE CACHE(16):
/// opcode, flags, 8-byte LBA, 4-byte block count.
fn lba_cdb(opcode: u8, flags: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = opcode;
    cdb[1] = flags;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

pub const READ_16: u8 = 0x88;
pub const WRITE_16: u8 = 0x8a;
pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
pub const WRITE_SAME_16: u8 = 0x93;
pub const UNMAP: u8 = 0x42;

pub fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    lba_cdb(READ_16, 0, lba, blocks)
}

pub fn write16(lba: u64, blocks: u32) -> [u8; 16] {
    lba_cdb(WRITE_16, 0, lba, blocks)
}

/// WRITE SAME(16) of one block of data over `blocks` blocks, without the UNMAP
/// bit: the blocks are written, so they read back as the data on any device.
pub fn write_same16(lba: u64, blocks: u32) -> [u8; 16] {
    lba_cdb(WRITE_SAME_16, 0, lba, blocks)
}

/// SYNCHRONIZE CACHE(16) of the whole medium (LBA 0, 0 blocks = to the end).
pub fn synchronize_cache16() -> [u8; 16] {
    lba_cdb(SYNCHRONIZE_CACHE_16, 0, 0, 0)
}

/// READ CAPACITY(16) (SERVICE ACTION IN(16), service action 0x10).
pub fn read_capacity16() -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x10;
    cdb[10..14].copy_from_slice(&32u32.to_be_bytes());
    cdb
}

pub const READ_CAPACITY_16_LEN: u32 = 32;

/// INQUIRY, standard data or a VPD page.
pub fn inquiry(vpd_page: Option<u8>, alloc: u16) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x12;
    if let Some(page) = vpd_page {
        cdb[1] = 1;
        cdb[2] = page;
    }
    cdb[3..5].copy_from_slice(&alloc.to_be_bytes());
    cdb
}

/// REPORT LUNS, all LUNs.
pub fn report_luns(alloc: u32) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0xa0;
    cdb[6..10].copy_from_slice(&alloc.to_be_bytes());
    cdb
}

/// UNMAP with a parameter list of `len` bytes.
pub fn unmap(len: u16) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = UNMAP;
    cdb[7..9].copy_from_slice(&len.to_be_bytes());
    cdb
}

/// The UNMAP parameter list for one range.
pub fn unmap_parameters(lba: u64, blocks: u32) -> Vec<u8> {
    let mut list = vec![0u8; 24];
    list[0..2].copy_from_slice(&22u16.to_be_bytes());
    list[2..4].copy_from_slice(&16u16.to_be_bytes());
    list[8..16].copy_from_slice(&lba.to_be_bytes());
    list[16..20].copy_from_slice(&blocks.to_be_bytes());
    list
}

/// The name a command goes by in errors.
pub fn command_name(opcode: u8) -> &'static str {
    match opcode {
        READ_16 => "READ(16)",
        WRITE_16 => "WRITE(16)",
        SYNCHRONIZE_CACHE_16 => "SYNCHRONIZE CACHE(16)",
        WRITE_SAME_16 => "WRITE SAME(16)",
        UNMAP => "UNMAP",
        0x9e => "READ CAPACITY(16)",
        0x12 => "INQUIRY",
        0xa0 => "REPORT LUNS",
        0x00 => "TEST UNIT READY",
        _ => "SCSI command",
    }
}

/// The LBA a CDB addresses, for error messages.
pub fn command_lba(cdb: &[u8; 16]) -> u64 {
    match cdb[0] {
        READ_16 | WRITE_16 | WRITE_SAME_16 | SYNCHRONIZE_CACHE_16 => {
            let mut lba = [0u8; 8];
            lba.copy_from_slice(&cdb[2..10]);
            u64::from_be_bytes(lba)
        }
        _ => 0,
    }
}

/// What READ CAPACITY(16) says about the LUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub block_size: u32,
    pub blocks: u64,
    /// LBPME: logical block provisioning (UNMAP) enabled.
    pub thin: bool,
    /// LBPRZ: unmapped blocks read as zeros.
    pub unmapped_reads_zero: bool,
}

pub fn parse_capacity16(data: &[u8]) -> Option<Capacity> {
    let last_lba = u64::from_be_bytes(data.get(0..8)?.try_into().ok()?);
    let block_size = u32::from_be_bytes(data.get(8..12)?.try_into().ok()?);
    let flags = data.get(14).copied().unwrap_or(0);
    if block_size == 0 || !block_size.is_power_of_two() {
        return None;
    }
    Some(Capacity {
        block_size,
        blocks: last_lba.checked_add(1)?,
        thin: flags & 0x80 != 0,
        unmapped_reads_zero: flags & 0x40 != 0,
    })
}

/// The limits of VPD page 0xb0 (Block Limits) that matter for zeroing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockLimits {
    /// MAXIMUM WRITE SAME LENGTH in blocks (0: not reported).
    pub max_write_same_blocks: u64,
    /// MAXIMUM UNMAP LBA COUNT (0: not reported).
    pub max_unmap_blocks: u32,
}

pub fn parse_block_limits(page: &[u8]) -> BlockLimits {
    let u32_at = |at: usize| {
        page.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .unwrap_or(0)
    };
    let max_write_same_blocks = page
        .get(36..44)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    BlockLimits {
        max_write_same_blocks,
        max_unmap_blocks: u32_at(20),
    }
}

/// VPD page 0xb2 (Logical Block Provisioning): (LBPU: UNMAP supported,
/// LBPWS: WRITE SAME(16) with UNMAP supported).
pub fn parse_provisioning(page: &[u8]) -> (bool, bool) {
    let flags = page.get(5).copied().unwrap_or(0);
    (flags & 0x80 != 0, flags & 0x40 != 0)
}

/// Peripheral device type of standard INQUIRY data (0 = direct-access disk).
pub fn peripheral_type(inquiry: &[u8]) -> Option<u8> {
    inquiry.first().map(|b| b & 0x1f)
}

/// The LUNs of a REPORT LUNS answer, in the 8-byte wire form.
pub fn parse_report_luns(data: &[u8]) -> Vec<u64> {
    let Some(len) = data.get(0..4).and_then(|b| b.try_into().ok()) else {
        return Vec::new();
    };
    let len = u32::from_be_bytes(len) as usize;
    data.get(8..)
        .unwrap_or(&[])
        .chunks_exact(8)
        .take(len / 8)
        .filter_map(|c| c.try_into().ok().map(u64::from_be_bytes))
        .collect()
}

/// LUN number `n` in the 8-byte form (SAM-5 peripheral or flat addressing).
pub fn encode_lun(n: u16) -> u64 {
    if n < 256 {
        u64::from(n) << 48
    } else {
        (0x4000 | u64::from(n & 0x3fff)) << 48
    }
}

/// The LUN number of the 8-byte form (first level only).
pub fn decode_lun(wire: u64) -> u16 {
    let first = (wire >> 48) as u16;
    match first >> 14 {
        0 => first & 0xff,
        _ => first & 0x3fff,
    }
}

/// Sense key, ASC and ASCQ of fixed (0x70/0x71) or descriptor (0x72/0x73) sense data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

pub const ILLEGAL_REQUEST: u8 = 0x5;
pub const UNIT_ATTENTION: u8 = 0x6;

impl Sense {
    /// From the data segment of a SCSI Response: a 2-byte length, then sense data.
    pub fn from_response_data(data: &[u8]) -> Option<Sense> {
        let len = usize::from(u16::from_be_bytes(data.get(0..2)?.try_into().ok()?));
        Sense::parse(data.get(2..2 + len)?)
    }

    pub fn parse(sense: &[u8]) -> Option<Sense> {
        match sense.first()? & 0x7f {
            0x70 | 0x71 => Some(Sense {
                key: sense.get(2)? & 0x0f,
                asc: sense.get(12).copied().unwrap_or(0),
                ascq: sense.get(13).copied().unwrap_or(0),
            }),
            0x72 | 0x73 => Some(Sense {
                key: sense.get(1)? & 0x0f,
                asc: sense.get(2).copied().unwrap_or(0),
                ascq: sense.get(3).copied().unwrap_or(0),
            }),
            _ => None,
        }
    }

    /// The device does not know the command or one of its fields.
    pub fn is_unsupported_command(&self) -> bool {
        self.key == ILLEGAL_REQUEST && matches!(self.asc, 0x20 | 0x24)
    }
}

pub fn sense_key_name(key: u8) -> &'static str {
    match key {
        0x0 => "NO SENSE",
        0x1 => "RECOVERED ERROR",
        0x2 => "NOT READY",
        0x3 => "MEDIUM ERROR",
        0x4 => "HARDWARE ERROR",
        0x5 => "ILLEGAL REQUEST",
        0x6 => "UNIT ATTENTION",
        0x7 => "DATA PROTECT",
        0x8 => "BLANK CHECK",
        0xb => "ABORTED COMMAND",
        0xd => "VOLUME OVERFLOW",
        0xe => "MISCOMPARE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_descriptor_sense_give_the_same_fields() {
        // LBA out of range: ILLEGAL REQUEST, 0x21/0x00.
        let mut fixed = vec![0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = 0x05;
        fixed[7] = 10;
        fixed[12] = 0x21;
        let mut data = vec![0, 18];
        data.extend_from_slice(&fixed);
        let want = Sense {
            key: 5,
            asc: 0x21,
            ascq: 0,
        };
        assert_eq!(Sense::from_response_data(&data), Some(want));
        assert_eq!(
            Sense::parse(&[0x72, 0x05, 0x21, 0x00, 0, 0, 0, 0]),
            Some(want)
        );
        assert_eq!(
            Sense::from_response_data(&[0, 40, 0x70]),
            None,
            "short data"
        );
    }

    #[test]
    fn capacity_and_luns_decode() {
        let mut cap = [0u8; 32];
        cap[0..8].copy_from_slice(&2047u64.to_be_bytes());
        cap[8..12].copy_from_slice(&512u32.to_be_bytes());
        cap[14] = 0xc0;
        let c = parse_capacity16(&cap).unwrap();
        assert_eq!(
            (c.block_size, c.blocks, c.thin, c.unmapped_reads_zero),
            (512, 2048, true, true)
        );
        assert_eq!(parse_capacity16(&cap[..8]), None);
        let mut luns = vec![0, 0, 0, 16, 0, 0, 0, 0];
        luns.extend_from_slice(&encode_lun(0).to_be_bytes());
        luns.extend_from_slice(&encode_lun(1).to_be_bytes());
        let got = parse_report_luns(&luns);
        assert_eq!(
            got.iter().map(|&l| decode_lun(l)).collect::<Vec<_>>(),
            [0, 1]
        );
        assert_eq!(decode_lun(encode_lun(300)), 300);
    }
}
