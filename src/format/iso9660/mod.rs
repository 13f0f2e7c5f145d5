//! Read-only ISO9660, enough to read a config drive without an isofs kernel
//! driver: the volume label and files by path. Names come from Rock Ridge
//! (NM entries) when the image has them, else from the Joliet tree, else from
//! the plain ISO names with their `;1` version and trailing dot removed.
//! Every block number, length and offset comes from untrusted bytes and is
//! checked before use.

mod descriptor;
mod name;
mod read;
mod record;
mod susp;

pub use read::{IsoVolume, MAX_FILE, Naming};

/// The unit of volume descriptors and of directory record packing.
pub const SECTOR: u64 = 2048;

#[derive(Debug, thiserror::Error)]
pub enum IsoReadError {
    #[error("reading the volume: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an ISO9660 filesystem: {0}")]
    NotIso(&'static str),
    #[error("{what}: {len} bytes at block {block} lie outside the {blocks}-block volume")]
    OutsideVolume {
        what: String,
        block: u64,
        len: u64,
        blocks: u64,
    },
    #[error("directory {dir}: bad record at byte {offset}: {reason}")]
    BadRecord {
        dir: String,
        offset: usize,
        reason: &'static str,
    },
    #[error("{what}: {size} bytes is larger than a config drive may hold")]
    TooLarge { what: String, size: u64 },
    #[error("{path}: interleaved files are not supported")]
    Interleaved { path: String },
    #[error("{path}: multi-extent file does not end")]
    UnfinishedExtents { path: String },
}
