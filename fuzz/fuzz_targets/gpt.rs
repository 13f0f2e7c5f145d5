//! Fuzz `read_gpt` with disks built from the input.
//!
//! Input: `[ctl, gap, head...]`. `head` (at most 64 KiB) becomes the first sectors
//! of the disk, then `gap` zero sectors, then (ctl bit 2) a mirror of the head laid
//! out the way a backup table sits at the end of a disk: head sectors 2.. (the
//! entry array) followed by head sector 1 (the header). The other ctl bits help the
//! fuzzer past the parts it cannot guess:
//!
//! * bit 0 / bit 1: recompute the entry-array CRC and header CRC of the primary
//!   (LBA 1) / backup (last LBA) header from its own (possibly absurd) fields;
//! * bit 3: add 100 bytes so the disk is not a whole number of sectors;
//! * bit 4: write a protective MBR record and the 0x55AA signature;
//! * bit 5: point the mirrored header at its new place (my LBA = last, alternate
//!   LBA = 1, entry array just before it).

#![no_main]

use kiln::format::MemDisk;
use kiln::format::gpt::read_gpt;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

const SECTOR: usize = 512;
const MAX_HEAD: usize = 64 << 10;
/// Same bound as the reader's; only used to skip hashing absurd arrays here.
const MAX_ARRAY: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let [ctl, gap, head @ ..] = data else {
        return;
    };
    let disk = build_disk(*ctl, *gap, head);
    // Never panics; errors and None are both fine answers.
    let result = read_gpt(&MemDisk(disk));
    if *DEBUG {
        eprintln!("{result:#?}");
    }
});

/// KILN_FUZZ_DEBUG=1: print what the reader made of each input (for checking seeds).
static DEBUG: LazyLock<bool> = LazyLock::new(|| std::env::var_os("KILN_FUZZ_DEBUG").is_some());

fn build_disk(ctl: u8, gap: u8, head: &[u8]) -> Vec<u8> {
    let head = &head[..head.len().min(MAX_HEAD)];
    let head_sectors = head.len().div_ceil(SECTOR).max(2);
    let mut disk = vec![0u8; head_sectors * SECTOR];
    disk[..head.len()].copy_from_slice(head);
    if ctl & 0x10 != 0 {
        disk[446 + 4] = 0xEE;
        disk[510] = 0x55;
        disk[511] = 0xAA;
    }
    let mirror: Vec<u8> = [&disk[2 * SECTOR..], &disk[SECTOR..2 * SECTOR]].concat();
    disk.resize(disk.len() + usize::from(gap) * SECTOR, 0);
    if ctl & 0x04 != 0 {
        disk.extend_from_slice(&mirror);
        if ctl & 0x20 != 0 {
            let sectors = (disk.len() / SECTOR) as u64;
            let last = sectors - 1;
            let array_sectors = (head_sectors - 2) as u64;
            let h = sector_mut(&mut disk, last);
            h[24..32].copy_from_slice(&last.to_le_bytes());
            h[32..40].copy_from_slice(&1u64.to_le_bytes());
            h[72..80].copy_from_slice(&(last - array_sectors).to_le_bytes());
        }
    }
    let last = (disk.len() / SECTOR) as u64 - 1;
    if ctl & 0x01 != 0 {
        reseal(&mut disk, 1);
    }
    if ctl & 0x02 != 0 {
        reseal(&mut disk, last);
    }
    if ctl & 0x08 != 0 {
        disk.extend_from_slice(&[0xA5; 100]);
    }
    disk
}

fn sector_mut(disk: &mut [u8], lba: u64) -> &mut [u8] {
    let at = lba as usize * SECTOR;
    &mut disk[at..at + SECTOR]
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Recompute the CRCs of the header at `lba` from its fields, where they make sense.
fn reseal(disk: &mut [u8], lba: u64) {
    let h = sector_mut(disk, lba);
    let entries_lba = le64(h, 72);
    let len = u64::from(le32(h, 80)) * u64::from(le32(h, 84));
    let header_size = le32(h, 12) as usize;
    let array = entries_lba
        .checked_mul(SECTOR as u64)
        .filter(|_| len <= MAX_ARRAY)
        .and_then(|start| Some((usize::try_from(start).ok()?, len as usize)))
        .and_then(|(start, len)| disk.get(start..start.checked_add(len)?));
    if let Some(array) = array {
        let crc = crc32fast::hash(array);
        sector_mut(disk, lba)[88..92].copy_from_slice(&crc.to_le_bytes());
    }
    if (20..=SECTOR).contains(&header_size) {
        let h = sector_mut(disk, lba);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&h[..16]);
        hasher.update(&[0; 4]);
        hasher.update(&h[20..header_size]);
        let crc = hasher.finalize();
        h[16..20].copy_from_slice(&crc.to_le_bytes());
    }
}
