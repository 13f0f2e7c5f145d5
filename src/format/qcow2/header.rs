//! The qcow2 header and its extensions: parsing with every field bounds-checked,
//! and serialization for the writer.

use super::Qcow2Error;
use crate::format::ReadAt;

pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Incompatible feature bits we understand.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const EXT_BITMAPS: u32 = 0x2385_2875;
const EXT_DATA_FILE: u32 = 0x4441_5441;

const V2_HEADER_LEN: u32 = 72;
const V3_HEADER_LEN: u32 = 104;
/// Version 3 header as we write it: with the compression type byte, padded to 8.
pub const WRITE_HEADER_LEN: u32 = 112;

/// QEMU's own limits; beyond them an image is hostile or broken.
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
const MAX_BACKING_NAME: u32 = 1023;
const MAX_VIRTUAL_SIZE: u64 = 1 << 61;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionType {
    Zlib,
    Zstd,
}

impl CompressionType {
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }
}

/// Where the persistent dirty bitmaps live (only the checker needs them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitmapsExt {
    pub count: u32,
    pub directory_size: u64,
    pub directory_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible: u64,
    pub compatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression: CompressionType,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub bitmaps: Option<BitmapsExt>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
}

fn corrupt(msg: impl Into<String>) -> Qcow2Error {
    Qcow2Error::Corrupt(msg.into())
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub fn extended_l2(&self) -> bool {
        self.incompatible & INCOMPAT_EXTL2 != 0
    }

    pub fn lazy_refcounts(&self) -> bool {
        self.compatible & COMPAT_LAZY_REFCOUNTS != 0
    }

    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// Parse and validate the header of the image in `file`.
    pub fn read(file: &dyn ReadAt) -> Result<Header, Qcow2Error> {
        let file_len = file.len()?;
        let mut fixed = [0u8; 112];
        let got = file.read_zero_padded(&mut fixed, 0)?;
        if got < 4 || fixed[..4] != MAGIC {
            return Err(Qcow2Error::NotQcow2);
        }
        let version = be32(&fixed, 4);
        if version != 2 && version != 3 {
            return Err(Qcow2Error::Unsupported(format!(
                "qcow2 version {version} (only 2 and 3 exist)"
            )));
        }
        let min_len = if version == 2 {
            V2_HEADER_LEN
        } else {
            V3_HEADER_LEN
        };
        if (got as u32) < min_len {
            return Err(corrupt(format!(
                "file is {file_len} bytes, shorter than the {min_len}-byte version {version} header"
            )));
        }
        let mut h = Header {
            version,
            cluster_bits: be32(&fixed, 20),
            size: be64(&fixed, 24),
            crypt_method: be32(&fixed, 32),
            l1_size: be32(&fixed, 36),
            l1_table_offset: be64(&fixed, 40),
            refcount_table_offset: be64(&fixed, 48),
            refcount_table_clusters: be32(&fixed, 56),
            nb_snapshots: be32(&fixed, 60),
            snapshots_offset: be64(&fixed, 64),
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression: CompressionType::Zlib,
            backing_file: None,
            backing_format: None,
            bitmaps: None,
        };
        if version == 3 {
            h.incompatible = be64(&fixed, 72);
            h.compatible = be64(&fixed, 80);
            h.autoclear = be64(&fixed, 88);
            h.refcount_order = be32(&fixed, 96);
            h.header_length = be32(&fixed, 100);
            if h.header_length < V3_HEADER_LEN || !h.header_length.is_multiple_of(8) {
                return Err(corrupt(format!(
                    "header_length {} (must be a multiple of 8, at least {V3_HEADER_LEN})",
                    h.header_length
                )));
            }
        }
        h.validate_fields(file_len)?;
        if h.header_length > V3_HEADER_LEN && h.incompatible & INCOMPAT_COMPRESSION != 0 {
            h.compression = match fixed[104] {
                0 => CompressionType::Zlib,
                1 => CompressionType::Zstd,
                t => {
                    return Err(Qcow2Error::Unsupported(format!(
                        "compression type {t} (known: 0 zlib, 1 zstd)"
                    )));
                }
            };
        } else if h.incompatible & INCOMPAT_COMPRESSION != 0 {
            return Err(corrupt(
                "compression type feature bit set but the header has no compression type field",
            ));
        }
        let feature_names = h.read_extensions(file, file_len)?;
        h.refuse_unsupported(&feature_names)?;
        h.read_backing_name(file, file_len)?;
        Ok(h)
    }

    fn validate_fields(&self, file_len: u64) -> Result<(), Qcow2Error> {
        if !(9..=21).contains(&self.cluster_bits) {
            return Err(corrupt(format!(
                "cluster_bits {} (must be 9 to 21: 512 B to 2 MiB clusters)",
                self.cluster_bits
            )));
        }
        if self.refcount_order > 6 {
            return Err(corrupt(format!(
                "refcount_order {} (at most 6: 64-bit refcounts)",
                self.refcount_order
            )));
        }
        if self.size > MAX_VIRTUAL_SIZE {
            return Err(corrupt(format!(
                "virtual size {} is beyond the 2^61 limit",
                self.size
            )));
        }
        let cs = self.cluster_size();
        let l1_bytes = u64::from(self.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(corrupt(format!(
                "L1 table of {} entries is larger than 32 MiB",
                self.l1_size
            )));
        }
        let needed = self.size.div_ceil(cs * self.l2_entries());
        if u64::from(self.l1_size) < needed {
            return Err(corrupt(format!(
                "L1 table has {} entries but the {}-byte disk needs {needed}",
                self.l1_size, self.size
            )));
        }
        if self.l1_size > 0 {
            check_table("L1 table", self.l1_table_offset, l1_bytes, cs, file_len)?;
        }
        let reftable_bytes = u64::from(self.refcount_table_clusters) * cs;
        if reftable_bytes > MAX_REFTABLE_BYTES {
            return Err(corrupt(format!(
                "refcount table of {} clusters is larger than 8 MiB",
                self.refcount_table_clusters
            )));
        }
        if !self.refcount_table_offset.is_multiple_of(cs) {
            return Err(corrupt(format!(
                "refcount table offset {:#x} is not cluster aligned",
                self.refcount_table_offset
            )));
        }
        if self.nb_snapshots > 0 && !self.snapshots_offset.is_multiple_of(cs) {
            return Err(corrupt(format!(
                "snapshot table offset {:#x} is not cluster aligned",
                self.snapshots_offset
            )));
        }
        Ok(())
    }

    /// Entries per L2 table: 8 bytes each, 16 with extended L2 entries.
    pub fn l2_entries(&self) -> u64 {
        let entry_bits = if self.extended_l2() { 4 } else { 3 };
        1 << (self.cluster_bits - entry_bits)
    }

    /// Walk the header extensions; returns the feature name table (type, bit, name).
    fn read_extensions(
        &mut self,
        file: &dyn ReadAt,
        file_len: u64,
    ) -> Result<Vec<(u8, u8, String)>, Qcow2Error> {
        let mut names = Vec::new();
        let cs = self.cluster_size();
        let mut at = u64::from(self.header_length);
        loop {
            if at + 8 > cs.min(file_len) {
                // QEMU stops at the end of the first cluster; a missing end marker
                // at the end of the file is tolerated the same way.
                break;
            }
            let mut head = [0u8; 8];
            file.read_exact_at(&mut head, at)?;
            let (kind, len) = (be32(&head, 0), be32(&head, 4));
            if kind == EXT_END {
                break;
            }
            let data_at = at + 8;
            if data_at + u64::from(len) > cs {
                return Err(corrupt(format!(
                    "header extension {kind:#x} at offset {at} runs past the first cluster"
                )));
            }
            let mut data = vec![0u8; len as usize];
            file.read_exact_at(&mut data, data_at)?;
            match kind {
                EXT_BACKING_FORMAT => {
                    self.backing_format = Some(String::from_utf8_lossy(&data).into_owned());
                }
                EXT_FEATURE_TABLE => {
                    for entry in data.chunks_exact(48) {
                        let end = entry[2..].iter().position(|&b| b == 0).unwrap_or(46);
                        let name = String::from_utf8_lossy(&entry[2..2 + end]).into_owned();
                        names.push((entry[0], entry[1], name));
                    }
                }
                EXT_BITMAPS => {
                    if data.len() < 24 {
                        return Err(corrupt("bitmaps extension shorter than 24 bytes"));
                    }
                    self.bitmaps = Some(BitmapsExt {
                        count: be32(&data, 0),
                        directory_size: be64(&data, 8),
                        directory_offset: be64(&data, 16),
                    });
                }
                EXT_DATA_FILE => {
                    return Err(Qcow2Error::Unsupported(format!(
                        "external data file {:?}",
                        String::from_utf8_lossy(&data)
                    )));
                }
                _ => {}
            }
            at = data_at + u64::from(len).next_multiple_of(8);
        }
        Ok(names)
    }

    fn refuse_unsupported(&self, names: &[(u8, u8, String)]) -> Result<(), Qcow2Error> {
        if self.crypt_method != 0 {
            let how = match self.crypt_method {
                1 => "AES",
                2 => "LUKS",
                _ => "unknown",
            };
            return Err(Qcow2Error::Unsupported(format!(
                "encrypted image ({how} encryption, crypt_method {})",
                self.crypt_method
            )));
        }
        if self.incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(Qcow2Error::Unsupported(
                "external data file (incompatible feature bit 2)".into(),
            ));
        }
        let unknown = self.incompatible & !INCOMPAT_KNOWN;
        if unknown != 0 {
            let bits: Vec<String> = (0..64)
                .filter(|b| unknown & (1 << b) != 0)
                .map(
                    |b| match names.iter().find(|(t, bit, _)| *t == 0 && *bit == b) {
                        Some((_, _, name)) => format!("bit {b} ({name})"),
                        None => format!("bit {b}"),
                    },
                )
                .collect();
            return Err(Qcow2Error::Unsupported(format!(
                "unknown incompatible feature {}",
                bits.join(", ")
            )));
        }
        if self.extended_l2() && self.version < 3 {
            return Err(corrupt("extended L2 entries need a version 3 image"));
        }
        Ok(())
    }

    fn read_backing_name(&mut self, file: &dyn ReadAt, file_len: u64) -> Result<(), Qcow2Error> {
        let mut raw = [0u8; 12];
        file.read_exact_at(&mut raw, 8)?;
        let (offset, len) = (be64(&raw, 0), be32(&raw, 8));
        if offset == 0 {
            return Ok(());
        }
        if len == 0 || len > MAX_BACKING_NAME {
            return Err(corrupt(format!(
                "backing file name length {len} (must be 1 to {MAX_BACKING_NAME})"
            )));
        }
        if offset.saturating_add(u64::from(len)) > file_len.min(self.cluster_size()) {
            return Err(corrupt(format!(
                "backing file name at offset {offset} lies outside the first cluster"
            )));
        }
        let mut name = vec![0u8; len as usize];
        file.read_exact_at(&mut name, offset)?;
        self.backing_file =
            Some(String::from_utf8(name).map_err(|_| corrupt("backing file name is not UTF-8"))?);
        Ok(())
    }

    /// Serialize a version 3 header (with an end-of-extensions marker) into the
    /// start of the first cluster.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(WRITE_HEADER_LEN as usize + 8);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(&0u64.to_be_bytes()); // no backing file
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&self.cluster_bits.to_be_bytes());
        b.extend_from_slice(&self.size.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes()); // no encryption
        b.extend_from_slice(&self.l1_size.to_be_bytes());
        b.extend_from_slice(&self.l1_table_offset.to_be_bytes());
        b.extend_from_slice(&self.refcount_table_offset.to_be_bytes());
        b.extend_from_slice(&self.refcount_table_clusters.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes()); // no snapshots
        b.extend_from_slice(&0u64.to_be_bytes());
        b.extend_from_slice(&self.incompatible.to_be_bytes());
        b.extend_from_slice(&self.compatible.to_be_bytes());
        b.extend_from_slice(&self.autoclear.to_be_bytes());
        b.extend_from_slice(&self.refcount_order.to_be_bytes());
        b.extend_from_slice(&WRITE_HEADER_LEN.to_be_bytes());
        b.push(match self.compression {
            CompressionType::Zlib => 0,
            CompressionType::Zstd => 1,
        });
        b.resize(WRITE_HEADER_LEN as usize, 0);
        b.extend_from_slice(&[0u8; 8]); // end of header extensions
        b
    }
}

/// A metadata table must be cluster aligned and lie inside the file.
pub fn check_table(
    what: &str,
    offset: u64,
    bytes: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<(), Qcow2Error> {
    if !offset.is_multiple_of(cluster_size) {
        return Err(corrupt(format!(
            "{what} offset {offset:#x} is not cluster aligned"
        )));
    }
    if offset == 0 {
        return Err(corrupt(format!("{what} overlaps the header (offset 0)")));
    }
    if offset.saturating_add(bytes) > file_len {
        return Err(corrupt(format!(
            "{what} at offset {offset:#x} ({bytes} bytes) extends past the end of the file ({file_len} bytes)"
        )));
    }
    Ok(())
}
