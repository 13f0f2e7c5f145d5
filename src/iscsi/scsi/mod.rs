//! SCSI block commands (SBC-3 / SPC-4 subset) over a [`BlockBackend`]:
//! CDB decoding, range checks and the data or sense each command returns.
//!
//! Every LBA range is checked against the disk before any I/O, so nothing
//! is ever read or written past its end.

pub mod backend;
pub mod inquiry;
pub mod mode;
pub mod sense;

use std::path::Path;

pub use backend::{BLOCK_SIZE, BackendError, BlockBackend};
pub use inquiry::Identity;
pub use sense::{Sense, status};

/// Largest READ/WRITE transfer, in blocks (8 MiB).
pub const MAX_TRANSFER_BLOCKS: u32 = 16384;
/// Largest UNMAP total, in blocks per descriptor list (512 MiB).
pub const MAX_UNMAP_BLOCKS: u32 = 1024 * 1024;
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Largest WRITE SAME, in blocks: the READ/WRITE limit, since conformance
/// suites read back a whole WRITE SAME range in one command. Larger zeroing
/// goes through UNMAP.
pub const MAX_WRITE_SAME_BLOCKS: u64 = MAX_TRANSFER_BLOCKS as u64;
/// Largest Data-Out a command may carry (WRITE at the transfer limit).
pub const MAX_DATA_OUT: u64 = MAX_TRANSFER_BLOCKS as u64 * BLOCK_SIZE;

/// What a command produced: status, sense on CHECK CONDITION, Data-In bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: u8,
    pub sense: Option<Sense>,
    pub data: Vec<u8>,
}

impl Outcome {
    pub fn good(data: Vec<u8>) -> Outcome {
        Outcome {
            status: status::GOOD,
            sense: None,
            data,
        }
    }

    pub fn check(sense: Sense) -> Outcome {
        Outcome {
            status: status::CHECK_CONDITION,
            sense: Some(sense),
            data: Vec::new(),
        }
    }
}

impl From<Result<Vec<u8>, Sense>> for Outcome {
    fn from(result: Result<Vec<u8>, Sense>) -> Outcome {
        match result {
            Ok(data) => Outcome::good(data),
            Err(sense) => Outcome::check(sense),
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// Truncates response data to the CDB's allocation length.
fn allocate(mut data: Vec<u8>, allocation: usize) -> Vec<u8> {
    data.truncate(allocation);
    data
}

/// LBA and block count of the READ/WRITE/SYNCHRONIZE/WRITE SAME family.
fn lba_and_count(cdb: &[u8; 16]) -> Option<(u64, u64)> {
    match cdb[0] {
        // (10) variants: LBA bytes 2..6, count bytes 7..9
        0x28 | 0x2a | 0x35 | 0x41 => Some((u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)))),
        // (16) variants: LBA bytes 2..10, count bytes 10..14
        0x88 | 0x8a | 0x91 | 0x93 => Some((be64(cdb, 2), u64::from(be32(cdb, 10)))),
        _ => None,
    }
}

/// The logical unit (LUN 0) of a target.
pub struct Lun {
    backend: BlockBackend,
    identity: Identity,
}

impl Lun {
    pub fn open(disk: &Path, target_name: &str) -> Result<Lun, BackendError> {
        Ok(Lun {
            backend: BlockBackend::open(disk)?,
            identity: Identity::from_target_name(target_name),
        })
    }

    pub fn backend(&self) -> &BlockBackend {
        &self.backend
    }

    /// The Data-Out bytes a command needs according to its CDB, so the
    /// transport can refuse oversized transfers before buffering them.
    pub fn data_out_length(cdb: &[u8; 16]) -> u64 {
        match cdb[0] {
            0x2a | 0x8a => lba_and_count(cdb).map_or(0, |(_, n)| n * BLOCK_SIZE),
            0x41 | 0x93 if cdb[1] & 0x01 == 0 => BLOCK_SIZE,
            0x42 => u64::from(be16(cdb, 7)),
            _ => 0,
        }
    }

