//! Image outputs from a finished build: the raw disk as raw or qcow2, the root
//! tree as tar or squashfs, and checksum files. Every file is written under a
//! temporary name in the output folder and renamed when complete.
//!
//! Defaults follow disk-image-create: qcow2 is compressed (DIB runs `qemu-img
//! convert -c` unless `-u` is given; kiln uses zlib, qemu-img's default), tar and
//! squashfs leave out the contents of proc/ and sys/, and checksum files hold one
//! `HEX  NAME` line as `sha256sum`/`md5sum` print it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::format::ImageFormat;
use crate::format::qcow2::CompressionType;
use crate::fs::xattr;
use crate::image::convert::{ConvertError, ConvertOptions, convert};
use crate::util::atomic_file::AtomicFile;
use crate::util::interrupt;

/// One output type of `-t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputType {
    Raw,
    Qcow2,
    Tar,
    Squashfs,
}

impl OutputType {
    /// File name extension (DIB names squashfs output `.squash`).
    pub fn extension(self) -> &'static str {
        match self {
            OutputType::Raw => "raw",
            OutputType::Qcow2 => "qcow2",
            OutputType::Tar => "tar",
            OutputType::Squashfs => "squash",
        }
    }

    /// Needs the assembled disk (raw, qcow2) rather than only the tree.
    pub fn needs_disk(self) -> bool {
        matches!(self, OutputType::Raw | OutputType::Qcow2)
    }
}

impl std::str::FromStr for OutputType {
    type Err = OutputError;

    fn from_str(s: &str) -> Result<Self, OutputError> {
        match s {
            "raw" => Ok(OutputType::Raw),
            "qcow2" => Ok(OutputType::Qcow2),
            "tar" => Ok(OutputType::Tar),
            "squashfs" | "squash" => Ok(OutputType::Squashfs),
            other => Err(OutputError::UnknownType(other.to_string())),
        }
    }
}

/// Which checksum files to write next to each output (DIB `--checksum` writes both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksums {
    pub sha256: bool,
    pub md5: bool,
}

#[derive(Debug, Clone)]
pub struct OutputOptions {
    /// qcow2 compression; `None` = uncompressed (DIB `-u`).
    pub qcow2_compression: Option<CompressionType>,
    pub checksums: Checksums,
    /// SOURCE_DATE_EPOCH: tar mtimes are clamped to it, squashfs times set to it.
    pub timestamp: i64,
}

