//! RPM package files (format v3/v4), read without rpm: the 96-byte lead, the
//! signature header (padded to 8 bytes), the main header, then the payload: a cpio
//! archive compressed as the main header's PAYLOADCOMPRESSOR says (the magic bytes
//! are checked too).

pub mod cpio;
pub mod header;

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};

use crate::format::pkgarchive::{self, ArchiveEntry, Compression};
pub use cpio::CpioError;
pub use header::Header;

pub const LEAD_MAGIC: [u8; 4] = [0xed, 0xab, 0xee, 0xdb];
pub const LEAD_LEN: u64 = 96;
/// The only signature type rpm has written since v3: a header structure.
const SIGTYPE_HEADERSIG: u16 = 5;

pub mod tag {
    pub const NAME: u32 = 1000;
    pub const VERSION: u32 = 1001;
    pub const RELEASE: u32 = 1002;
    pub const EPOCH: u32 = 1003;
    pub const ARCH: u32 = 1022;
    pub const OLDFILENAMES: u32 = 1027;
    pub const FILEUSERNAME: u32 = 1039;
    pub const FILEGROUPNAME: u32 = 1040;
    pub const DIRINDEXES: u32 = 1116;
    pub const BASENAMES: u32 = 1117;
    pub const DIRNAMES: u32 = 1118;
    pub const PAYLOADFORMAT: u32 = 1124;
    pub const PAYLOADCOMPRESSOR: u32 = 1125;
}

#[derive(Debug, thiserror::Error)]
pub enum RpmError {
    #[error("not an RPM package: lead magic is {0:02x?}, expected ed ab ee db")]
    BadLeadMagic([u8; 4]),
    #[error("RPM lead: format version {0}.{1} is not supported (3.x or 4.x)")]
    LeadVersion(u8, u8),
    #[error("RPM lead: this is a source package (lead type 1); binary packages only")]
    SourcePackage,
    #[error("RPM lead: signature type {0} at offset 78 is not supported (expected 5)")]
    SigType(u16),
    #[error(
        "RPM file ends early in the {what} at offset {offset} (needs {need} more bytes, {have} left)"
    )]
    Truncated {
        what: &'static str,
        offset: u64,
        need: u64,
        have: u64,
    },
    #[error("RPM {what} at offset {offset}: {source}")]
    Read {
        what: &'static str,
        offset: u64,
        source: io::Error,
    },
    #[error(
        "RPM {section} at offset {offset}: bad header magic {found:02x?}, expected 8e ad e8 01"
    )]
    BadHeaderMagic {
        section: &'static str,
        offset: u64,
        found: [u8; 4],
    },
    #[error(
        "RPM {section} at offset {offset}: implausible size ({nindex} index entries, {hsize} store bytes)"
    )]
    HeaderSize {
        section: &'static str,
        offset: u64,
        nindex: u32,
        hsize: u32,
    },
    #[error("RPM {section}: tag {tag}: {reason}")]
    Tag {
        section: &'static str,
        tag: u32,
        reason: String,
    },
    #[error("RPM main header: required tag {0} ({1}) is missing")]
    MissingTag(u32, &'static str),
    #[error("RPM payload format {0:?} (tag 1124) is not supported; only cpio")]
    PayloadFormat(String),
    #[error(
        "RPM payload at offset {offset}: compressor tag says {declared:?} but the data starts with {head:02x?}, which is not {declared}"
    )]
    CompressorMismatch {
        offset: u64,
        declared: String,
        head: Vec<u8>,
    },
    #[error("RPM payload at offset {offset}: unknown compressor {declared:?} (tag 1125)")]
    UnknownCompressor { offset: u64, declared: String },
    #[error("RPM payload at offset {offset} ({compression}): {source}")]
    Payload {
        offset: u64,
        compression: Compression,
        source: CpioError,
    },
}

/// The parts of an RPM before the payload.
#[derive(Debug, Clone)]
pub struct RpmHeaders {
    pub signature: Header,
    pub main: Header,
    /// File offset where the compressed payload starts.
    pub payload_offset: u64,
}

