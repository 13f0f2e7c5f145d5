//! The reserved sectors: boot sector with BPB and extended BPB, and on FAT32 the
//! FSInfo sector and the backup copies at sectors 6 and 7.

use super::layout::{Layout, NUM_FATS};
use super::name::ShortName;
use super::{FatType, SECTOR_SIZE};

pub const MEDIA_FIXED_DISK: u8 = 0xF8;

const SECTOR: usize = SECTOR_SIZE as usize;
const OEM_NAME: &[u8; 8] = b"KILN    ";
const NO_LABEL: &ShortName = b"NO NAME    ";
const DRIVE_NUMBER: u8 = 0x80;
const EXT_BOOT_SIGNATURE: u8 = 0x29;
const SECTORS_PER_TRACK: u16 = 63;
const HEADS: u16 = 255;

const FAT32_FSINFO_SECTOR: u16 = 1;
const FAT32_BACKUP_SECTOR: u16 = 6;
pub const FAT32_ROOT_CLUSTER: u32 = 2;

/// Boot code for a disk that is not bootable: `int 18h` (let the firmware try the
/// next device), then halt forever.
const BOOT_CODE: [u8; 5] = [0xCD, 0x18, 0xF4, 0xEB, 0xFD];

pub struct BootParams {
    pub label: Option<ShortName>,
    pub volume_id: u32,
    /// Sectors before the filesystem on its disk (the partition start).
    pub hidden_sectors: u32,
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The boot sector.
pub fn boot_sector(layout: &Layout, params: &BootParams) -> [u8; SECTOR] {
    let mut b = [0u8; SECTOR];
    let fat32 = layout.fat_type == FatType::Fat32;
    // Where the extended BPB and the boot code start.
    let (ebpb, code): (usize, usize) = if fat32 { (64, 90) } else { (36, 62) };
    b[0] = 0xEB; // jmp short over the BPB
    b[1] = (code - 2) as u8;
    b[2] = 0x90;
    b[3..11].copy_from_slice(OEM_NAME);
    put16(&mut b, 11, SECTOR_SIZE as u16);
    b[13] = layout.sectors_per_cluster as u8;
    put16(&mut b, 14, layout.reserved_sectors as u16);
    b[16] = NUM_FATS as u8;
    put16(&mut b, 17, layout.root_entries as u16);
    let total = layout.total_sectors;
    if !fat32 && total < 0x1_0000 {
        put16(&mut b, 19, total as u16);
    } else {
        put32(&mut b, 32, total);
    }
    b[21] = MEDIA_FIXED_DISK;
    if !fat32 {
        put16(&mut b, 22, layout.fat_sectors as u16);
    }
    put16(&mut b, 24, SECTORS_PER_TRACK);
    put16(&mut b, 26, HEADS);
    put32(&mut b, 28, params.hidden_sectors);
    if fat32 {
        put32(&mut b, 36, layout.fat_sectors);
        // 40: flags (0 = FATs mirrored), 42: version 0.0
        put32(&mut b, 44, FAT32_ROOT_CLUSTER);
        put16(&mut b, 48, FAT32_FSINFO_SECTOR);
        put16(&mut b, 50, FAT32_BACKUP_SECTOR);
    }
    b[ebpb] = DRIVE_NUMBER;
    b[ebpb + 2] = EXT_BOOT_SIGNATURE;
    put32(&mut b, ebpb + 3, params.volume_id);
    b[ebpb + 7..ebpb + 18].copy_from_slice(params.label.as_ref().unwrap_or(NO_LABEL));
    b[ebpb + 18..ebpb + 26].copy_from_slice(if fat32 { b"FAT32   " } else { b"FAT16   " });
    b[code..code + BOOT_CODE.len()].copy_from_slice(&BOOT_CODE);
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

/// The FAT32 FSInfo sector: free cluster count and the allocation hint.
pub fn fsinfo_sector(free_clusters: u32, next_free: u32) -> [u8; SECTOR] {
    let mut b = [0u8; SECTOR];
    put32(&mut b, 0, 0x4161_5252);
    put32(&mut b, 484, 0x6141_7272);
    put32(&mut b, 488, free_clusters);
    put32(&mut b, 492, next_free);
    put32(&mut b, 508, 0xAA55_0000);
    b
}

/// All reserved sectors as they go on disk.
pub fn reserved_region(layout: &Layout, params: &BootParams, used_clusters: u32) -> Vec<u8> {
    let mut region = vec![0u8; layout.reserved_bytes() as usize];
    let boot = boot_sector(layout, params);
    region[..SECTOR].copy_from_slice(&boot);
    if layout.fat_type == FatType::Fat32 {
        let free = layout.clusters.saturating_sub(used_clusters);
        // The hint is the last allocated cluster: drivers search from the one after it.
        let last_allocated = if used_clusters > 0 {
            1 + used_clusters
        } else {
            u32::MAX
        };
        let info = fsinfo_sector(free, last_allocated);
        let at = |sector: u16| usize::from(sector) * SECTOR;
        let backup = FAT32_BACKUP_SECTOR;
        region[at(FAT32_FSINFO_SECTOR)..at(FAT32_FSINFO_SECTOR + 1)].copy_from_slice(&info);
        region[at(backup)..at(backup + 1)].copy_from_slice(&boot);
        region[at(backup + 1)..at(backup + 2)].copy_from_slice(&info);
    }
    region
}
