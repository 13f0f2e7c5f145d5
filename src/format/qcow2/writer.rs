//! A streaming qcow2 (version 3) writer. Clusters arrive in guest order; data and
//! L2 tables are appended as they come, compressed clusters packed byte by byte
//! like QEMU packs them, and the refcount structures go at the end, when the file
//! size is known. Header and L1 table are written last, at the front.
//!
//! Layout: [header][L1 table][data and L2 tables ...][refcount table][refcount blocks]

use std::io::{Seek, SeekFrom, Write};

use super::Qcow2Error;
use super::header::{CompressionType, Header, INCOMPAT_COMPRESSION};
use super::l2::{Geometry, OFLAG_COPIED};

/// 16-bit refcounts, QEMU's default.
const REFCOUNT_ORDER: u32 = 4;
const MAX_REFCOUNT: u16 = u16::MAX;

#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    pub cluster_bits: u32,
    /// Recorded in the header; also decides how callers compress clusters.
    pub compression: Option<CompressionType>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            cluster_bits: 16,
            compression: None,
        }
    }
}

impl WriterOptions {
    /// Cluster size in bytes to cluster_bits, refusing sizes qcow2 cannot hold.
    pub fn cluster_bits_for(size: u64) -> Result<u32, Qcow2Error> {
        if !size.is_power_of_two() || !(512..=2 << 20).contains(&size) {
            return Err(Qcow2Error::Option(format!(
                "cluster size {size} (must be a power of two from 512 to 2097152)"
            )));
        }
        Ok(size.trailing_zeros())
    }
}

