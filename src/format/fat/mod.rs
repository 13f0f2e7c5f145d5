//! FAT16 / FAT32 filesystem writer: copies a host directory tree into a fresh
//! filesystem written at an offset of an output file (a partition of a disk image).
//! `read` is the other direction: a small read-only FAT12/16/32 reader.
//!
//! The work is split in one-way steps: `tree` reads the source tree, `plan` names
//! every entry (8.3 + VFAT long names) and sizes the directories, `layout` picks the
//! geometry, `plan` then places everything in clusters, and `writer` writes the bytes
//! (`boot` for the reserved sectors, `dir` for directory entries).
//!
//! Output is deterministic: directory entries are sorted by name, every timestamp is
//! the same one, and files are stored contiguously in a fixed order.

mod boot;
mod dir;
mod layout;
mod name;
mod plan;
pub mod read;
mod time;
mod tree;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};

use layout::Layout;

/// Largest file FAT can hold: the size field is 32 bits.
pub const MAX_FILE_SIZE: u64 = u32::MAX as u64;

/// Sector size used for every filesystem kiln writes.
pub const SECTOR_SIZE: u64 = 512;

/// Which FAT variant to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FatType {
    Fat16,
    Fat32,
}

impl FatType {
    pub fn name(self) -> &'static str {
        match self {
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        }
    }
}

impl std::fmt::Display for FatType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What to write. `size` is the only required field.
#[derive(Debug, Clone, Default)]
pub struct FatOptions {
    /// Filesystem size in bytes (a multiple of 512).
    pub size: u64,
    /// `None` chooses like mkfs.fat: FAT16 below 512 MiB, FAT32 from 512 MiB on;
    /// if the preferred type cannot fit the size the other one is tried.
    pub fat_type: Option<FatType>,
    /// Volume label, at most 11 characters; lower-case letters are upper-cased.
    pub label: Option<String>,
    /// Volume serial number; `None` derives it from the timestamp.
    pub volume_id: Option<u32>,
    /// Unix seconds used for every entry; `None` = `SOURCE_DATE_EPOCH` or 0.
    /// Clamped to the FAT range (1980-01-01 .. 2107-12-31).
    pub timestamp: Option<i64>,
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FatSummary {
    pub fat_type: FatType,
    /// Bytes per cluster.
    pub cluster_size: u32,
    /// Data clusters in the filesystem.
    pub clusters: u32,
    /// Data clusters holding directories and files.
    pub used_clusters: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error("filesystem size {size} is not a positive multiple of 512 bytes")]
    SizeNotSectors { size: u64 },
    #[error("filesystem size {size} bytes is too large: at most {max} bytes (2^32 sectors)")]
    SizeTooLarge { size: u64, max: u64 },
    #[error("filesystem size {size} bytes cannot hold {fat_type}: {reason}")]
    SizeUnsupported {
        size: u64,
        fat_type: FatType,
        reason: String,
    },
    #[error("filesystem size {size} bytes fits neither FAT16 ({fat16}) nor FAT32 ({fat32})")]
    NoFatTypeFits {
        size: u64,
        fat16: String,
        fat32: String,
    },
    #[error("offset {offset} + size {size} overflows a 64-bit file offset")]
    OffsetOverflow { offset: u64, size: u64 },
    #[error("bad volume label {label:?}: {reason}")]
    BadLabel { label: String, reason: String },
    #[error("SOURCE_DATE_EPOCH={value:?} is not a whole number of seconds")]
    BadSourceDateEpoch { value: String },
    #[error("{}: source of the filesystem is not a directory", path.display())]
    SourceNotDirectory { path: PathBuf },
    #[error("{}: symbolic links cannot be stored on FAT", path.display())]
    Symlink { path: PathBuf },
    #[error(
        "{}: {kind} cannot be stored on FAT (only regular files and directories)",
        path.display()
    )]
    SpecialFile { path: PathBuf, kind: &'static str },
    #[error("{}: file name is not valid UTF-8", path.display())]
    NameNotUtf8 { path: PathBuf },
    #[error("{}: file name cannot be stored on FAT: {reason}", path.display())]
    BadName { path: PathBuf, reason: &'static str },
    #[error(
        "{}: name differs only in case from {other:?}; FAT names are case-insensitive",
        path.display()
    )]
    CaseCollision { path: PathBuf, other: String },
    #[error("{}: file of {size} bytes exceeds the FAT limit of {max} bytes", path.display(), max = MAX_FILE_SIZE)]
    FileTooLarge { path: PathBuf, size: u64 },
    #[error("{}: directories nested deeper than {max} levels", path.display())]
    TooDeep { path: PathBuf, max: usize },
    #[error(
        "{}: directory needs {entries} entries, more than the limit of {max}",
        path.display()
    )]
    DirectoryTooLarge {
        path: PathBuf,
        entries: u64,
        max: u64,
    },
    #[error("{}: no free 8.3 short name left for {name:?}", path.display())]
    ShortNamesExhausted { path: PathBuf, name: String },
    #[error(
        "tree does not fit: it needs {needed} clusters of {cluster_size} bytes but the {fat_type} filesystem has {available}"
    )]
    TreeTooLarge {
        fat_type: FatType,
        needed: u64,
        available: u32,
        cluster_size: u32,
    },
    #[error("{}: file changed while it was copied (expected {expected} bytes)", path.display())]
    FileChanged { path: PathBuf, expected: u64 },
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the filesystem at byte {offset} of the output: {source}")]
    Write { offset: u64, source: std::io::Error },
}

/// Write a filesystem holding a copy of the directory tree `src` (regular files and
/// directories; symlinks and special files are rejected with an error naming the path)
/// into `out` at byte `offset`, using positional writes. The whole region
/// `[offset, offset + opts.size)` is defined afterwards, except the contents of unused
/// data clusters, which are not touched.
pub fn write_fat(
    out: &File,
    offset: u64,
    src: &Path,
    opts: &FatOptions,
) -> Result<FatSummary, FatError> {
    let size = opts.size;
    if size == 0 || !size.is_multiple_of(SECTOR_SIZE) {
        return Err(FatError::SizeNotSectors { size });
    }
    if offset.checked_add(size).is_none() {
        return Err(FatError::OffsetOverflow { offset, size });
    }
    let label = opts.label.as_deref().map(name::label_bytes).transpose()?;
    let timestamp = time::resolve_timestamp(opts.timestamp)?;
    let when = time::DosTime::from_unix(timestamp);
    let volume_id = opts
        .volume_id
        .unwrap_or_else(|| time::volume_id_from(timestamp));
    // A partition's start sector, when the offset is one.
    let hidden_sectors = if offset.is_multiple_of(SECTOR_SIZE) {
        u32::try_from(offset / SECTOR_SIZE).unwrap_or(0)
    } else {
        0
    };

    let source = tree::scan(src)?;
    let mut plan = plan::Plan::build(source, label.is_some())?;
    let layout = Layout::choose(size, opts.fat_type, plan.root_slots())?;
    plan.allocate(&layout)?;

    let boot = boot::BootParams {
        label,
        volume_id,
        hidden_sectors,
    };
    writer::write(out, offset, &layout, &plan, &boot, &when)?;

    Ok(FatSummary {
        fat_type: layout.fat_type,
        cluster_size: layout.cluster_bytes(),
        clusters: layout.clusters,
        used_clusters: plan.used_clusters(),
    })
}
