//! Where the guest data of an image lies in its file, in file order: the plan the
//! sequential download follows. For qcow2 it comes from the header, L1 and L2 tables
//! (fetched with Range requests beforehand); for raw the file is the disk.

use std::io;

use super::StreamError;
use super::http::HttpImage;
use crate::format::ReadAt;
use crate::format::qcow2::header::check_table;
use crate::format::qcow2::l2::{self, Geometry, Mapping};
use crate::format::qcow2::{CompressionType, Header, MAGIC, Qcow2Error};

/// Longest run of raw bytes in one piece, so a piece never pins much memory.
pub const MAX_RAW_PIECE: u64 = 4 << 20;
/// First request: enough for the header of any image with clusters up to 64 KiB.
const PROBE_BYTES: u64 = 64 << 10;
/// Adjacent L2 tables closer than this are fetched in one request.
const COALESCE_GAP: u64 = 1 << 20;
const MAX_REQUEST: u64 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    /// File bytes copied as they are to the guest offset.
    Raw,
    /// One compressed cluster; `guest_len` bytes of it belong to the disk.
    Compressed { guest_len: u64 },
}

/// A run of file bytes `[host, host + len)` that becomes guest data at `guest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub host: u64,
    pub len: u64,
    pub guest: u64,
    pub kind: PieceKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Raw,
    Qcow2,
}

pub struct Layout {
    pub format: SourceFormat,
    pub virtual_size: u64,
    /// Sorted by host offset.
    pub pieces: Vec<Piece>,
    /// Guest ranges `(start, len)` no piece writes: they must read as zero.
    pub holes: Vec<(u64, u64)>,
    pub compression: CompressionType,
    pub cluster_size: u64,
}

/// The first bytes of a file, seen through `ReadAt` so the qcow2 header parser can
/// read them; reads past the prefix (but inside the file) are an error.
struct Prefix<'a> {
    bytes: &'a [u8],
    file_len: u64,
}

impl ReadAt for Prefix<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = self.bytes.read_at(buf, offset)?;
        if n < buf.len() && offset + (n as u64) < self.file_len.min(offset + buf.len() as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "qcow2 header reaches beyond the first {} bytes",
                    self.bytes.len()
                ),
            ));
        }
        Ok(n)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file_len)
    }
}

fn be64s(raw: &[u8]) -> impl Iterator<Item = u64> + '_ {
    raw.chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
}

/// Work out the layout of `image`, fetching only its metadata.
pub fn plan(image: &HttpImage) -> Result<Layout, StreamError> {
    let head = image.range(0, PROBE_BYTES)?;
    if head.len() < 4 || head[..4] != MAGIC {
        return Ok(raw_layout(image.size));
    }
    let qcow2 = |source: Qcow2Error| StreamError::Qcow2 {
        url: image.url().to_string(),
        source,
    };
    // Clusters larger than the probe: fetch the whole first cluster.
    let cluster_bits = head
        .get(20..24)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(16);
    let head = if (9..=21).contains(&cluster_bits) && (1u64 << cluster_bits) > PROBE_BYTES {
        image.range(0, 1 << cluster_bits)?
    } else {
        head
    };
    let header = Header::read(&Prefix {
        bytes: &head,
        file_len: image.size,
    })
    .map_err(qcow2)?;
    if let Some(name) = &header.backing_file {
        return Err(qcow2(Qcow2Error::Unsupported(format!(
            "the image has a backing file ({name:?}); flatten it first (kiln image convert)"
        ))));
    }
    let geo = Geometry {
        cluster_bits: header.cluster_bits,
        extended_l2: header.extended_l2(),
    };
    let l1_raw = image.range(
        header.l1_table_offset,
        header.l1_table_offset + u64::from(header.l1_size) * 8,
    )?;
    let l1: Vec<u64> = be64s(&l1_raw).collect();
    let mut builder = Builder {
        geo,
        size: header.size,
        file_len: image.size,
        pieces: Vec::new(),
    };
    let cs = geo.cluster_size();
    let clusters_per_l2 = geo.l2_entries();
    let mut tables: Vec<(u64, usize)> = Vec::new();
    for (i, &entry) in l1.iter().enumerate() {
        let off = entry & l2::OFFSET_MASK;
        if off == 0 || i as u64 * clusters_per_l2 * cs >= header.size {
            continue;
        }
        check_table("L2 table", off, cs, cs, image.size).map_err(qcow2)?;
        tables.push((off, i));
    }
    tables.sort_unstable();
    for group in coalesce(&tables, cs) {
        let (first, last) = (group[0].0, group[group.len() - 1].0);
        let raw = image.range(first, last + cs)?;
        for &(off, l1_index) in group {
            let at = (off - first) as usize;
            let table: Vec<u64> = be64s(&raw[at..at + cs as usize]).collect();
            builder
                .add_table(l1_index as u64 * clusters_per_l2, &table)
                .map_err(qcow2)?;
        }
    }
    Ok(builder.finish(header.compression))
}

/// Group sorted tables into requests of at most MAX_REQUEST bytes with small gaps.
fn coalesce(tables: &[(u64, usize)], cs: u64) -> Vec<&[(u64, usize)]> {
    let mut groups = Vec::new();
    let mut start = 0;
    for i in 1..=tables.len() {
        let split = i == tables.len()
            || tables[i].0 > tables[i - 1].0 + cs + COALESCE_GAP
            || tables[i].0 + cs - tables[start].0 > MAX_REQUEST;
        if split {
            groups.push(&tables[start..i]);
            start = i;
        }
    }
    groups
}