/// One guest cluster's payload.
pub enum ClusterData<'a> {
    /// Exactly one cluster of bytes (the last cluster may be shorter and is padded).
    Raw(&'a [u8]),
    /// A compressed stream that inflates to one cluster.
    Compressed(&'a [u8]),
}

pub struct Qcow2Writer<W: Write + Seek> {
    out: W,
    geo: Geometry,
    virtual_size: u64,
    compression: Option<CompressionType>,
    l1: Vec<u64>,
    l1_offset: u64,
    /// The L2 table being filled, and its L1 index.
    l2: Vec<u64>,
    l2_index: Option<usize>,
    /// Next free byte in the file.
    pos: u64,
    /// Refcount of every host cluster so far.
    refcounts: Vec<u16>,
    next_guest_cluster: u64,
}

impl<W: Write + Seek> Qcow2Writer<W> {
    /// Start an image of `virtual_size` bytes (rounded up to 512) on `out`, which
    /// must be empty and positioned at 0.
    pub fn new(out: W, virtual_size: u64, opts: WriterOptions) -> Result<Self, Qcow2Error> {
        if !(9..=21).contains(&opts.cluster_bits) {
            return Err(Qcow2Error::Option(format!(
                "cluster_bits {} (must be 9 to 21)",
                opts.cluster_bits
            )));
        }
        let geo = Geometry {
            cluster_bits: opts.cluster_bits,
            extended_l2: false,
        };
        let cs = geo.cluster_size();
        let virtual_size = virtual_size.next_multiple_of(512);
        let l1_size = virtual_size.div_ceil(cs * geo.l2_entries());
        let l1_bytes = l1_size * 8;
        if l1_bytes > 32 << 20 {
            return Err(Qcow2Error::Option(format!(
                "a {virtual_size}-byte disk needs an L1 table over 32 MiB; use larger clusters"
            )));
        }
        let l1_clusters = l1_bytes.div_ceil(cs).max(1);
        let mut w = Self {
            out,
            geo,
            virtual_size,
            compression: opts.compression,
            l1: vec![0; l1_size as usize],
            l1_offset: cs,
            l2: vec![0; geo.l2_entries() as usize],
            l2_index: None,
            pos: 0,
            refcounts: Vec::new(),
            next_guest_cluster: 0,
        };
        // Reserve the header and L1 clusters now; their bytes are written at the end.
        let reserved = (1 + l1_clusters) * cs;
        w.pad_to(reserved)?;
        for c in 0..1 + l1_clusters {
            w.add_ref(c)?;
        }
        Ok(w)
    }

    pub fn cluster_size(&self) -> u64 {
        self.geo.cluster_size()
    }

    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// Append the payload of guest cluster `index`. Indices must increase;
    /// clusters never written read as zero (or from nothing: there is no backing).
    pub fn write_cluster(&mut self, index: u64, data: ClusterData<'_>) -> Result<(), Qcow2Error> {
        let cs = self.cluster_size();
        if index < self.next_guest_cluster || index * cs >= self.virtual_size {
            return Err(Qcow2Error::Option(format!(
                "cluster {index} written out of order or past the end of the disk"
            )));
        }
        self.next_guest_cluster = index + 1;
        let l2_entries = self.geo.l2_entries();
        let l1_index = (index / l2_entries) as usize;
        if self.l2_index != Some(l1_index) {
            self.flush_l2()?;
            self.l2_index = Some(l1_index);
        }
        let entry = match data {
            ClusterData::Raw(bytes) => {
                if bytes.len() as u64 > cs {
                    return Err(Qcow2Error::Option(format!(
                        "cluster {index} payload is {} bytes, more than a cluster",
                        bytes.len()
                    )));
                }
                let host = self.append_cluster(bytes)?;
                host | OFLAG_COPIED
            }
            ClusterData::Compressed(bytes) => self.append_compressed(bytes)?,
        };
        self.l2[(index % l2_entries) as usize] = entry;
        Ok(())
    }

    /// Append consecutive guest clusters `first..` stored uncompressed, with one
    /// write per L2 table they fall in. `bytes` covers whole clusters, except that
    /// the last cluster of the disk may be short (it is padded).
    pub fn write_raw_run(&mut self, first: u64, bytes: &[u8]) -> Result<(), Qcow2Error> {
        let cs = self.cluster_size();
        let count = (bytes.len() as u64).div_ceil(cs);
        if first < self.next_guest_cluster
            || (first + count) * cs > self.virtual_size.next_multiple_of(cs)
        {
            return Err(Qcow2Error::Option(format!(
                "clusters {first}..{} written out of order or past the end of the disk",
                first + count
            )));
        }
        let l2_entries = self.geo.l2_entries();
        let mut index = first;
        let mut rest = bytes;
        while !rest.is_empty() {
            let l1_index = (index / l2_entries) as usize;
            if self.l2_index != Some(l1_index) {
                self.flush_l2()?;
                self.l2_index = Some(l1_index);
            }
            let in_table = l2_entries - index % l2_entries;
            let take = (in_table * cs).min(rest.len() as u64) as usize;
            let (chunk, tail) = rest.split_at(take);
            self.pad_to(self.pos.next_multiple_of(cs))?;
            let host = self.pos;
            self.out.write_all(chunk)?;
            self.pos += chunk.len() as u64;
            self.pad_to(self.pos.next_multiple_of(cs))?;
            for k in 0..(take as u64).div_ceil(cs) {
                self.add_ref(host / cs + k)?;
                self.l2[((index + k) % l2_entries) as usize] = (host + k * cs) | OFLAG_COPIED;
            }
            index += (take as u64).div_ceil(cs);
            rest = tail;
        }
        self.next_guest_cluster = index;
        Ok(())
    }

    /// Write the L2 table, refcounts, L1 table and header. Returns the output.
    pub fn finish(mut self) -> Result<W, Qcow2Error> {
        self.flush_l2()?;
        let cs = self.cluster_size();
        self.pad_to(self.pos.next_multiple_of(cs))?;
        let (table_offset, table_clusters) = self.write_refcounts()?;

        let l1_bytes: Vec<u8> = self.l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.out.seek(SeekFrom::Start(self.l1_offset))?;
        self.out.write_all(&l1_bytes)?;

        let header = Header {
            version: 3,
            cluster_bits: self.geo.cluster_bits,
            size: self.virtual_size,
            crypt_method: 0,
            l1_size: self.l1.len() as u32,
            l1_table_offset: self.l1_offset,
            refcount_table_offset: table_offset,
            refcount_table_clusters: table_clusters as u32,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible: if self.compression == Some(CompressionType::Zstd) {
                INCOMPAT_COMPRESSION
            } else {
                0
            },
            compatible: 0,
            autoclear: 0,
            refcount_order: REFCOUNT_ORDER,
            header_length: super::header::WRITE_HEADER_LEN,
            compression: self.compression.unwrap_or(CompressionType::Zlib),
            backing_file: None,
            backing_format: None,
            bitmaps: None,
        };
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&header.to_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn add_ref(&mut self, cluster: u64) -> Result<(), Qcow2Error> {
        let i = cluster as usize;
        if self.refcounts.len() <= i {
            self.refcounts.resize(i + 1, 0);
        }
        self.refcounts[i] = self.refcounts[i]
            .checked_add(1)
            .ok_or_else(|| Qcow2Error::Option(format!("refcount overflow at cluster {i}")))?;
        Ok(())
    }

    /// Write zeros up to byte `target` (gaps are always shorter than a cluster,
    /// except for the reserved header area).
    fn pad_to(&mut self, target: u64) -> Result<(), Qcow2Error> {
        const ZEROS: [u8; 4096] = [0; 4096];
        while self.pos < target {
            let n = (target - self.pos).min(ZEROS.len() as u64) as usize;
            self.out.write_all(&ZEROS[..n])?;
            self.pos += n as u64;
        }
        Ok(())
    }

    /// Append one cluster-aligned cluster (padded to full size); returns its offset.
    fn append_cluster(&mut self, bytes: &[u8]) -> Result<u64, Qcow2Error> {
        let cs = self.cluster_size();
        self.pad_to(self.pos.next_multiple_of(cs))?;
        let host = self.pos;
        self.out.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        self.pad_to(host + cs)?;
        self.add_ref(host / cs)?;
        Ok(host)
    }

    /// Append compressed bytes right after the previous ones; returns the L2 entry.
    fn append_compressed(&mut self, bytes: &[u8]) -> Result<u64, Qcow2Error> {
        let cs = self.cluster_size();
        if bytes.is_empty() || bytes.len() as u64 >= cs {
            return Err(Qcow2Error::Option(format!(
                "compressed payload of {} bytes (must be 1 to {} bytes)",
                bytes.len(),
                cs - 1
            )));
        }
        let len = bytes.len() as u64;
        // A refcount must not overflow: a cluster full of tiny frames moves on.
        let (first, last) = (self.pos / cs, (self.pos + len - 1) / cs);
        if (first..=last).any(|c| self.refcounts.get(c as usize) == Some(&MAX_REFCOUNT)) {
            self.pad_to(self.pos.next_multiple_of(cs))?;
        }
        let host = self.pos;
        self.out.write_all(bytes)?;
        self.pos += len;
        for c in host / cs..=(host + len - 1) / cs {
            self.add_ref(c)?;
        }
        Ok(self.geo.compressed_entry(host, len))
    }

    fn flush_l2(&mut self) -> Result<(), Qcow2Error> {
        let Some(l1_index) = self.l2_index.take() else {
            return Ok(());
        };
        let bytes: Vec<u8> = self.l2.iter().flat_map(|e| e.to_be_bytes()).collect();
        let host = self.append_cluster(&bytes)?;
        self.l1[l1_index] = host | OFLAG_COPIED;
        self.l2.fill(0);
        Ok(())
    }

    /// Place the refcount table and blocks after the data so that they count
    /// themselves, write them, and return (table offset, table clusters).
    fn write_refcounts(&mut self) -> Result<(u64, u64), Qcow2Error> {
        let cs = self.cluster_size();
        let per_block = cs * 8 / (1 << REFCOUNT_ORDER);
        let data_clusters = self.pos / cs;
        let (mut blocks, mut table) = (0u64, 0u64);
        loop {
            let total = data_clusters + blocks + table;
            let need_blocks = total.div_ceil(per_block);
            let need_table = (need_blocks * 8).div_ceil(cs);
            if (need_blocks, need_table) == (blocks, table) {
                break;
            }
            (blocks, table) = (need_blocks, need_table);
        }
        let table_offset = self.pos;
        let first_block = data_clusters + table;
        for c in data_clusters..first_block + blocks {
            self.add_ref(c)?;
        }
        let mut reftable = vec![0u8; (table * cs) as usize];
        for b in 0..blocks {
            let at = (b * 8) as usize;
            reftable[at..at + 8].copy_from_slice(&((first_block + b) * cs).to_be_bytes());
        }
        self.out.write_all(&reftable)?;
        let mut block = vec![0u8; cs as usize];
        for b in 0..blocks {
            block.fill(0);
            let start = (b * per_block) as usize;
            let counts = self.refcounts.iter().skip(start).take(per_block as usize);
            for (slot, count) in block.chunks_exact_mut(2).zip(counts) {
                slot.copy_from_slice(&count.to_be_bytes());
            }
            self.out.write_all(&block)?;
        }
        self.pos = (first_block + blocks) * cs;
        Ok((table_offset, table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::BlockSource;
    use crate::format::qcow2::Qcow2Image;
    use crate::format::qcow2::compress::compress_cluster;
    use std::io::Cursor;

    fn write_image(opts: WriterOptions, clusters: &[(u64, Vec<u8>)], size: u64) -> Vec<u8> {
        let mut w = Qcow2Writer::new(Cursor::new(Vec::new()), size, opts).unwrap();
        let mut packed = Vec::new();
        for (i, data) in clusters {
            match opts.compression {
                Some(kind) if compress_cluster(kind, data, &mut packed).unwrap() => w
                    .write_cluster(*i, ClusterData::Compressed(&packed))
                    .unwrap(),
                _ => w.write_cluster(*i, ClusterData::Raw(data)).unwrap(),
            }
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn what_is_written_reads_back() {
        let cs = 4096u64;
        let clusters: Vec<(u64, Vec<u8>)> = [0u64, 3, 700, 1500]
            .iter()
            .map(|&i| (i, (0..cs).map(|b| ((b + i) % 13) as u8).collect()))
            .collect();
        for compression in [
            None,
            Some(CompressionType::Zlib),
            Some(CompressionType::Zstd),
        ] {
            let opts = WriterOptions {
                cluster_bits: 12,
                compression,
            };
            let bytes = write_image(opts, &clusters, 1600 * cs);
            let img = Qcow2Image::open(Box::new(bytes.clone())).unwrap();
            assert_eq!(img.virtual_size(), 1600 * cs);
            let mut buf = vec![0u8; cs as usize];
            for (i, data) in &clusters {
                img.read_exact_at(&mut buf, i * cs).unwrap();
                assert_eq!(&buf, data, "cluster {i} {compression:?}");
            }
            img.read_exact_at(&mut buf, cs).unwrap();
            assert!(buf.iter().all(|&b| b == 0));
            let report = crate::format::qcow2::check::check(&bytes).unwrap();
            assert!(report.is_clean(), "{compression:?}: {report:?}");
        }
    }

    #[test]
    fn raw_runs_cross_l2_tables() {
        // 512-byte clusters: an L2 table maps 64 clusters, so this run spans four.
        let cs = 512u64;
        let run: Vec<u8> = (0..200 * cs).map(|b| (b % 251) as u8 + 1).collect();
        let opts = WriterOptions {
            cluster_bits: 9,
            compression: None,
        };
        let mut w = Qcow2Writer::new(Cursor::new(Vec::new()), 400 * cs, opts).unwrap();
        w.write_cluster(3, ClusterData::Raw(&run[..cs as usize]))
            .unwrap();
        w.write_raw_run(10, &run).unwrap();
        assert!(
            w.write_raw_run(100, &run[..cs as usize]).is_err(),
            "out of order"
        );
        let bytes = w.finish().unwrap().into_inner();
        let img = Qcow2Image::open(Box::new(bytes.clone())).unwrap();
        let mut back = vec![0u8; run.len()];
        img.read_exact_at(&mut back, 10 * cs).unwrap();
        assert_eq!(back, run);
        let report = crate::format::qcow2::check::check(&bytes).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.allocated_clusters, 201);
    }
}
