//! Consistency check of a qcow2 image, as `qemu-img check` does it: rebuild the
//! refcount of every host cluster from the metadata (header, L1/L2 tables, data,
//! refcount structures, snapshots, bitmaps) and compare with the stored refcounts.
//! Also reports overlapping structures, references past the end of the file and
//! wrong COPIED flags.

use std::collections::HashMap;

use super::Qcow2Error;
use super::header::{BitmapsExt, Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use super::l2::{Geometry, OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, REFTABLE_OFFSET_MASK};
use crate::format::ReadAt;

/// At most this many messages are kept; counts stay exact.
const MAX_MESSAGES: usize = 200;
const MAX_SNAPSHOTS: u32 = 65536;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CheckReport {
    pub corruptions: u64,
    pub leaked_clusters: u64,
    /// Guest clusters that have a host cluster (data, compressed or preallocated zero).
    pub allocated_clusters: u64,
    pub compressed_clusters: u64,
    pub total_clusters: u64,
    pub image_end_offset: u64,
    pub messages: Vec<String>,
    pub warnings: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.corruptions == 0 && self.leaked_clusters == 0
    }

    fn corruption(&mut self, msg: String) {
        self.corruptions += 1;
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(format!("ERROR {msg}"));
        }
    }

    fn leak(&mut self, msg: String) {
        self.leaked_clusters += 1;
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(format!("Leaked cluster {msg}"));
        }
    }
}

/// Who uses a host cluster: for overlap detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Header,
    L1,
    L2,
    RefTable,
    RefBlock,
    SnapshotTable,
    SnapshotL1,
    Data,
    Compressed,
    BitmapDirectory,
    BitmapTable,
    BitmapData,
}

impl Use {
    /// Structures that several tables may legitimately share (through snapshots).
    fn shareable(self) -> bool {
        matches!(
            self,
            Use::L2 | Use::Data | Use::Compressed | Use::BitmapData
        )
    }
}

struct Checker<'a> {
    file: &'a dyn ReadAt,
    header: Header,
    geo: Geometry,
    file_len: u64,
    expected: Vec<u64>,
    owner: Vec<Option<Use>>,
    report: CheckReport,
}

fn be64s(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
        .collect()
}

/// Check the qcow2 image in `file`. Err only when the header cannot be parsed.
pub fn check(file: &dyn ReadAt) -> Result<CheckReport, Qcow2Error> {
    let header = Header::read(file)?;
    let file_len = file.len()?;
    let geo = Geometry {
        cluster_bits: header.cluster_bits,
        extended_l2: header.extended_l2(),
    };
    let clusters = file_len.div_ceil(geo.cluster_size()) as usize;
    let mut c = Checker {
        file,
        header,
        geo,
        file_len,
        expected: vec![0; clusters],
        owner: vec![None; clusters],
        report: CheckReport {
            total_clusters: 0,
            image_end_offset: file_len,
            ..Default::default()
        },
    };
    c.report.total_clusters = c.header.size.div_ceil(geo.cluster_size());
    c.run()?;
    Ok(c.report)
}

