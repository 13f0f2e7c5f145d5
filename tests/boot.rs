//! Boot loaders installed by kiln::boot, judged by real firmware: disks are built
//! here with independent tools (sgdisk or sfdisk on a sparse file, `mke2fs -d` at an
//! offset, kiln's FAT writer for the ESP), holding Debian's kernel and a busybox
//! initrd whose /init prints a marker on the serial console and powers off. Each
//! must print the marker under `qemu-system-x86_64 -accel tcg` with SeaBIOS or
//! OVMF; the same disk without the boot loader step must not.

#[path = "boot/support.rs"]
mod support;
// Shared with other VM tests; this one boots disks only.
#[allow(dead_code)]
#[path = "common/vm.rs"]
mod vm;

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use kiln::boot::{AreaKind, BiosLoader, BootError, BootSpec, EfiLoader, install_bios, stage_tree};
use support::{Firmware, Layout, MARKER, NO_BOOT_WATCH, Work, boot, boot_for, sh};
use uuid::Uuid;

/// A disk with the given loaders (none: the negative control) and the root UUID.
fn bootable_disk(
    work: &Work,
    layout: Layout,
    bios: Option<BiosLoader>,
    efi: Option<EfiLoader>,
) -> PathBuf {
    let root_uuid = Uuid::new_v5(&Uuid::NAMESPACE_OID, work.name.as_bytes());
    let tree = work.tree();
    let bios_code = if bios.is_some() || efi.is_some() {
        let mut spec = BootSpec::new(root_uuid, "/boot/vmlinuz");
        spec.initrd = Some("/boot/initrd.img".into());
        spec.cmdline = "console=ttyS0 panic=-1".into();
        spec.timeout_secs = 0;
        spec.title = "kiln test image".into();
        spec.bios = bios;
        spec.efi = efi;
        stage_tree(&tree, &spec).expect("stage_tree").bios_code
    } else {
        None
    };
    let disk = work.assemble(&tree, layout, root_uuid);
    if let Some(code) = bios_code {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        let placed = install_bios(&file, &code).expect("install_bios");
        let expected = match layout {
            Layout::Gpt => AreaKind::BiosBootPartition(1),
            Layout::Mbr => AreaKind::MbrGap,
        };
        assert_eq!(placed.area.kind, expected);
    }
    disk
}

/// The partition table as the independent tool sees it.
fn table_dump(disk: &Path, layout: Layout) -> String {
    let d = disk.display();
    match layout {
        Layout::Gpt => sh(&format!("sgdisk -p {d} && sgdisk -v {d}")),
        Layout::Mbr => sh(&format!("sfdisk -d {d}")),
    }
}

/// GRUB's line when it runs our grub.cfg's entry (so grub.cfg was found on the
/// root filesystem by UUID).
const GRUB_TRACE: &str = "Booting `kiln test image'";
/// The kernel's EFI stub reporting the initrd systemd-boot handed over.
const SYSTEMD_BOOT_TRACE: &str = "EFI stub: Loaded initrd";

/// `disk` boots to the initrd's /init, and the console shows `loader_trace`.
fn assert_boots(disk: &Path, firmware: Firmware, what: &str, loader_trace: &str) {
    let console = boot(disk, firmware);
    assert!(
        console.contains(loader_trace),
        "{what} under {firmware:?}: the console lacks {loader_trace:?}, so the boot did not go through the loader:\n{console}"
    );
    assert!(
        console.contains(MARKER),
        "{what} under {firmware:?} did not reach the initrd's /init; serial console:\n{console}"
    );
}

#[test]
fn gpt_with_grub_for_bios_and_uefi_boots_under_seabios_and_ovmf() {
    let work = Work::new("gpt-grub");
    let disk = bootable_disk(
        &work,
        Layout::Gpt,
        Some(BiosLoader::Grub),
        Some(EfiLoader::Grub),
    );
    let table = table_dump(&disk, Layout::Gpt);
    assert!(table.contains("No problems found"), "{table}");
    std::thread::scope(|s| {
        s.spawn(|| assert_boots(&disk, Firmware::SeaBios, "GPT + GRUB i386-pc", GRUB_TRACE));
        assert_boots(&disk, Firmware::Ovmf, "GPT + GRUB x86_64-efi", GRUB_TRACE);
    });
}

#[test]
fn gpt_with_systemd_boot_boots_under_ovmf() {
    let work = Work::new("gpt-sdboot");
    let disk = bootable_disk(&work, Layout::Gpt, None, Some(EfiLoader::SystemdBoot));
    assert_boots(
        &disk,
        Firmware::Ovmf,
        "GPT + systemd-boot",
        SYSTEMD_BOOT_TRACE,
    );
}

#[test]
fn mbr_with_grub_boots_under_seabios_and_keeps_the_partition_table() {
    let work = Work::new("mbr-grub");
    let root_uuid = Uuid::new_v5(&Uuid::NAMESPACE_OID, b"mbr-before");
    let plain = work.assemble(&work.tree(), Layout::Mbr, root_uuid);
    let before = table_dump(&plain, Layout::Mbr);
    let disk = bootable_disk(&work, Layout::Mbr, Some(BiosLoader::Grub), None);
    // Same label id and partitions: boot.img went around the table.
    assert_eq!(
        table_dump(&disk, Layout::Mbr).replace(&*disk.to_string_lossy(), "D"),
        before.replace(&*plain.to_string_lossy(), "D")
    );
    assert_boots(&disk, Firmware::SeaBios, "MBR + GRUB i386-pc", GRUB_TRACE);
}

