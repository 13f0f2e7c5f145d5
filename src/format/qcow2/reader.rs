//! Reading the guest disk of a qcow2 image: L1 -> L2 -> cluster, with compressed,
//! zero and subcluster-allocated clusters and a backing chain underneath.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::Qcow2Error;
use super::compress::{CompressError, decompress_cluster};
use super::header::{Header, check_table};
use super::l2::{self, Geometry, Mapping};
use crate::format::source::{BlockSource, Extent, ExtentKind, ReadAt};
use crate::format::{ImageFormat, raw::RawImage};

/// Bytes of L2 tables kept in memory before the cache is dropped and refilled.
const L2_CACHE_BYTES: u64 = 32 << 20;
thread_local! {
    /// Compressed bytes of the cluster being read, reused across reads.
    static PACKED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Longest backing chain we follow; deeper is almost surely a loop.
const MAX_CHAIN_DEPTH: usize = 32;

/// One layer below an image.
pub struct Backing {
    pub path: PathBuf,
    pub format: ImageFormat,
    pub image: Box<dyn BlockSource>,
}

pub struct Qcow2Image {
    file: Box<dyn ReadAt>,
    file_len: u64,
    header: Header,
    geo: Geometry,
    l1: Vec<u64>,
    l2_cache: Mutex<HashMap<u64, Arc<[u64]>>>,
    backing: Option<Backing>,
}

fn to_io(e: Qcow2Error) -> io::Error {
    match e {
        Qcow2Error::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl Qcow2Image {
    /// Open an image held by `file` that has no backing file (in-memory images,
    /// fuzzing). An image that names a backing file is refused.
    pub fn open(file: Box<dyn ReadAt>) -> Result<Self, Qcow2Error> {
        let header = Header::read(file.as_ref())?;
        if let Some(name) = &header.backing_file {
            return Err(Qcow2Error::Backing(format!(
                "image names backing file {name:?} but was opened without a path to resolve it"
            )));
        }
        Self::with_header(file, header, None)
    }

    /// Open the image at `path` (already opened as `file`), following its backing
    /// chain relative to the image's folder.
    pub fn open_path(path: &Path, file: std::fs::File) -> Result<Self, Qcow2Error> {
        Self::open_chain(path, Box::new(file), 0)
    }

    fn open_chain(path: &Path, file: Box<dyn ReadAt>, depth: usize) -> Result<Self, Qcow2Error> {
        let header = Header::read(file.as_ref())?;
        let backing = match &header.backing_file {
            None => None,
            Some(name) => Some(open_backing(
                path,
                name,
                header.backing_format.as_deref(),
                depth,
            )?),
        };
        Self::with_header(file, header, backing)
    }

    fn with_header(
        file: Box<dyn ReadAt>,
        header: Header,
        backing: Option<Backing>,
    ) -> Result<Self, Qcow2Error> {
        let file_len = file.len()?;
        let geo = Geometry {
            cluster_bits: header.cluster_bits,
            extended_l2: header.extended_l2(),
        };
        let mut raw = vec![0u8; header.l1_size as usize * 8];
        file.read_exact_at(&mut raw, header.l1_table_offset)?;
        let l1 = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        Ok(Self {
            file,
            file_len,
            header,
            geo,
            l1,
            l2_cache: Mutex::new(HashMap::new()),
            backing,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn backing(&self) -> Option<&Backing> {
        self.backing.as_ref()
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Count guest clusters that have host storage, and how many are compressed.
    pub fn allocation_counts(&self) -> Result<(u64, u64), Qcow2Error> {
        let (mut allocated, mut compressed) = (0, 0);
        let words = self.geo.entry_words();
        for &l1_entry in &self.l1 {
            let l2_offset = l1_entry & l2::OFFSET_MASK;
            if l2_offset == 0 {
                continue;
            }
            let table = self.l2_table(l2_offset)?;
            for entry in table.chunks_exact(words) {
                if entry[0] & l2::OFLAG_COMPRESSED != 0 {
                    compressed += 1;
                    allocated += 1;
                } else if entry[0] & l2::OFFSET_MASK != 0 {
                    allocated += 1;
                }
            }
        }
        Ok((allocated, compressed))
    }

    /// The L2 table at `offset`, from cache or disk.
    fn l2_table(&self, offset: u64) -> Result<Arc<[u64]>, Qcow2Error> {
        if let Some(t) = self
            .l2_cache
            .lock()
            .ok()
            .and_then(|c| c.get(&offset).cloned())
        {
            return Ok(t);
        }
        let cs = self.geo.cluster_size();
        check_table("L2 table", offset, cs, cs, self.file_len)?;
        let mut raw = vec![0u8; cs as usize];
        self.file.read_exact_at(&mut raw, offset)?;
        let table: Arc<[u64]> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        if let Ok(mut cache) = self.l2_cache.lock() {
            if (cache.len() as u64 + 1) * cs > L2_CACHE_BYTES {
                cache.clear();
            }
            cache.insert(offset, table.clone());
        }
        Ok(table)
    }

    /// The mapping of guest byte `offset` and how many bytes after it share it.
    fn lookup(&self, offset: u64) -> Result<(Mapping, u64), Qcow2Error> {
        let cs = self.geo.cluster_size();
        let cluster = offset / cs;
        let within = offset % cs;
        let l2_entries = self.geo.l2_entries();
        let l1_index = (cluster / l2_entries) as usize;
        let Some(&l1_entry) = self.l1.get(l1_index) else {
            return Err(Qcow2Error::Corrupt(format!(
                "guest offset {offset} lies beyond the L1 table"
            )));
        };
        let l2_offset = l1_entry & l2::OFFSET_MASK;
        if l2_offset == 0 {
            return Ok((Mapping::Unallocated, cs - within));
        }
        let table = self.l2_table(l2_offset)?;
        let words = self.geo.entry_words();
        let i = (cluster % l2_entries) as usize * words;
        let entry = table[i];
        let bitmap = if words == 2 { table[i + 1] } else { 0 };
        l2::decode(&self.geo, entry, bitmap, within)
    }

    /// Fill `buf` from a compressed cluster, `skip` bytes into its guest data.
    /// A whole-cluster read decompresses straight into `buf`.
    fn read_compressed(
        &self,
        host: u64,
        len: u64,
        skip: u64,
        buf: &mut [u8],
    ) -> Result<(), Qcow2Error> {
        if host >= self.file_len {
            return Err(Qcow2Error::Corrupt(format!(
                "compressed cluster at host offset {host:#x} starts past the end of the file"
            )));
        }
        let cs = self.geo.cluster_size() as usize;
        PACKED.with_borrow_mut(|packed| -> Result<(), Qcow2Error> {
            packed.resize(len as usize, 0);
            self.file.read_zero_padded(packed, host)?;
            let corrupt = |e: CompressError| {
                Qcow2Error::Corrupt(format!("compressed cluster at host offset {host:#x}: {e}"))
            };
            if skip == 0 && buf.len() == cs {
                return decompress_cluster(self.header.compression, packed, buf).map_err(corrupt);
            }
            let mut cluster = vec![0u8; cs];
            decompress_cluster(self.header.compression, packed, &mut cluster).map_err(corrupt)?;
            let skip = skip as usize;
            buf.copy_from_slice(&cluster[skip..skip + buf.len()]);
            Ok(())
        })
    }

    fn read_backing(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let Some(b) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        // Past the end of a shorter backing file the guest sees zeros.
        let size = b.image.virtual_size();
        let inside = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        b.image.read_exact_at(&mut buf[..inside], offset)?;
        buf[inside..].fill(0);
        Ok(())
    }

    fn backing_extent(&self, offset: u64, max_len: u64) -> io::Result<Extent> {
        match &self.backing {
            Some(b) if offset < b.image.virtual_size() => {
                let max_len = max_len.min(b.image.virtual_size() - offset);
                b.image.extent_at(offset, max_len)
            }
            _ => Ok(Extent {
                kind: ExtentKind::Zero,
                len: max_len,
            }),
        }
    }
}

impl BlockSource for Qcow2Image {
    fn virtual_size(&self) -> u64 {
        self.header.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.header.size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} past the {}-byte disk",
                    buf.len(),
                    self.header.size
                ),
            ));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (mapping, run) = self.lookup(pos).map_err(to_io)?;
            let n = run.min((buf.len() - done) as u64) as usize;
            let piece = &mut buf[done..done + n];
            match mapping {
                Mapping::Zero => piece.fill(0),
                Mapping::Unallocated => self.read_backing(piece, pos)?,
                Mapping::Data(host) => {
                    let cluster_start = host - host % self.geo.cluster_size();
                    if cluster_start >= self.file_len {
                        return Err(to_io(Qcow2Error::Corrupt(format!(
                            "data cluster at host offset {cluster_start:#x} (guest offset {pos}) lies past the end of the file ({} bytes)",
                            self.file_len
                        ))));
                    }
                    // The last cluster may end early when its tail was never
                    // written; that tail reads as zeros, as in QEMU.
                    self.file.read_zero_padded(piece, host)?;
                }
                Mapping::Compressed { offset: host, len } => {
                    let skip = pos % self.geo.cluster_size();
                    self.read_compressed(host, len, skip, piece)
                        .map_err(to_io)?;
                }
            }
            done += n;
        }
        Ok(())
    }

    fn extent_at(&self, offset: u64, max_len: u64) -> io::Result<Extent> {
        let max_len = max_len.min(self.header.size.saturating_sub(offset)).max(1);
        let (first, run) = self.lookup(offset).map_err(to_io)?;
        if first == Mapping::Unallocated {
            return self.backing_extent(offset, run.min(max_len));
        }
        let kind_of = |m: Mapping| match m {
            Mapping::Zero => Some(ExtentKind::Zero),
            Mapping::Data(_) | Mapping::Compressed { .. } => Some(ExtentKind::Data),
            Mapping::Unallocated => None,
        };
        let kind = kind_of(first).unwrap_or(ExtentKind::Data);
        let mut len = run;
        while len < max_len {
            let (m, r) = self.lookup(offset + len).map_err(to_io)?;
            if kind_of(m) != Some(kind) {
                break;
            }
            len += r;
        }
        Ok(Extent {
            kind,
            len: len.min(max_len),
        })
    }

    fn io_granularity(&self) -> u64 {
        self.geo.cluster_size()
    }
}

/// Open the backing file `name` of the image at `path`.
pub(super) fn open_backing(
    path: &Path,
    name: &str,
    format: Option<&str>,
    depth: usize,
) -> Result<Backing, Qcow2Error> {
    if depth >= MAX_CHAIN_DEPTH {
        return Err(Qcow2Error::Backing(format!(
            "backing chain deeper than {MAX_CHAIN_DEPTH} images at {name:?} (a loop?)"
        )));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let full = dir.join(name);
    let file = std::fs::File::open(&full).map_err(|e| {
        Qcow2Error::Backing(format!(
            "backing file {} (named {name:?} by {}): {e}",
            full.display(),
            path.display()
        ))
    })?;
    let format = match format {
        Some("qcow2") => ImageFormat::Qcow2,
        Some("raw") => ImageFormat::Raw,
        Some(other) => {
            return Err(Qcow2Error::Backing(format!(
                "backing file {} has format {other:?}; only raw and qcow2 are supported",
                full.display()
            )));
        }
        None => crate::format::probe(&file)?,
    };
    let image: Box<dyn BlockSource> = match format {
        ImageFormat::Raw => Box::new(RawImage::new(file)?),
        ImageFormat::Qcow2 => Box::new(
            Qcow2Image::open_chain(&full, Box::new(file), depth + 1).map_err(|e| match e {
                Qcow2Error::Backing(m) => Qcow2Error::Backing(m),
                other => Qcow2Error::Backing(format!("backing file {}: {other}", full.display())),
            })?,
        ),
    };
    Ok(Backing {
        path: full,
        format,
        image,
    })
}
