//! Raw images: the file is the disk. Holes are found with SEEK_DATA/SEEK_HOLE so
//! sparse files are read without touching the holes.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use super::source::{BlockSource, Extent, ExtentKind, ReadAt};

pub struct RawImage {
    file: File,
    size: u64,
}

impl RawImage {
    pub fn new(file: File) -> io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(Self { file, size })
    }

    /// `lseek` with SEEK_DATA or SEEK_HOLE; `None` when there is no such place
    /// (ENXIO), which for SEEK_DATA means only a hole remains.
    fn seek(&self, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        // SAFETY: lseek on a file descriptor we own; it only moves the file position,
        // which positional reads ignore.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, whence) };
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            // Filesystems without hole support: everything is data.
            if err.raw_os_error() == Some(libc::EINVAL) {
                return Ok(Some(if whence == libc::SEEK_DATA {
                    offset
                } else {
                    self.size
                }));
            }
            return Err(err);
        }
        Ok(Some(r as u64))
    }
}

impl BlockSource for RawImage {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        ReadAt::read_exact_at(&self.file, buf, offset)
    }

    fn extent_at(&self, offset: u64, max_len: u64) -> io::Result<Extent> {
        let max_len = max_len.min(self.size.saturating_sub(offset)).max(1);
        let data = self.seek(offset, libc::SEEK_DATA)?.unwrap_or(self.size);
        if data > offset {
            return Ok(Extent {
                kind: ExtentKind::Zero,
                len: (data - offset).min(max_len),
            });
        }
        let hole = self.seek(offset, libc::SEEK_HOLE)?.unwrap_or(self.size);
        Ok(Extent {
            kind: ExtentKind::Data,
            len: hole.saturating_sub(offset).clamp(1, max_len),
        })
    }
}
