//! `kiln initrd pack`: build an initramfs from a directory tree.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::tree::{Node, PathKey, Tree, WriteOptions, archive_len, write_entries};
use super::{InitrdError, io_err};
use crate::format::cpio::{self, ArchiveWriter, Blob, CpioError, Entry, FileType};
use crate::format::initrd::{self, Compression, SegmentEncoder};
use crate::util::atomic_file::AtomicFile;
use crate::util::interrupt;
use crate::util::progress::{self, ProgressWriter};

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

/// Output buffer: large writes keep the syscall count low while compressors hand
/// over their output in pieces of about 128 KiB.
const OUTPUT_BUFFER: usize = 1 << 20;

/// Pack `dir` into the initramfs `out` (which appears only when complete).
pub fn pack_dir(dir: &Path, out: &Path, opts: &PackOptions) -> Result<(), InitrdError> {
    if !opts.compression.writable() {
        return Err(initrd::InitrdFormatError::NotWritable(opts.compression).into());
    }
    let early = match &opts.early {
        Some(early) => Some(tree_from_dir(early, opts.mtime_clamp)?),
        None => None,
    };
    let (tree, sources) = scan_dir(dir, opts.mtime_clamp, false)?;
    write_output(out, |mut sink| {
        if let Some(early) = &early {
            sink = write_segment(early, Compression::None, opts.mtime_clamp, false, sink)?;
        }
        let entries = tree.archive_entries_keyed(&WriteOptions {
            mtime_clamp: opts.mtime_clamp,
        });
        write_streamed_segment(entries, &sources, opts, sink)
    })
}

/// Write a segment whose file data is read from the host as it is written, so
/// reading overlaps compressing and no file stays in memory.
fn write_streamed_segment<W: Write>(
    entries: Vec<(PathKey, Entry)>,
    sources: &Sources,
    opts: &PackOptions,
    sink: W,
) -> Result<W, InitrdError> {
    // The member of a hard-link group that carries the data is its last one.
    let mut last_of_inode: HashMap<u32, usize> = HashMap::new();
    for (i, (_, e)) in entries.iter().enumerate() {
        if e.file_type() == FileType::File {
            last_of_inode.insert(e.ino, i);
        }
    }
    let mut pending: Vec<(usize, PathBuf, u64)> = Vec::new();
    let mut len = cpio::trailer_len();
    for (i, (key, e)) in entries.iter().enumerate() {
        let carried = match sources.get(key) {
            Some((path, size)) if last_of_inode.get(&e.ino) == Some(&i) => {
                pending.push((i, path.clone(), *size));
                *size as usize
            }
            _ => e.data.len(),
        };
        len += cpio::entry_len(e.name.len(), carried);
    }
    let encoder = SegmentEncoder::new(opts.compression, sink, Some(len))?;
    let mut writer = ArchiveWriter::to(ProgressWriter::new(
        encoder,
        progress::bytes_bar(len, opts.progress),
    ));
    // Files are read just in time into one reused buffer; zstd's and xz's
    // workers (and the gzip batches) compress what came before meanwhile.
    let mut buf = Vec::new();
    let mut next = pending.iter().peekable();
    for (i, (_, entry)) in entries.iter().enumerate() {
        interrupt::check()?;
        match next.peek() {
            Some((index, path, size)) if *index == i => {
                buf = read_exact_size(path, *size, buf)?;
                writer.add_with_data(entry, &buf)?;
                next.next();
            }
            _ => writer.add(entry)?,
        }
    }
    Ok(writer.finish()?.finish().finish()?)
}

/// Write `tree` as an initramfs file `out` of one segment (which appears only
/// when complete).
pub fn pack_tree(
    tree: &Tree,
    out: &Path,
    compression: Compression,
    mtime_clamp: Option<u32>,
    show_progress: bool,
) -> Result<(), InitrdError> {
    if !compression.writable() {
        return Err(initrd::InitrdFormatError::NotWritable(compression).into());
    }
    write_output(out, |sink| {
        write_segment(tree, compression, mtime_clamp, show_progress, sink)
    })
}