fn raw_layout(size: u64) -> Layout {
    let pieces = (0..size)
        .step_by(MAX_RAW_PIECE as usize)
        .map(|at| Piece {
            host: at,
            len: MAX_RAW_PIECE.min(size - at),
            guest: at,
            kind: PieceKind::Raw,
        })
        .collect();
    Layout {
        format: SourceFormat::Raw,
        virtual_size: size,
        pieces,
        holes: Vec::new(),
        compression: CompressionType::Zlib,
        cluster_size: MAX_RAW_PIECE,
    }
}

struct Builder {
    geo: Geometry,
    size: u64,
    file_len: u64,
    pieces: Vec<Piece>,
}

impl Builder {
    /// Add the pieces of one L2 table whose first entry maps guest cluster `first`.
    fn add_table(&mut self, first: u64, table: &[u64]) -> Result<(), Qcow2Error> {
        let cs = self.geo.cluster_size();
        let words = self.geo.entry_words();
        for (j, e) in table.chunks_exact(words).enumerate() {
            let guest = (first + j as u64) * cs;
            if guest >= self.size {
                break;
            }
            let (entry, bitmap) = (e[0], if words == 2 { e[1] } else { 0 });
            let cluster_len = cs.min(self.size - guest);
            let mut within = 0;
            while within < cluster_len {
                let (mapping, run) = l2::decode(&self.geo, entry, bitmap, within)?;
                let run = run.min(cluster_len - within);
                match mapping {
                    Mapping::Zero | Mapping::Unallocated => {}
                    Mapping::Data(host) => self.add_raw(host, run, guest + within, guest)?,
                    Mapping::Compressed { offset, len } => {
                        if offset >= self.file_len {
                            return Err(Qcow2Error::Corrupt(format!(
                                "compressed cluster for guest offset {guest} at host offset {offset:#x} starts past the end of the file"
                            )));
                        }
                        self.pieces.push(Piece {
                            host: offset,
                            len: len.min(self.file_len - offset),
                            guest,
                            kind: PieceKind::Compressed {
                                guest_len: cluster_len,
                            },
                        });
                        break;
                    }
                }
                within += run;
            }
        }
        Ok(())
    }

    fn add_raw(&mut self, host: u64, len: u64, guest: u64, cluster: u64) -> Result<(), Qcow2Error> {
        let cs = self.geo.cluster_size();
        let cluster_host = host - host % cs;
        if cluster_host >= self.file_len {
            return Err(Qcow2Error::Corrupt(format!(
                "data cluster for guest offset {cluster} at host offset {cluster_host:#x} lies past the end of the file ({} bytes)",
                self.file_len
            )));
        }
        // The tail of the last cluster may be missing from the file: it reads as
        // zeros, which the hole list then covers.
        let len = len.min(self.file_len - host);
        if len == 0 {
            return Ok(());
        }
        if let Some(last) = self.pieces.last_mut()
            && last.kind == PieceKind::Raw
            && last.host + last.len == host
            && last.guest + last.len == guest
            && last.len + len <= MAX_RAW_PIECE
        {
            last.len += len;
            return Ok(());
        }
        self.pieces.push(Piece {
            host,
            len,
            guest,
            kind: PieceKind::Raw,
        });
        Ok(())
    }

    fn finish(mut self, compression: CompressionType) -> Layout {
        let mut covered: Vec<(u64, u64)> = self
            .pieces
            .iter()
            .map(|p| match p.kind {
                PieceKind::Raw => (p.guest, p.len),
                PieceKind::Compressed { guest_len } => (p.guest, guest_len),
            })
            .collect();
        covered.sort_unstable();
        let mut holes = Vec::new();
        let mut pos = 0;
        for (start, len) in covered {
            if start > pos {
                holes.push((pos, start - pos));
            }
            pos = pos.max(start + len);
        }
        if pos < self.size {
            holes.push((pos, self.size - pos));
        }
        self.pieces.sort_by_key(|p| (p.host, p.guest));
        Layout {
            format: SourceFormat::Qcow2,
            virtual_size: self.size,
            pieces: self.pieces,
            holes,
            compression,
            cluster_size: self.geo.cluster_size(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearby_tables_share_a_request_and_far_ones_do_not() {
        let cs = 65536;
        let tables = [(cs, 0), (2 * cs, 1), (4 * cs, 2), (64 << 20, 3)];
        let groups = coalesce(&tables, cs);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].len(), 3);
        assert_eq!(groups[1], &[(64 << 20, 3)]);
        assert!(coalesce(&[], cs).is_empty());
    }

    #[test]
    fn raw_images_are_cut_into_bounded_pieces() {
        let l = raw_layout(9 << 20);
        assert_eq!(l.pieces.len(), 3);
        assert_eq!(l.pieces[2].len, 1 << 20);
        assert!(
            l.pieces
                .iter()
                .all(|p| p.host == p.guest && p.len <= MAX_RAW_PIECE)
        );
        assert!(l.holes.is_empty());
    }
}
