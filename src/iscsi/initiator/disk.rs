//! The config drive writer (`agent::configdrive::DiskIo`) over an iSCSI session.

use std::io;
use std::sync::Arc;

use crate::agent::configdrive::DiskIo;

use super::Session;

/// A session seen as a `DiskIo`. It owns an `Arc` because the config drive
/// writer wants `Arc<dyn DiskIo>` (a `'static` trait object).
pub struct SessionDisk(pub Arc<Session>);

impl SessionDisk {
    /// The block-aligned span covering `len` bytes at `offset`.
    fn span(&self, offset: u64, len: usize) -> (u64, usize) {
        let bs = u64::from(self.0.capacity().0.max(1));
        let start = offset / bs * bs;
        let end = (offset + len as u64).div_ceil(bs) * bs;
        (start, (end - start) as usize)
    }
}

impl DiskIo for SessionDisk {
    fn size(&self) -> u64 {
        let (bs, blocks) = self.0.capacity();
        u64::from(bs) * blocks
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let (start, len) = self.span(offset, buf.len());
        let data = self.0.read_at(start, len).map_err(io::Error::other)?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&data[skip..skip + buf.len()]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let (start, len) = self.span(offset, buf.len());
        if start == offset && len == buf.len() {
            return self.0.write_at(offset, buf).map_err(io::Error::other);
        }
        // A partial block: read, patch, write back.
        let mut data = self.0.read_at(start, len).map_err(io::Error::other)?;
        let skip = (offset - start) as usize;
        data[skip..skip + buf.len()].copy_from_slice(buf);
        self.0.write_at(start, &data).map_err(io::Error::other)
    }

    fn flush(&self) -> io::Result<()> {
        self.0.synchronize_cache().map_err(io::Error::other)
    }
}