/// Name, version and architecture of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpmInfo {
    pub name: String,
    /// "[epoch:]version-release"
    pub version: String,
    pub arch: String,
}

/// Read the lead and both headers. `len` is the file length.
pub fn read_headers<R: Read + Seek>(r: &mut R, len: u64) -> Result<RpmHeaders, RpmError> {
    r.seek(SeekFrom::Start(0))
        .map_err(|source| RpmError::Read {
            what: "lead",
            offset: 0,
            source,
        })?;
    if len < LEAD_LEN {
        let mut magic = [0u8; 4];
        let n = (len as usize).min(4);
        header::read_exact(r, &mut magic[..n], "lead", 0)?;
        if n == 4 && magic != LEAD_MAGIC {
            return Err(RpmError::BadLeadMagic(magic));
        }
        return Err(RpmError::Truncated {
            what: "lead",
            offset: 0,
            need: LEAD_LEN,
            have: len,
        });
    }
    let mut lead = [0u8; LEAD_LEN as usize];
    header::read_exact(r, &mut lead, "lead", 0)?;
    parse_lead(&lead)?;
    let mut offset = LEAD_LEN;
    let (signature, sig_len) = Header::read(r, "signature header", offset, len - offset)?;
    offset += sig_len;
    let pad = (8 - offset % 8) % 8;
    if len - offset < pad {
        return Err(RpmError::Truncated {
            what: "signature padding",
            offset,
            need: pad,
            have: len - offset,
        });
    }
    let mut skip = [0u8; 8];
    header::read_exact(r, &mut skip[..pad as usize], "signature padding", offset)?;
    offset += pad;
    let (main, main_len) = Header::read(r, "main header", offset, len - offset)?;
    offset += main_len;
    Ok(RpmHeaders {
        signature,
        main,
        payload_offset: offset,
    })
}

/// Check the 96-byte lead: magic, major version, binary type, signature type.
pub fn parse_lead(lead: &[u8; LEAD_LEN as usize]) -> Result<(), RpmError> {
    let magic = [lead[0], lead[1], lead[2], lead[3]];
    if magic != LEAD_MAGIC {
        return Err(RpmError::BadLeadMagic(magic));
    }
    if !(3..=4).contains(&lead[4]) {
        return Err(RpmError::LeadVersion(lead[4], lead[5]));
    }
    if u16::from_be_bytes([lead[6], lead[7]]) == 1 {
        return Err(RpmError::SourcePackage);
    }
    let sigtype = u16::from_be_bytes([lead[78], lead[79]]);
    if sigtype != SIGTYPE_HEADERSIG {
        return Err(RpmError::SigType(sigtype));
    }
    Ok(())
}

impl RpmHeaders {
    pub fn info(&self) -> Result<RpmInfo, RpmError> {
        let h = &self.main;
        let need = |tag, name| h.string(tag)?.ok_or(RpmError::MissingTag(tag, name));
        let name = need(tag::NAME, "NAME")?;
        let version = need(tag::VERSION, "VERSION")?;
        let release = need(tag::RELEASE, "RELEASE")?;
        let arch = h.string(tag::ARCH)?.unwrap_or_else(|| "noarch".into());
        let epoch = h.int_array(tag::EPOCH)?.and_then(|v| v.first().copied());
        let version = match epoch {
            Some(e) => format!("{e}:{version}-{release}"),
            None => format!("{version}-{release}"),
        };
        Ok(RpmInfo {
            name,
            version,
            arch,
        })
    }

