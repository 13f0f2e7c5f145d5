//! Writers that commit an overlay's changes into the image file: raw images
//! take them with pwrite, qcow2 images through `WritableQcow2`, which
//! allocates clusters in place.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::overlay::{CHUNK, OverlayError};
use crate::format::ImageFormat;
use crate::format::qcow2::WritableQcow2;

/// Where committed bytes go.
pub trait ImageWriter {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Make `len` bytes at `offset` read as zero. Writers that can deallocate
    /// (punch a hole, mark a qcow2 cluster zero) should override this.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; CHUNK as usize * 16];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64);
            self.write_at(offset + done, &zeros[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()>;
}

/// A raw image written in place with pwrite.
pub struct RawWriter {
    file: File,
}

impl RawWriter {
    pub fn open(path: &Path) -> Result<Self, OverlayError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| OverlayError::OpenForCommit {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(RawWriter { file })
    }
}

impl ImageWriter for RawWriter {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// The writer that commits into `path`, which holds an image of `format`.
pub fn open_writer(path: &Path, format: ImageFormat) -> Result<Box<dyn ImageWriter>, OverlayError> {
    match format {
        ImageFormat::Raw => Ok(Box::new(RawWriter::open(path)?)),
        ImageFormat::Qcow2 => Ok(Box::new(Qcow2Writer(
            WritableQcow2::open(path).map_err(|e| OverlayError::Qcow2Commit(Box::new(e)))?,
        ))),
    }
}

/// A qcow2 image changed in place: only the clusters that change are written.
struct Qcow2Writer(WritableQcow2);

fn qcow2_io(e: crate::format::qcow2::Qcow2RwError) -> io::Error {
    io::Error::other(e.to_string())
}

impl ImageWriter for Qcow2Writer {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_at(offset, data).map_err(qcow2_io)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.0.write_zeroes(offset, len).map_err(qcow2_io)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(qcow2_io)
    }
}
