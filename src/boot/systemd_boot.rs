//! systemd-boot on the ESP: the loader as the removable-media path
//! EFI/BOOT/BOOTX64.EFI, loader/loader.conf, one Boot Loader Specification entry,
//! and the kernel and initrd copied next to them (systemd-boot reads only the ESP).

use std::path::{Path, PathBuf};

use super::grub_cfg::{checked_text, kernel_args};
use super::sources::systemd_boot;
use super::tree_files::{copy_file, ensure_dir, write_file};
use super::{BootError, BootSpec, host_file};

/// Entry id, entry file name and the ESP folder holding the kernel and initrd.
const ENTRY: &str = "kiln";

pub fn stage(tree: &Path, spec: &BootSpec, written: &mut Vec<PathBuf>) -> Result<(), BootError> {
    let (loader, _) = systemd_boot(tree, &spec.host_root)?;
    let esp = &spec.esp_dir;
    let boot = ensure_dir(tree, &format!("{esp}/EFI/BOOT"))?;
    written.push(copy_file(&loader, &boot, "BOOTX64.EFI")?);

    let files = ensure_dir(tree, &format!("{esp}/{ENTRY}"))?;
    written.push(copy_file(
        &host_file(tree, "kernel", &spec.kernel)?,
        &files,
        "linux",
    )?);
    if let Some(initrd) = &spec.initrd {
        written.push(copy_file(
            &host_file(tree, "initrd", initrd)?,
            &files,
            "initrd",
        )?);
    }

    let loader_dir = ensure_dir(tree, &format!("{esp}/loader"))?;
    written.push(write_file(
        &loader_dir,
        "loader.conf",
        loader_conf(spec).as_bytes(),
    )?);
    let entries = ensure_dir(tree, &format!("{esp}/loader/entries"))?;
    written.push(write_file(
        &entries,
        &format!("{ENTRY}.conf"),
        entry(spec)?.as_bytes(),
    )?);
    Ok(())
}

/// loader.conf: our entry is the default; timeout 0 boots it without a menu.
fn loader_conf(spec: &BootSpec) -> String {
    format!(
        "default {ENTRY}.conf\ntimeout {}\neditor no\n",
        spec.timeout_secs
    )
}

/// The entry: paths are on the ESP, `options` is the whole kernel command line.
fn entry(spec: &BootSpec) -> Result<String, BootError> {
    let title = checked_text("title", &spec.title)?;
    let mut options = format!("root=UUID={} ro", spec.root_uuid);
    for word in kernel_args(spec)? {
        options.push(' ');
        options.push_str(word);
    }
    let initrd = if spec.initrd.is_some() {
        format!("initrd /{ENTRY}/initrd\n")
    } else {
        String::new()
    };
    Ok(format!(
        "title {title}\nlinux /{ENTRY}/linux\n{initrd}options {options}\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn entry_names_the_esp_copies_and_the_root() {
        let mut spec = BootSpec::new(Uuid::from_u128(7), "/boot/vmlinuz");
        spec.initrd = Some("/boot/initrd.img".into());
        spec.cmdline = "console=ttyS0 quiet".into();
        spec.title = "Test image".into();
        assert_eq!(
            entry(&spec).unwrap(),
            format!(
                "title Test image\nlinux /kiln/linux\ninitrd /kiln/initrd\noptions root=UUID={} ro console=ttyS0 quiet\n",
                Uuid::from_u128(7)
            )
        );
        spec.timeout_secs = 3;
        assert_eq!(
            loader_conf(&spec),
            "default kiln.conf\ntimeout 3\neditor no\n"
        );
        spec.title = "a\nb".into();
        assert!(entry(&spec).is_err());
    }
}
