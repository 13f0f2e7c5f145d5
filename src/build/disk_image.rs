//! The disk half of a build: pick the block-device layout, plan it (every offset
//! and identifier fixed from the seed), write /etc/fstab and the boot loader's
//! files into the tree, then assemble the raw disk and put GRUB's BIOS code on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::boot::{self, BiosCode, BiosLoader, BootSpec, EfiLoader};
use crate::disk::layout::TableKind;
use crate::disk::types::PartitionType;
use crate::disk::{self, AssembledDisk, DiskPlan, Layout, PlanOptions};
use crate::format::gpt;

#[derive(Debug, thiserror::Error)]
pub enum DiskImageError {
    #[error("block-device layout: {0}")]
    Layout(#[from] disk::LayoutError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("boot loader: {0}")]
    Boot(#[from] boot::BootError),
    #[error("measuring the tree: {0}")]
    Usage(#[from] crate::fs::FsError),
    #[error("assembling the disk: {0}")]
    Assemble(#[from] disk::AssembleError),
    #[error(
        "element bootloader needs a kernel in the image: no /boot/vmlinuz-* in the tree (the operating-system element installs one)"
    )]
    NoKernel,
    #[error("DIB_BLOCK_DEVICE_CONFIG / the recipe's block-device is not YAML: {0}")]
    LayoutYaml(serde_yaml_ng::Error),
    #[error("KILN_EFI_LOADER={0:?}: expected grub or systemd-boot")]
    EfiLoaderName(String),
}

/// The layout of a build, in DIB's order of precedence: the recipe's inline
/// `block-device`, DIB_BLOCK_DEVICE_CONFIG, the block-device-* element of the
/// build, else a single MBR partition (what DIB's vm element defaults to).
pub fn choose_layout(
    inline: Option<&serde_yaml_ng::Value>,
    env: &BTreeMap<String, String>,
    element_names: &[&str],
) -> Result<Layout, DiskImageError> {
    if let Some(value) = inline {
        return Ok(Layout::from_yaml(value)?);
    }
    if let Some(text) = env
        .get("DIB_BLOCK_DEVICE_CONFIG")
        .filter(|t| !t.trim().is_empty())
    {
        let text = match text.strip_prefix("file://") {
            Some(path) => std::fs::read_to_string(path).map_err(|source| DiskImageError::Io {
                context: format!("DIB_BLOCK_DEVICE_CONFIG {path}"),
                source,
            })?,
            None => text.clone(),
        };
        let value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&text).map_err(DiskImageError::LayoutYaml)?;
        return Ok(Layout::from_yaml(&value)?);
    }
    let element = element_names
        .iter()
        .find(|n| n.starts_with("block-device-"))
        .copied()
        .unwrap_or("block-device-mbr");
    match disk::builtin_layout(element) {
        Some(layout) => Ok(layout?),
        None => Ok(disk::builtin_layout("block-device-mbr").expect("mbr is built in")?),
    }
}

/// What the boot loader step needs from the build.
pub struct BootRequest<'a> {
    pub cmdline: &'a str,
    pub efi_loader: Option<&'a str>,
    pub title: &'a str,
}

/// Write /etc/fstab, and with a boot loader its files, into `tree`. Returns the
/// BIOS code to put on the disk after assembly.
pub fn prepare_tree(
    plan: &DiskPlan,
    tree: &Path,
    boot_request: Option<&BootRequest<'_>>,
) -> Result<Option<BiosCode>, DiskImageError> {
    let etc = tree.join("etc");
    if etc.is_dir() && !is_symlink(&etc) {
        let fstab = etc.join("fstab");
        if is_symlink(&fstab) {
            std::fs::remove_file(&fstab).map_err(io(&fstab))?;
        }
        std::fs::write(&fstab, plan.fstab()).map_err(io(&fstab))?;
    }
    let Some(request) = boot_request else {
        return Ok(None);
    };
    let root = plan
        .root()
        .filesystem
        .as_ref()
        .expect("a plan's root partition has a filesystem");
    let (kernel, initrd) = find_kernel(tree)?;
    let mut spec = BootSpec::new(root.uuid, &kernel);
    spec.initrd = initrd;
    spec.cmdline = request.cmdline.to_string();
    spec.title = request.title.to_string();
    let has = |wanted: Option<uuid::Uuid>, mbr: bool| {
        plan.partitions.iter().any(|p| match p.partition_type {
            PartitionType::Gpt(t) => Some(t) == wanted,
            PartitionType::Mbr(_) => mbr,
        })
    };
    // BIOS GRUB wherever it has a place: a BIOS boot partition, or the MBR gap.
    if plan.table == TableKind::Mbr || has(Some(gpt::BIOS_BOOT), false) {
        spec.bios = Some(BiosLoader::Grub);
    }
    if has(Some(gpt::EFI_SYSTEM), false) {
        spec.efi = Some(match request.efi_loader.unwrap_or("grub") {
            "grub" => EfiLoader::Grub,
            "systemd-boot" => EfiLoader::SystemdBoot,
            other => return Err(DiskImageError::EfiLoaderName(other.to_string())),
        });
    }
    let staged = boot::stage_tree(tree, &spec)?;
    Ok(staged.bios_code)
}

