//! The one interface every image reader offers: positional reads of the guest disk
//! plus an allocation map, so converters can skip what is known to be zero.

use std::io;

/// What a run of guest bytes holds, as far as the image metadata knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Bytes that may be non-zero and must be read.
    Data,
    /// Bytes the image guarantees to read as zero (holes, zero clusters, unallocated).
    Zero,
}

/// A run of guest bytes of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub kind: ExtentKind,
    pub len: u64,
}

/// A readable virtual disk. Reads take `&self` so several threads can read at once.
pub trait BlockSource: Send + Sync + std::any::Any {
    /// Size of the guest disk in bytes.
    fn virtual_size(&self) -> u64;

    /// Fill `buf` with the guest bytes at `offset`. The range must lie inside the disk.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Describe the guest bytes starting at `offset`: their kind and how many bytes
    /// (at least one, at most `max_len`) share it.
    fn extent_at(&self, offset: u64, max_len: u64) -> io::Result<Extent>;

    /// The natural unit of reads (the cluster size of a qcow2 image): reading less
    /// than this at a time can cost a whole unit of work per read.
    fn io_granularity(&self) -> u64 {
        4096
    }
}

/// Positional reads on a host file or an in-memory buffer (for fuzzing and tests).
pub trait ReadAt: Send + Sync {
    /// Read up to `buf.len()` bytes at `offset`; a short count means end of data.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// True when `len()` is zero.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Read as much as exists at `offset` into `buf`, zero-filling past the end.
    /// Returns how many bytes came from the backing store.
    fn read_zero_padded(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf[done..].fill(0);
        Ok(done)
    }

    /// Read exactly `buf.len()` bytes at `offset`, or fail with UnexpectedEof.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let got = self.read_zero_padded(buf, offset)?;
        if got < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} bytes wanted at offset {offset}, file ends after {got}",
                    buf.len()
                ),
            ));
        }
        Ok(())
    }
}

impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.as_slice().len() as u64)
    }
}

impl ReadAt for &[u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        if start >= <[u8]>::len(self) {
            return Ok(0);
        }
        let n = buf.len().min(<[u8]>::len(self) - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }
}

/// True when every byte of `buf` is zero; word-at-a-time so it stays off the profile.
pub fn is_zero(buf: &[u8]) -> bool {
    let (head, words, tail) = unsafe { buf.align_to::<u128>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Read the whole of `source` as a `std::io::Read`, for code that wants a stream
/// (partition table parsers, checksums).
pub struct SourceReader<'a> {
    source: &'a dyn BlockSource,
    pos: u64,
}

impl<'a> SourceReader<'a> {
    pub fn new(source: &'a dyn BlockSource) -> Self {
        Self { source, pos: 0 }
    }
}

impl io::Read for SourceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.source.virtual_size().saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        self.source.read_exact_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Seek for SourceReader<'_> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let size = self.source.virtual_size() as i128;
        let target = match pos {
            io::SeekFrom::Start(p) => p as i128,
            io::SeekFrom::End(d) => size + d as i128,
            io::SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if target < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start of disk",
            ));
        }
        self.pos = target as u64;
        Ok(self.pos)
    }
}

/// A raw disk held in memory: for tests, fuzzing and small generated images.
pub struct MemDisk(pub Vec<u8>);

impl BlockSource for MemDisk {
    fn virtual_size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        ReadAt::read_exact_at(&self.0, buf, offset)
    }

    fn extent_at(&self, offset: u64, max_len: u64) -> io::Result<Extent> {
        let len = max_len
            .min(self.virtual_size().saturating_sub(offset))
            .max(1);
        Ok(Extent {
            kind: ExtentKind::Data,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_sees_a_single_set_byte_anywhere() {
        let mut buf = vec![0u8; 4099];
        assert!(is_zero(&buf));
        for i in [0, 1, 17, 2048, 4098] {
            buf[i] = 1;
            assert!(!is_zero(&buf), "byte {i}");
            buf[i] = 0;
        }
    }

    #[test]
    fn slices_read_short_at_the_end() {
        let data: &[u8] = b"abcdef";
        let mut buf = [0u8; 4];
        assert_eq!(ReadAt::read_at(&data, &mut buf, 4).unwrap(), 2);
        assert_eq!(&buf[..2], b"ef");
        assert_eq!(ReadAt::read_at(&data, &mut buf, 99).unwrap(), 0);
        let mut padded = [9u8; 4];
        assert_eq!(data.read_zero_padded(&mut padded, 4).unwrap(), 2);
        assert_eq!(&padded, b"ef\0\0");
    }
}
