//! The refcount table and its refcount blocks, loaded on demand, changed in
//! memory and written back by the writable image's flush. Refcounts are 1 to 64
//! bits wide (refcount_order 0 to 6); narrower than a byte they are packed
//! least significant bits first, wider ones are big-endian.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::Qcow2Error;
use super::header::{Header, check_table};
use super::l2::REFTABLE_OFFSET_MASK;

/// One refcount block as stored on disk.
struct Block {
    offset: u64,
    raw: Vec<u8>,
    dirty: bool,
}

pub struct Refcounts {
    cluster_bits: u32,
    order: u32,
    /// Refcount table entries (host offsets of refcount blocks, 0 = none).
    table: Vec<u64>,
    table_offset: u64,
    /// Table entries changed since the last write-back.
    dirty_entries: BTreeSet<usize>,
    /// The table was moved to a new place: write it whole and point the header at it.
    moved: bool,
    blocks: HashMap<u64, Block>,
}

fn corrupt(msg: String) -> Qcow2Error {
    Qcow2Error::Corrupt(msg)
}

/// Refcount `i` of a block packed with 2^`order`-bit entries.
fn get_entry(raw: &[u8], order: u32, i: usize) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 >> order;
            let shift = (i % per_byte) * bits;
            u64::from(raw[i / per_byte] >> shift) & ((1 << bits) - 1)
        }
        3 => u64::from(raw[i]),
        4 => u64::from(u16::from_be_bytes([raw[2 * i], raw[2 * i + 1]])),
        5 => {
            let mut w = [0u8; 4];
            w.copy_from_slice(&raw[4 * i..4 * i + 4]);
            u64::from(u32::from_be_bytes(w))
        }
        _ => {
            let mut w = [0u8; 8];
            w.copy_from_slice(&raw[8 * i..8 * i + 8]);
            u64::from_be_bytes(w)
        }
    }
}

/// Store `value` (already checked to fit) as refcount `i`.
fn set_entry(raw: &mut [u8], order: u32, i: usize, value: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 >> order;
            let shift = (i % per_byte) * bits;
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            let byte = &mut raw[i / per_byte];
            *byte = (*byte & !mask) | (((value as u8) << shift) & mask);
        }
        3 => raw[i] = value as u8,
        4 => raw[2 * i..2 * i + 2].copy_from_slice(&(value as u16).to_be_bytes()),
        5 => raw[4 * i..4 * i + 4].copy_from_slice(&(value as u32).to_be_bytes()),
        _ => raw[8 * i..8 * i + 8].copy_from_slice(&value.to_be_bytes()),
    }
}

impl Refcounts {
    /// Read the refcount table of the image whose header is `header`.
    pub fn load(file: &File, header: &Header) -> Result<Self, Qcow2Error> {
        let cs = header.cluster_size();
        let bytes = u64::from(header.refcount_table_clusters) * cs;
        let file_len = file.metadata()?.len();
        check_table(
            "refcount table",
            header.refcount_table_offset,
            bytes,
            cs,
            file_len,
        )?;
        let mut raw = vec![0u8; bytes as usize];
        file.read_exact_at(&mut raw, header.refcount_table_offset)?;
        let table = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        Ok(Self {
            cluster_bits: header.cluster_bits,
            order: header.refcount_order,
            table,
            table_offset: header.refcount_table_offset,
            dirty_entries: BTreeSet::new(),
            moved: false,
            blocks: HashMap::new(),
        })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Host clusters one refcount block describes.
    pub fn clusters_per_block(&self) -> u64 {
        (self.cluster_size() * 8) >> self.order
    }

    pub fn max_refcount(&self) -> u64 {
        if self.order == 6 {
            u64::MAX
        } else {
            (1 << (1u32 << self.order)) - 1
        }
    }

    pub fn table_len(&self) -> usize {
        self.table.len()
    }

    pub fn table_offset(&self) -> u64 {
        self.table_offset
    }

    pub fn table_clusters(&self) -> u64 {
        (self.table.len() as u64 * 8).div_ceil(self.cluster_size())
    }

    /// Whether refcount block `index` exists.
    pub fn has_block(&self, index: u64) -> bool {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.table.get(i))
            .is_some_and(|e| e & REFTABLE_OFFSET_MASK != 0)
    }

    /// Load refcount block `index` into the cache; false if it does not exist.
    fn load_block(&mut self, file: &File, index: u64) -> Result<bool, Qcow2Error> {
        if self.blocks.contains_key(&index) {
            return Ok(true);
        }
        if !self.has_block(index) {
            return Ok(false);
        }
        let offset = self.table[index as usize] & REFTABLE_OFFSET_MASK;
        let cs = self.cluster_size();
        let file_len = file.metadata()?.len();
        check_table(&format!("refcount block {index}"), offset, cs, cs, file_len)?;
        let mut raw = vec![0u8; cs as usize];
        file.read_exact_at(&mut raw, offset)?;
        self.blocks.insert(
            index,
            Block {
                offset,
                raw,
                dirty: false,
            },
        );
        Ok(true)
    }

