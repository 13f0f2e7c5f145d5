//! GRUB's files in the tree: /boot/grub/grub.cfg, the module folders (so `insmod`
//! works from grub.cfg), BOOTX64.EFI on the ESP, and the i386-pc boot code kept
//! for the disk patch step.

use std::fs;
use std::path::{Path, PathBuf};

use super::grub_cfg::{early_config, grub_cfg};
use super::mkimage::build_image;
use super::pc_bios::place_core;
use super::sources::{GrubPlatform, grub_dir};
use super::tree_files::{copy_file, ensure_dir, io_err, write_file};
use super::{BiosCode, BootError, BootSpec};

/// Write grub.cfg once (both platforms read the same file), then each platform's
/// files. Returns the BIOS boot code when `bios` is set.
pub fn stage(
    tree: &Path,
    spec: &BootSpec,
    bios: bool,
    efi: bool,
    written: &mut Vec<PathBuf>,
) -> Result<Option<BiosCode>, BootError> {
    let grub = ensure_dir(tree, "/boot/grub")?;
    written.push(write_file(&grub, "grub.cfg", grub_cfg(spec)?.as_bytes())?);
    let early = early_config(&spec.root_uuid);

    let mut code = None;
    if bios {
        let platform = GrubPlatform::I386Pc;
        let (dir, _) = grub_dir(tree, &spec.host_root, platform)?;
        let core_img = build_image(platform, &dir, &early, &platform.embedded_modules())?;
        // Refuse a core.img that could never be placed now, not after assembly.
        place_core(&core_img, 1)?;
        let boot_path = dir.join("boot.img");
        let boot_img = fs::read(&boot_path).map_err(io_err(&boot_path))?;
        if spec.copy_grub_modules {
            copy_modules(&dir, &ensure_dir(tree, "/boot/grub/i386-pc")?, written)?;
        }
        code = Some(BiosCode { boot_img, core_img });
    }
    if efi {
        let platform = GrubPlatform::X86_64Efi;
        let (dir, _) = grub_dir(tree, &spec.host_root, platform)?;
        let image = build_image(platform, &dir, &early, &platform.embedded_modules())?;
        let boot = ensure_dir(tree, &format!("{}/EFI/BOOT", spec.esp_dir))?;
        written.push(write_file(&boot, "BOOTX64.EFI", &image)?);
        if spec.copy_grub_modules {
            copy_modules(&dir, &ensure_dir(tree, "/boot/grub/x86_64-efi")?, written)?;
        }
    }
    Ok(code)
}

/// Copy the modules and their index files (`*.mod`, `*.lst`) in name order, as
/// grub-install does; `insmod` loads them from `$prefix/PLATFORM`.
fn copy_modules(src: &Path, dst: &Path, written: &mut Vec<PathBuf>) -> Result<(), BootError> {
    let mut names: Vec<String> = fs::read_dir(src)
        .map_err(io_err(src))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".mod") || n.ends_with(".lst"))
        .collect();
    names.sort();
    for name in names {
        written.push(copy_file(&src.join(&name), dst, &name)?);
    }
    Ok(())
}
