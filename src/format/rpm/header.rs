//! RPM header structures (used twice in a package: the signature header and the
//! main header). Layout: magic 8e ad e8 01, 4 reserved bytes, the number of index
//! entries and the store size (both big-endian u32), then the index entries
//! (tag, type, offset into the store, count; 16 bytes each), then the store.

use std::io::Read;

use super::RpmError;

pub const HEADER_MAGIC: [u8; 4] = [0x8e, 0xad, 0xe8, 0x01];
/// Size of the fixed part of a header (magic, reserved, nindex, hsize).
pub const HEADER_INTRO: u64 = 16;
/// Sanity bounds well above anything rpm writes (rpm itself caps index entries at
/// 0xffff and the store at 256 MiB).
const MAX_INDEX_ENTRIES: u32 = 0x10000;
const MAX_STORE_BYTES: u32 = 256 << 20;

pub const TYPE_CHAR: u32 = 1;
pub const TYPE_INT8: u32 = 2;
pub const TYPE_INT16: u32 = 3;
pub const TYPE_INT32: u32 = 4;
pub const TYPE_INT64: u32 = 5;
pub const TYPE_STRING: u32 = 6;
pub const TYPE_BIN: u32 = 7;
pub const TYPE_STRING_ARRAY: u32 = 8;
pub const TYPE_I18NSTRING: u32 = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub tag: u32,
    pub ty: u32,
    pub offset: u32,
    pub count: u32,
}

/// A parsed header: its index and its store. `section` names it in errors.
#[derive(Debug, Clone)]
pub struct Header {
    pub section: &'static str,
    pub entries: Vec<IndexEntry>,
    pub store: Vec<u8>,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Header {
    /// Read a header at file offset `offset` from `r`, which has `remaining` bytes
    /// left in the file. Sizes are checked against `remaining` before allocating.
    /// Returns the header and its total length in bytes (without padding).
    pub fn read<R: Read>(
        r: &mut R,
        section: &'static str,
        offset: u64,
        remaining: u64,
    ) -> Result<(Header, u64), RpmError> {
        let mut intro = [0u8; 16];
        if remaining < HEADER_INTRO {
            return Err(RpmError::Truncated {
                what: section,
                offset,
                need: HEADER_INTRO,
                have: remaining,
            });
        }
        read_exact(r, &mut intro, section, offset)?;
        if intro[..4] != HEADER_MAGIC {
            return Err(RpmError::BadHeaderMagic {
                section,
                offset,
                found: [intro[0], intro[1], intro[2], intro[3]],
            });
        }
        let nindex = be32(&intro[8..12]);
        let hsize = be32(&intro[12..16]);
        if nindex == 0 || nindex > MAX_INDEX_ENTRIES || hsize > MAX_STORE_BYTES {
            return Err(RpmError::HeaderSize {
                section,
                offset,
                nindex,
                hsize,
            });
        }
        let body = u64::from(nindex) * 16 + u64::from(hsize);
        if body > remaining - HEADER_INTRO {
            return Err(RpmError::Truncated {
                what: section,
                offset: offset + HEADER_INTRO,
                need: body,
                have: remaining - HEADER_INTRO,
            });
        }
        let mut index = vec![0u8; nindex as usize * 16];
        read_exact(r, &mut index, section, offset + HEADER_INTRO)?;
        let mut store = vec![0u8; hsize as usize];
        read_exact(
            r,
            &mut store,
            section,
            offset + HEADER_INTRO + index.len() as u64,
        )?;
        let entries = index
            .chunks_exact(16)
            .map(|e| IndexEntry {
                tag: be32(&e[0..4]),
                ty: be32(&e[4..8]),
                offset: be32(&e[8..12]),
                count: be32(&e[12..16]),
            })
            .collect();
        Ok((
            Header {
                section,
                entries,
                store,
            },
            HEADER_INTRO + body,
        ))
    }

    /// Parse a header from a byte slice (for tests and fuzzing).
    pub fn parse(bytes: &[u8], section: &'static str) -> Result<(Header, u64), RpmError> {
        let mut r = bytes;
        Header::read(&mut r, section, 0, bytes.len() as u64)
    }

    pub fn entry(&self, tag: u32) -> Option<&IndexEntry> {
        self.entries.iter().find(|e| e.tag == tag)
    }

    fn bad(&self, tag: u32, reason: String) -> RpmError {
        RpmError::Tag {
            section: self.section,
            tag,
            reason,
        }
    }

    /// The NUL-terminated strings starting at the entry's offset.
    fn strings(&self, e: &IndexEntry, max: u32) -> Result<Vec<String>, RpmError> {
        let mut pos = e.offset as usize;
        let n = e.count.min(max);
        if n as usize > self.store.len() {
            return Err(self.bad(
                e.tag,
                format!(
                    "count {} exceeds the store size {}",
                    e.count,
                    self.store.len()
                ),
            ));
        }
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let rest = self.store.get(pos..).ok_or_else(|| {
                self.bad(
                    e.tag,
                    format!("string {i} starts at store offset {pos}, past the store end"),
                )
            })?;
            let len = rest.iter().position(|&b| b == 0).ok_or_else(|| {
                self.bad(
                    e.tag,
                    format!("string {i} at store offset {pos} is not NUL-terminated"),
                )
            })?;
            let s = std::str::from_utf8(&rest[..len]).map_err(|_| {
                self.bad(
                    e.tag,
                    format!("string {i} at store offset {pos} is not UTF-8"),
                )
            })?;
            out.push(s.to_string());
            pos += len + 1;
        }
        Ok(out)
    }

