//! Where core.img can live on a disk: the BIOS boot partition of a GPT disk, or
//! the gap between the MBR and the first partition of an MBR disk. Read from the
//! disk itself, so the patch step needs no layout from the caller.

use std::fmt;

use super::BootError;
use super::pc_bios::SECTOR;
use crate::format::BlockSource;
use crate::format::gpt::{self, BIOS_BOOT};

/// MBR partition records: four of 16 bytes from byte 446.
const MBR_TABLE: usize = 446;
const MBR_RECORD: usize = 16;
/// The type of a GPT's protective MBR record.
const PROTECTIVE_TYPE: u8 = 0xee;

/// A run of sectors reserved for boot code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbedArea {
    pub first_lba: u64,
    /// Sectors in the area.
    pub sectors: u64,
    pub kind: AreaKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AreaKind {
    /// GPT partition of type BIOS boot (EF02), with its number.
    BiosBootPartition(u32),
    /// Sectors after the MBR, before the first partition.
    MbrGap,
}

impl fmt::Display for EmbedArea {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = self.first_lba + self.sectors.saturating_sub(1);
        match self.kind {
            AreaKind::BiosBootPartition(n) => write!(
                f,
                "BIOS boot partition {n} (LBA {}..={last}, {} sectors)",
                self.first_lba, self.sectors
            ),
            AreaKind::MbrGap => write!(
                f,
                "the gap after the MBR (LBA {}..={last}, {} sectors)",
                self.first_lba, self.sectors
            ),
        }
    }
}

/// Find the area on `disk`: GPT first (its protective MBR must not be read as a
/// partition table), then a plain MBR.
pub fn find(disk: &dyn BlockSource) -> Result<EmbedArea, BootError> {
    if let Some(table) = gpt::read_gpt(disk)? {
        let part = table
            .partitions
            .iter()
            .find(|p| p.type_guid == BIOS_BOOT)
            .ok_or(BootError::NoBiosBootPartition)?;
        return Ok(EmbedArea {
            first_lba: part.first_lba,
            sectors: part.sectors(),
            kind: AreaKind::BiosBootPartition(part.number),
        });
    }
    let mut sector0 = [0u8; SECTOR];
    disk.read_exact_at(&mut sector0, 0)
        .map_err(|source| BootError::DiskIo {
            what: "reading the MBR",
            source,
        })?;
    mbr_gap(&sector0)
}

/// The sectors between the MBR and the lowest partition start.
pub fn mbr_gap(sector0: &[u8; SECTOR]) -> Result<EmbedArea, BootError> {
    if sector0[SECTOR - 2..] != [0x55, 0xaa] {
        return Err(BootError::NoPartitionTable);
    }
    let mut first_start: Option<u64> = None;
    for i in 0..4 {
        let rec = &sector0[MBR_TABLE + i * MBR_RECORD..][..MBR_RECORD];
        let kind = rec[4];
        let start = u64::from(u32::from_le_bytes(rec[8..12].try_into().unwrap()));
        let len = u32::from_le_bytes(rec[12..16].try_into().unwrap());
        if kind == 0 || len == 0 {
            continue;
        }
        if kind == PROTECTIVE_TYPE {
            return Err(BootError::ProtectiveMbrWithoutGpt);
        }
        first_start = Some(first_start.map_or(start, |s: u64| s.min(start)));
    }
    let start = first_start.ok_or(BootError::NoPartitionTable)?;
    Ok(EmbedArea {
        first_lba: 1,
        sectors: start.saturating_sub(1),
        kind: AreaKind::MbrGap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbr(records: &[(u8, u32, u32)]) -> [u8; SECTOR] {
        let mut s = [0u8; SECTOR];
        for (i, &(kind, start, len)) in records.iter().enumerate() {
            let rec = &mut s[MBR_TABLE + i * MBR_RECORD..][..MBR_RECORD];
            rec[4] = kind;
            rec[8..12].copy_from_slice(&start.to_le_bytes());
            rec[12..16].copy_from_slice(&len.to_le_bytes());
        }
        s[SECTOR - 2..].copy_from_slice(&[0x55, 0xaa]);
        s
    }

    #[test]
    fn gap_ends_at_the_lowest_partition_whatever_its_slot() {
        let area = mbr_gap(&mbr(&[(0x83, 8192, 100), (0, 0, 0), (0x82, 2048, 100)])).unwrap();
        assert_eq!(
            area,
            EmbedArea {
                first_lba: 1,
                sectors: 2047,
                kind: AreaKind::MbrGap
            }
        );
    }

    #[test]
    fn partition_at_sector_one_leaves_no_gap() {
        let area = mbr_gap(&mbr(&[(0x83, 1, 100)])).unwrap();
        assert_eq!(area.sectors, 0);
    }

    #[test]
    fn missing_signature_empty_table_and_lone_protective_mbr_are_errors() {
        let mut s = mbr(&[(0x83, 2048, 100)]);
        s[SECTOR - 1] = 0;
        assert!(matches!(mbr_gap(&s), Err(BootError::NoPartitionTable)));
        assert!(matches!(
            mbr_gap(&mbr(&[])),
            Err(BootError::NoPartitionTable)
        ));
        assert!(matches!(
            mbr_gap(&mbr(&[(0xee, 1, 100)])),
            Err(BootError::ProtectiveMbrWithoutGpt)
        ));
    }
}
