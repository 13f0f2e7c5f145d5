//! Host cluster allocation for the writable image: reuse clusters whose refcount
//! is zero, else append at the end of the file; create refcount blocks and grow
//! the refcount table as the file grows. Frees are deferred until the metadata
//! that stopped referencing a cluster is on disk (see `WritableQcow2::flush`),
//! so a crash can leak a cluster but never leave one referenced with too low a
//! refcount, and a freed cluster is never reused while old metadata on disk may
//! still point at it.

use std::collections::BTreeMap;
use std::fs::File;

use super::Qcow2Error;
use super::refcount_update::Refcounts;

/// QEMU's limit on the refcount table.
const MAX_REFTABLE_BYTES: u64 = 8 << 20;

pub struct Allocator {
    pub refcounts: Refcounts,
    cluster_bits: u32,
    /// First host cluster past everything allocated or present in the file.
    end: u64,
    /// No cluster below this one is free (a search start, not a guarantee).
    free_hint: u64,
    /// Host clusters to decrement once the metadata that dropped them is written.
    /// (cluster -> references to drop).
    pending_frees: BTreeMap<u64, u64>,
}

impl Allocator {
    pub fn new(refcounts: Refcounts, cluster_bits: u32, file_len: u64) -> Self {
        Self {
            refcounts,
            cluster_bits,
            end: file_len.div_ceil(1 << cluster_bits),
            free_hint: 1,
            pending_frees: BTreeMap::new(),
        }
    }

    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Host byte offset where the allocated clusters end.
    pub fn end_offset(&self) -> u64 {
        self.end << self.cluster_bits
    }

    pub fn refcount(&mut self, file: &File, host: u64) -> Result<u64, Qcow2Error> {
        self.refcounts.get(file, host >> self.cluster_bits)
    }

    /// Allocate one host cluster (refcount 1) and return its byte offset.
    pub fn alloc(&mut self, file: &File) -> Result<u64, Qcow2Error> {
        let mut c = self.free_hint;
        while c < self.end && self.refcounts.get(file, c)? != 0 {
            c += 1;
        }
        self.free_hint = c + 1;
        if c >= self.end {
            self.end = c + 1;
        }
        self.increment(file, c)?;
        Ok(c << self.cluster_bits)
    }

    fn increment(&mut self, file: &File, cluster: u64) -> Result<(), Qcow2Error> {
        self.ensure_block(file, cluster)?;
        let rc = self.refcounts.get(file, cluster)?;
        self.refcounts.set(file, cluster, rc + 1)
    }

    /// Make sure a refcount block describes `cluster`. A new block goes at the
    /// end of the file; its own refcount may need yet another block, which the
    /// recursion provides (it ends because each new block lies past the last).
    fn ensure_block(&mut self, file: &File, cluster: u64) -> Result<(), Qcow2Error> {
        let index = cluster / self.refcounts.clusters_per_block();
        if self.refcounts.has_block(index) {
            return Ok(());
        }
        if index >= self.refcounts.table_len() as u64 {
            self.grow_table(file, index)?;
            if self.refcounts.has_block(index) {
                return Ok(());
            }
        }
        let block = self.end;
        self.end += 1;
        self.refcounts
            .install_block(index, block << self.cluster_bits)?;
        self.increment(file, block)
    }

    /// Move the refcount table to the end of the file with room for entry `index`
    /// and well beyond. The old table is freed once the header points at the new.
    fn grow_table(&mut self, file: &File, index: u64) -> Result<(), Qcow2Error> {
        let cs = self.cs();
        let old_offset = self.refcounts.table_offset();
        let old_clusters = self.refcounts.table_clusters();
        let want = (index + 1).max(self.refcounts.table_len() as u64) * 3 / 2 + 2;
        let clusters = (want * 8).div_ceil(cs);
        if clusters * cs > MAX_REFTABLE_BYTES {
            return Err(Qcow2Error::Unsupported(format!(
                "the refcount table would need {} bytes, beyond QEMU's {MAX_REFTABLE_BYTES}-byte limit",
                clusters * cs
            )));
        }
        let offset = self.end << self.cluster_bits;
        self.end += clusters;
        self.refcounts
            .relocate_table(offset, (clusters * cs / 8) as usize);
        for c in offset / cs..offset / cs + clusters {
            self.increment(file, c)?;
        }
        for c in old_offset / cs..old_offset / cs + old_clusters {
            self.free_later(file, c << self.cluster_bits)?;
        }
        Ok(())
    }

    /// Drop one reference to the host cluster containing byte `host` once the
    /// metadata is on disk. Refuses a cluster whose refcount is already zero.
    pub fn free_later(&mut self, file: &File, host: u64) -> Result<(), Qcow2Error> {
        let c = host >> self.cluster_bits;
        let pending = self.pending_frees.get(&c).copied().unwrap_or(0);
        if self.refcounts.get(file, c)? <= pending {
            return Err(Qcow2Error::Corrupt(format!(
                "host cluster {c} (offset {:#x}) is in use but its refcount is too low to drop a reference",
                c << self.cluster_bits
            )));
        }
        *self.pending_frees.entry(c).or_insert(0) += 1;
        Ok(())
    }

    /// Apply the deferred frees to the refcounts in memory.
    pub fn apply_frees(&mut self, file: &File) -> Result<(), Qcow2Error> {
        for (c, drop) in std::mem::take(&mut self.pending_frees) {
            let rc = self.refcounts.get(file, c)?;
            if rc < drop {
                return Err(Qcow2Error::Corrupt(format!(
                    "refcount {rc} of host cluster {c} would drop below zero"
                )));
            }
            self.refcounts.set(file, c, rc - drop)?;
            if rc == drop {
                self.free_hint = self.free_hint.min(c);
            }
        }
        Ok(())
    }

    pub fn has_pending_frees(&self) -> bool {
        !self.pending_frees.is_empty()
    }
}
