//! GRUB's i386-pc boot code, placed on a disk without grub-bios-setup.
//!
//! A BIOS loads sector 0 (GRUB's `boot.img`) and runs it. boot.img reads one sector
//! whose LBA it keeps at [`KERNEL_SECTOR`]: the first sector of `core.img`, which is
//! GRUB's `diskboot.img`. diskboot reads the rest of core.img following a list of
//! (start LBA, sector count, memory segment) records stored backwards from the end of
//! its sector. `grub-mkimage` leaves that list describing "the rest follows sector 1";
//! here it is rewritten for wherever core.img really goes.
//!
//! Everything in this file works on byte buffers; writing them to the disk is
//! [`super::install`]'s job.

use super::BootError;

/// Sector size GRUB's BIOS code assumes.
pub const SECTOR: usize = 512;

/// Where boot.img keeps the LBA of core.img's first sector (u64, little endian).
pub const KERNEL_SECTOR: usize = 0x5c;
/// Where boot.img keeps the BIOS drive to read from; 0xff means "the drive the BIOS
/// booted from" (passed in DL).
pub const BOOT_DRIVE: usize = 0x64;
/// A two-byte jump that skips boot.img's workaround for BIOSes passing a floppy
/// number in DL; a hard disk install replaces it with two NOPs so DL is forced to a
/// hard disk number when it looks wrong.
pub const DRIVE_CHECK: usize = 0x66;
/// The BIOS parameter block area a filesystem boot sector may hold; kept as found.
pub const BPB: std::ops::Range<usize> = 0x03..0x5a;
/// boot.img's code ends here; the disk signature and partition table follow.
pub const CODE_END: usize = 0x1b8;

/// Size of one blocklist record at the end of diskboot.img: start (u64), sector
/// count (u16), load segment (u16).
pub const BLOCKLIST_RECORD: usize = 12;
/// The first (last in memory) record's offset in core.img's first sector.
pub const FIRST_BLOCKLIST: usize = SECTOR - BLOCKLIST_RECORD;
/// Segment diskboot loads the rest of core.img to (right after its own sector at 0x8000).
pub const CORE_LOAD_SEGMENT: u16 = 0x820;
/// Most sectors of core.img GRUB 2.06 loads: it must end below 0x78000 and its
/// kernel is linked at 0x9000 (grub-bios-setup uses the same bound).
pub const MAX_CORE_SECTORS: u64 = (0x78000 - 0x9000) / SECTOR as u64;