    /// A single string (STRING, or the first of a STRING_ARRAY / I18NSTRING).
    pub fn string(&self, tag: u32) -> Result<Option<String>, RpmError> {
        let Some(e) = self.entry(tag) else {
            return Ok(None);
        };
        match e.ty {
            TYPE_STRING | TYPE_STRING_ARRAY | TYPE_I18NSTRING => {
                if e.count == 0 {
                    return Err(self.bad(tag, "count is 0".into()));
                }
                Ok(self.strings(e, 1)?.pop())
            }
            ty => Err(self.bad(tag, format!("type {ty} where a string was expected"))),
        }
    }

    pub fn string_array(&self, tag: u32) -> Result<Option<Vec<String>>, RpmError> {
        let Some(e) = self.entry(tag) else {
            return Ok(None);
        };
        match e.ty {
            TYPE_STRING_ARRAY | TYPE_I18NSTRING => Ok(Some(self.strings(e, u32::MAX)?)),
            TYPE_STRING if e.count == 1 => Ok(Some(self.strings(e, 1)?)),
            ty => Err(self.bad(tag, format!("type {ty} where a string array was expected"))),
        }
    }

    fn fixed(&self, e: &IndexEntry, width: usize) -> Result<&[u8], RpmError> {
        let start = e.offset as usize;
        let end = (e.count as usize)
            .checked_mul(width)
            .and_then(|n| n.checked_add(start))
            .filter(|&end| end <= self.store.len())
            .ok_or_else(|| {
                self.bad(
                    e.tag,
                    format!(
                        "{} values of {} bytes at store offset {} run past the store end ({})",
                        e.count,
                        width,
                        e.offset,
                        self.store.len()
                    ),
                )
            })?;
        Ok(&self.store[start..end])
    }

