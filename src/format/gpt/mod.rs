//! GUID partition tables (UEFI spec, chapter 5).
//!
//! * [`read_gpt`] is our own parser: every field of the untrusted header is bounds
//!   checked before it is used, nothing read from the disk can make it allocate more
//!   than [`MAX_ENTRY_ARRAY_BYTES`], and it never panics (it is fuzzed, see `fuzz/`).
//! * [`write_gpt`] lays partitions out on 1 MiB boundaries and writes the protective
//!   MBR, both headers and both entry arrays through the `gpt` crate, then reads the
//!   result back with [`read_gpt`] so what it returns is what is on the disk.
//!
//! Only 512-byte logical sectors are handled.

mod read;
pub mod types;
mod write;

use std::fmt;
use std::io;

pub use read::read_gpt;
pub use types::{
    BIOS_BOOT, EFI_SYSTEM, LINUX_FILESYSTEM, LINUX_LVM, LINUX_RAID, LINUX_ROOT_X86_64, LINUX_SWAP,
    MICROSOFT_BASIC_DATA, type_name,
};
pub use write::{GptSpec, PartitionSpec, derived_partition_guid, write_gpt};

/// Logical sector size this module reads and writes.
pub const SECTOR_SIZE: u64 = 512;

/// Largest partition entry array (entries × entry size) the reader accepts. The
/// usual array is 16 KiB; this bounds what a hostile header can make us read.
pub const MAX_ENTRY_ARRAY_BYTES: u64 = 4 << 20;

/// Largest partition entry size the reader accepts (the spec allows 128 × 2^n).
pub const MAX_ENTRY_SIZE: u32 = 4096;

/// A partition table as found on (or written to) a disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GptTable {
    #[serde(serialize_with = "uuid_string")]
    pub disk_guid: uuid::Uuid,
    /// Always 512.
    pub sector_size: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    /// Used entries only, in entry-array order.
    pub partitions: Vec<GptPartition>,
    /// The primary header (LBA 1) and its entry array are valid, and the table was
    /// read from them. When false the primary was damaged and the table comes from
    /// the backup header at the last LBA.
    pub primary_ok: bool,
    /// A backup header is present at the last LBA of the disk, it and its entry
    /// array are valid, and (when the primary is valid too) it describes exactly the
    /// same table with the primary/alternate LBAs pointing at each other. False also
    /// when the primary's alternate LBA is not the last LBA (for instance after the
    /// disk grew). When `primary_ok` is false this is true: the backup was used.
    pub backup_ok: bool,
}

/// One used entry of the partition entry array.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GptPartition {
    /// 1-based index of the entry in the array (what Linux calls sdaN).
    pub number: u32,
    #[serde(serialize_with = "uuid_string")]
    pub type_guid: uuid::Uuid,
    /// Human name of `type_guid` when it is a well-known type (see [`types`]).
    pub type_name: Option<&'static str>,
    #[serde(serialize_with = "uuid_string")]
    pub part_guid: uuid::Uuid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
    /// UTF-16LE on disk, up to 36 code units, cut at the first NUL; unpaired
    /// surrogates become U+FFFD.
    pub name: String,
}

impl GptPartition {
    /// Length in sectors (`first_lba <= last_lba` holds for every partition the
    /// reader returns; a hand-made one with them swapped gives 1 rather than panic).
    pub fn sectors(&self) -> u64 {
        self.last_lba
            .saturating_sub(self.first_lba)
            .saturating_add(1)
    }
}

fn uuid_string<S: serde::Serializer>(u: &uuid::Uuid, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&u.hyphenated())
}

/// Which of the two GPT headers an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    Primary,
    Backup,
}

/// A header and the LBA it was read from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderAt {
    pub kind: HeaderKind,
    pub lba: u64,
}

impl fmt::Display for HeaderAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            HeaderKind::Primary => "primary",
            HeaderKind::Backup => "backup",
        };
        write!(f, "{kind} GPT header at LBA {}", self.lba)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("reading {len} bytes at byte offset {offset}: {source}")]
    Read {
        offset: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    #[error("{at}: no \"EFI PART\" signature")]
    NoSignature { at: HeaderAt },
    #[error(
        "{at}: header CRC32 mismatch (stored {stored:#010x}, computed {computed:#010x} over {size} bytes)"
    )]
    HeaderCrc {
        at: HeaderAt,
        stored: u32,
        computed: u32,
        size: u32,
    },
    #[error("{at}: {field} (header byte {offset}) is {value}: {problem}")]
    HeaderField {
        at: HeaderAt,
        field: &'static str,
        offset: usize,
        value: u64,
        problem: String,
    },
    #[error(
        "{at}: partition entry array at LBA {lba} ({len} bytes): CRC32 mismatch (stored {stored:#010x}, computed {computed:#010x})"
    )]
    EntriesCrc {
        at: HeaderAt,
        lba: u64,
        len: u64,
        stored: u32,
        computed: u32,
    },
    #[error("{at}: partition {number} (entry at byte offset {offset}): {problem}")]
    Partition {
        at: HeaderAt,
        number: u32,
        offset: u64,
        problem: String,
    },
    #[error(
        "{at}: partition {a} (LBA {a_first}..={a_last}) overlaps partition {b} (LBA {b_first}..={b_last})"
    )]
    Overlap {
        at: HeaderAt,
        a: u32,
        a_first: u64,
        a_last: u64,
        b: u32,
        b_first: u64,
        b_last: u64,
    },
    #[error("no valid GPT: {primary}; {backup}")]
    NoValidTable {
        primary: Box<GptError>,
        backup: Box<GptError>,
    },
    #[error("GPT spec: {0} partitions given, at most 128 fit the entry array")]
    TooManyPartitions(usize),
    #[error("GPT spec: partition {number} ({name:?}): {problem}")]
    Spec {
        number: u32,
        name: String,
        problem: String,
    },
    #[error("GPT disk size {disk_size} bytes: {problem}")]
    DiskSize { disk_size: u64, problem: String },
    #[error("writing GPT: {0}")]
    Io(#[source] io::Error),
    #[error("writing GPT through the gpt crate: {0}")]
    Writer(#[source] gpt::GptError),
    #[error("writing the protective MBR: {0}")]
    Mbr(#[source] gpt::mbr::MBRError),
    #[error("the written GPT does not read back as planned: {0}")]
    Verify(String),
}
