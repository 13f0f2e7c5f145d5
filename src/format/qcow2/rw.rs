//! A qcow2 image changed in place: guest writes go to the clusters they touch,
//! nothing else is rewritten. Data clusters and L2 tables are copied on write
//! when they are shared (refcount above one, e.g. with an internal snapshot),
//! compressed or not yet allocated; refcounts and the COPIED flags are kept
//! exact, so the image never needs the dirty bit or lazy refcounts.
//!
//! Crash safety comes from the order `flush` writes things in:
//! 1. guest data (written to the file as it arrives; new clusters are not yet
//!    referenced by any metadata on disk), then fsync;
//! 2. refcount blocks, then the refcount table, then (if the table moved) the
//!    header fields that locate it, each followed by fsync: new clusters now
//!    count as used, which at worst leaks them;
//! 3. L2 tables, fsync; 4. L1 entries, fsync: the new data becomes visible;
//! 5. only now the references that metadata dropped (overwritten shared or
//!    compressed clusters, copied L2 tables, an old refcount table) are taken
//!    off the refcounts, written and synced. Until then such clusters keep their
//!    refcount, so they are never reused while metadata on disk points at them.
//!
//! A crash at any point leaves an image whose metadata only points at written
//! data with refcounts at least as high as needed: `qemu-img check` finds at
//! most leaked clusters, which `qemu-img check -r leaks` reclaims.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::Qcow2Error;
use super::alloc::Allocator;
use super::compress::decompress_cluster;
use super::header::{Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, check_table};
use super::l2::{self, Geometry, Mapping, OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO};
use super::reader::{Backing, open_backing};
use crate::format::source::ReadAt;

/// Bytes of clean L2 tables and refcount blocks kept in memory.
const CACHE_BYTES: u64 = 32 << 20;
/// Header fields rewritten in place: the refcount table's offset and size, and
/// the version 3 autoclear bits.
const HEADER_REFTABLE_AT: u64 = 48;
const HEADER_AUTOCLEAR_AT: u64 = 88;

#[derive(Debug, thiserror::Error)]
pub enum Qcow2RwError {
    #[error("{}: cannot open for writing: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Image { path: PathBuf, source: Qcow2Error },
    #[error(
        "{}: the image is marked dirty (its lazy refcounts were never brought up to date); repair it with `qemu-img check -r all` first",
        path.display()
    )]
    Dirty { path: PathBuf },
    #[error(
        "{}: the image is marked corrupt; repair it with `qemu-img check -r all` first",
        path.display()
    )]
    MarkedCorrupt { path: PathBuf },
    #[error("{}: {what} of {len} bytes at guest offset {offset} ends past the {size}-byte disk", path.display())]
    OutOfRange {
        path: PathBuf,
        what: &'static str,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error(
        "{}: an earlier write or flush failed part-way, so the metadata in memory cannot be trusted; reopen the image and run `qemu-img check` on it",
        path.display()
    )]
    Poisoned { path: PathBuf },
}

/// One L2 table in memory (host-endian entries).
struct L2Table {
    entries: Vec<u64>,
    dirty: bool,
}

pub struct WritableQcow2 {
    path: PathBuf,
    file: File,
    header: Header,
    geo: Geometry,
    l1: Vec<u64>,
    l1_dirty: BTreeSet<usize>,
    l2: HashMap<u64, L2Table>,
    alloc: Allocator,
    backing: Option<Backing>,
    /// A mutation failed half-way: refuse further use.
    poisoned: bool,
    /// Tests stop flush after this step, as a crash there would.
    #[cfg(test)]
    crash_after_step: Option<u8>,
}

fn be64s(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
        .collect()
}

fn corrupt(msg: String) -> Qcow2Error {
    Qcow2Error::Corrupt(msg)
}