    /// The refcount of host cluster `cluster` (0 when no block describes it).
    pub fn get(&mut self, file: &File, cluster: u64) -> Result<u64, Qcow2Error> {
        let per = self.clusters_per_block();
        let index = cluster / per;
        if !self.load_block(file, index)? {
            return Ok(0);
        }
        let order = self.order;
        Ok(self
            .blocks
            .get(&index)
            .map_or(0, |b| get_entry(&b.raw, order, (cluster % per) as usize)))
    }

    /// Set the refcount of `cluster`; its refcount block must exist.
    pub fn set(&mut self, file: &File, cluster: u64, value: u64) -> Result<(), Qcow2Error> {
        if value > self.max_refcount() {
            return Err(Qcow2Error::Unsupported(format!(
                "refcount of host cluster {cluster} would exceed {} (the {}-bit refcount limit)",
                self.max_refcount(),
                1u32 << self.order
            )));
        }
        let per = self.clusters_per_block();
        let index = cluster / per;
        if !self.load_block(file, index)? {
            return Err(corrupt(format!(
                "no refcount block for host cluster {cluster} (internal allocation error)"
            )));
        }
        let order = self.order;
        if let Some(b) = self.blocks.get_mut(&index) {
            set_entry(&mut b.raw, order, (cluster % per) as usize, value);
            b.dirty = true;
        }
        Ok(())
    }

    /// Record a new, all-zero refcount block `index` at host `offset`.
    pub fn install_block(&mut self, index: u64, offset: u64) -> Result<(), Qcow2Error> {
        let i = usize::try_from(index)
            .ok()
            .filter(|&i| i < self.table.len())
            .ok_or_else(|| {
                corrupt(format!(
                    "refcount block {index} is beyond the refcount table"
                ))
            })?;
        self.table[i] = offset;
        self.dirty_entries.insert(i);
        self.blocks.insert(
            index,
            Block {
                offset,
                raw: vec![0u8; self.cluster_size() as usize],
                dirty: true,
            },
        );
        Ok(())
    }

    /// Move the table (in memory) to `offset` with room for `entries` entries.
    pub fn relocate_table(&mut self, offset: u64, entries: usize) {
        self.table.resize(entries, 0);
        self.table_offset = offset;
        self.moved = true;
    }

    /// Whether the header must be pointed at a moved table after write_table.
    pub fn table_moved(&self) -> bool {
        self.moved
    }

    /// Write every changed refcount block (no sync).
    pub fn write_blocks(&mut self, file: &File) -> Result<(), Qcow2Error> {
        for b in self.blocks.values_mut().filter(|b| b.dirty) {
            file.write_all_at(&b.raw, b.offset)?;
            b.dirty = false;
        }
        Ok(())
    }

    /// Write the changed table entries, or the whole table when it moved (no sync).
    pub fn write_table(&mut self, file: &File) -> Result<(), Qcow2Error> {
        if self.moved {
            let mut raw = Vec::with_capacity(self.table.len() * 8);
            for e in &self.table {
                raw.extend_from_slice(&e.to_be_bytes());
            }
            raw.resize((self.table_clusters() * self.cluster_size()) as usize, 0);
            file.write_all_at(&raw, self.table_offset)?;
        } else {
            for &i in &self.dirty_entries {
                file.write_all_at(
                    &self.table[i].to_be_bytes(),
                    self.table_offset + 8 * i as u64,
                )?;
            }
        }
        self.dirty_entries.clear();
        Ok(())
    }

    /// The header now points at the moved table.
    pub fn table_settled(&mut self) {
        self.moved = false;
    }

    pub fn has_dirty(&self) -> bool {
        self.moved || !self.dirty_entries.is_empty() || self.blocks.values().any(|b| b.dirty)
    }

    /// Drop clean blocks from memory when the cache holds more than `limit` bytes.
    pub fn trim_cache(&mut self, limit: u64) {
        if self.blocks.len() as u64 * self.cluster_size() > limit {
            self.blocks.retain(|_, b| b.dirty);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_width_round_trips_without_touching_neighbours() {
        for order in 0..=6u32 {
            let bits = 1u32 << order;
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let mut raw = vec![0u8; 64];
            let n = 64 * 8 / bits as usize;
            for i in 0..n {
                set_entry(&mut raw, order, i, (i as u64 * 7 + 3) & max);
            }
            for i in 0..n {
                assert_eq!(
                    get_entry(&raw, order, i),
                    (i as u64 * 7 + 3) & max,
                    "{bits}"
                );
            }
            set_entry(&mut raw, order, 1, max);
            assert_eq!(get_entry(&raw, order, 0), 3 & max);
            assert_eq!(get_entry(&raw, order, 1), max);
            assert_eq!(get_entry(&raw, order, 2), 17 & max);
        }
    }

    #[test]
    fn narrow_refcounts_fill_bytes_from_the_low_bits() {
        let mut raw = vec![0u8; 1];
        set_entry(&mut raw, 0, 0, 1);
        assert_eq!(raw[0], 0b0000_0001);
        set_entry(&mut raw, 1, 1, 2);
        assert_eq!(raw[0], 0b0000_1001);
        let mut raw = vec![0u8; 2];
        set_entry(&mut raw, 4, 0, 0x0102);
        assert_eq!(raw, [1, 2]);
    }
}