    /// Runs a command addressed to `lun` with the Data-Out it carried.
    pub fn execute(&self, lun: u64, cdb: &[u8; 16], data_out: &[u8]) -> Outcome {
        if lun != 0 {
            return match cdb[0] {
                // INQUIRY to a missing LUN answers "no unit here".
                0x12 if cdb[1] & 0x01 == 0 => Outcome::good(allocate(
                    inquiry::standard(inquiry::NO_LUN),
                    usize::from(be16(cdb, 3)),
                )),
                0xa0 => self.report_luns(cdb).into(),
                0x03 => self.request_sense(cdb).into(),
                _ => Outcome::check(Sense::LUN_NOT_SUPPORTED),
            };
        }
        let blocks = self.backend.blocks();
        match cdb[0] {
            0x00 => Outcome::good(Vec::new()), // TEST UNIT READY
            0x03 => self.request_sense(cdb).into(),
            0x12 => self.inquiry(cdb).into(),
            0x1a => mode::mode_sense6(cdb, blocks, BLOCK_SIZE as u32)
                .map(|d| allocate(d, usize::from(cdb[4])))
                .into(),
            0x5a => mode::mode_sense10(cdb, blocks, BLOCK_SIZE as u32)
                .map(|d| allocate(d, usize::from(be16(cdb, 7))))
                .into(),
            0x1b => Outcome::good(Vec::new()), // START STOP UNIT: always spinning
            0x25 => self.read_capacity10().into(),
            0x9e if cdb[1] & 0x1f == 0x10 => self.read_capacity16(cdb).into(),
            0x9e if cdb[1] & 0x1f == 0x12 => self.get_lba_status(cdb).into(),
            0x28 | 0x88 => self.read(cdb).into(),
            0x2a | 0x8a => self.write(cdb, data_out).into(),
            0x35 | 0x91 => self.synchronize_cache(cdb).into(),
            0x42 => self.unmap(cdb, data_out).into(),
            0x41 | 0x93 => self.write_same(cdb, data_out).into(),
            0xa0 => self.report_luns(cdb).into(),
            _ => Outcome::check(Sense::INVALID_OPCODE),
        }
    }