/// Assemble the disk at `dest` and install the BIOS code on it.
pub fn assemble(
    plan: &DiskPlan,
    tree: &Path,
    dest: &Path,
    bios: Option<&BiosCode>,
) -> Result<AssembledDisk, DiskImageError> {
    let assembled = disk::assemble(plan, tree, dest)?;
    if let Some(code) = bios {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dest)
            .map_err(io(dest))?;
        boot::install_bios(&file, code)?;
        file.sync_all().map_err(io(dest))?;
    }
    Ok(assembled)
}

/// Plan options from the build's settings.
pub fn plan_options(
    image_size: Option<u64>,
    extra_size: Option<u64>,
    tree: &Path,
    seed: &str,
    timestamp: i64,
) -> Result<PlanOptions, DiskImageError> {
    let usage = crate::fs::usage::disk_usage(tree)?;
    Ok(PlanOptions {
        image_size,
        tree_usage: Some(usage),
        extra_size,
        seed: seed.to_string(),
        timestamp,
    })
}

/// The newest /boot/vmlinuz-V of the tree and its /boot/initrd.img-V, as paths in
/// the image.
fn find_kernel(tree: &Path) -> Result<(String, Option<String>), DiskImageError> {
    let version = newest_kernel_version(tree).ok_or(DiskImageError::NoKernel)?;
    let initrd = format!("/boot/initrd.img-{version}");
    let has_initrd = tree.join(initrd.trim_start_matches('/')).is_file();
    Ok((
        format!("/boot/vmlinuz-{version}"),
        has_initrd.then_some(initrd),
    ))
}

/// V of the newest /boot/vmlinuz-V in `tree`, if there is one.
pub(crate) fn newest_kernel_version(tree: &Path) -> Option<String> {
    let mut versions: Vec<String> = std::fs::read_dir(tree.join("boot"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("vmlinuz-"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by(|a, b| version_order(a, b));
    versions.pop()
}

/// Kernel versions compared number by number ("6.1.0-9" < "6.1.0-10").
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<(u64, String)> {
        s.split(['.', '-', '+', '~'])
            .map(|p| (p.parse().unwrap_or(0), p.to_string()))
            .collect()
    };
    parts(a).cmp(&parts(b))
}

fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DiskImageError + '_ {
    move |source| DiskImageError::Io {
        context: path.display().to_string(),
        source,
    }
}

/// Path of the raw disk in the build's image directory.
pub fn raw_disk_path(image_dir: &Path, name: &str) -> PathBuf {
    image_dir.join(format!("{name}.raw"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_sort_numerically() {
        let mut v = vec!["6.1.0-10-amd64", "6.1.0-9-amd64", "5.10.0-30-amd64"];
        v.sort_by(|a, b| version_order(a, b));
        assert_eq!(v, ["5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-10-amd64"]);
    }

    #[test]
    fn layout_precedence() {
        let env = BTreeMap::new();
        let efi = choose_layout(None, &env, &["base", "block-device-efi", "vm"]).unwrap();
        let mbr = choose_layout(None, &env, &["base", "vm"]).unwrap();
        assert_ne!(format!("{efi:?}"), format!("{mbr:?}"));
        let inline: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            "- local_loop:\n    name: image0\n- partitioning:\n    base: image0\n    label: mbr\n    partitions:\n      - name: root\n        flags: [boot, primary]\n        size: 100%\n        mkfs:\n          type: ext4\n          mount:\n            mount_point: /\n",
        )
        .unwrap();
        let chosen = choose_layout(Some(&inline), &env, &["block-device-efi"]).unwrap();
        assert_eq!(
            format!("{chosen:?}"),
            format!("{:?}", Layout::from_yaml(&inline).unwrap())
        );
    }
}