    /// An integer array of any width, widened to u64.
    pub fn int_array(&self, tag: u32) -> Result<Option<Vec<u64>>, RpmError> {
        let Some(e) = self.entry(tag) else {
            return Ok(None);
        };
        let width = match e.ty {
            TYPE_CHAR | TYPE_INT8 => 1,
            TYPE_INT16 => 2,
            TYPE_INT32 => 4,
            TYPE_INT64 => 8,
            ty => return Err(self.bad(tag, format!("type {ty} where integers were expected"))),
        };
        let bytes = self.fixed(e, width)?;
        Ok(Some(
            bytes
                .chunks_exact(width)
                .map(|c| c.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
                .collect(),
        ))
    }

    /// The raw bytes of a BIN entry.
    pub fn bin(&self, tag: u32) -> Result<Option<&[u8]>, RpmError> {
        match self.entry(tag) {
            None => Ok(None),
            Some(e) if e.ty == TYPE_BIN => self.fixed(e, 1).map(Some),
            Some(e) => Err(self.bad(tag, format!("type {} where binary was expected", e.ty))),
        }
    }
}

pub(super) fn read_exact<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    what: &'static str,
    offset: u64,
) -> Result<(), RpmError> {
    r.read_exact(buf).map_err(|source| {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            RpmError::Truncated {
                what,
                offset,
                need: buf.len() as u64,
                have: 0,
            }
        } else {
            RpmError::Read {
                what,
                offset,
                source,
            }
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Build a header from (tag, type, count, data) entries; data is appended to
    /// the store as-is (callers align it).
    pub(crate) fn build(entries: &[(u32, u32, u32, Vec<u8>)]) -> Vec<u8> {
        let mut index = Vec::new();
        let mut store = Vec::new();
        for (tag, ty, count, data) in entries {
            index.extend_from_slice(&tag.to_be_bytes());
            index.extend_from_slice(&ty.to_be_bytes());
            index.extend_from_slice(&(store.len() as u32).to_be_bytes());
            index.extend_from_slice(&count.to_be_bytes());
            store.extend_from_slice(data);
        }
        let mut out = HEADER_MAGIC.to_vec();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        out.extend_from_slice(&(store.len() as u32).to_be_bytes());
        out.extend_from_slice(&index);
        out.extend_from_slice(&store);
        out
    }

    #[test]
    fn reads_strings_and_ints() {
        let bytes = build(&[
            (1000, TYPE_STRING, 1, b"drv\0".to_vec()),
            (1117, TYPE_STRING_ARRAY, 2, b"a.ko\0b\0".to_vec()),
            (1030, TYPE_INT16, 2, vec![0x81, 0xa4, 0x41, 0xed]),
            (1028, TYPE_INT32, 1, vec![0, 0, 1, 0]),
        ]);
        let (h, len) = Header::parse(&bytes, "main header").unwrap();
        assert_eq!(len, bytes.len() as u64);
        assert_eq!(h.string(1000).unwrap().as_deref(), Some("drv"));
        assert_eq!(
            h.string_array(1117).unwrap().unwrap(),
            vec!["a.ko".to_string(), "b".to_string()]
        );
        assert_eq!(h.int_array(1030).unwrap().unwrap(), vec![0o100644, 0o40755]);
        assert_eq!(h.int_array(1028).unwrap().unwrap(), vec![256]);
        assert_eq!(h.string(9999).unwrap(), None);
        // Wrong type for the accessor.
        assert!(h.int_array(1000).is_err());
    }

    #[test]
    fn rejects_hostile_headers() {
        // Bad magic.
        let mut bytes = build(&[(1000, TYPE_STRING, 1, b"x\0".to_vec())]);
        bytes[0] = 0;
        let err = Header::parse(&bytes, "main header").unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");

        // Store size larger than the file.
        let mut bytes = build(&[(1000, TYPE_STRING, 1, b"x\0".to_vec())]);
        bytes[12..16].copy_from_slice(&1000u32.to_be_bytes());
        let err = Header::parse(&bytes, "main header").unwrap_err();
        assert!(matches!(err, RpmError::Truncated { .. }), "{err}");

        // Absurd index count.
        let mut bytes = build(&[(1000, TYPE_STRING, 1, b"x\0".to_vec())]);
        bytes[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Header::parse(&bytes, "main header").unwrap_err(),
            RpmError::HeaderSize { .. }
        ));

        // Unterminated string, offsets and counts past the store.
        let bytes = build(&[
            (1000, TYPE_STRING, 1, b"abc".to_vec()),
            (1117, TYPE_STRING_ARRAY, 0xffff_ffff, vec![]),
        ]);
        let (h, _) = Header::parse(&bytes, "main header").unwrap();
        assert!(
            h.string(1000)
                .unwrap_err()
                .to_string()
                .contains("NUL-terminated")
        );
        assert!(h.string_array(1117).is_err());
        let bytes = build(&[(1030, TYPE_INT32, 0x4000_0000, vec![0; 4])]);
        let (h, _) = Header::parse(&bytes, "main header").unwrap();
        let err = h.int_array(1030).unwrap_err();
        assert!(err.to_string().contains("tag 1030"), "{err}");
    }
}