impl WritableQcow2 {
    /// Open the qcow2 image at `path` for reading and writing, with its backing
    /// chain (read only) for copy on write of partly written clusters.
    pub fn open(path: &Path) -> Result<Self, Qcow2RwError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| Qcow2RwError::Open {
                path: path.to_owned(),
                source,
            })?;
        let named = |source| Qcow2RwError::Image {
            path: path.to_owned(),
            source,
        };
        let header = Header::read(&file).map_err(named)?;
        if header.incompatible & INCOMPAT_DIRTY != 0 {
            return Err(Qcow2RwError::Dirty {
                path: path.to_owned(),
            });
        }
        if header.incompatible & INCOMPAT_CORRUPT != 0 {
            return Err(Qcow2RwError::MarkedCorrupt {
                path: path.to_owned(),
            });
        }
        if header.extended_l2() {
            return Err(named(Qcow2Error::Unsupported(
                "writing images with extended L2 entries (subclusters); convert it with `qemu-img convert -O qcow2` first".into(),
            )));
        }
        if header.bitmaps.is_some() {
            return Err(named(Qcow2Error::Unsupported(
                "writing images with persistent dirty bitmaps, which writes would make stale; remove them with `qemu-img bitmap --remove` first".into(),
            )));
        }
        let backing = match &header.backing_file {
            None => None,
            Some(name) => {
                Some(open_backing(path, name, header.backing_format.as_deref(), 0).map_err(named)?)
            }
        };
        Self::with_parts(path, file, header, backing).map_err(named)
    }

    fn with_parts(
        path: &Path,
        file: File,
        mut header: Header,
        backing: Option<Backing>,
    ) -> Result<Self, Qcow2Error> {
        let file_len = file.metadata()?.len();
        let cs = header.cluster_size();
        let l1_bytes = u64::from(header.l1_size) * 8;
        let mut raw = vec![0u8; l1_bytes as usize];
        if l1_bytes > 0 {
            check_table("L1 table", header.l1_table_offset, l1_bytes, cs, file_len)?;
            FileExt::read_exact_at(&file, &mut raw, header.l1_table_offset)?;
        }
        let refcounts = super::refcount_update::Refcounts::load(&file, &header)?;
        if header.version == 3 && header.autoclear != 0 {
            // Autoclear features describe data we do not keep up to date; the
            // format asks a writer that does not understand them to clear them.
            file.write_all_at(&0u64.to_be_bytes(), HEADER_AUTOCLEAR_AT)?;
            file.sync_data()?;
            header.autoclear = 0;
        }
        Ok(Self {
            path: path.to_owned(),
            geo: Geometry {
                cluster_bits: header.cluster_bits,
                extended_l2: false,
            },
            alloc: Allocator::new(refcounts, header.cluster_bits, file_len),
            header,
            file,
            l1: be64s(&raw),
            l1_dirty: BTreeSet::new(),
            l2: HashMap::new(),
            backing,
            poisoned: false,
            #[cfg(test)]
            crash_after_step: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn virtual_size(&self) -> u64 {
        self.header.size
    }

    pub fn cluster_size(&self) -> u64 {
        self.geo.cluster_size()
    }

    fn named(&self, source: Qcow2Error) -> Qcow2RwError {
        Qcow2RwError::Image {
            path: self.path.clone(),
            source,
        }
    }

    fn check_usable(&self) -> Result<(), Qcow2RwError> {
        if self.poisoned {
            return Err(Qcow2RwError::Poisoned {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    fn check_range(&self, what: &'static str, offset: u64, len: u64) -> Result<(), Qcow2RwError> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.header.size)
        {
            return Err(Qcow2RwError::OutOfRange {
                path: self.path.clone(),
                what,
                offset,
                len,
                size: self.header.size,
            });
        }
        Ok(())
    }

    /// Read guest bytes at `offset`, seeing every write made so far.
    pub fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), Qcow2RwError> {
        self.check_usable()?;
        self.check_range("read", offset, buf.len() as u64)?;
        let cs = self.geo.cluster_size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let within = pos % cs;
            let n = ((cs - within) as usize).min(buf.len() - done);
            let entry = self.entry(pos / cs).map_err(|e| self.named(e))?;
            self.read_entry(entry, pos, &mut buf[done..done + n])
                .map_err(|e| self.named(e))?;
            done += n;
        }
        Ok(())
    }

    /// Write `data` at guest `offset` (any size and alignment).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Qcow2RwError> {
        self.check_usable()?;
        self.check_range("write", offset, data.len() as u64)?;
        let cs = self.geo.cluster_size();
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let within = pos % cs;
            let n = ((cs - within) as usize).min(data.len() - done);
            self.mutate(|s| s.write_piece(pos / cs, within, &data[done..done + n]))?;
            done += n;
        }
        Ok(())
    }

    /// Make `len` guest bytes at `offset` read as zeros. Whole clusters get the
    /// zero flag (version 3) or are deallocated (version 2 without a backing
    /// file) and their host clusters freed; partial clusters are written.
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), Qcow2RwError> {
        self.check_usable()?;
        self.check_range("zero write", offset, len)?;
        let cs = self.geo.cluster_size();
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let within = pos % cs;
            let n = (cs - within).min(len - done);
            let whole = within == 0 && (n == cs || pos + n == self.header.size);
            self.mutate(|s| {
                if whole {
                    s.zero_cluster(pos / cs)
                } else {
                    s.write_piece(pos / cs, within, &vec![0u8; n as usize])
                }
            })?;
            done += n;
        }
        Ok(())
    }

    /// Write back all metadata in the crash-safe order described at the top of
    /// this file. Nothing is durable before this returns.
    pub fn flush(&mut self) -> Result<(), Qcow2RwError> {
        self.check_usable()?;
        self.mutate(|s| s.flush_metadata())
    }

    /// Run a change; an error part-way poisons the image.
    fn mutate(
        &mut self,
        change: impl FnOnce(&mut Self) -> Result<(), Qcow2Error>,
    ) -> Result<(), Qcow2RwError> {
        change(self).map_err(|e| {
            self.poisoned = true;
            self.named(e)
        })
    }

    /// The L2 entry of guest cluster `gc` (0 when its L2 table is missing).
    fn entry(&mut self, gc: u64) -> Result<u64, Qcow2Error> {
        let (i, slot) = self.l1_position(gc)?;
        let table = self.l1[i] & OFFSET_MASK;
        if table == 0 {
            return Ok(0);
        }
        self.load_l2(table)?;
        Ok(self.l2.get(&table).map_or(0, |t| t.entries[slot]))
    }

    fn l1_position(&self, gc: u64) -> Result<(usize, usize), Qcow2Error> {
        let per = self.geo.l2_entries();
        let i = (gc / per) as usize;
        if i >= self.l1.len() {
            return Err(Qcow2Error::Unsupported(format!(
                "guest cluster {gc} needs L1 entry {i} but the L1 table has only {} entries (growing the L1 table is not supported)",
                self.l1.len()
            )));
        }
        Ok((i, (gc % per) as usize))
    }

    fn load_l2(&mut self, offset: u64) -> Result<(), Qcow2Error> {
        if self.l2.contains_key(&offset) {
            return Ok(());
        }
        let cs = self.geo.cluster_size();
        check_table("L2 table", offset, cs, cs, self.alloc.end_offset())?;
        if (self.l2.len() as u64 + 1) * cs > CACHE_BYTES {
            self.l2.retain(|_, t| t.dirty);
        }
        let mut raw = vec![0u8; cs as usize];
        self.file.read_zero_padded(&mut raw, offset)?;
        self.l2.insert(
            offset,
            L2Table {
                entries: be64s(&raw),
                dirty: false,
            },
        );
        Ok(())
    }

    /// Guest bytes `buf.len()` at guest `pos`, all inside the cluster whose L2
    /// entry is `entry`.
    fn read_entry(&self, entry: u64, pos: u64, buf: &mut [u8]) -> Result<(), Qcow2Error> {
        let cs = self.geo.cluster_size();
        let within = pos % cs;
        match l2::decode(&self.geo, entry, 0, within)?.0 {
            Mapping::Zero => buf.fill(0),
            Mapping::Unallocated => self.read_backing(buf, pos)?,
            Mapping::Data(host) => {
                self.check_host(host - within)?;
                self.file.read_zero_padded(buf, host)?;
            }
            Mapping::Compressed { offset, len } => {
                if offset >= self.alloc.end_offset() {
                    return Err(corrupt(format!(
                        "compressed cluster at host offset {offset:#x} starts past the end of the file"
                    )));
                }
                let mut packed = vec![0u8; len as usize];
                self.file.read_zero_padded(&mut packed, offset)?;
                let mut cluster = vec![0u8; cs as usize];
                decompress_cluster(self.header.compression, &packed, &mut cluster).map_err(
                    |e| {
                        corrupt(format!(
                            "compressed cluster at host offset {offset:#x}: {e}"
                        ))
                    },
                )?;
                let w = within as usize;
                buf.copy_from_slice(&cluster[w..w + buf.len()]);
            }
        }
        Ok(())
    }

    fn read_backing(&self, buf: &mut [u8], pos: u64) -> Result<(), Qcow2Error> {
        let Some(b) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        // Past the end of a shorter backing file the guest sees zeros.
        let inside = b
            .image
            .virtual_size()
            .saturating_sub(pos)
            .min(buf.len() as u64) as usize;
        b.image
            .read_exact_at(&mut buf[..inside], pos)
            .map_err(|e| Qcow2Error::Backing(format!("backing file {}: {e}", b.path.display())))?;
        buf[inside..].fill(0);
        Ok(())
    }

    /// A data cluster must be aligned and inside the file.
    fn check_host(&self, host: u64) -> Result<(), Qcow2Error> {
        if !host.is_multiple_of(self.geo.cluster_size()) || host == 0 {
            return Err(corrupt(format!(
                "data cluster offset {host:#x} is not a valid cluster offset"
            )));
        }
        if host >= self.alloc.end_offset() {
            return Err(corrupt(format!(
                "data cluster at host offset {host:#x} lies past the end of the file"
            )));
        }
        Ok(())
    }

    /// True when the active image alone uses host cluster `host` (refcount 1),
    /// so it may be changed in place.
    fn owned(&mut self, host: u64, what: &str) -> Result<bool, Qcow2Error> {
        match self.alloc.refcount(&self.file, host)? {
            0 => Err(corrupt(format!(
                "{what} at host offset {host:#x} is in use but has refcount 0"
            ))),
            rc => Ok(rc == 1),
        }
    }

    fn set_l1(&mut self, i: usize, value: u64) {
        if self.l1[i] != value {
            self.l1[i] = value;
            self.l1_dirty.insert(i);
        }
    }

    fn set_l2(&mut self, table: u64, slot: usize, value: u64) {
        if let Some(t) = self.l2.get_mut(&table)
            && t.entries[slot] != value
        {
            t.entries[slot] = value;
            t.dirty = true;
        }
    }

    /// The L2 table that guest cluster `gc` may be changed in: allocated when
    /// missing, copied when shared with a snapshot. Returns (table, slot).
    fn writable_l2(&mut self, gc: u64) -> Result<(u64, usize), Qcow2Error> {
        let (i, slot) = self.l1_position(gc)?;
        let l1_entry = self.l1[i];
        let table = l1_entry & OFFSET_MASK;
        let entries = if table == 0 {
            vec![0u64; self.geo.l2_entries() as usize]
        } else {
            self.load_l2(table)?;
            if self.owned(table, &format!("L2 table {i}"))? {
                self.set_l1(i, table | OFLAG_COPIED);
                return Ok((table, slot));
            }
            // Shared with a snapshot: the copy keeps pointing at the same data,
            // whose refcounts already count every L1 table that reaches them.
            self.alloc.free_later(&self.file, table)?;
            self.l2
                .get(&table)
                .map(|t| t.entries.clone())
                .unwrap_or_default()
        };
        let copy = self.alloc.alloc(&self.file)?;
        self.l2.insert(
            copy,
            L2Table {
                entries,
                dirty: true,
            },
        );
        self.set_l1(i, copy | OFLAG_COPIED);
        Ok((copy, slot))
    }

    /// Drop the active image's reference to the host storage of `entry`.
    fn release(&mut self, entry: u64) -> Result<(), Qcow2Error> {
        let cs = self.geo.cluster_size();
        if entry & OFLAG_COMPRESSED != 0 {
            let (offset, len) = self.geo.compressed_range(entry);
            for c in offset / cs..(offset + len).div_ceil(cs) {
                self.alloc.free_later(&self.file, c * cs)?;
            }
        } else if entry & OFFSET_MASK != 0 {
            self.alloc.free_later(&self.file, entry & OFFSET_MASK)?;
        }
        Ok(())
    }

    /// Write `data` at byte `within` of guest cluster `gc` (inside the cluster).
    fn write_piece(&mut self, gc: u64, within: u64, data: &[u8]) -> Result<(), Qcow2Error> {
        let cs = self.geo.cluster_size();
        let (table, slot) = self.writable_l2(gc)?;
        let entry = self.l2.get(&table).map_or(0, |t| t.entries[slot]);
        let host = entry & OFFSET_MASK;
        if entry & OFLAG_COMPRESSED == 0 && host != 0 {
            self.check_host(host)?;
            if self.owned(host, &format!("data of guest cluster {gc}"))? {
                if entry & OFLAG_ZERO != 0 && data.len() as u64 != cs {
                    // A preallocated zero cluster: its host bytes are stale.
                    let mut full = vec![0u8; cs as usize];
                    full[within as usize..within as usize + data.len()].copy_from_slice(data);
                    self.file.write_all_at(&full, host)?;
                } else {
                    self.file.write_all_at(data, host + within)?;
                }
                self.set_l2(table, slot, host | OFLAG_COPIED);
                return Ok(());
            }
        }
        let fresh = self.alloc.alloc(&self.file)?;
        if data.len() as u64 == cs {
            self.file.write_all_at(data, fresh)?;
        } else {
            // Copy on write: the rest of the cluster keeps its old content.
            let mut full = vec![0u8; cs as usize];
            self.read_entry(entry, gc * cs, &mut full)?;
            full[within as usize..within as usize + data.len()].copy_from_slice(data);
            self.file.write_all_at(&full, fresh)?;
        }
        self.release(entry)?;
        self.set_l2(table, slot, fresh | OFLAG_COPIED);
        Ok(())
    }

    /// Make the whole guest cluster `gc` read as zeros.
    fn zero_cluster(&mut self, gc: u64) -> Result<(), Qcow2Error> {
        let entry = self.entry(gc)?;
        let reads_zero = match l2::decode(&self.geo, entry, 0, 0)?.0 {
            Mapping::Zero => true,
            Mapping::Unallocated => self.backing.is_none(),
            _ => false,
        };
        if reads_zero {
            return Ok(());
        }
        let zero_entry = if self.header.version >= 3 {
            OFLAG_ZERO
        } else if self.backing.is_none() {
            0
        } else {
            // Version 2 has no zero flag, and deallocating would expose the
            // backing file: write real zeros.
            let cs = self.geo.cluster_size();
            return self.write_piece(gc, 0, &vec![0u8; cs as usize]);
        };
        let (table, slot) = self.writable_l2(gc)?;
        let entry = self.l2.get(&table).map_or(0, |t| t.entries[slot]);
        self.release(entry)?;
        self.set_l2(table, slot, zero_entry);
        Ok(())
    }

    #[cfg(test)]
    fn crashes_after(&self, step: u8) -> bool {
        self.crash_after_step == Some(step)
    }

    #[cfg(not(test))]
    fn crashes_after(&self, _step: u8) -> bool {
        false
    }

    fn flush_metadata(&mut self) -> Result<(), Qcow2Error> {
        let cs = self.geo.cluster_size();
        // 1. Guest data.
        self.file.sync_data()?;
        if self.crashes_after(1) {
            return Ok(());
        }
        // 2. Refcounts: blocks, the table that points at them, the header that
        //    points at a moved table.
        if self.alloc.refcounts.has_dirty() {
            self.alloc.refcounts.write_blocks(&self.file)?;
            self.file.sync_data()?;
            self.alloc.refcounts.write_table(&self.file)?;
            self.file.sync_data()?;
            if self.alloc.refcounts.table_moved() {
                let offset = self.alloc.refcounts.table_offset();
                let clusters = self.alloc.refcounts.table_clusters() as u32;
                let mut fields = [0u8; 12];
                fields[..8].copy_from_slice(&offset.to_be_bytes());
                fields[8..].copy_from_slice(&clusters.to_be_bytes());
                self.file.write_all_at(&fields, HEADER_REFTABLE_AT)?;
                self.file.sync_data()?;
                self.alloc.refcounts.table_settled();
                self.header.refcount_table_offset = offset;
                self.header.refcount_table_clusters = clusters;
            }
        }
        if self.crashes_after(2) {
            return Ok(());
        }
        // 3. L2 tables.
        let mut wrote = false;
        for (&offset, t) in self.l2.iter_mut().filter(|(_, t)| t.dirty) {
            let mut raw = Vec::with_capacity(cs as usize);
            for e in &t.entries {
                raw.extend_from_slice(&e.to_be_bytes());
            }
            self.file.write_all_at(&raw, offset)?;
            t.dirty = false;
            wrote = true;
        }
        if wrote {
            self.file.sync_data()?;
        }
        if self.crashes_after(3) {
            return Ok(());
        }
        // 4. L1 entries.
        if !self.l1_dirty.is_empty() {
            for i in std::mem::take(&mut self.l1_dirty) {
                let at = self.header.l1_table_offset + 8 * i as u64;
                self.file.write_all_at(&self.l1[i].to_be_bytes(), at)?;
            }
            self.file.sync_data()?;
        }
        if self.crashes_after(4) {
            return Ok(());
        }
        // 5. References the metadata on disk no longer holds.
        if self.alloc.has_pending_frees() {
            self.alloc.apply_frees(&self.file)?;
            self.alloc.refcounts.write_blocks(&self.file)?;
            self.file.sync_data()?;
        }
        self.alloc.refcounts.trim_cache(CACHE_BYTES);
        Ok(())
    }
}