impl Checker<'_> {
    fn cs(&self) -> u64 {
        self.geo.cluster_size()
    }

    fn run(&mut self) -> Result<(), Qcow2Error> {
        if self.header.incompatible & INCOMPAT_CORRUPT != 0 {
            self.report
                .warnings
                .push("image is marked corrupt (incompatible feature bit 1)".into());
        }
        if self.header.incompatible & INCOMPAT_DIRTY != 0 {
            self.report
                .warnings
                .push("image is marked dirty: refcounts may be out of date".into());
        }
        let cs = self.cs();
        self.reference(0, cs, Use::Header, "header");

        let l1 = self.read_table(
            "L1 table",
            self.header.l1_table_offset,
            u64::from(self.header.l1_size) * 8,
            Use::L1,
        )?;
        if let Some(l1) = &l1 {
            self.walk_l1(l1, true)?;
        }
        let reftable = self.read_table(
            "refcount table",
            self.header.refcount_table_offset,
            u64::from(self.header.refcount_table_clusters) * cs,
            Use::RefTable,
        )?;
        let reftable = reftable.unwrap_or_default();
        for (i, &e) in reftable.iter().enumerate() {
            let off = e & REFTABLE_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if !off.is_multiple_of(cs) {
                self.report.corruption(format!(
                    "refcount block {i} offset {off:#x} is not cluster aligned"
                ));
                continue;
            }
            self.reference(off, cs, Use::RefBlock, &format!("refcount block {i}"));
        }
        self.walk_snapshots()?;
        if let Some(bitmaps) = self.header.bitmaps {
            self.walk_bitmaps(bitmaps)?;
        }
        let stored = StoredRefcounts::new(self, &reftable);
        self.compare(&stored)?;
        if let Some(l1) = &l1 {
            self.check_copied_flags(l1, &stored)?;
        }
        Ok(())
    }

    /// Count one reference to every host cluster of `[offset, offset+len)`.
    fn reference(&mut self, offset: u64, len: u64, what: Use, name: &str) {
        if len == 0 {
            return;
        }
        let cs = self.cs();
        let Some(end) = offset.checked_add(len) else {
            self.report
                .corruption(format!("{name} at offset {offset:#x} overflows"));
            return;
        };
        if end > self.file_len.next_multiple_of(cs) {
            self.report.corruption(format!(
                "{name} at offset {offset:#x} ({len} bytes) lies past the end of the file ({} bytes)",
                self.file_len
            ));
            return;
        }
        for c in offset / cs..end.div_ceil(cs) {
            let c = c as usize;
            self.expected[c] += 1;
            match self.owner[c] {
                None => self.owner[c] = Some(what),
                Some(prev) if prev == what && what.shareable() => {}
                Some(prev) => self.report.corruption(format!(
                    "{name} overlaps {prev:?} at host cluster {c} (offset {:#x})",
                    c as u64 * cs
                )),
            }
        }
    }

    /// Reference and read a table of big-endian u64s; None if it is unreadable
    /// (the problem is reported).
    fn read_table(
        &mut self,
        name: &str,
        offset: u64,
        bytes: u64,
        what: Use,
    ) -> Result<Option<Vec<u64>>, Qcow2Error> {
        if bytes == 0 {
            return Ok(Some(Vec::new()));
        }
        if !offset.is_multiple_of(self.cs()) || offset == 0 {
            self.report.corruption(format!(
                "{name} offset {offset:#x} is not a valid cluster offset"
            ));
            return Ok(None);
        }
        if offset.saturating_add(bytes) > self.file_len {
            self.report.corruption(format!(
                "{name} at offset {offset:#x} ({bytes} bytes) lies past the end of the file ({} bytes)",
                self.file_len
            ));
            return Ok(None);
        }
        self.reference(offset, bytes, what, name);
        let mut raw = vec![0u8; bytes as usize];
        self.file.read_exact_at(&mut raw, offset)?;
        Ok(Some(be64s(&raw)))
    }

    fn walk_l1(&mut self, l1: &[u64], active: bool) -> Result<(), Qcow2Error> {
        let cs = self.cs();
        let words = self.geo.entry_words();
        for (i, &e) in l1.iter().enumerate() {
            let l2_off = e & OFFSET_MASK;
            if l2_off == 0 {
                continue;
            }
            let Some(l2) = self.read_table(&format!("L2 table {i}"), l2_off, cs, Use::L2)? else {
                continue;
            };
            for (j, entry) in l2.chunks_exact(words).enumerate() {
                let bitmap = if words == 2 { entry[1] } else { 0 };
                self.l2_entry(i, j, entry[0], bitmap, active);
            }
        }
        Ok(())
    }

    fn l2_entry(&mut self, i: usize, j: usize, e: u64, bitmap: u64, active: bool) {
        let cs = self.cs();
        let name = format!("cluster {j} of L2 table {i}");
        if e & OFLAG_COMPRESSED != 0 {
            let (off, len) = self.geo.compressed_range(e);
            if active {
                self.report.allocated_clusters += 1;
                self.report.compressed_clusters += 1;
            }
            if bitmap != 0 {
                self.report.corruption(format!(
                    "{name}: compressed cluster with a subcluster bitmap"
                ));
            }
            if off >= self.file_len {
                self.report.corruption(format!(
                    "{name}: compressed data at {off:#x} starts past the end of the file"
                ));
                return;
            }
            // The sector-rounded tail of the last compressed cluster may run past EOF.
            let len = len.min(self.file_len.next_multiple_of(cs) - off);
            self.reference(off, len, Use::Compressed, &name);
            return;
        }
        let host = e & OFFSET_MASK;
        if self.geo.extended_l2 {
            let (alloc, zero) = (bitmap as u32, (bitmap >> 32) as u32);
            if alloc & zero != 0 {
                self.report.corruption(format!(
                    "{name}: subclusters both allocated and zero (bitmap {bitmap:#x})"
                ));
            }
            if host == 0 && alloc != 0 {
                self.report.corruption(format!(
                    "{name}: allocated subclusters without a host cluster"
                ));
            }
        }
        if host == 0 {
            return;
        }
        if active {
            self.report.allocated_clusters += 1;
        }
        if !host.is_multiple_of(cs) {
            self.report.corruption(format!(
                "{name}: data offset {host:#x} is not cluster aligned"
            ));
            return;
        }
        self.reference(host, cs, Use::Data, &name);
    }

    fn walk_snapshots(&mut self) -> Result<(), Qcow2Error> {
        let count = self.header.nb_snapshots;
        if count == 0 {
            return Ok(());
        }
        if count > MAX_SNAPSHOTS {
            self.report
                .corruption(format!("{count} snapshots (at most {MAX_SNAPSHOTS})"));
            return Ok(());
        }
        let mut at = self.header.snapshots_offset;
        let mut tables = Vec::new();
        for n in 0..count {
            let mut fixed = [0u8; 40];
            if at.saturating_add(40) > self.file_len {
                self.report
                    .corruption(format!("snapshot {n} header lies past the end of the file"));
                return Ok(());
            }
            self.file.read_exact_at(&mut fixed, at)?;
            let l1_off = u64::from_be_bytes(fixed[0..8].try_into().unwrap_or([0; 8]));
            let l1_size = u32::from_be_bytes(fixed[8..12].try_into().unwrap_or([0; 4]));
            let id_len = u16::from_be_bytes([fixed[12], fixed[13]]);
            let name_len = u16::from_be_bytes([fixed[14], fixed[15]]);
            let extra = u32::from_be_bytes(fixed[36..40].try_into().unwrap_or([0; 4]));
            at += (40 + u64::from(extra) + u64::from(id_len) + u64::from(name_len))
                .next_multiple_of(8);
            if at > self.file_len {
                self.report
                    .corruption(format!("snapshot {n} entry runs past the end of the file"));
                return Ok(());
            }
            tables.push((n, l1_off, l1_size));
        }
        let table_len = at - self.header.snapshots_offset;
        self.reference(
            self.header.snapshots_offset,
            table_len,
            Use::SnapshotTable,
            "snapshot table",
        );
        for (n, l1_off, l1_size) in tables {
            let name = format!("L1 table of snapshot {n}");
            if u64::from(l1_size) * 8 > 32 << 20 {
                self.report.corruption(format!("{name}: {l1_size} entries"));
                continue;
            }
            let l1 = self.read_table(&name, l1_off, u64::from(l1_size) * 8, Use::SnapshotL1)?;
            if let Some(l1) = l1 {
                self.walk_l1(&l1, false)?;
            }
        }
        Ok(())
    }

    fn walk_bitmaps(&mut self, ext: BitmapsExt) -> Result<(), Qcow2Error> {
        let dir_len = ext.directory_size;
        if dir_len > 64 << 20 {
            self.report
                .corruption(format!("bitmap directory of {dir_len} bytes"));
            return Ok(());
        }
        let Some(dir) = self.read_table(
            "bitmap directory",
            ext.directory_offset,
            dir_len.next_multiple_of(8),
            Use::BitmapDirectory,
        )?
        else {
            return Ok(());
        };
        let raw: Vec<u8> = dir.iter().flat_map(|w| w.to_be_bytes()).collect();
        let mut at = 0usize;
        for n in 0..ext.count {
            let Some(entry) = raw.get(at..at + 24) else {
                self.report
                    .corruption(format!("bitmap {n} lies outside the bitmap directory"));
                return Ok(());
            };
            let table_off = u64::from_be_bytes(entry[0..8].try_into().unwrap_or([0; 8]));
            let table_size = u32::from_be_bytes(entry[8..12].try_into().unwrap_or([0; 4]));
            let name_len = u16::from_be_bytes([entry[18], entry[19]]) as usize;
            let extra = u32::from_be_bytes(entry[20..24].try_into().unwrap_or([0; 4])) as usize;
            at += (24 + extra + name_len).next_multiple_of(8);
            let name = format!("bitmap {n} table");
            let Some(table) = self.read_table(
                &name,
                table_off,
                u64::from(table_size) * 8,
                Use::BitmapTable,
            )?
            else {
                continue;
            };
            for e in table {
                let off = e & OFFSET_MASK;
                if off != 0 {
                    self.reference(off, self.cs(), Use::BitmapData, &format!("{name} data"));
                }
            }
        }
        Ok(())
    }

    fn compare(&mut self, stored: &StoredRefcounts) -> Result<(), Qcow2Error> {
        for c in 0..self.expected.len() {
            let want = self.expected[c];
            let have = stored.get(self, c as u64)?;
            if have < want {
                self.report.corruption(format!(
                    "cluster {c} (offset {:#x}): refcount={have} reference={want}",
                    c as u64 * self.cs()
                ));
            } else if have > want {
                self.report.leak(format!(
                    "{c} (offset {:#x}): refcount={have} reference={want}",
                    c as u64 * self.cs()
                ));
            }
        }
        Ok(())
    }

    /// The COPIED flag must be set exactly when the refcount is one.
    fn check_copied_flags(
        &mut self,
        l1: &[u64],
        stored: &StoredRefcounts,
    ) -> Result<(), Qcow2Error> {
        let cs = self.cs();
        let words = self.geo.entry_words();
        for (i, &e) in l1.iter().enumerate() {
            let l2_off = e & OFFSET_MASK;
            if l2_off == 0 || !l2_off.is_multiple_of(cs) || l2_off + cs > self.file_len {
                continue;
            }
            let rc = stored.get(self, l2_off / cs)?;
            if (e & OFLAG_COPIED != 0) != (rc == 1) {
                self.report.corruption(format!(
                    "OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={e:#x} refcount={rc}"
                ));
            }
            let mut raw = vec![0u8; cs as usize];
            self.file.read_exact_at(&mut raw, l2_off)?;
            for (j, entry) in be64s(&raw).chunks_exact(words).enumerate() {
                let e2 = entry[0];
                let host = e2 & OFFSET_MASK;
                if e2 & OFLAG_COMPRESSED != 0
                    || host == 0
                    || !host.is_multiple_of(cs)
                    || host >= self.file_len
                {
                    continue;
                }
                let rc = stored.get(self, host / cs)?;
                if (e2 & OFLAG_COPIED != 0) != (rc == 1) {
                    self.report.corruption(format!(
                        "OFLAG_COPIED data cluster: l2 table {i} entry {j} l2_entry={e2:#x} refcount={rc}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The refcounts as stored on disk, read block by block on demand.
struct StoredRefcounts {
    blocks: Vec<u64>,
    cache: std::cell::RefCell<HashMap<u64, std::rc::Rc<Vec<u8>>>>,
}

impl StoredRefcounts {
    fn new(c: &Checker<'_>, reftable: &[u64]) -> Self {
        let cs = c.cs();
        let blocks = reftable
            .iter()
            .map(|e| {
                let off = e & REFTABLE_OFFSET_MASK;
                // Unusable blocks were reported already; read them as empty.
                if !off.is_multiple_of(cs) || off.saturating_add(cs) > c.file_len {
                    0
                } else {
                    off
                }
            })
            .collect();
        Self {
            blocks,
            cache: Default::default(),
        }
    }

    fn get(&self, c: &Checker<'_>, cluster: u64) -> Result<u64, Qcow2Error> {
        let cs = c.cs();
        let order = c.header.refcount_order;
        let per_block = (cs * 8) >> order;
        let Some(&off) = self.blocks.get((cluster / per_block) as usize) else {
            return Ok(0);
        };
        if off == 0 {
            return Ok(0);
        }
        let block = self.cache.borrow().get(&off).cloned();
        let block = match block {
            Some(b) => b,
            None => {
                let mut raw = vec![0u8; cs as usize];
                c.file.read_exact_at(&mut raw, off)?;
                let rc = std::rc::Rc::new(raw);
                self.cache.borrow_mut().insert(off, rc.clone());
                rc
            }
        };
        Ok(refcount_entry(&block, order, cluster % per_block))
    }
}

/// Entry `index` of a refcount block with 2^order-bit entries. Sub-byte entries are
/// packed from the least significant bit, wider ones are big-endian.
pub fn refcount_entry(block: &[u8], order: u32, index: u64) -> u64 {
    let i = index as usize;
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let byte = block[i / per_byte];
            u64::from(byte >> ((i % per_byte) * bits)) & ((1 << bits) - 1)
        }
        _ => {
            let width = 1usize << (order - 3);
            block[i * width..(i + 1) * width]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::refcount_entry;

    #[test]
    fn refcount_entries_of_every_width() {
        let block = [
            0b1011_0010u8,
            0x12,
            0x34,
            0x56,
            0x78,
            0x9a,
            0xbc,
            0xde,
            0xf0,
        ];
        assert_eq!(refcount_entry(&block, 0, 1), 1);
        assert_eq!(refcount_entry(&block, 0, 2), 0);
        assert_eq!(refcount_entry(&block, 1, 0), 0b10);
        assert_eq!(refcount_entry(&block, 1, 3), 0b10);
        assert_eq!(refcount_entry(&block, 2, 1), 0b1011);
        assert_eq!(refcount_entry(&block, 3, 1), 0x12);
        assert_eq!(refcount_entry(&block, 4, 1), 0x3456);
        assert_eq!(refcount_entry(&block, 5, 1), 0x789a_bcde);
        assert_eq!(refcount_entry(&block, 6, 0), 0xb212_3456_789a_bcde);
    }
}
