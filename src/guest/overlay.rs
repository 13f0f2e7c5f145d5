//! A copy-on-write view of an image: reads fall through to the base image,
//! writes land in a map of changed 4 KiB chunks (in memory up to a budget,
//! then in a spill file: see `chunks`). Nothing reaches
//! the image file until `commit`, so an aborted customization leaves it
//! byte-identical (dropping the overlay is the dry run).
//!
//! Whole chunks that are discarded or zeroed are kept as a marker, not as
//! 4 KiB of zeros, so a `mkfs` discard of a large device costs no memory.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use super::chunks::{Chunk, ChunkStore, DEFAULT_MEMORY_BUDGET};
use super::writer::ImageWriter;
use crate::format::{BlockSource, Extent, ExtentKind};

/// Unit of copy-on-write: the page size, which is what the loop device and
/// the page cache write in, so most writes need no read-modify-write.
pub const CHUNK: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("access of {len} bytes at offset {offset} is past the end of the {size}-byte disk")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("reading the base image at offset {offset}: {source}")]
    BaseRead {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("committing into {path} at offset {offset}: {source}")]
    Commit {
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Qcow2Commit(Box<crate::format::qcow2::Qcow2RwError>),
    #[error("overlay spill file, chunk at disk offset {offset}: {source}")]
    Spill {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    OpenForCommit {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<OverlayError> for io::Error {
    fn from(e: OverlayError) -> io::Error {
        let kind = match e {
            OverlayError::OutOfRange { .. } => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// A changed run of the disk, as `changed_ranges` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedRange {
    pub range: Range<u64>,
    /// True when the whole run reads as zero (discarded or zeroed).
    pub zero: bool,
}

pub struct Overlay {
    base: Box<dyn BlockSource>,
    size: u64,
    chunks: RwLock<ChunkStore>,
}

impl Overlay {
    pub fn new(base: Box<dyn BlockSource>) -> Self {
        Self::with_memory_budget(base, DEFAULT_MEMORY_BUDGET)
    }

    /// An overlay that keeps at most `memory_budget` bytes of changed chunks
    /// in memory and spills the rest to an unnamed file on disk.
    pub fn with_memory_budget(base: Box<dyn BlockSource>, memory_budget: u64) -> Self {
        let size = base.virtual_size();
        Overlay {
            base,
            size,
            chunks: RwLock::new(ChunkStore::new(CHUNK, memory_budget)),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), OverlayError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(OverlayError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// Length of chunk `index` (only the last one may be short).
    fn chunk_len(&self, index: u64) -> u64 {
        CHUNK.min(self.size - index * CHUNK)
    }

    /// Fill `buf` with the current contents at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), OverlayError> {
        self.check_range(offset, buf.len() as u64)?;
        let chunks = self.chunks.read().unwrap_or_else(|e| e.into_inner());
        let mut pos = 0usize;
        while pos < buf.len() {
            let abs = offset + pos as u64;
            let index = abs / CHUNK;
            let within = (abs % CHUNK) as usize;
            match chunks.map().get(&index) {
                Some(chunk) => {
                    let n = (self.chunk_len(index) as usize - within).min(buf.len() - pos);
                    chunks
                        .read_chunk(chunk, within, &mut buf[pos..pos + n])
                        .map_err(|source| OverlayError::Spill {
                            offset: abs,
                            source,
                        })?;
                    pos += n;
                }
                None => {
                    // Read the whole run of untouched chunks from the base at once.
                    let next_changed = chunks
                        .map()
                        .range(index + 1..)
                        .next()
                        .map_or(u64::MAX, |(&i, _)| i * CHUNK);
                    let n = ((next_changed - abs) as usize).min(buf.len() - pos);
                    self.base
                        .read_exact_at(&mut buf[pos..pos + n], abs)
                        .map_err(|source| OverlayError::BaseRead {
                            offset: abs,
                            source,
                        })?;
                    pos += n;
                }
            }
        }
        Ok(())
    }

    /// Store `data` at `offset` in the overlay.
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<(), OverlayError> {
        self.check_range(offset, data.len() as u64)?;
        let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        let mut pos = 0usize;
        while pos < data.len() {
            let abs = offset + pos as u64;
            let index = abs / CHUNK;
            let within = (abs % CHUNK) as usize;
            let n = (self.chunk_len(index) as usize - within).min(data.len() - pos);
            self.write_piece(&mut chunks, index, within, &data[pos..pos + n])?;
            pos += n;
        }
        Ok(())
    }

    /// Make `len` bytes at `offset` read as zero (discard, zero-range).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), OverlayError> {
        self.check_range(offset, len)?;
        let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        let zeros = [0u8; CHUNK as usize];
        let mut abs = offset;
        let end = offset + len;
        while abs < end {
            let index = abs / CHUNK;
            let within = abs % CHUNK;
            let chunk_len = self.chunk_len(index);
            let n = (chunk_len - within).min(end - abs);
            if n == chunk_len {
                chunks.put_zero(index);
            } else {
                self.write_piece(&mut chunks, index, within as usize, &zeros[..n as usize])?;
            }
            abs += n;
        }
        Ok(())
    }

    /// Write `data` into chunk `index` at `within`; a chunk seen for the
    /// first time is copied from the base unless `data` covers all of it.
    fn write_piece(
        &self,
        chunks: &mut ChunkStore,
        index: u64,
        within: usize,
        data: &[u8],
    ) -> Result<(), OverlayError> {
        let offset = index * CHUNK;
        let spill_err = |source| OverlayError::Spill { offset, source };
        if chunks.patch(index, within, data).map_err(spill_err)? {
            return Ok(());
        }
        let len = self.chunk_len(index) as usize;
        let mut whole = vec![0u8; len].into_boxed_slice();
        let zeroed = matches!(chunks.map().get(&index), Some(Chunk::Zero));
        if !zeroed && data.len() != len {
            self.base
                .read_exact_at(&mut whole, offset)
                .map_err(|source| OverlayError::BaseRead { offset, source })?;
        }
        whole[within..within + data.len()].copy_from_slice(data);
        chunks.put(index, whole).map_err(spill_err)
    }

    /// True when nothing has been written.
    pub fn is_clean(&self) -> bool {
        self.chunks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The runs of the disk that were written, in order, adjacent chunks of
    /// the same kind merged.
    pub fn changed_ranges(&self) -> Vec<ChangedRange> {
        let chunks = self.chunks.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<ChangedRange> = Vec::new();
        for (&index, chunk) in chunks.map().iter() {
            let start = index * CHUNK;
            let end = start + self.chunk_len(index);
            let zero = matches!(chunk, Chunk::Zero);
            match out.last_mut() {
                Some(last) if last.range.end == start && last.zero == zero => last.range.end = end,
                _ => out.push(ChangedRange {
                    range: start..end,
                    zero,
                }),
            }
        }
        out
    }

    /// Call `f` for every change in disk order: data in bounded pieces (so a
    /// large change does not double the memory) or a run of zeros. Returns
    /// the number of changed bytes.
    pub fn for_each_change<E: From<OverlayError>>(
        &self,
        mut f: impl FnMut(u64, Change<'_>) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut changed_bytes = 0;
        let mut buf = Vec::new();
        for changed in self.changed_ranges() {
            let (start, end) = (changed.range.start, changed.range.end);
            if changed.zero {
                f(start, Change::Zero(end - start))?;
            } else {
                let mut off = start;
                while off < end {
                    let n = (end - off).min(4 << 20);
                    buf.resize(n as usize, 0);
                    self.read_at(&mut buf, off)?;
                    f(off, Change::Data(&buf))?;
                    off += n;
                }
            }
            changed_bytes += end - start;
        }
        Ok(changed_bytes)
    }

    /// Write every changed range into `writer` and flush it. `path` names the
    /// image in errors. The overlay keeps its contents (a second commit
    /// writes the same bytes again).
    pub fn commit(&self, writer: &mut dyn ImageWriter, path: &Path) -> Result<u64, OverlayError> {
        let err = |offset: u64| {
            move |source| OverlayError::Commit {
                path: path.to_path_buf(),
                offset,
                source,
            }
        };
        let written = self.for_each_change(|offset, change| match change {
            Change::Data(data) => writer.write_at(offset, data).map_err(err(offset)),
            Change::Zero(len) => writer.write_zeroes(offset, len).map_err(err(offset)),
        })?;
        writer.flush().map_err(err(0))?;
        Ok(written)
    }
}

/// One piece of an overlay's changes, as `for_each_change` hands it out.
pub enum Change<'a> {
    Data(&'a [u8]),
    Zero(u64),
}

impl BlockSource for Overlay {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        Ok(Overlay::read_at(self, buf, offset)?)
    }

    fn extent_at(&self, offset: u64, max_len: u64) -> io::Result<Extent> {
        let index = offset / CHUNK;
        let changed = self
            .chunks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .map()
            .contains_key(&index);
        if changed {
            let len = (CHUNK - offset % CHUNK).min(max_len).max(1);
            return Ok(Extent {
                kind: ExtentKind::Data,
                len,
            });
        }
        // Untouched: what the base says, cut at the next changed chunk.
        let next = self
            .chunks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .map()
            .range(index + 1..)
            .next()
            .map_or(u64::MAX, |(&i, _)| i * CHUNK);
        let base = self.base.extent_at(offset, max_len.min(next - offset))?;
        Ok(base)
    }

    fn io_granularity(&self) -> u64 {
        self.base.io_granularity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::MemDisk;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Records what a commit writes, applied to a copy of the base.
    struct VecWriter(Vec<u8>, bool);
    impl ImageWriter for VecWriter {
        fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.0[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.1 = true;
            Ok(())
        }
    }

    #[test]
    fn reads_see_writes_and_the_base_elsewhere() {
        // In memory, and spilled to disk from the first chunk on.
        for budget in [DEFAULT_MEMORY_BUDGET, 0] {
            reads_see_writes_with_budget(budget);
        }
    }

    fn reads_see_writes_with_budget(budget: u64) {
        let base = pattern(5 * 4096 + 100);
        let ov = Overlay::with_memory_budget(Box::new(MemDisk(base.clone())), budget);
        let mut model = base.clone();
        ov.write_at(b"hello", 4090).unwrap();
        model[4090..4095].copy_from_slice(b"hello");
        ov.write_zeroes(4096 * 2, 4096 + 10).unwrap();
        model[8192..8192 + 4106].fill(0);
        ov.write_at(&[9; 50], 5 * 4096 + 40).unwrap();
        model[5 * 4096 + 40..5 * 4096 + 90].fill(9);
        let mut got = vec![0; model.len()];
        ov.read_at(&mut got, 0).unwrap();
        assert_eq!(got, model);
        let mut piece = vec![0; 3];
        ov.read_at(&mut piece, 4094).unwrap();
        assert_eq!(&piece, &model[4094..4097]);
    }

    #[test]
    fn commit_reproduces_the_overlay_and_reports_ranges() {
        let base = pattern(8 * 4096);
        let ov = Overlay::new(Box::new(MemDisk(base.clone())));
        ov.write_at(&[1; 4096], 4096).unwrap();
        ov.write_at(&[2; 10], 2 * 4096).unwrap();
        ov.write_zeroes(6 * 4096, 2 * 4096).unwrap();
        assert_eq!(
            ov.changed_ranges(),
            vec![
                ChangedRange {
                    range: 4096..3 * 4096,
                    zero: false
                },
                ChangedRange {
                    range: 6 * 4096..8 * 4096,
                    zero: true
                },
            ]
        );
        let mut w = VecWriter(base.clone(), false);
        ov.commit(&mut w, Path::new("mem")).unwrap();
        let mut expect = vec![0; base.len()];
        ov.read_at(&mut expect, 0).unwrap();
        assert_eq!(w.0, expect);
        assert!(w.1, "commit flushes");
        assert_ne!(w.0, base);
    }

    #[test]
    fn out_of_range_access_is_an_error_not_a_panic() {
        let ov = Overlay::new(Box::new(MemDisk(vec![0; 4096])));
        assert!(ov.write_at(b"x", 4096).is_err());
        assert!(ov.read_at(&mut [0; 2], u64::MAX).is_err());
        assert!(ov.write_zeroes(4000, 200).is_err());
        assert!(ov.is_clean());
    }
}
