//! Ramdisk outputs (DIB's ramdisk-image-create): NAME.kernel, the tree's newest
//! kernel, and NAME.initramfs, the whole tree as an initramfs (kiln's writer)
//! without the kernels, with /init pointing at the tree's init.

use std::path::{Path, PathBuf};

use crate::format::cpio::{Blob, FileType};
use crate::format::initrd::Compression;
use crate::initrd::tree::{Node, PathKey};
use crate::initrd::{InitrdError, pack_tree, tree_from_dir};
use crate::util::atomic_file::AtomicFile;

#[derive(Debug, thiserror::Error)]
pub enum RamdiskError {
    #[error("a ramdisk needs a kernel: no /boot/vmlinuz-* in the tree")]
    NoKernel,
    #[error("the tree has no /init and no /sbin/init to start")]
    NoInit,
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    #[error("KILN_RAMDISK_COMPRESSION={0:?}: expected gzip, zstd, xz or none")]
    Compression(String),
}

/// Write `dir/NAME.kernel` and `dir/NAME.initramfs` from `tree`; returns them.
pub fn write_ramdisk(
    tree: &Path,
    dir: &Path,
    name: &str,
    compression: Option<&str>,
    mtime_clamp: Option<u32>,
) -> Result<Vec<PathBuf>, RamdiskError> {
    let compression: Compression = match compression {
        Some(c) => c
            .parse()
            .map_err(|_| RamdiskError::Compression(c.to_string()))?,
        None => Compression::Gzip,
    };
    let kernel = newest_kernel(tree)?;
    let mut image = tree_from_dir(tree, mtime_clamp)?;
    // Kernels are not needed inside the ramdisk that they boot.
    let boot = PathKey::normalize(b"/boot").expect("constant path");
    let kernels: Vec<PathKey> = image
        .nodes
        .keys()
        .filter(|k| {
            k.split_last()
                .is_some_and(|(parent, name)| parent == boot && name.starts_with(b"vmlinuz"))
        })
        .cloned()
        .collect();
    for k in &kernels {
        image.remove_subtree(k);
    }
    let init = PathKey::normalize(b"/init").expect("constant path");
    if image.get(&init).is_none() {
        let sbin_init = PathKey::normalize(b"/sbin/init").expect("constant path");
        if image.get(&sbin_init).is_none() {
            return Err(RamdiskError::NoInit);
        }
        let mut link = Node::dir(0o777, 0, 0, mtime_clamp.unwrap_or(0));
        link.mode = FileType::Symlink.mode_bits() | 0o777;
        link.data = Blob::new(b"sbin/init".to_vec());
        image.insert(init, link);
    }
    let kernel_out = dir.join(format!("{name}.kernel"));
    let file = AtomicFile::create(&kernel_out).map_err(io(&kernel_out))?;
    let mut src = std::fs::File::open(&kernel).map_err(io(&kernel))?;
    std::io::copy(&mut src, &mut file.file()).map_err(io(&kernel_out))?;
    let initramfs_out = dir.join(format!("{name}.initramfs"));
    pack_tree(&image, &initramfs_out, compression, mtime_clamp, true)?;
    file.commit().map_err(io(&kernel_out))?;
    Ok(vec![kernel_out, initramfs_out])
}

fn newest_kernel(tree: &Path) -> Result<PathBuf, RamdiskError> {
    super::disk_image::newest_kernel_version(tree)
        .map(|v| tree.join("boot").join(format!("vmlinuz-{v}")))
        .ok_or(RamdiskError::NoKernel)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RamdiskError + '_ {
    move |source| RamdiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}