#[test]
fn without_the_boot_loader_step_the_disk_does_not_boot() {
    let work = Work::new("no-loader");
    let disk = bootable_disk(&work, Layout::Gpt, None, None);
    std::thread::scope(|s| {
        s.spawn(|| {
            let console = boot_for(&disk, Firmware::SeaBios, NO_BOOT_WATCH);
            // The firmware did run and tried this disk.
            assert!(console.contains("Booting from Hard Disk"), "{console}");
            assert!(
                !console.contains(MARKER),
                "booted without a loader:\n{console}"
            );
        });
        let console = boot_for(&disk, Firmware::Ovmf, NO_BOOT_WATCH);
        // OVMF found nothing to boot on the ESP and fell back to its shell.
        assert!(console.contains("Shell>"), "{console}");
        assert!(
            !console.contains(MARKER),
            "booted without a loader:\n{console}"
        );
    });
}

#[test]
fn staging_and_installing_twice_gives_identical_bytes() {
    // One partitioned blank disk (sgdisk picks random GUIDs), copied for each run.
    let blank_work = Work::new("repro-blank");
    let blank = blank_work.dir.path().join("blank.img");
    sh(&format!(
        "truncate -s 8M {0} && sgdisk -n 1:2048:+1M -t 1:EF02 -n 2:0:+2M -t 2:8300 {0} >/dev/null",
        blank.display()
    ));
    let mut runs = Vec::new();
    for name in ["repro-a", "repro-b"] {
        let work = Work::new(name);
        let tree = work.tree();
        let mut spec = BootSpec::new(Uuid::from_u128(0x6b69_6c6e), "/boot/vmlinuz");
        spec.bios = Some(BiosLoader::Grub);
        spec.efi = Some(EfiLoader::Grub);
        let staged = stage_tree(&tree, &spec).unwrap();
        // Module folders for `insmod`, next to grub.cfg.
        for module in [
            "boot/grub/i386-pc/linux.mod",
            "boot/grub/x86_64-efi/linux.mod",
        ] {
            assert!(
                staged.written.contains(&tree.join(module)),
                "{module} not copied"
            );
        }
        let disk = work.dir.path().join("disk.img");
        fs::copy(&blank, &disk).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        install_bios(&file, staged.bios_code.as_ref().unwrap()).unwrap();
        let efi = fs::read(tree.join("boot/efi/EFI/BOOT/BOOTX64.EFI")).unwrap();
        let cfg = fs::read(tree.join("boot/grub/grub.cfg")).unwrap();
        runs.push((fs::read(&disk).unwrap(), efi, cfg));
    }
    assert!(runs[0].0 == runs[1].0, "disks differ");
    assert!(runs[0].1 == runs[1].1, "BOOTX64.EFI differs");
    assert_eq!(runs[0].2, runs[1].2);
    assert!(
        runs[0].0 != fs::read(&blank).unwrap(),
        "nothing was installed"
    );
}

/// A blank disk file of `size` bytes partitioned by `script` (sfdisk).
fn mbr_disk(dir: &Path, script: &str) -> PathBuf {
    let disk = dir.join("disk.img");
    sh(&format!(
        "truncate -s 8M {0} && printf '{script}' | sfdisk -q {0}",
        disk.display()
    ));
    disk
}

fn staged_bios_code(work: &Work) -> kiln::boot::BiosCode {
    let mut spec = BootSpec::new(Uuid::from_u128(1), "/boot/vmlinuz");
    spec.bios = Some(BiosLoader::Grub);
    spec.copy_grub_modules = false;
    stage_tree(&work.tree(), &spec).unwrap().bios_code.unwrap()
}

#[test]
fn core_img_larger_than_the_mbr_gap_is_refused_and_the_disk_untouched() {
    let work = Work::new("small-gap");
    let code = staged_bios_code(&work);
    // The first partition at sector 63, the old DOS layout: a 62-sector gap.
    let disk = mbr_disk(work.dir.path(), "label: dos\\nstart=63, type=83\\n");
    let before = fs::read(&disk).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    let err = install_bios(&file, &code).unwrap_err();
    assert!(
        matches!(err, BootError::CoreTooLarge { limit: 62, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("gap after the MBR"), "{err}");
    assert!(fs::read(&disk).unwrap() == before, "disk was modified");
}

#[test]
fn gpt_without_bios_boot_partition_and_blank_disk_are_refused() {
    let work = Work::new("no-ef02");
    let code = staged_bios_code(&work);
    let disk = work.dir.path().join("gpt.img");
    sh(&format!(
        "truncate -s 8M {0} && sgdisk -n 1:2048:0 -t 1:8300 {0} >/dev/null",
        disk.display()
    ));
    let file = File::options().read(true).write(true).open(&disk).unwrap();
    let err = install_bios(&file, &code).unwrap_err();
    assert!(matches!(err, BootError::NoBiosBootPartition), "{err}");

    let blank = work.dir.path().join("blank.img");
    sh(&format!("truncate -s 8M {}", blank.display()));
    let file = File::options().read(true).write(true).open(&blank).unwrap();
    let err = install_bios(&file, &code).unwrap_err();
    assert!(matches!(err, BootError::NoPartitionTable), "{err}");
}

#[test]
fn missing_kernel_is_named() {
    let work = Work::new("no-kernel");
    let mut spec = BootSpec::new(Uuid::from_u128(1), "/boot/vmlinuz-missing");
    spec.efi = Some(EfiLoader::SystemdBoot);
    let err = stage_tree(&work.tree(), &spec).unwrap_err();
    assert!(
        err.to_string().contains("kernel /boot/vmlinuz-missing"),
        "{err}"
    );
}