impl Default for OutputOptions {
    fn default() -> Self {
        Self {
            qcow2_compression: Some(CompressionType::Zlib),
            checksums: Checksums::default(),
            timestamp: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("unknown output type {0:?} (raw, qcow2, tar, squashfs)")]
    UnknownType(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Convert { path: PathBuf, source: ConvertError },
    #[error("{}: {problem}", path.display())]
    Tree { path: PathBuf, problem: String },
    #[error("mksquashfs writing {} failed ({status}): {output}", path.display())]
    Squashfs {
        path: PathBuf,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("{} output needs the assembled disk, but none was given", .0.extension())]
    NoDisk(OutputType),
    #[error(transparent)]
    Interrupted(#[from] interrupt::Interrupted),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write every output of `types` as `dir/NAME.EXT` (plus checksum files) and return
/// their paths. `disk` is the raw disk from assembly (needed for raw and qcow2),
/// `tree` the root tree (for tar and squashfs).
pub fn write_outputs(
    disk: Option<&Path>,
    tree: &Path,
    dir: &Path,
    name: &str,
    types: &[OutputType],
    opts: &OutputOptions,
) -> Result<Vec<PathBuf>, OutputError> {
    let mut written = Vec::new();
    for &kind in types {
        interrupt::check()?;
        let dest = dir.join(format!("{name}.{}", kind.extension()));
        match kind {
            OutputType::Raw => write_raw(disk.ok_or(OutputError::NoDisk(kind))?, &dest)?,
            OutputType::Qcow2 => write_qcow2(
                disk.ok_or(OutputError::NoDisk(kind))?,
                &dest,
                opts.qcow2_compression,
            )?,
            OutputType::Tar => write_tar(tree, &dest, opts.timestamp)?,
            OutputType::Squashfs => write_squashfs(tree, &dest, opts.timestamp)?,
        }
        written.extend(write_checksums(&dest, opts.checksums)?);
        written.push(dest);
    }
    Ok(written)
}

/// A sparse copy of the raw disk.
pub fn write_raw(disk: &Path, dest: &Path) -> Result<(), OutputError> {
    convert_raw_disk(disk, dest, ImageFormat::Raw, None)
}

/// qcow2 through kiln's writer.
pub fn write_qcow2(
    disk: &Path,
    dest: &Path,
    compression: Option<CompressionType>,
) -> Result<(), OutputError> {
    convert_raw_disk(disk, dest, ImageFormat::Qcow2, compression)
}

fn convert_raw_disk(
    disk: &Path,
    dest: &Path,
    output_format: ImageFormat,
    compression: Option<CompressionType>,
) -> Result<(), OutputError> {
    let opts = ConvertOptions {
        source_format: Some(ImageFormat::Raw),
        output_format,
        compression,
        ..ConvertOptions::default()
    };
    convert(disk, dest, &opts).map_err(|source| OutputError::Convert {
        path: dest.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// Top-level directories whose contents tar and squashfs leave out (kernel
/// filesystems mounted there during the build), as disk-image-create does.
const SKIPPED_CONTENTS: &[&str] = &["proc", "sys"];

/// A tar of `tree` with owners, modes, device nodes, hard links and xattrs (PAX
/// `SCHILY.xattr.*` records, as GNU tar --xattrs writes). Entries are sorted and
/// relative (`./` for the root, then `etc/…`), mtimes clamped to `timestamp`.
pub fn write_tar(tree: &Path, dest: &Path, timestamp: i64) -> Result<(), OutputError> {
    let out = AtomicFile::create(dest).map_err(io_err(dest))?;
    {
        let mut builder = tar::Builder::new(BufWriter::with_capacity(1 << 20, out.file()));
        builder.follow_symlinks(false);
        let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
        append_tree(&mut builder, tree, Path::new(""), timestamp, &mut links)?;
        let inner = builder.into_inner().map_err(io_err(dest))?;
        inner
            .into_inner()
            .map_err(|e| io_err(dest)(e.into_error()))?;
    }
    out.file().sync_all().map_err(io_err(dest))?;
    out.commit().map_err(io_err(dest))?;
    Ok(())
}

fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    tree: &Path,
    rel: &Path,
    timestamp: i64,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), OutputError> {
    let path = tree.join(rel);
    let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
    append_entry(builder, &path, rel, &meta, timestamp, links)?;
    if !meta.is_dir() {
        return Ok(());
    }
    if rel.parent() == Some(Path::new("")) && SKIPPED_CONTENTS.iter().any(|s| rel.ends_with(s)) {
        return Ok(());
    }
    let mut names: Vec<_> = std::fs::read_dir(&path)
        .map_err(io_err(&path))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err(&path))?;
    names.sort();
    for name in names {
        interrupt::check()?;
        append_tree(builder, tree, &rel.join(name), timestamp, links)?;
    }
    Ok(())
}

fn append_entry<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    rel: &Path,
    meta: &std::fs::Metadata,
    timestamp: i64,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), OutputError> {
    let io = |e: std::io::Error| OutputError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let attrs = xattr::list(path).map_err(io)?;
    if !attrs.is_empty() {
        let records: Vec<(String, &[u8])> = attrs
            .iter()
            .map(|(k, v)| {
                (
                    format!("SCHILY.xattr.{}", k.to_string_lossy()),
                    v.as_slice(),
                )
            })
            .collect();
        builder
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .map_err(io)?;
    }
    let mut header = tar::Header::new_gnu();
    header.set_mode(meta.mode() & 0o7777);
    header.set_uid(meta.uid() as u64);
    header.set_gid(meta.gid() as u64);
    header.set_mtime(meta.mtime().clamp(0, timestamp.max(0)) as u64);
    header.set_size(0);
    let ft = meta.file_type();
    let name = if rel.as_os_str().is_empty() {
        PathBuf::from("./")
    } else if ft.is_dir() {
        let mut s = rel.as_os_str().as_bytes().to_vec();
        s.push(b'/');
        PathBuf::from(std::ffi::OsStr::from_bytes(&s))
    } else {
        rel.to_path_buf()
    };
    if !ft.is_dir() && meta.nlink() > 1 {
        let key = (meta.dev(), meta.ino());
        if let Some(first) = links.get(&key) {
            header.set_entry_type(tar::EntryType::Link);
            builder.append_link(&mut header, &name, first).map_err(io)?;
            return Ok(());
        }
        links.insert(key, rel.to_path_buf());
    }
    if ft.is_file() {
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(meta.len());
        let file = File::open(path).map_err(io)?;
        // A file that changes size while it is read would corrupt the archive.
        let mut limited = file.take(meta.len());
        builder
            .append_data(&mut header, &name, &mut limited)
            .map_err(io)?;
    } else if ft.is_dir() {
        header.set_entry_type(tar::EntryType::Directory);
        builder
            .append_data(&mut header, &name, std::io::empty())
            .map_err(io)?;
    } else if ft.is_symlink() {
        header.set_entry_type(tar::EntryType::Symlink);
        let target = std::fs::read_link(path).map_err(io)?;
        builder
            .append_link(&mut header, &name, &target)
            .map_err(io)?;
    } else if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() {
        header.set_entry_type(if ft.is_block_device() {
            tar::EntryType::Block
        } else if ft.is_char_device() {
            tar::EntryType::Char
        } else {
            tar::EntryType::Fifo
        });
        if !ft.is_fifo() {
            header
                .set_device_major(libc::major(meta.rdev()))
                .map_err(io)?;
            header
                .set_device_minor(libc::minor(meta.rdev()))
                .map_err(io)?;
        }
        builder
            .append_data(&mut header, &name, std::io::empty())
            .map_err(io)?;
    }
    // Sockets are not archived (tar skips them too).
    Ok(())
}

/// squashfs (xz, as DIB) through mksquashfs, with every time set to `timestamp`
/// and proc/, sys/ contents left out. Not the `backhand` crate: its writer keeps
/// neither hard links nor xattrs (file capabilities, SELinux labels), which a
/// root filesystem needs.
pub fn write_squashfs(tree: &Path, dest: &Path, timestamp: i64) -> Result<(), OutputError> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{name}.kiln-"))
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    let t = timestamp.clamp(0, u32::MAX as i64).to_string();
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(tree)
        .arg(temp.path())
        .args([
            "-noappend",
            "-no-progress",
            "-quiet",
            "-no-recovery",
            "-comp",
            "xz",
        ])
        .args(["-mkfs-time", &t, "-all-time", &t])
        .args(["-wildcards", "-e", "proc/*", "sys/*"])
        .stdin(std::process::Stdio::null());
    let out = cmd.output().map_err(io_err(Path::new("mksquashfs")))?;
    if !out.status.success() {
        let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        return Err(OutputError::Squashfs {
            path: dest.to_path_buf(),
            status: out.status,
            output: output.trim().to_string(),
        });
    }
    temp.as_file().sync_all().map_err(io_err(dest))?;
    temp.persist(dest).map_err(|e| io_err(dest)(e.error))?;
    Ok(())
}

/// Write `FILE.sha256` / `FILE.md5` next to `file`: `HEX  NAME\n` with the bare file
/// name, so `sha256sum -c` works from the output folder.
pub fn write_checksums(file: &Path, which: Checksums) -> Result<Vec<PathBuf>, OutputError> {
    use md5::Digest as _;
    if !which.sha256 && !which.md5 {
        return Ok(Vec::new());
    }
    let mut sha = sha2::Sha256::new();
    let mut md = md5::Md5::new();
    let mut input = File::open(file).map_err(io_err(file))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).map_err(io_err(file))?;
        if n == 0 {
            break;
        }
        if which.sha256 {
            sha.update(&buf[..n]);
        }
        if which.md5 {
            md.update(&buf[..n]);
        }
    }
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut written = Vec::new();
    let mut put = |ext: &str, digest: &[u8]| -> Result<(), OutputError> {
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let path = PathBuf::from(format!("{}.{ext}", file.display()));
        let out = AtomicFile::create(&path).map_err(io_err(&path))?;
        out.file()
            .write_all(format!("{hex}  {name}\n").as_bytes())
            .map_err(io_err(&path))?;
        out.commit().map_err(io_err(&path))?;
        written.push(path);
        Ok(())
    };
    if which.sha256 {
        put("sha256", &sha.finalize())?;
    }
    if which.md5 {
        put("md5", &md.finalize())?;
    }
    Ok(written)
}
