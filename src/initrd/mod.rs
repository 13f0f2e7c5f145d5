//! `kiln initrd`: read, repack and build Linux initramfs images and add drivers,
//! programs and packages to them.
//!
//! * [`list`]: every segment and entry of an initramfs (`kiln initrd ls`);
//! * [`extract`]: unpack into a directory, confined to it (`kiln initrd extract`);
//! * [`pack_dir`]: build an initramfs from a directory tree (`kiln initrd pack`);
//! * [`repack`] / [`repack_file`]: apply [`Edits`] (removals, [`Staged`] additions)
//!   to an initramfs, keeping early uncompressed segments byte-identical
//!   (`kiln initrd rm`, and `kiln initrd add`).
//!
//! The byte formats live in [`crate::format::cpio`] and [`crate::format::initrd`];
//! [`tree::Tree`] is the unpacked view all operations work on.

pub mod add;
pub mod elf;
pub mod elfparse;
pub mod extract;
pub mod files;
pub mod firmware;
pub mod glob;
pub mod hostpath;
pub mod list;
pub mod modinfo;
pub mod modules;
pub mod pack;
pub mod package;
pub mod repack;
pub mod staging;
pub mod tree;

use std::path::{Path, PathBuf};

pub use extract::{ExtractReport, extract};
pub use list::{Listing, list, read_initrd};
pub use pack::{PackOptions, pack_dir, pack_tree, tree_from_dir};
pub use repack::{Edits, RepackOptions, repack, repack_file, repack_into, rm};
pub use staging::{Content, Staged, StagedKind};

use crate::format::cpio::CpioError;
use crate::format::initrd::InitrdFormatError;

#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Parse {
        path: PathBuf,
        source: InitrdFormatError,
    },
    #[error(transparent)]
    Format(#[from] InitrdFormatError),
    #[error(transparent)]
    Cpio(#[from] CpioError),
    #[error(transparent)]
    Path(#[from] staging::PathError),
    #[error("not in the initramfs: {}", .0.join(", "))]
    NotFound(Vec<String>),
    #[error("entries with '..' in their names cannot be repacked: {}", .0.join(", "))]
    UnsafeNames(Vec<String>),
    #[error("{0}: cannot replace a directory with a non-directory (remove it first)")]
    ReplaceDir(String),
    #[error("{path}: {parent} is not a directory")]
    NotADirectory { path: String, parent: String },
    #[error("{0}: too many levels of symbolic links")]
    SymlinkLoop(String),
    #[error("{}: {size} bytes; newc stores file sizes in 32 bits (at most 4 GiB - 1)", .path.display())]
    FileTooLarge { path: PathBuf, size: u64 },
    #[error("{}: modification time {mtime} is outside newc's unsigned 32-bit range (set SOURCE_DATE_EPOCH to clamp it)", .path.display())]
    MtimeRange { path: PathBuf, mtime: i64 },
    #[error("{}: unsupported file type", .path.display())]
    FileType { path: PathBuf },
    #[error("{} of {total} entries were not extracted:\n  {}", .refused.len(), .refused.join("\n  "))]
    Refused { refused: Vec<String>, total: usize },
    #[error("{compression} is not writable; choose an output compression (gzip, zstd, xz or none)")]
    NeedCompression {
        compression: crate::format::initrd::Compression,
    },
    #[error(transparent)]
    Interrupted(#[from] crate::util::interrupt::Interrupted),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InitrdError + '_ {
    move |source| InitrdError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// SOURCE_DATE_EPOCH as an mtime clamp, when it is set to a number.
pub fn source_date_epoch() -> Option<u32> {
    let v = std::env::var("SOURCE_DATE_EPOCH").ok()?;
    let secs: i64 = v.trim().parse().ok()?;
    Some(secs.clamp(0, i64::from(u32::MAX)) as u32)
}

/// Now, as a newc mtime.
pub(crate) fn now_mtime() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().min(u64::from(u32::MAX)) as u32)
        .unwrap_or(0)
}
