//! The exported disk: a regular file or a block device, accessed with
//! pread/pwrite in 512-byte logical blocks. Its size is fixed when it is
//! opened; nothing is ever written past it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::util::disk_file::{Zeroing, block_device_size, zero_range};

/// Logical block size reported to initiators.
pub const BLOCK_SIZE: u64 = 512;

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("cannot open {path} for reading and writing: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read the size of {path}: {source}")]
    Size { path: PathBuf, source: io::Error },
    #[error("{path} is neither a regular file nor a block device")]
    NotADisk { path: PathBuf },
    #[error("{path} is {size} bytes, smaller than one {BLOCK_SIZE}-byte block")]
    TooSmall { path: PathBuf, size: u64 },
}

pub struct BlockBackend {
    file: File,
    path: PathBuf,
    block_device: bool,
    blocks: u64,
}

impl BlockBackend {
    pub fn open(path: &Path) -> Result<BlockBackend, BackendError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| BackendError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let size_err = |source| BackendError::Size {
            path: path.to_path_buf(),
            source,
        };
        let meta = file.metadata().map_err(size_err)?;
        let block_device = meta.file_type().is_block_device();
        let size = if block_device {
            block_device_size(&file).map_err(size_err)?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(BackendError::NotADisk {
                path: path.to_path_buf(),
            });
        };
        // A partial trailing block is not exported.
        let blocks = size / BLOCK_SIZE;
        if blocks == 0 {
            return Err(BackendError::TooSmall {
                path: path.to_path_buf(),
                size,
            });
        }
        Ok(BlockBackend {
            file,
            path: path.to_path_buf(),
            block_device,
            blocks,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of logical blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Exported size in bytes.
    pub fn size(&self) -> u64 {
        self.blocks * BLOCK_SIZE
    }

    /// True when `count` blocks from `lba` lie inside the disk.
    pub fn in_range(&self, lba: u64, count: u64) -> bool {
        lba.checked_add(count).is_some_and(|end| end <= self.blocks)
    }

    /// Reads whole blocks; the caller checked the range.
    pub fn read_blocks(&self, lba: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, lba * BLOCK_SIZE)
    }

    /// Writes whole blocks; `fua` makes them durable before returning.
    pub fn write_blocks(&self, lba: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.file.write_all_at(data, lba * BLOCK_SIZE)?;
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Makes the written data durable (SYNCHRONIZE CACHE).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Whether the blocks from `lba` on are mapped (hold data) and for how
    /// many blocks that stays so (GET LBA STATUS). Holes of a regular file
    /// are deallocated; a block device reports everything mapped.
    pub fn mapping(&self, lba: u64) -> io::Result<(bool, u64)> {
        let remaining = self.blocks - lba.min(self.blocks);
        if self.block_device || remaining == 0 {
            return Ok((true, remaining));
        }
        let fd = self.file.as_raw_fd();
        let offset = lba * BLOCK_SIZE;
        let end = self.size();
        let seek = |whence| {
            // SAFETY: lseek on a descriptor we own; it only moves the file offset,
            // which pread/pwrite never use.
            let at = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
            if at < 0 {
                let err = io::Error::last_os_error();
                // ENXIO: no data at or after the offset.
                if err.raw_os_error() == Some(libc::ENXIO) {
                    return Ok(end);
                }
                return Err(err);
            }
            Ok((at as u64).min(end))
        };
        let data = seek(libc::SEEK_DATA)?;
        let hole_blocks = data.saturating_sub(offset) / BLOCK_SIZE;
        if hole_blocks > 0 {
            return Ok((false, hole_blocks.min(remaining)));
        }
        let hole = seek(libc::SEEK_HOLE)?;
        let mapped_blocks = hole.saturating_sub(offset).div_ceil(BLOCK_SIZE).max(1);
        Ok((true, mapped_blocks.min(remaining)))
    }

    /// Makes `count` blocks from `lba` read as zeros, releasing the space
    /// where the storage can (UNMAP, WRITE SAME with zeros).
    pub fn zero_blocks(&self, lba: u64, count: u64) -> io::Result<()> {
        let (offset, len) = (lba * BLOCK_SIZE, count * BLOCK_SIZE);
        if len == 0 {
            return Ok(());
        }
        // A hole frees the space, as UNMAP means; zeros where that fails.
        zero_range(
            &self.file,
            self.block_device,
            offset,
            len,
            Zeroing::FreeSpace,
        )
    }
}
