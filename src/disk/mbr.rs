//! A DOS (MBR) partition table with up to four primary partitions.
//!
//! Only LBA matters to anything that boots today; the CHS fields are filled with the
//! usual 255-head, 63-sector geometry, saturating at cylinder 1023 as every
//! partitioning tool does for partitions beyond 8 GiB.

use std::fs::File;
use std::os::unix::fs::FileExt;

const DISK_ID_OFFSET: usize = 440;
const ENTRIES_OFFSET: usize = 446;
const ENTRY_SIZE: usize = 16;
const HEADS: u64 = 255;
const SECTORS_PER_TRACK: u64 = 63;

/// One primary partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbrPartition {
    pub bootable: bool,
    pub type_id: u8,
    /// Both in 512-byte sectors; must fit in 32 bits.
    pub first_lba: u64,
    pub sectors: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MbrError {
    #[error("MBR: {0} partitions given, at most 4 primary partitions fit")]
    TooMany(usize),
    #[error(
        "MBR: partition {number} (LBA {first_lba}, {sectors} sectors) is beyond the 2 TiB an MBR can address"
    )]
    OutOfRange {
        number: usize,
        first_lba: u64,
        sectors: u64,
    },
    #[error("writing the MBR: {0}")]
    Io(#[source] std::io::Error),
}

/// CHS address of `lba` in the packed on-disk form (head, sector|cyl-high, cyl-low).
fn chs(lba: u64) -> [u8; 3] {
    let cylinder = lba / (HEADS * SECTORS_PER_TRACK);
    if cylinder > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let head = (lba / SECTORS_PER_TRACK) % HEADS;
    let sector = lba % SECTORS_PER_TRACK + 1;
    [
        head as u8,
        (sector as u8) | (((cylinder >> 8) as u8) << 6),
        cylinder as u8,
    ]
}

/// The 512 bytes of sector 0: no boot code (the boot loader installs its own later),
/// the disk signature, the entries and 55 AA.
pub fn mbr_sector(disk_id: u32, partitions: &[MbrPartition]) -> Result<[u8; 512], MbrError> {
    if partitions.len() > 4 {
        return Err(MbrError::TooMany(partitions.len()));
    }
    let mut sector = [0u8; 512];
    sector[DISK_ID_OFFSET..DISK_ID_OFFSET + 4].copy_from_slice(&disk_id.to_le_bytes());
    for (i, p) in partitions.iter().enumerate() {
        let last = p.first_lba + p.sectors.max(1) - 1;
        if p.sectors == 0
            || p.first_lba > u32::MAX as u64
            || p.sectors > u32::MAX as u64
            || last > u32::MAX as u64
        {
            return Err(MbrError::OutOfRange {
                number: i + 1,
                first_lba: p.first_lba,
                sectors: p.sectors,
            });
        }
        let e = &mut sector[ENTRIES_OFFSET + i * ENTRY_SIZE..ENTRIES_OFFSET + (i + 1) * ENTRY_SIZE];
        e[0] = if p.bootable { 0x80 } else { 0x00 };
        e[1..4].copy_from_slice(&chs(p.first_lba));
        e[4] = p.type_id;
        e[5..8].copy_from_slice(&chs(last));
        e[8..12].copy_from_slice(&(p.first_lba as u32).to_le_bytes());
        e[12..16].copy_from_slice(&(p.sectors as u32).to_le_bytes());
    }
    sector[510] = 0x55;
    sector[511] = 0xAA;
    Ok(sector)
}

/// Write the MBR at the start of `file`, keeping any boot code already in bytes 0..440.
pub fn write_mbr(file: &File, disk_id: u32, partitions: &[MbrPartition]) -> Result<(), MbrError> {
    let mut sector = mbr_sector(disk_id, partitions)?;
    let mut code = [0u8; DISK_ID_OFFSET];
    let got = file.read_at(&mut code, 0).map_err(MbrError::Io)?;
    sector[..got].copy_from_slice(&code[..got]);
    file.write_all_at(&sector, 0).map_err(MbrError::Io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_fields_are_where_dos_expects_them() {
        let s = mbr_sector(
            0xDEADBEEF,
            &[MbrPartition {
                bootable: true,
                type_id: 0x83,
                first_lba: 2048,
                sectors: 4096,
            }],
        )
        .unwrap();
        assert_eq!(&s[440..444], &0xDEADBEEFu32.to_le_bytes());
        assert_eq!(s[446], 0x80);
        assert_eq!(s[450], 0x83);
        assert_eq!(&s[454..458], &2048u32.to_le_bytes());
        assert_eq!(&s[458..462], &4096u32.to_le_bytes());
        // LBA 2048 = cylinder 0, head 32, sector 33.
        assert_eq!(&s[447..450], &[32, 33, 0]);
        assert_eq!(&s[510..], &[0x55, 0xAA]);
        assert_eq!(&s[462..510], &[0u8; 48][..]);
    }

    #[test]
    fn limits() {
        let p = MbrPartition {
            bootable: false,
            type_id: 0x83,
            first_lba: 2048,
            sectors: u32::MAX as u64,
        };
        assert!(mbr_sector(0, &[p]).is_err());
        assert!(mbr_sector(0, &[MbrPartition { sectors: 8, ..p }; 5]).is_err());
        assert_eq!(chs(u32::MAX as u64), [0xFE, 0xFF, 0xFF]);
    }
}
