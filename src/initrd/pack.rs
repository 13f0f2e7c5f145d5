//! `kiln initrd pack`: build an initramfs from a directory tree.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::tree::{Node, PathKey, Tree, WriteOptions};
use super::{InitrdError, io_err};
use crate::format::cpio::{Blob, FileType};
use crate::format::initrd::{self, Compression};
use crate::util::atomic_file::AtomicFile;
use crate::util::{interrupt, progress};

/// Uncompressed size of each gzip member (each a complete cpio archive), so that
/// gzip output is compressed in parallel yet does not depend on the thread count.

#[derive(Debug, Clone)]
pub struct PackOptions {
    pub compression: Compression,
    /// A directory packed as a plain (uncompressed) first segment, the way early CPU
    /// microcode is shipped.
    pub early: Option<PathBuf>,
    /// Clamp mtimes to this (SOURCE_DATE_EPOCH); see [`super::source_date_epoch`].
    pub mtime_clamp: Option<u32>,
    /// Show a progress bar on a terminal.
    pub progress: bool,
}

/// Pack `dir` into the initramfs `out` (which appears only when complete).
pub fn pack_dir(dir: &Path, out: &Path, opts: &PackOptions) -> Result<(), InitrdError> {
    if !opts.compression.writable() {
        return Err(initrd::InitrdFormatError::NotWritable(opts.compression).into());
    }
    let mut bytes = Vec::new();
    if let Some(early) = &opts.early {
        let tree = tree_from_dir(early, opts.mtime_clamp)?;
        bytes = encode_tree(&tree, Compression::None, opts.mtime_clamp, false)?;
    }
    let tree = tree_from_dir(dir, opts.mtime_clamp)?;
    bytes.extend(encode_tree(
        &tree,
        opts.compression,
        opts.mtime_clamp,
        opts.progress,
    )?);
    write_output(out, &bytes)
}

/// Write `tree` as one segment: archives (split for gzip) then compression.
pub fn encode_tree(
    tree: &Tree,
    compression: Compression,
    mtime_clamp: Option<u32>,
    show_progress: bool,
) -> Result<Vec<u8>, InitrdError> {
    let parts = tree.write_archives(&WriteOptions {
        mtime_clamp,
        part_size: usize::MAX,
    })?;
    let total: usize = parts.iter().map(Vec::len).sum();
    let bar = progress::bytes_bar(total as u64, show_progress);
    let out = initrd::compress(&parts, compression, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    Ok(out)
}

/// Write `bytes` to `out` through an [`AtomicFile`].
pub(crate) fn write_output(out: &Path, bytes: &[u8]) -> Result<(), InitrdError> {
    use std::io::Write;
    let file = AtomicFile::create(out).map_err(io_err(out))?;
    file.file().write_all(bytes).map_err(io_err(out))?;
    file.file().sync_all().map_err(io_err(out))?;
    file.commit().map_err(io_err(out))
}

/// Read a directory tree (never following symlinks) with owners, modes, mtimes,
/// device numbers and hard links. Mtimes are clamped to `mtime_clamp` first.
pub fn tree_from_dir(dir: &Path, mtime_clamp: Option<u32>) -> Result<Tree, InitrdError> {
    let mut tree = Tree::new();
    let mut links: HashMap<(u64, u64), u32> = HashMap::new();
    let meta = fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if !meta.is_dir() {
        return Err(InitrdError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    tree.insert(
        PathKey::root(),
        node_from(dir, &meta, mtime_clamp, Blob::default())?,
    );
    let mut stack = vec![(dir.to_path_buf(), PathKey::root())];
    while let Some((path, key)) = stack.pop() {
        for entry in fs::read_dir(&path).map_err(io_err(&path))? {
            interrupt::check()?;
            let entry = entry.map_err(io_err(&path))?;
            let child = entry.path();
            let child_key = key.join(entry.file_name().as_bytes());
            let meta = fs::symlink_metadata(&child).map_err(io_err(&child))?;
            let kind = FileType::from_mode(meta.mode());
            let data = match kind {
                FileType::File => read_file(&child, &meta)?,
                FileType::Symlink => Blob::new(
                    fs::read_link(&child)
                        .map_err(io_err(&child))?
                        .into_os_string()
                        .into_encoded_bytes(),
                ),
                FileType::Unknown => return Err(InitrdError::FileType { path: child }),
                _ => Blob::default(),
            };
            let mut node = node_from(&child, &meta, mtime_clamp, data)?;
            if kind == FileType::File && meta.nlink() > 1 {
                let group = *links
                    .entry((meta.dev(), meta.ino()))
                    .or_insert_with(|| tree.new_link_group());
                node.link = Some(group);
            }
            if kind == FileType::Dir {
                stack.push((child, child_key.clone()));
            }
            tree.insert(child_key, node);
        }
    }
    Ok(tree)
}

fn node_from(
    path: &Path,
    meta: &Metadata,
    mtime_clamp: Option<u32>,
    data: Blob,
) -> Result<Node, InitrdError> {
    let mut mtime = meta.mtime();
    if let Some(c) = mtime_clamp {
        mtime = mtime.min(i64::from(c));
    }
    let mtime = u32::try_from(mtime).map_err(|_| InitrdError::MtimeRange {
        path: path.to_path_buf(),
        mtime,
    })?;
    let rdev = meta.rdev();
    Ok(Node {
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        mtime,
        rdev_major: dev_major(rdev),
        rdev_minor: dev_minor(rdev),
        data,
        link: None,
    })
}

fn read_file(path: &Path, meta: &Metadata) -> Result<Blob, InitrdError> {
    if meta.len() > u64::from(u32::MAX) {
        return Err(InitrdError::FileTooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(path))?;
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut data).map_err(io_err(path))?;
    if data.len() as u64 > u64::from(u32::MAX) {
        return Err(InitrdError::FileTooLarge {
            path: path.to_path_buf(),
            size: data.len() as u64,
        });
    }
    Ok(Blob::new(data))
}

/// Major number of a Linux `dev_t`.
pub(crate) fn dev_major(dev: u64) -> u32 {
    (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32
}

/// Minor number of a Linux `dev_t`.
pub(crate) fn dev_minor(dev: u64) -> u32 {
    ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32
}

/// A Linux `dev_t` from major and minor.
pub(crate) fn make_dev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_round_trip() {
        for (maj, min) in [(0, 0), (1, 3), (8, 17), (259, 65536), (4095, 1 << 19)] {
            let dev = make_dev(maj, min);
            assert_eq!((dev_major(dev), dev_minor(dev)), (maj, min));
        }
        // /dev/null is 1:3 = 0x103
        assert_eq!(make_dev(1, 3), 0x103);
    }
}
