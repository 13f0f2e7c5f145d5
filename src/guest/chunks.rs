//! Where the overlay keeps changed chunks: in memory up to a budget, then in
//! an unnamed spill file on disk, so installing hundreds of MiB of packages
//! into a guest does not need that much RAM. The spill file has no name
//! (O_TMPFILE): it disappears with the process, even after a crash.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// Default memory for changed chunks before they spill to disk.
pub const DEFAULT_MEMORY_BUDGET: u64 = 256 << 20;

/// What the overlay holds for one chunk.
pub enum Chunk {
    Mem(Box<[u8]>),
    /// Slot number in the spill file (slot * chunk size is its offset).
    Spilled(u64),
    Zero,
}

/// The changed chunks of an overlay, by chunk index.
pub struct ChunkStore {
    map: BTreeMap<u64, Chunk>,
    chunk_size: u64,
    memory_budget: u64,
    memory_used: u64,
    spill: Option<SpillFile>,
}

struct SpillFile {
    file: File,
    next_slot: u64,
    free: Vec<u64>,
}

/// The directory for spill files: `KILN_OVERLAY_DIR`, else `/var/tmp` (on
/// disk, unlike a tmpfs `/tmp`, which would spend the RAM we try to save).
fn spill_dir() -> PathBuf {
    std::env::var_os("KILN_OVERLAY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

impl ChunkStore {
    pub fn new(chunk_size: u64, memory_budget: u64) -> Self {
        ChunkStore {
            map: BTreeMap::new(),
            chunk_size,
            memory_budget,
            memory_used: 0,
            spill: None,
        }
    }

    pub fn map(&self) -> &BTreeMap<u64, Chunk> {
        &self.map
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of chunk data held in memory (the rest is spilled).
    pub fn memory_used(&self) -> u64 {
        self.memory_used
    }

    /// Copy `buf.len()` bytes of a stored data chunk starting `within` it.
    pub fn read_chunk(&self, chunk: &Chunk, within: usize, buf: &mut [u8]) -> io::Result<()> {
        match chunk {
            Chunk::Mem(data) => buf.copy_from_slice(&data[within..within + buf.len()]),
            Chunk::Zero => buf.fill(0),
            Chunk::Spilled(slot) => {
                let spill = self
                    .spill
                    .as_ref()
                    .expect("a spilled chunk has a spill file");
                spill
                    .file
                    .read_exact_at(buf, slot * self.chunk_size + within as u64)?;
            }
        }
        Ok(())
    }

    /// Overwrite `data.len()` bytes at `within` of chunk `index`, which must
    /// already hold data (`Mem` or `Spilled`). Returns false when it does not.
    pub fn patch(&mut self, index: u64, within: usize, data: &[u8]) -> io::Result<bool> {
        match self.map.get_mut(&index) {
            Some(Chunk::Mem(buf)) => {
                buf[within..within + data.len()].copy_from_slice(data);
                Ok(true)
            }
            Some(Chunk::Spilled(slot)) => {
                let offset = *slot * self.chunk_size + within as u64;
                let spill = self
                    .spill
                    .as_ref()
                    .expect("a spilled chunk has a spill file");
                spill.file.write_all_at(data, offset)?;
                Ok(true)
            }
            Some(Chunk::Zero) | None => Ok(false),
        }
    }

    /// Store a whole chunk's contents, in memory while the budget allows.
    pub fn put(&mut self, index: u64, data: Box<[u8]>) -> io::Result<()> {
        self.remove(index);
        let len = data.len() as u64;
        if self.memory_used + len <= self.memory_budget {
            self.memory_used += len;
            self.map.insert(index, Chunk::Mem(data));
            return Ok(());
        }
        let slot = self.spill_slot()?;
        let spill = self.spill.as_ref().expect("spill_slot opened the file");
        if let Err(e) = spill.file.write_all_at(&data, slot * self.chunk_size) {
            self.spill.as_mut().expect("open").free.push(slot);
            return Err(e);
        }
        self.map.insert(index, Chunk::Spilled(slot));
        Ok(())
    }

    /// Mark chunk `index` as reading zero, releasing its data.
    pub fn put_zero(&mut self, index: u64) {
        self.remove(index);
        self.map.insert(index, Chunk::Zero);
    }

    fn remove(&mut self, index: u64) {
        match self.map.remove(&index) {
            Some(Chunk::Mem(data)) => self.memory_used -= data.len() as u64,
            Some(Chunk::Spilled(slot)) => {
                self.spill.as_mut().expect("spilled").free.push(slot);
            }
            Some(Chunk::Zero) | None => {}
        }
    }

    fn spill_slot(&mut self) -> io::Result<u64> {
        if self.spill.is_none() {
            let dir = spill_dir();
            let file = tempfile::tempfile_in(&dir).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "creating the overlay spill file in {} (set KILN_OVERLAY_DIR): {e}",
                        dir.display()
                    ),
                )
            })?;
            self.spill = Some(SpillFile {
                file,
                next_slot: 0,
                free: Vec::new(),
            });
        }
        let spill = self.spill.as_mut().expect("just opened");
        Ok(spill.free.pop().unwrap_or_else(|| {
            spill.next_slot += 1;
            spill.next_slot - 1
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_past_the_budget_spill_and_read_back() {
        let mut store = ChunkStore::new(8, 16);
        for i in 0..5u8 {
            store.put(i as u64, vec![i; 8].into_boxed_slice()).unwrap();
        }
        assert_eq!(store.memory_used(), 16);
        assert!(matches!(store.map()[&4], Chunk::Spilled(_)));
        assert!(store.patch(4, 2, b"xy").unwrap());
        let mut buf = [0u8; 8];
        store.read_chunk(&store.map()[&4], 0, &mut buf).unwrap();
        assert_eq!(&buf, &[4, 4, b'x', b'y', 4, 4, 4, 4]);
        // A zeroed chunk frees its slot for the next spill.
        store.put_zero(4);
        assert!(!store.patch(4, 0, b"z").unwrap());
        store.put(9, vec![9; 8].into_boxed_slice()).unwrap();
        assert!(matches!(store.map()[&9], Chunk::Spilled(s) if s < 3));
        store
            .read_chunk(&store.map()[&9], 4, &mut buf[..4])
            .unwrap();
        assert_eq!(&buf[..4], &[9; 4]);
    }
}