    /// Owner names from the header, by path as it appears in the payload without
    /// the leading "." ("/lib/x"): (user, group).
    pub fn file_owners(&self) -> Result<HashMap<String, (String, String)>, RpmError> {
        let h = &self.main;
        let paths: Vec<String> = match h.string_array(tag::BASENAMES)? {
            Some(base) => {
                let dirs = h.string_array(tag::DIRNAMES)?.unwrap_or_default();
                let idx = h.int_array(tag::DIRINDEXES)?.unwrap_or_default();
                if idx.len() != base.len() {
                    return Err(RpmError::Tag {
                        section: "main header",
                        tag: tag::DIRINDEXES,
                        reason: format!("{} entries for {} basenames", idx.len(), base.len()),
                    });
                }
                let mut out = Vec::with_capacity(base.len());
                for (b, i) in base.iter().zip(idx) {
                    let d = dirs.get(i as usize).ok_or_else(|| RpmError::Tag {
                        section: "main header",
                        tag: tag::DIRINDEXES,
                        reason: format!("index {i} past the {} dirnames", dirs.len()),
                    })?;
                    out.push(format!("{d}{b}"));
                }
                out
            }
            None => h.string_array(tag::OLDFILENAMES)?.unwrap_or_default(),
        };
        let users = h.string_array(tag::FILEUSERNAME)?.unwrap_or_default();
        let groups = h.string_array(tag::FILEGROUPNAME)?.unwrap_or_default();
        Ok(paths
            .into_iter()
            .zip(users.into_iter().zip(groups))
            .collect())
    }

    /// Decompress and read the payload. `r` must be positioned anywhere; `limit`
    /// bounds the decompressed size.
    pub fn payload<R: Read + Seek>(
        &self,
        r: &mut R,
        limit: u64,
    ) -> Result<Vec<ArchiveEntry>, RpmError> {
        let offset = self.payload_offset;
        let format = self
            .main
            .string(tag::PAYLOADFORMAT)?
            .unwrap_or_else(|| "cpio".into());
        if format != "cpio" {
            return Err(RpmError::PayloadFormat(format));
        }
        let declared = self.main.string(tag::PAYLOADCOMPRESSOR)?;
        r.seek(SeekFrom::Start(offset))
            .map_err(|source| RpmError::Read {
                what: "payload",
                offset,
                source,
            })?;
        let (head, stream) =
            pkgarchive::peek::<_, 8>(io::BufReader::new(r)).map_err(|source| RpmError::Read {
                what: "payload",
                offset,
                source,
            })?;
        let sniffed = if head.starts_with(b"07070") {
            Some(Compression::None)
        } else {
            Compression::sniff(&head)
        };
        let compression = match (declared.as_deref(), sniffed) {
            (_, Some(c)) => {
                // The magic wins, but a declared compressor that disagrees means
                // the file is damaged or forged: say so.
                if let Some(d) = declared.as_deref() {
                    let want = declared_compression(d);
                    if want.is_some() && want != Some(c) && c != Compression::Lzma {
                        return Err(RpmError::CompressorMismatch {
                            offset,
                            declared: d.to_string(),
                            head,
                        });
                    }
                }
                c
            }
            (None, None) => {
                return Err(RpmError::CompressorMismatch {
                    offset,
                    declared: "gzip".into(),
                    head,
                });
            }
            (Some(d), None) => match declared_compression(d) {
                Some(Compression::Lzma) => Compression::Lzma,
                Some(_) => {
                    return Err(RpmError::CompressorMismatch {
                        offset,
                        declared: d.to_string(),
                        head,
                    });
                }
                None => {
                    return Err(RpmError::UnknownCompressor {
                        offset,
                        declared: d.to_string(),
                    });
                }
            },
        };
        let dec =
            pkgarchive::decoder(compression, stream, limit).map_err(|source| RpmError::Read {
                what: "payload decompressor",
                offset,
                source,
            })?;
        cpio::read_newc(dec).map_err(|source| RpmError::Payload {
            offset,
            compression,
            source,
        })
    }
}

