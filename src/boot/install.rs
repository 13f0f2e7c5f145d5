//! Step two of a BIOS install: the assembled disk file gets core.img in its
//! embedding area and boot.img in its MBR. Nothing is mounted; the partition table
//! is read from the file.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::embed_area::{self, EmbedArea};
use super::pc_bios::{SECTOR, core_sectors, merge_boot_sector, place_core};
use super::{BiosCode, BootError};
use crate::format::BlockSource;
use crate::format::raw::RawImage;

/// Where the boot code went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BiosPlacement {
    pub area: EmbedArea,
    /// First sector of core.img (boot.img points here).
    pub core_lba: u64,
    pub core_sectors: u64,
}

/// Write `code` into the raw disk image `disk` (open read-write).
pub fn install_bios(disk: &File, code: &BiosCode) -> Result<BiosPlacement, BootError> {
    let clone = disk.try_clone().map_err(|source| BootError::DiskIo {
        what: "opening the disk",
        source,
    })?;
    let raw = RawImage::new(clone).map_err(|source| BootError::DiskIo {
        what: "reading the disk size",
        source,
    })?;
    let area = embed_area::find(&raw)?;
    let sectors = core_sectors(code.core_img.len());
    if sectors > area.sectors {
        return Err(BootError::CoreTooLarge {
            bytes: code.core_img.len() as u64,
            sectors,
            limit: area.sectors,
            area: area.to_string(),
        });
    }
    let end = (area.first_lba + sectors) * SECTOR as u64;
    if end > raw.virtual_size() {
        return Err(BootError::AreaBeyondDisk {
            area: area.to_string(),
            disk_size: raw.virtual_size(),
        });
    }
    let core = place_core(&code.core_img, area.first_lba)?;
    let mut sector0 = [0u8; SECTOR];
    raw.read_exact_at(&mut sector0, 0)
        .map_err(|source| BootError::DiskIo {
            what: "reading the MBR",
            source,
        })?;
    let mbr = merge_boot_sector(&code.boot_img, &sector0, area.first_lba)?;

    // core.img first: a disk whose MBR points at it must never hold a stale one.
    disk.write_all_at(&core, area.first_lba * SECTOR as u64)
        .map_err(|source| BootError::DiskIo {
            what: "writing core.img",
            source,
        })?;
    disk.write_all_at(&mbr, 0)
        .map_err(|source| BootError::DiskIo {
            what: "writing boot.img to the MBR",
            source,
        })?;
    Ok(BiosPlacement {
        area,
        core_lba: area.first_lba,
        core_sectors: sectors,
    })
}