/// Write `tree` as one segment (one archive, compressed) into `sink`.
pub fn write_segment<W: Write>(
    tree: &Tree,
    compression: Compression,
    mtime_clamp: Option<u32>,
    show_progress: bool,
    sink: W,
) -> Result<W, InitrdError> {
    let entries = tree.archive_entries(&WriteOptions { mtime_clamp });
    let len = archive_len(&entries);
    let encoder = SegmentEncoder::new(compression, sink, Some(len))?;
    let counted = ProgressWriter::new(encoder, progress::bytes_bar(len, show_progress));
    let counted = write_entries(&entries, counted)?;
    Ok(counted.finish().finish()?)
}

/// Create `out` through an [`AtomicFile`], let `fill` write it, and give it its
/// name only when `fill` succeeded.
pub(crate) fn write_output<F>(out: &Path, fill: F) -> Result<(), InitrdError>
where
    F: FnOnce(BufWriter<&File>) -> Result<BufWriter<&File>, InitrdError>,
{
    let file = AtomicFile::create(out).map_err(io_err(out))?;
    let sink = BufWriter::with_capacity(OUTPUT_BUFFER, file.file());
    let mut sink = fill(sink).map_err(|e| match e {
        // A failing sink is this file's problem: name it.
        InitrdError::Cpio(CpioError::Write(source)) => InitrdError::Io {
            path: out.to_path_buf(),
            source,
        },
        other => other,
    })?;
    sink.flush().map_err(io_err(out))?;
    drop(sink);
    file.commit().map_err(io_err(out))
}

/// Read a directory tree (never following symlinks) with owners, modes, mtimes,
/// device numbers and hard links. Mtimes are clamped to `mtime_clamp` first.
pub fn tree_from_dir(dir: &Path, mtime_clamp: Option<u32>) -> Result<Tree, InitrdError> {
    Ok(scan_dir(dir, mtime_clamp, true)?.0)
}

/// Host files whose data a scan left unread: tree key -> (path, size).
type Sources = HashMap<PathKey, (PathBuf, u64)>;

/// Walk `dir` like [`tree_from_dir`]; with `read_data` false, regular files get
/// no data in the tree and are listed in the returned [`Sources`] instead.
fn scan_dir(
    dir: &Path,
    mtime_clamp: Option<u32>,
    read_data: bool,
) -> Result<(Tree, Sources), InitrdError> {
    let mut sources = Sources::new();
    let mut tree = Tree::new();
    let mut links: HashMap<(u64, u64), (u32, Blob)> = HashMap::new();
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
            let linked = kind == FileType::File && meta.nlink() > 1;
            let inode = (meta.dev(), meta.ino());
            // Hard links share one inode: read its data once (a busybox with 300
            // applet links would otherwise be read 300 times).
            let known = links.get(&inode).filter(|_| linked).cloned();
            let data = match kind {
                FileType::File if !read_data => {
                    check_file_size(&child, meta.len())?;
                    sources.insert(child_key.clone(), (child.clone(), meta.len()));
                    Blob::default()
                }
                FileType::File => match &known {
                    Some((_, data)) => data.clone(),
                    None => read_file(&child, &meta)?,
                },
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
            if linked {
                let (group, _) = links
                    .entry(inode)
                    .or_insert_with(|| (tree.new_link_group(), node.data.clone()));
                node.link = Some(*group);
            }
            if kind == FileType::Dir {
                stack.push((child, child_key.clone()));
            }
            tree.insert(child_key, node);
        }
    }
    Ok((tree, sources))
}

/// `path` opened for reading, refusing a symlink planted after the walk.
fn open_no_follow(path: &Path) -> Result<fs::File, InitrdError> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(path))
}

/// The whole file at `path`, which must still be `size` bytes long, read into
/// `data` (emptied first; its capacity is reused).
fn read_exact_size(path: &Path, size: u64, mut data: Vec<u8>) -> Result<Vec<u8>, InitrdError> {
    let mut file = open_no_follow(path)?;
    data.clear();
    data.reserve(size as usize);
    (&mut file)
        .take(size + 1)
        .read_to_end(&mut data)
        .map_err(io_err(path))?;
    if data.len() as u64 != size {
        return Err(InitrdError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!(
                "changed while being packed ({size} bytes when listed, {} now)",
                data.len()
            )),
        });
    }
    Ok(data)
}

fn check_file_size(path: &Path, size: u64) -> Result<(), InitrdError> {
    if size > u64::from(u32::MAX) {
        return Err(InitrdError::FileTooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    Ok(())
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
    check_file_size(path, meta.len())?;
    let mut file = open_no_follow(path)?;
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
