//! The exported disk: a regular file or a block device, accessed with
//! pread/pwrite in 512-byte logical blocks. Its size is fixed when it is
//! opened; nothing is ever written past it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Logical block size reported to initiators.
pub const BLOCK_SIZE: u64 = 512;
/// _IOR(0x12, 114, u64): size of a block device in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// _IO(0x12, 127): make a byte range of a block device read as zeros.
const BLKZEROOUT: libc::c_ulong = 0x127f;
const ZERO_CHUNK: usize = 1 << 20;

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
            let mut size = 0u64;
            // SAFETY: BLKGETSIZE64 stores one u64 through the pointer.
            if unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) } != 0 {
                return Err(size_err(io::Error::last_os_error()));
            }
            size
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
        let fd = self.file.as_raw_fd();
        if self.block_device {
            let range = [offset, len];
            // SAFETY: BLKZEROOUT reads two u64 (start, length) through the pointer.
            if unsafe { libc::ioctl(fd, BLKZEROOUT, range.as_ptr()) } == 0 {
                return Ok(());
            }
        } else {
            // A hole frees the space; ZERO_RANGE is the next best thing.
            for mode in [libc::FALLOC_FL_PUNCH_HOLE, libc::FALLOC_FL_ZERO_RANGE] {
                // SAFETY: a plain syscall on a descriptor we own; KEEP_SIZE
                // means the file never grows.
                let rc = unsafe {
                    libc::fallocate(
                        fd,
                        mode | libc::FALLOC_FL_KEEP_SIZE,
                        offset as libc::off_t,
                        len as libc::off_t,
                    )
                };
                if rc == 0 {
                    return Ok(());
                }
            }
        }
        let zeros = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let mut at = offset;
        while at < offset + len {
            let n = zeros.len().min((offset + len - at) as usize);
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}