/// The MBR boot code to write: `boot.img` merged with what the disk's sector 0
/// already holds (BPB, disk signature, partition table, 0x55AA are kept).
pub fn merge_boot_sector(
    boot_img: &[u8],
    disk_sector0: &[u8; SECTOR],
    core_lba: u64,
) -> Result<[u8; SECTOR], BootError> {
    if boot_img.len() != SECTOR {
        return Err(BootError::BadGrubImage {
            image: "boot.img",
            problem: format!("{} bytes, expected {SECTOR}", boot_img.len()),
        });
    }
    if boot_img[SECTOR - 2..] != [0x55, 0xaa] {
        return Err(BootError::BadGrubImage {
            image: "boot.img",
            problem: "no 0x55AA boot signature".into(),
        });
    }
    let mut sector = *disk_sector0;
    sector[..CODE_END].copy_from_slice(&boot_img[..CODE_END]);
    sector[BPB].copy_from_slice(&disk_sector0[BPB]);
    sector[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    sector[BOOT_DRIVE] = 0xff;
    sector[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    sector[SECTOR - 2..].copy_from_slice(&[0x55, 0xaa]);
    Ok(sector)
}

/// core.img padded to whole sectors, with diskboot's blocklist pointing at the
/// sectors following `core_lba` (core.img is stored contiguously).
pub fn place_core(core_img: &[u8], core_lba: u64) -> Result<Vec<u8>, BootError> {
    let bad = |problem: String| BootError::BadGrubImage {
        image: "core.img",
        problem,
    };
    if core_img.len() < 2 * SECTOR {
        return Err(bad(format!(
            "{} bytes is too short for diskboot.img and a kernel",
            core_img.len()
        )));
    }
    let record = &core_img[FIRST_BLOCKLIST..SECTOR];
    let segment = u16::from_le_bytes([record[10], record[11]]);
    if segment != CORE_LOAD_SEGMENT {
        return Err(bad(format!(
            "first sector is not GRUB's diskboot.img (load segment {segment:#x} at byte {}, expected {CORE_LOAD_SEGMENT:#x}); was it made with -O i386-pc?",
            FIRST_BLOCKLIST + 10
        )));
    }
    let sectors = core_sectors(core_img.len());
    if sectors > MAX_CORE_SECTORS {
        return Err(BootError::CoreTooLarge {
            bytes: core_img.len() as u64,
            sectors,
            limit: MAX_CORE_SECTORS,
            area: "GRUB's i386-pc load window".into(),
        });
    }
    let mut out = core_img.to_vec();
    out.resize(sectors as usize * SECTOR, 0);
    let rest = (sectors - 1) as u16;
    let rec = &mut out[FIRST_BLOCKLIST..SECTOR];
    rec[..8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    rec[8..10].copy_from_slice(&rest.to_le_bytes());
    // The record before the first one ends the list; grub-mkimage leaves it zero,
    // but a reused core.img could carry a second record.
    out[FIRST_BLOCKLIST - BLOCKLIST_RECORD..FIRST_BLOCKLIST].fill(0);
    Ok(out)
}

/// Sectors core.img takes on the disk.
pub fn core_sectors(len: usize) -> u64 {
    (len as u64).div_ceil(SECTOR as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A boot.img look-alike: every code byte non-zero, signature at the end.
    fn fake_boot_img() -> Vec<u8> {
        let mut b: Vec<u8> = (0..SECTOR).map(|i| (i % 251) as u8 | 1).collect();
        b[SECTOR - 2..].copy_from_slice(&[0x55, 0xaa]);
        b
    }

    /// A core.img look-alike of `len` bytes whose first sector ends like diskboot.img.
    fn fake_core_img(len: usize) -> Vec<u8> {
        let mut c: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
        c[FIRST_BLOCKLIST - BLOCKLIST_RECORD..SECTOR].fill(0);
        c[FIRST_BLOCKLIST..FIRST_BLOCKLIST + 8].copy_from_slice(&2u64.to_le_bytes());
        c[SECTOR - 2..SECTOR].copy_from_slice(&CORE_LOAD_SEGMENT.to_le_bytes());
        c
    }

    #[test]
    fn boot_sector_points_at_core_and_keeps_the_partition_table() {
        let mut disk = [0u8; SECTOR];
        disk[BPB].fill(0x11);
        disk[CODE_END..CODE_END + 4].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        disk[0x1be..0x1fe].fill(0x22);
        disk[0x1fe..].copy_from_slice(&[0x55, 0xaa]);
        let boot = fake_boot_img();
        let s = merge_boot_sector(&boot, &disk, 0x0123_4567_89ab).unwrap();

        assert_eq!(
            &s[KERNEL_SECTOR..KERNEL_SECTOR + 8],
            &0x0123_4567_89abu64.to_le_bytes()
        );
        assert_eq!(s[BOOT_DRIVE], 0xff);
        assert_eq!(&s[DRIVE_CHECK..DRIVE_CHECK + 2], &[0x90, 0x90]);
        assert!(s[BPB].iter().all(|&b| b == 0x11), "BPB not kept");
        // Disk signature, partition table and boot signature are the disk's.
        assert_eq!(&s[CODE_END..], &disk[CODE_END..]);
        // The jump at byte 0 and the code after the drive check come from boot.img.
        assert_eq!(&s[..BPB.start], &boot[..BPB.start]);
        assert_eq!(
            &s[DRIVE_CHECK + 2..CODE_END],
            &boot[DRIVE_CHECK + 2..CODE_END]
        );
    }

    #[test]
    fn boot_img_of_the_wrong_size_or_without_signature_is_refused() {
        let disk = [0u8; SECTOR];
        let err = merge_boot_sector(&[0u8; 440], &disk, 1).unwrap_err();
        assert!(err.to_string().contains("boot.img: 440 bytes"), "{err}");
        let mut boot = fake_boot_img();
        boot[SECTOR - 1] = 0;
        let err = merge_boot_sector(&boot, &disk, 1).unwrap_err();
        assert!(err.to_string().contains("0x55AA"), "{err}");
    }

    #[test]
    fn blocklist_covers_the_rest_of_core_img() {
        let core = fake_core_img(10 * SECTOR + 7);
        let placed = place_core(&core, 2048).unwrap();
        assert_eq!(placed.len(), 11 * SECTOR);
        let rec = &placed[FIRST_BLOCKLIST..SECTOR];
        assert_eq!(u64::from_le_bytes(rec[..8].try_into().unwrap()), 2049);
        assert_eq!(u16::from_le_bytes([rec[8], rec[9]]), 10);
        assert_eq!(u16::from_le_bytes([rec[10], rec[11]]), CORE_LOAD_SEGMENT);
        assert!(
            placed[FIRST_BLOCKLIST - BLOCKLIST_RECORD..FIRST_BLOCKLIST]
                .iter()
                .all(|&b| b == 0)
        );
        // Everything else is core.img's, then zero padding.
        assert_eq!(&placed[SECTOR..core.len()], &core[SECTOR..]);
        assert!(placed[core.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn core_img_beyond_the_load_window_is_refused() {
        let core = fake_core_img(MAX_CORE_SECTORS as usize * SECTOR + 1);
        let err = place_core(&core, 1).unwrap_err();
        assert!(
            matches!(err, BootError::CoreTooLarge { sectors, limit, .. } if sectors == MAX_CORE_SECTORS + 1 && limit == MAX_CORE_SECTORS),
            "{err}"
        );
        let fits = fake_core_img(MAX_CORE_SECTORS as usize * SECTOR);
        assert!(place_core(&fits, 1).is_ok());
    }

    #[test]
    fn an_efi_or_truncated_image_is_not_taken_for_core_img() {
        let mut core = fake_core_img(4 * SECTOR);
        core[SECTOR - 2..SECTOR].fill(0);
        let err = place_core(&core, 1).unwrap_err();
        assert!(err.to_string().contains("diskboot.img"), "{err}");
        let err = place_core(&[0u8; SECTOR], 1).unwrap_err();
        assert!(err.to_string().contains("too short"), "{err}");
    }
}
