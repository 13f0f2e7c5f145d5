//! The disk being written: a block device or a regular file. The first MiB of the
//! guest disk (partition tables, boot code) is held in memory and written last, only
//! once the image is verified; until then, and after any failure, the target's first
//! MiB is zeros so neither a half-written image nor an older one boots.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::StreamError;
use crate::format::source::is_zero;
use crate::util::disk_file::{Zeroing, block_device_size, zero_range};

/// Bytes at the start of the disk that are written last.
pub const HOLDBACK: u64 = 1 << 20;
/// Sparse writes skip all-zero blocks of this size on fresh files.
const SPARSE_BLOCK: usize = 4096;

pub struct Target {
    file: File,
    path: PathBuf,
    block_device: bool,
    /// A new or never-written regular file: zeros need not be written.
    fresh: bool,
    disk_size: u64,
    holdback: Mutex<Vec<u8>>,
}

impl Target {
    /// Open `path` for an image of `virtual_size` bytes. A missing path becomes a
    /// sparse file of that size; an existing file or device must be at least as big.
    pub fn open(path: &Path, virtual_size: u64) -> Result<Self, StreamError> {
        let err = |message: String| StreamError::Target {
            path: path.to_path_buf(),
            message,
        };
        let (file, created) = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => (f, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|e| err(format!("cannot create: {e}")))?;
                f.set_len(virtual_size)
                    .map_err(|e| err(format!("cannot size to {virtual_size} bytes: {e}")))?;
                (f, true)
            }
            Err(e) => return Err(err(format!("cannot open for writing: {e}"))),
        };
        let meta = file.metadata().map_err(|e| err(e.to_string()))?;
        let block_device = meta.file_type().is_block_device();
        let disk_size = if block_device {
            block_device_size(&file)
                .map_err(|e| err(format!("cannot read the device size: {e}")))?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(err("neither a block device nor a regular file".into()));
        };
        if disk_size < virtual_size {
            return Err(StreamError::TargetTooSmall {
                path: path.to_path_buf(),
                size: disk_size,
                needed: virtual_size,
            });
        }
        let fresh = !block_device && (created || meta.blocks() == 0);
        let target = Target {
            file,
            path: path.to_path_buf(),
            block_device,
            fresh,
            disk_size,
            holdback: Mutex::new(vec![0u8; HOLDBACK.min(virtual_size) as usize]),
        };
        // An older image must not boot while the new one is half written.
        target.zero_first_mib()?;
        Ok(target)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when zero ranges need no writing (a new sparse file).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    fn write_error(&self, offset: u64, source: io::Error) -> StreamError {
        StreamError::Write {
            path: self.path.clone(),
            offset,
            source,
        }
    }

    /// Write guest bytes at `offset`; bytes inside the first MiB are held back.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StreamError> {
        let (mut offset, mut data) = (offset, data);
        if offset < HOLDBACK {
            let mut held = self.holdback.lock().unwrap_or_else(|p| p.into_inner());
            let n = ((held.len() as u64).saturating_sub(offset) as usize).min(data.len());
            held[offset as usize..offset as usize + n].copy_from_slice(&data[..n]);
            offset += n as u64;
            data = &data[n..];
        }
        if data.is_empty() {
            return Ok(());
        }
        let result = if self.fresh {
            write_nonzero_blocks(&self.file, offset, data)
        } else {
            self.file.write_all_at(data, offset)
        };
        result.map_err(|e| self.write_error(offset, e))?;
        self.start_writeback(offset, data.len() as u64);
        Ok(())
    }

    /// Start writing these bytes to the disk now rather than at the final fsync,
    /// so the flush overlaps the rest of the stream instead of following it. Only
    /// a hint: the fsync in `commit` is what reports write errors.
    fn start_writeback(&self, offset: u64, len: u64) {
        // SAFETY: plain syscall on an fd we own; it reads no memory of ours.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }

    /// Make `[offset, offset + len)` read as zeros (not needed on a fresh file).
    pub fn zero_range(&self, offset: u64, len: u64) -> Result<(), StreamError> {
        let start = offset.max(HOLDBACK);
        let end = offset + len;
        if self.fresh || start >= end {
            return Ok(());
        }
        self.zero_now(start, end - start)
            .map_err(|e| self.write_error(start, e))
    }

    fn zero_now(&self, offset: u64, len: u64) -> io::Result<()> {
        zero_range(
            &self.file,
            self.block_device,
            offset,
            len,
            Zeroing::KeepAllocated,
        )
    }

    fn zero_first_mib(&self) -> Result<(), StreamError> {
        let n = HOLDBACK.min(self.disk_size) as usize;
        self.file
            .write_all_at(&vec![0u8; n], 0)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| self.write_error(0, e))
    }

    /// The image is verified: flush the data, then write the first MiB and flush.
    pub fn commit(&self) -> Result<(), StreamError> {
        self.file.sync_all().map_err(|e| self.write_error(0, e))?;
        let held = self.holdback.lock().unwrap_or_else(|p| p.into_inner());
        self.file
            .write_all_at(&held, 0)
            .and_then(|_| self.file.sync_all())
            .map_err(|e| self.write_error(0, e))
    }

    /// The image is bad or incomplete: leave the first MiB zeroed.
    pub fn poison(&self) -> Result<(), StreamError> {
        self.zero_first_mib()
    }
}

/// Write the non-zero 4 KiB blocks of `buf` at `offset`, merged into runs.
fn write_nonzero_blocks(file: &File, offset: u64, buf: &[u8]) -> io::Result<()> {
    let mut run: Option<usize> = None;
    let blocks = buf.len().div_ceil(SPARSE_BLOCK);
    for b in 0..=blocks {
        let start = b * SPARSE_BLOCK;
        let data = b < blocks && !is_zero(&buf[start..(start + SPARSE_BLOCK).min(buf.len())]);
        match (data, run) {
            (true, None) => run = Some(start),
            (false, Some(s)) => {
                let end = start.min(buf.len());
                file.write_all_at(&buf[s..end], offset + s as u64)?;
                run = None;
            }
            _ => {}
        }
    }
    Ok(())
}
