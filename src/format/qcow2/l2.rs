//! Table entries: L1 entries, L2 cluster descriptors (standard and compressed) and
//! the subcluster bitmaps of extended L2 entries.

use super::Qcow2Error;

pub const OFLAG_COPIED: u64 = 1 << 63;
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
pub const OFLAG_ZERO: u64 = 1;
/// Bits 9-55: a cluster-aligned host offset in L1 entries and standard L2 entries.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Refcount table entries hold bits 9-63.
pub const REFTABLE_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// Compressed data is counted in 512-byte sectors whatever the cluster size.
pub const SECTOR: u64 = 512;
pub const SUBCLUSTERS: u64 = 32;

/// The layout numbers derived from cluster_bits that every table walk needs.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub cluster_bits: u32,
    pub extended_l2: bool,
}

impl Geometry {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// u64 words per L2 entry.
    pub fn entry_words(&self) -> usize {
        if self.extended_l2 { 2 } else { 1 }
    }

    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8 / self.entry_words() as u64
    }

    pub fn subcluster_size(&self) -> u64 {
        if self.extended_l2 {
            self.cluster_size() / SUBCLUSTERS
        } else {
            self.cluster_size()
        }
    }

    fn csize_shift(&self) -> u32 {
        62 - (self.cluster_bits - 8)
    }

    /// Split a compressed descriptor into (host byte offset, bytes to read).
    pub fn compressed_range(&self, entry: u64) -> (u64, u64) {
        let shift = self.csize_shift();
        let offset = entry & ((1 << shift) - 1);
        let sectors = ((entry & !OFLAG_COMPRESSED & !OFLAG_COPIED) >> shift) + 1;
        let len = sectors * SECTOR - (offset % SECTOR);
        (offset, len)
    }

    /// Build a compressed descriptor for `len` bytes stored at `offset`.
    pub fn compressed_entry(&self, offset: u64, len: u64) -> u64 {
        let extra_sectors = (offset + len - 1) / SECTOR - offset / SECTOR;
        OFLAG_COMPRESSED | (extra_sectors << self.csize_shift()) | offset
    }
}

/// How one guest cluster (or one subcluster run) is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Not allocated here: read from the backing file, or zeros without one.
    Unallocated,
    /// Reads as zeros.
    Zero,
    /// Stored uncompressed at this host offset.
    Data(u64),
    /// Stored compressed; the whole cluster must be decompressed.
    Compressed { offset: u64, len: u64 },
}

/// Decode an L2 entry (plus its subcluster bitmap when extended) for the guest byte
/// `within` bytes into the cluster. Returns the mapping of that byte and how many
/// bytes from there share it (contiguously, up to the end of the cluster).
pub fn decode(
    geo: &Geometry,
    entry: u64,
    bitmap: u64,
    within: u64,
) -> Result<(Mapping, u64), Qcow2Error> {
    let cs = geo.cluster_size();
    let rest = cs - within;
    if entry & OFLAG_COMPRESSED != 0 {
        let (offset, len) = geo.compressed_range(entry);
        return Ok((Mapping::Compressed { offset, len }, rest));
    }
    let host = entry & OFFSET_MASK;
    if host != 0 && !host.is_multiple_of(cs) {
        return Err(Qcow2Error::Corrupt(format!(
            "L2 entry {entry:#018x}: data cluster offset {host:#x} is not cluster aligned"
        )));
    }
    if !geo.extended_l2 {
        // Version 2 reserves this bit; QEMU honours it anyway and so do we, so
        // both read such an image the same way.
        let zero = entry & OFLAG_ZERO != 0;
        let mapping = match (zero, host) {
            (true, _) => Mapping::Zero,
            (false, 0) => Mapping::Unallocated,
            (false, h) => Mapping::Data(h + within),
        };
        return Ok((mapping, rest));
    }
    let sc = geo.subcluster_size();
    let first = within / sc;
    let state = |i: u64| -> Result<u8, Qcow2Error> {
        let alloc = bitmap >> i & 1 != 0;
        let zero = bitmap >> (32 + i) & 1 != 0;
        match (alloc, zero) {
            (true, true) => Err(Qcow2Error::Corrupt(format!(
                "subcluster {i} is marked both allocated and zero (bitmap {bitmap:#018x})"
            ))),
            (true, false) if host == 0 => Err(Qcow2Error::Corrupt(format!(
                "subcluster {i} is allocated in a cluster without a host offset"
            ))),
            (true, false) => Ok(1),
            (false, true) => Ok(2),
            (false, false) => Ok(0),
        }
    };
    let kind = state(first)?;
    let mut end = first + 1;
    while end < SUBCLUSTERS && state(end)? == kind {
        end += 1;
    }
    let run = end * sc - within;
    let mapping = match kind {
        1 => Mapping::Data(host + within),
        2 => Mapping::Zero,
        _ => Mapping::Unallocated,
    };
    Ok((mapping, run))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(cluster_bits: u32, extended_l2: bool) -> Geometry {
        Geometry {
            cluster_bits,
            extended_l2,
        }
    }

    #[test]
    fn compressed_descriptor_round_trips_for_every_cluster_size() {
        for bits in 9..=21 {
            let g = geo(bits, false);
            for (offset, len) in [(0x10_0200u64, 1u64), (0x10_0333, 700), (0x2000_01ff, 513)] {
                let e = g.compressed_entry(offset, len);
                let (o, l) = g.compressed_range(e);
                assert_eq!(o, offset, "bits {bits}");
                assert!(l >= len && o + l == (offset + len).next_multiple_of(SECTOR));
            }
        }
    }

    #[test]
    fn subcluster_runs_split_at_state_changes() {
        let g = geo(16, true);
        let sc = g.subcluster_size();
        // subclusters 0-1 allocated, 2 zero, rest unallocated
        let bitmap = 0b11 | (0b100 << 32);
        let host = 0x30000;
        assert_eq!(
            decode(&g, host, bitmap, 0).unwrap(),
            (Mapping::Data(host), 2 * sc)
        );
        assert_eq!(
            decode(&g, host, bitmap, 2 * sc).unwrap(),
            (Mapping::Zero, sc)
        );
        assert_eq!(
            decode(&g, host, bitmap, 3 * sc + 5).unwrap(),
            (Mapping::Unallocated, 29 * sc - 5)
        );
        assert!(decode(&g, host, 1 | 1 << 32, 0).is_err());
        assert!(decode(&g, 0, 1, 0).is_err());
    }

    #[test]
    fn zero_flag_reads_as_zero_with_or_without_a_host_cluster() {
        let g = geo(16, false);
        assert_eq!(decode(&g, OFLAG_ZERO, 0, 0).unwrap().0, Mapping::Zero);
        assert_eq!(
            decode(&g, 0x50000 | OFLAG_ZERO, 0, 0).unwrap().0,
            Mapping::Zero
        );
        assert_eq!(decode(&g, 0x50000, 0, 9).unwrap().0, Mapping::Data(0x50009));
        assert_eq!(decode(&g, 0, 0, 0).unwrap().0, Mapping::Unallocated);
    }
}
