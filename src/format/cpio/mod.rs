//! The "newc" cpio format (SVR4 portable ASCII, magic "070701", and "070702" with
//! a checksum) as the Linux initramfs uses it.
//!
//! An entry is a 110-byte ASCII header (the magic and 13 eight-digit hex fields),
//! the NUL-terminated name padded to a multiple of 4 bytes, then the data padded
//! the same way. Data is the file's bytes or a symlink's target. An archive ends
//! with an entry named `TRAILER!!!`.
//!
//! [`read_archive`] parses one archive out of a byte buffer without copying file
//! data ([`Blob`] slices share the buffer); [`ArchiveWriter`] writes entries exactly
//! as given (inode numbers, link counts and order are the caller's choice).

mod blob;
mod entry;
mod reader;
mod writer;

pub use blob::Blob;
pub use entry::{Entry, FileType, mode_string};
pub use reader::{Archive, read_archive};
pub use writer::{ArchiveWriter, entry_len, trailer_len};

/// Magic of newc headers without checksum.
pub const MAGIC_NEWC: &[u8; 6] = b"070701";
/// Magic of newc headers whose `check` field is the sum of the data bytes.
pub const MAGIC_CRC: &[u8; 6] = b"070702";
/// Size of a newc header.
pub const HEADER_LEN: usize = 110;
/// Name of the entry that ends an archive.
pub const TRAILER: &[u8] = b"TRAILER!!!";

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("offset {offset}: bad cpio magic {found:?} (expected newc \"070701\" or \"070702\")")]
    BadMagic { offset: usize, found: String },
    #[error(
        "offset {offset}: old binary/odc cpio format {found:?} is not supported (the kernel reads newc only)"
    )]
    UnsupportedFormat { offset: usize, found: String },
    #[error("offset {offset}: cpio header field {field} is not an 8-digit hex number")]
    BadNumber { offset: usize, field: &'static str },
    #[error(
        "offset {offset}: cpio archive truncated in {what} (needs {needed} bytes, {available} left)"
    )]
    Truncated {
        offset: usize,
        what: &'static str,
        needed: u64,
        available: usize,
    },
    #[error("offset {offset}: cpio entry name is empty or not NUL-terminated")]
    BadName { offset: usize },
    #[error("offset {offset}: checksum of {name:?} is {found:#x}, header says {expected:#x}")]
    Checksum {
        offset: usize,
        name: String,
        expected: u32,
        found: u32,
    },
    #[error("offset {offset}: cpio archive ends without a TRAILER!!! entry")]
    NoTrailer { offset: usize },
    #[error("{name:?}: {what} is {value}, more than newc's 32-bit field can hold")]
    TooLarge {
        name: String,
        what: &'static str,
        value: u64,
    },
    #[error("{name:?}: a cpio entry name must not contain a NUL byte or be empty")]
    NameNotStorable { name: String },
    #[error("writing the cpio archive: {0}")]
    Write(#[source] std::io::Error),
}

/// Round `n` up to a multiple of 4.
pub(crate) fn pad4(n: usize) -> usize {
    (n + 3) & !3
}