fn declared_compression(name: &str) -> Option<Compression> {
    match name {
        "gzip" => Some(Compression::Gzip),
        "bzip2" => Some(Compression::Bzip2),
        "xz" => Some(Compression::Xz),
        "lzma" => Some(Compression::Lzma),
        "zstd" => Some(Compression::Zstd),
        "identity" | "none" => Some(Compression::None),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::header::{TYPE_INT32, TYPE_STRING, TYPE_STRING_ARRAY, tests::build};
    use super::*;
    use crate::format::pkgarchive::EntryKind;
    use std::io::{Cursor, Write};

    fn lead() -> Vec<u8> {
        let mut l = vec![0u8; 96];
        l[..4].copy_from_slice(&LEAD_MAGIC);
        l[4] = 3;
        l[78..80].copy_from_slice(&5u16.to_be_bytes());
        l
    }

    /// A complete small RPM with one file, gzip payload.
    fn small_rpm(payload_compressor: &str) -> Vec<u8> {
        let mut out = lead();
        out.extend(build(&[(1000, 7, 3, vec![1, 2, 3])])); // sig: 19+3 bytes store
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let strs = |s: &str| {
            let mut v = s.as_bytes().to_vec();
            v.push(0);
            v
        };
        out.extend(build(&[
            (tag::NAME, TYPE_STRING, 1, strs("drv")),
            (tag::VERSION, TYPE_STRING, 1, strs("1.2")),
            (tag::RELEASE, TYPE_STRING, 1, strs("3")),
            (tag::ARCH, TYPE_STRING, 1, strs("x86_64")),
            (tag::FILEUSERNAME, TYPE_STRING_ARRAY, 1, strs("root")),
            (tag::FILEGROUPNAME, TYPE_STRING_ARRAY, 1, strs("root")),
            (tag::BASENAMES, TYPE_STRING_ARRAY, 1, strs("a.ko")),
            (tag::DIRNAMES, TYPE_STRING_ARRAY, 1, strs("/lib/")),
            (tag::DIRINDEXES, TYPE_INT32, 1, vec![0, 0, 0, 0]),
            (
                tag::PAYLOADCOMPRESSOR,
                TYPE_STRING,
                1,
                strs(payload_compressor),
            ),
        ]));
        let mut cpio = cpio::tests::entry("./lib/a.ko", 0o100644, 1, 1, b"module");
        cpio.extend(cpio::tests::trailer());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&cpio).unwrap();
        out.extend(gz.finish().unwrap());
        out
    }

    fn open(bytes: &[u8]) -> Result<(RpmHeaders, Vec<ArchiveEntry>), RpmError> {
        let mut c = Cursor::new(bytes);
        let h = read_headers(&mut c, bytes.len() as u64)?;
        let e = h.payload(&mut c, 1 << 20)?;
        Ok((h, e))
    }

    #[test]
    fn reads_hand_made_rpm() {
        let bytes = small_rpm("gzip");
        let (h, e) = open(&bytes).unwrap();
        assert_eq!(
            h.info().unwrap(),
            RpmInfo {
                name: "drv".into(),
                version: "1.2-3".into(),
                arch: "x86_64".into()
            }
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].kind, EntryKind::File(b"module".to_vec()));
        let owners = h.file_owners().unwrap();
        assert_eq!(owners["/lib/a.ko"], ("root".into(), "root".into()));
    }

    #[test]
    fn every_truncation_is_a_clean_error() {
        let bytes = small_rpm("gzip");
        for cut in 0..bytes.len() {
            assert!(open(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn compressor_tag_and_magic_must_agree() {
        let err = open(&small_rpm("zstd")).unwrap_err();
        assert!(matches!(err, RpmError::CompressorMismatch { .. }), "{err}");
        // An unknown name with recognizable data: the magic decides.
        assert!(open(&small_rpm("rot13")).is_ok());
    }

    #[test]
    fn lead_checks() {
        let mut l = [0u8; 96];
        l.copy_from_slice(&lead());
        assert!(parse_lead(&l).is_ok());
        l[6..8].copy_from_slice(&1u16.to_be_bytes());
        assert!(matches!(parse_lead(&l), Err(RpmError::SourcePackage)));
        l[0] = 0;
        assert!(matches!(parse_lead(&l), Err(RpmError::BadLeadMagic(_))));
    }
}
