//! The disk the image writer targets: an iSCSI LUN in production, a file in tests.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::InitiatorError;
use crate::util::disk_file::write_zeros;

/// A block device reachable by positional writes. Calls take `&self` and may
/// come from several threads at once: that is how writes are kept in flight.
pub trait BlockWriter: Send + Sync {
    /// Bytes per logical block; offsets and lengths are multiples of it.
    fn block_size(&self) -> u32;
    /// Capacity in bytes.
    fn size(&self) -> u64;
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), InitiatorError>;
    /// Make `len` bytes at `offset` read as zero.
    fn zero(&self, offset: u64, len: u64) -> Result<(), InitiatorError>;
    /// Make everything written so far durable.
    fn flush(&self) -> Result<(), InitiatorError>;
}

/// Checks a request against the disk's geometry before it goes anywhere.
pub(crate) fn check_range(
    what: &'static str,
    offset: u64,
    len: u64,
    block_size: u32,
    size: u64,
) -> Result<(), InitiatorError> {
    let bs = u64::from(block_size.max(1));
    if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
        return Err(InitiatorError::Unaligned {
            what,
            offset,
            len,
            block_size,
        });
    }
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(InitiatorError::OutOfRange {
            what,
            offset,
            len,
            size,
        });
    }
    Ok(())
}

/// A regular file used as a disk with 512-byte blocks (tests, local replay).
pub struct FileDisk {
    file: File,
    path: PathBuf,
    size: u64,
}

const FILE_BLOCK: u32 = 512;

impl FileDisk {
    /// Open an existing file read-write; its current length is the disk size.
    pub fn open(path: &Path) -> Result<Self, InitiatorError> {
        let err = |source| InitiatorError::File {
            what: "opening",
            path: path.to_path_buf(),
            source,
        };
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size,
        })
    }

    fn io_err(&self, what: &'static str) -> impl Fn(std::io::Error) -> InitiatorError + '_ {
        move |source| InitiatorError::File {
            what,
            path: self.path.clone(),
            source,
        }
    }
}

impl BlockWriter for FileDisk {
    fn block_size(&self) -> u32 {
        FILE_BLOCK
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), InitiatorError> {
        check_range("write", offset, data.len() as u64, FILE_BLOCK, self.size)?;
        self.file
            .write_all_at(data, offset)
            .map_err(self.io_err("writing"))
    }

    fn zero(&self, offset: u64, len: u64) -> Result<(), InitiatorError> {
        check_range("zeroing", offset, len, FILE_BLOCK, self.size)?;
        // Written zeros, not a punched hole: the point is to behave like a disk.
        write_zeros(&self.file, offset, len).map_err(self.io_err("zeroing"))
    }

    fn flush(&self) -> Result<(), InitiatorError> {
        self.file.sync_data().map_err(self.io_err("syncing"))
    }
}
