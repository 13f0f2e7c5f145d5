//! Directory records: one file or folder each, with its extent, flags, raw
//! identifier and system use area (where Rock Ridge lives).

const FIXED_LEN: usize = 33;
const FLAG_DIRECTORY: u8 = 0x02;
const FLAG_ASSOCIATED: u8 = 0x04;
const FLAG_MORE_EXTENTS: u8 = 0x80;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// First logical block of the data.
    pub extent: u32,
    pub size: u32,
    pub flags: u8,
    /// Non-zero for interleaved files.
    pub unit_size: u8,
    pub gap: u8,
    pub identifier: Vec<u8>,
    pub system_use: Vec<u8>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Record {
    /// Parse one record; `raw` starts at its length byte and may run past it.
    pub fn parse(raw: &[u8]) -> Result<Record, &'static str> {
        let len = usize::from(*raw.first().ok_or("empty record")?);
        if len < FIXED_LEN + 1 {
            return Err("record shorter than its fixed fields");
        }
        let raw = raw.get(..len).ok_or("record runs past its directory")?;
        let name_len = usize::from(raw[32]);
        let name_end = FIXED_LEN + name_len;
        if name_len == 0 || name_end > len {
            return Err("identifier length does not fit the record");
        }
        // The identifier is padded to an even offset before the system use area.
        let su_start = (name_end + name_end % 2).min(len);
        Ok(Record {
            extent: le32(raw, 2),
            size: le32(raw, 10),
            flags: raw[25],
            unit_size: raw[26],
            gap: raw[27],
            identifier: raw[FIXED_LEN..name_end].to_vec(),
            system_use: raw[su_start..].to_vec(),
        })
    }

    pub fn is_dir(&self) -> bool {
        self.flags & FLAG_DIRECTORY != 0
    }

    pub fn is_associated(&self) -> bool {
        self.flags & FLAG_ASSOCIATED != 0
    }

    /// More records of the same file follow (files over 4 GiB).
    pub fn has_more_extents(&self) -> bool {
        self.flags & FLAG_MORE_EXTENTS != 0
    }

    /// `.` and `..` are stored as the single bytes 0 and 1.
    pub fn is_self_or_parent(&self) -> bool {
        matches!(self.identifier.as_slice(), [0] | [1])
    }
}

/// Records of a directory's bytes with their offsets. A zero length byte
/// means the rest of that 2048-byte sector is padding.
pub fn records(bytes: &[u8]) -> impl Iterator<Item = (usize, Result<Record, &'static str>)> + '_ {
    let sector = super::SECTOR as usize;
    let mut pos = 0;
    std::iter::from_fn(move || {
        while pos < bytes.len() {
            if bytes[pos] == 0 {
                pos = (pos / sector + 1) * sector;
                continue;
            }
            let at = pos;
            let parsed = Record::parse(&bytes[at..]);
            // After a bad record nothing later can be trusted.
            pos = match parsed {
                Ok(_) => at + usize::from(bytes[at]),
                Err(_) => bytes.len(),
            };
            return Some((at, parsed));
        }
        None
    })
}

#[cfg(test)]
pub(crate) fn encode(extent: u32, size: u32, flags: u8, identifier: &[u8], su: &[u8]) -> Vec<u8> {
    let name_end = FIXED_LEN + identifier.len();
    let pad = name_end % 2;
    let len = name_end + pad + su.len();
    let mut r = vec![0u8; len];
    r[0] = len as u8;
    r[2..6].copy_from_slice(&extent.to_le_bytes());
    r[6..10].copy_from_slice(&extent.to_be_bytes());
    r[10..14].copy_from_slice(&size.to_le_bytes());
    r[14..18].copy_from_slice(&size.to_be_bytes());
    r[25] = flags;
    r[28] = 1;
    r[31] = 1;
    r[32] = identifier.len() as u8;
    r[FIXED_LEN..name_end].copy_from_slice(identifier);
    r[name_end + pad..].copy_from_slice(su);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips() {
        let raw = encode(20, 300, FLAG_DIRECTORY, b"DIR", b"NM\x05\x01\x00");
        let r = Record::parse(&raw).unwrap();
        assert_eq!((r.extent, r.size, r.is_dir()), (20, 300, true));
        assert_eq!(r.identifier, b"DIR");
        assert_eq!(r.system_use, b"NM\x05\x01\x00");
    }

    #[test]
    fn lengths_that_do_not_fit_are_refused() {
        let mut raw = encode(20, 300, 0, b"FILE.TXT;1", b"");
        assert!(Record::parse(&raw[..raw.len() - 1]).is_err());
        raw[32] = 200;
        assert!(Record::parse(&raw).is_err());
        raw[0] = 10;
        assert!(Record::parse(&raw).is_err());
    }

    #[test]
    fn padding_skips_to_the_next_sector() {
        let mut dir = vec![0u8; 4096];
        let a = encode(20, 1, 0, b"A;1", b"");
        let b = encode(21, 1, 0, b"B;1", b"");
        dir[..a.len()].copy_from_slice(&a);
        dir[2048..2048 + b.len()].copy_from_slice(&b);
        let names: Vec<Vec<u8>> = records(&dir).map(|(_, r)| r.unwrap().identifier).collect();
        assert_eq!(names, vec![b"A;1".to_vec(), b"B;1".to_vec()]);
    }
}

#[cfg(test)]
mod padding_tests {
    use super::*;

    /// The root `.` record as genisoimage writes it: a 1-byte identifier
    /// (odd length) has no padding byte, so SUSP starts right after it.
    #[test]
    fn odd_identifiers_have_no_padding_byte() {
        let mut raw = vec![0u8; 41];
        raw[0] = 41;
        raw[25] = FLAG_DIRECTORY;
        raw[32] = 1;
        raw[34..41].copy_from_slice(b"SP\x07\x01\xBE\xEF\x00");
        let r = Record::parse(&raw).unwrap();
        assert!(r.is_self_or_parent());
        assert_eq!(r.system_use, b"SP\x07\x01\xBE\xEF\x00");
        // An even identifier length is followed by one padding byte.
        let mut raw = vec![0u8; 36 + 7];
        raw[0] = 43;
        raw[32] = 2;
        raw[33..35].copy_from_slice(b"AB");
        raw[36..43].copy_from_slice(b"SP\x07\x01\xBE\xEF\x00");
        assert_eq!(
            Record::parse(&raw).unwrap().system_use,
            b"SP\x07\x01\xBE\xEF\x00"
        );
    }
}