    fn inquiry(&self, cdb: &[u8; 16]) -> Result<Vec<u8>, Sense> {
        let allocation = usize::from(be16(cdb, 3));
        let evpd = cdb[1] & 0x01 != 0;
        if cdb[1] & 0x02 != 0 {
            // CmdDt is obsolete.
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        let data = if evpd {
            inquiry::vpd_page(cdb[2], &self.identity).ok_or(Sense::INVALID_FIELD_IN_CDB)?
        } else if cdb[2] != 0 {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        } else {
            inquiry::standard(0x00)
        };
        Ok(allocate(data, allocation))
    }

    fn request_sense(&self, cdb: &[u8; 16]) -> Result<Vec<u8>, Sense> {
        if cdb[1] & 0x01 != 0 {
            // Only fixed-format sense is implemented.
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        // Sense travels with each CHECK CONDITION (autosense), so nothing is pending.
        Ok(allocate(
            Sense::NO_SENSE.fixed().to_vec(),
            usize::from(cdb[4]),
        ))
    }

    fn read_capacity10(&self) -> Result<Vec<u8>, Sense> {
        let last = self.backend.blocks() - 1;
        let mut data = Vec::with_capacity(8);
        data.extend_from_slice(&(last.min(0xffff_ffff) as u32).to_be_bytes());
        data.extend_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
        Ok(data)
    }

    fn read_capacity16(&self, cdb: &[u8; 16]) -> Result<Vec<u8>, Sense> {
        let mut data = vec![0u8; 32];
        data[0..8].copy_from_slice(&(self.backend.blocks() - 1).to_be_bytes());
        data[8..12].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
        // LBPME (thin provisioning, UNMAP) and LBPRZ (unmapped reads zeros).
        data[14] = 0x80 | 0x40;
        Ok(allocate(data, be32(cdb, 10) as usize))
    }

    /// GET LBA STATUS: one descriptor for the extent starting at the LBA.
    fn get_lba_status(&self, cdb: &[u8; 16]) -> Result<Vec<u8>, Sense> {
        let lba = be64(cdb, 2);
        if lba >= self.backend.blocks() {
            return Err(Sense::LBA_OUT_OF_RANGE);
        }
        let (mapped, count) = self
            .backend
            .mapping(lba)
            .map_err(|_| Sense::UNRECOVERED_READ_ERROR)?;
        let mut data = vec![0u8; 24];
        data[0..4].copy_from_slice(&20u32.to_be_bytes());
        data[8..16].copy_from_slice(&lba.to_be_bytes());
        data[16..20].copy_from_slice(&(count.min(u64::from(u32::MAX)) as u32).to_be_bytes());
        // Provisioning status: 0 mapped, 1 deallocated.
        data[20] = if mapped { 0 } else { 1 };
        Ok(allocate(data, be32(cdb, 10) as usize))
    }

    /// Checks the range and transfer size of a READ/WRITE.
    fn transfer_range(&self, cdb: &[u8; 16]) -> Result<(u64, u64), Sense> {
        let (lba, count) = lba_and_count(cdb).ok_or(Sense::INVALID_OPCODE)?;
        if !self.backend.in_range(lba, count) {
            return Err(Sense::LBA_OUT_OF_RANGE);
        }
        if count > u64::from(MAX_TRANSFER_BLOCKS) {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        Ok((lba, count))
    }

    fn read(&self, cdb: &[u8; 16]) -> Result<Vec<u8>, Sense> {
        let (lba, count) = self.transfer_range(cdb)?;
        if cdb[1] & 0xe0 != 0 {
            // RDPROTECT: no protection information here.
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        let mut data = vec![0u8; (count * BLOCK_SIZE) as usize];
        self.backend
            .read_blocks(lba, &mut data)
            .map_err(|_| Sense::UNRECOVERED_READ_ERROR)?;
        Ok(data)
    }

    fn write(&self, cdb: &[u8; 16], data_out: &[u8]) -> Result<Vec<u8>, Sense> {
        let (lba, count) = self.transfer_range(cdb)?;
        if cdb[1] & 0xe0 != 0 {
            // WRPROTECT: no protection information here.
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        // An initiator that sends less than the CDB asks for (iSCSI
        // residual overflow) gets the whole blocks it did send written.
        let length = (count * BLOCK_SIZE) as usize;
        let usable = data_out.len().min(length) / BLOCK_SIZE as usize * BLOCK_SIZE as usize;
        let data = &data_out[..usable];
        let fua = cdb[1] & 0x08 != 0;
        self.backend
            .write_blocks(lba, data, fua)
            .map_err(|_| Sense::WRITE_ERROR)?;
        Ok(Vec::new())
    }

    fn synchronize_cache(&self, cdb: &[u8; 16]) -> Result<Vec<u8>, Sense> {
        let (lba, count) = lba_and_count(cdb).ok_or(Sense::INVALID_OPCODE)?;
        if !self.backend.in_range(lba, count) {
            return Err(Sense::LBA_OUT_OF_RANGE);
        }
        self.backend.flush().map_err(|_| Sense::WRITE_ERROR)?;
        Ok(Vec::new())
    }

    fn unmap(&self, cdb: &[u8; 16], params: &[u8]) -> Result<Vec<u8>, Sense> {
        if cdb[1] & 0x01 != 0 {
            // ANCHOR is not supported (no ANC_SUP in the LBP page).
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        let list_length = usize::from(be16(cdb, 7));
        if list_length == 0 {
            return Ok(Vec::new());
        }
        let params = params
            .get(..list_length)
            .ok_or(Sense::PARAMETER_LIST_LENGTH_ERROR)?;
        if params.len() < 8 {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        let descriptor_bytes = usize::from(be16(params, 2)).min(params.len() - 8);
        let descriptors: Vec<(u64, u64)> = params[8..8 + descriptor_bytes]
            .chunks_exact(16)
            .map(|d| (be64(d, 0), u64::from(be32(d, 8))))
            .collect();
        if descriptors.len() > MAX_UNMAP_DESCRIPTORS as usize {
            return Err(Sense::INVALID_FIELD_IN_PARAMETER_LIST);
        }
        // Check every range before touching any block.
        let mut total = 0u64;
        for &(lba, count) in &descriptors {
            if !self.backend.in_range(lba, count) {
                return Err(Sense::LBA_OUT_OF_RANGE);
            }
            total += count;
        }
        if total > u64::from(MAX_UNMAP_BLOCKS) {
            return Err(Sense::INVALID_FIELD_IN_PARAMETER_LIST);
        }
        for (lba, count) in descriptors {
            self.backend
                .zero_blocks(lba, count)
                .map_err(|_| Sense::WRITE_ERROR)?;
        }
        Ok(Vec::new())
    }

    fn write_same(&self, cdb: &[u8; 16], data_out: &[u8]) -> Result<Vec<u8>, Sense> {
        let (lba, count) = lba_and_count(cdb).ok_or(Sense::INVALID_OPCODE)?;
        let no_data_out = cdb[1] & 0x01 != 0;
        if cdb[1] & 0xf6 != 0 || (no_data_out && cdb[0] == 0x41) {
            // WRPROTECT, ANCHOR, PBDATA/LBDATA; NDOB exists only in WRITE SAME(16).
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        if !self.backend.in_range(lba, count) {
            return Err(Sense::LBA_OUT_OF_RANGE);
        }
        if count == 0 || count > MAX_WRITE_SAME_BLOCKS {
            // WSNZ is set: zero blocks means "to the end" and is refused.
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        let block: &[u8] = if no_data_out {
            &[0u8; BLOCK_SIZE as usize]
        } else {
            data_out
                .get(..BLOCK_SIZE as usize)
                .ok_or(Sense::DATA_PHASE_ERROR)?
        };
        // The UNMAP bit is a hint: a zero pattern becomes a hole (or zeroed
        // range) either way, and a non-zero pattern is always written because
        // unmapped blocks must read as zeros.
        if block.iter().all(|&b| b == 0) {
            return self
                .backend
                .zero_blocks(lba, count)
                .map(|_| Vec::new())
                .map_err(|_| Sense::WRITE_ERROR);
        }
        const CHUNK_BLOCKS: u64 = 2048;
        let chunk = block.repeat(CHUNK_BLOCKS.min(count) as usize);
        let mut at = lba;
        while at < lba + count {
            let n = CHUNK_BLOCKS.min(lba + count - at);
            self.backend
                .write_blocks(at, &chunk[..(n * BLOCK_SIZE) as usize], false)
                .map_err(|_| Sense::WRITE_ERROR)?;
            at += n;
        }
        Ok(Vec::new())
    }

    fn report_luns(&self, cdb: &[u8; 16]) -> Result<Vec<u8>, Sense> {
        if cdb[2] > 2 {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        let allocation = be32(cdb, 6) as usize;
        if allocation < 16 {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        // One LUN, number 0.
        let mut data = vec![0u8; 16];
        data[0..4].copy_from_slice(&8u32.to_be_bytes());
        Ok(allocate(data, allocation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lun_with(blocks: u64) -> (tempfile::NamedTempFile, Lun) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(blocks * BLOCK_SIZE).unwrap();
        file.flush().unwrap();
        let lun = Lun::open(file.path(), "iqn.2026-11.org.kiln:test").unwrap();
        (file, lun)
    }

    fn cdb(bytes: &[u8]) -> [u8; 16] {
        let mut cdb = [0u8; 16];
        cdb[..bytes.len()].copy_from_slice(bytes);
        cdb
    }

    fn write16(lba: u64, count: u32) -> [u8; 16] {
        let mut c = cdb(&[0x8a]);
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&count.to_be_bytes());
        c
    }

    #[test]
    fn write_then_read_back() {
        let (_file, lun) = lun_with(64);
        let data: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(lun.execute(0, &write16(10, 2), &data).status, status::GOOD);
        let read = lun.execute(0, &cdb(&[0x28, 0, 0, 0, 0, 10, 0, 0, 2, 0]), &[]);
        assert_eq!(read, Outcome::good(data));
    }

    #[test]
    fn out_of_range_is_refused_before_any_write() {
        let (file, lun) = lun_with(64);
        let outcome = lun.execute(0, &write16(63, 2), &[0xff; 1024]);
        assert_eq!(outcome, Outcome::check(Sense::LBA_OUT_OF_RANGE));
        assert_eq!(
            lun.execute(0, &write16(u64::MAX, 2), &[0xff; 1024]).sense,
            Some(Sense::LBA_OUT_OF_RANGE)
        );
        assert!(std::fs::read(file.path()).unwrap().iter().all(|&b| b == 0));
        let read = lun.execute(0, &cdb(&[0x28, 0, 0, 0, 0, 64, 0, 0, 1, 0]), &[]);
        assert_eq!(read.sense, Some(Sense::LBA_OUT_OF_RANGE));
    }

    #[test]
    fn capacity_reports_the_last_lba() {
        let (_file, lun) = lun_with(100);
        let rc16 = lun.execute(
            0,
            &cdb(&[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32]),
            &[],
        );
        assert_eq!(&rc16.data[0..8], &99u64.to_be_bytes());
        assert_eq!(&rc16.data[8..12], &512u32.to_be_bytes());
        assert_eq!(rc16.data[14] & 0x80, 0x80);
        let rc10 = lun.execute(0, &cdb(&[0x25]), &[]);
        assert_eq!(rc10.data, [0, 0, 0, 99, 0, 0, 2, 0]);
    }

    #[test]
    fn unmap_and_write_same_make_zeros() {
        let (_file, lun) = lun_with(64);
        lun.execute(0, &write16(0, 64), &[0xaa; 64 * 512]);
        let mut params = vec![0u8; 24];
        params[0..2].copy_from_slice(&22u16.to_be_bytes());
        params[2..4].copy_from_slice(&16u16.to_be_bytes());
        params[8..16].copy_from_slice(&8u64.to_be_bytes());
        params[16..20].copy_from_slice(&8u32.to_be_bytes());
        let unmap = cdb(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]);
        assert_eq!(lun.execute(0, &unmap, &params).status, status::GOOD);
        let mut ws = cdb(&[0x93, 0x08]);
        ws[2..10].copy_from_slice(&32u64.to_be_bytes());
        ws[10..14].copy_from_slice(&4u32.to_be_bytes());
        assert_eq!(lun.execute(0, &ws, &[0u8; 512]).status, status::GOOD);
        let mut pattern = ws;
        pattern[1] = 0;
        pattern[2..10].copy_from_slice(&40u64.to_be_bytes());
        assert_eq!(lun.execute(0, &pattern, &[0x5a; 512]).status, status::GOOD);
        let all = lun
            .execute(0, &cdb(&[0x28, 0, 0, 0, 0, 0, 0, 0, 64, 0]), &[])
            .data;
        for (block, bytes) in all.chunks(512).enumerate() {
            let expected = match block {
                8..16 | 32..36 => 0x00,
                40..44 => 0x5a,
                _ => 0xaa,
            };
            assert!(bytes.iter().all(|&b| b == expected), "block {block}");
        }
        params[8..16].copy_from_slice(&60u64.to_be_bytes());
        assert_eq!(
            lun.execute(0, &unmap, &params).sense,
            Some(Sense::LBA_OUT_OF_RANGE)
        );
    }

    #[test]
    fn unknown_opcode_and_other_luns() {
        let (_file, lun) = lun_with(8);
        assert_eq!(
            lun.execute(0, &cdb(&[0xee]), &[]).sense,
            Some(Sense::INVALID_OPCODE)
        );
        assert_eq!(
            lun.execute(1, &cdb(&[0x00]), &[]).sense,
            Some(Sense::LUN_NOT_SUPPORTED)
        );
        let inq = lun.execute(1, &cdb(&[0x12, 0, 0, 0, 96, 0]), &[]);
        assert_eq!(inq.data[0], 0x7f);
        let luns = lun.execute(0, &cdb(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0]), &[]);
        assert_eq!(luns.data, [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn synchronize_cache_request_sense_and_mode_sense10() {
        let (_file, lun) = lun_with(64);
        assert_eq!(lun.execute(0, &cdb(&[0x35]), &[]).status, status::GOOD);
        let mut sync16 = cdb(&[0x91]);
        sync16[2..10].copy_from_slice(&64u64.to_be_bytes());
        sync16[10..14].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(
            lun.execute(0, &sync16, &[]).sense,
            Some(Sense::LBA_OUT_OF_RANGE)
        );
        let sense = lun.execute(0, &cdb(&[0x03, 0, 0, 0, 18, 0]), &[]);
        assert_eq!(sense.data.len(), 18);
        assert_eq!((sense.data[0], sense.data[2]), (0x70, 0));
        let long = lun.execute(0, &cdb(&[0x5a, 0x10, 0x08, 0, 0, 0, 0, 1, 0, 0]), &[]);
        assert_eq!(long.status, status::GOOD);
        assert_eq!(long.data[4] & 1, 1, "LONGLBA");
        assert_eq!(&long.data[8..16], &64u64.to_be_bytes());
        assert_eq!(
            long.data[24], 0x08,
            "caching page follows the long descriptor"
        );
    }

    #[test]
    fn lba_status_follows_holes() {
        let (_file, lun) = lun_with(4096);
        lun.execute(0, &write16(1024, 8), &[1; 8 * 512]);
        let status = |lba: u64| {
            let mut c = cdb(&[0x9e, 0x12]);
            c[2..10].copy_from_slice(&lba.to_be_bytes());
            c[10..14].copy_from_slice(&24u32.to_be_bytes());
            let data = lun.execute(0, &c, &[]).data;
            (
                data[20],
                u32::from_be_bytes([data[16], data[17], data[18], data[19]]),
            )
        };
        assert_eq!(status(0), (1, 1024));
        let (mapped, count) = status(1024);
        assert_eq!(mapped, 0);
        assert!((8..=3072).contains(&count), "{count}");
    }

    #[test]
    fn short_write_data_writes_the_whole_blocks_sent() {
        let (file, lun) = lun_with(8);
        let outcome = lun.execute(0, &write16(0, 2), &[1; 600]);
        assert_eq!(outcome.status, status::GOOD);
        let bytes = std::fs::read(file.path()).unwrap();
        assert!(bytes[..512].iter().all(|&b| b == 1));
        assert!(bytes[512..].iter().all(|&b| b == 0));
    }
}