impl Drop for WritableQcow2 {
    /// Best effort for callers that forget `flush`; its errors are lost here, so
    /// callers that care flush explicitly.
    fn drop(&mut self) {
        if !self.poisoned {
            let _ = self.flush_metadata();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn qemu_img(args: &[&str]) -> std::process::Output {
        let out = Command::new("qemu-img").args(args).output().unwrap();
        assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
        out
    }

    /// Stop flush after each step in turn, as a crash would: `qemu-img check`
    /// may find leaks but never corruption, and the snapshot keeps its content.
    #[test]
    fn a_crash_between_flush_steps_only_leaks() {
        for step in 1..=4u8 {
            let dir = tempfile::tempdir().unwrap();
            let raw = dir.path().join("base.raw");
            let img = dir.path().join("disk.qcow2");
            let (raw_s, img_s) = (raw.to_str().unwrap(), img.to_str().unwrap());
            let data: Vec<u8> = (0..2u32 << 20).map(|i| (i / 3 % 7) as u8).collect();
            std::fs::write(&raw, &data).unwrap();
            qemu_img(&[
                "convert",
                "-q",
                "-c",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                "cluster_size=512",
                raw_s,
                img_s,
            ]);
            qemu_img(&["snapshot", "-c", "s", img_s]);
            let mut w = WritableQcow2::open(&img).unwrap();
            // Shared, compressed clusters replaced; a 1 MiB run also needs new
            // refcount blocks.
            for i in 0..64u64 {
                w.write_at(i * 7919 % (1 << 20), &[0xa5; 700]).unwrap();
            }
            w.write_at(1 << 20, &vec![0x3c; 1 << 20]).unwrap();
            w.crash_after_step = Some(step);
            w.flush().unwrap();
            w.poisoned = true; // no flush on drop: the process "died"
            drop(w);
            let out = Command::new("qemu-img")
                .args(["check", "-f", "qcow2", img_s])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            // Exit status 0: clean; 3: leaks only; 2: corruption.
            let code = out.status.code();
            assert!(
                code == Some(0) || code == Some(3),
                "crash after step {step}: {text}"
            );
            assert!(!text.contains("ERROR"), "crash after step {step}: {text}");
            let snap = dir.path().join("snap.raw");
            qemu_img(&[
                "convert",
                "-f",
                "qcow2",
                "-O",
                "raw",
                "-l",
                "snapshot.name=s",
                img_s,
                snap.to_str().unwrap(),
            ]);
            assert!(std::fs::read(&snap).unwrap() == data, "step {step}");
        }
    }
}
