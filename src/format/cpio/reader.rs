//! Parsing one newc archive out of a byte buffer, bounds-checked at every step.

use super::{Blob, CpioError, Entry, FileType, HEADER_LEN, MAGIC_CRC, MAGIC_NEWC, TRAILER};

/// The entries of one archive (the trailer excluded) and where it ended.
#[derive(Debug, Clone)]
pub struct Archive {
    pub entries: Vec<Entry>,
    /// Offset in the buffer just past the trailer entry and its padding.
    pub end: usize,
}

const FIELDS: [&str; 13] = [
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
];

fn hex_field(header: &[u8], index: usize, offset: usize) -> Result<u32, CpioError> {
    let start = 6 + 8 * index;
    let digits = header.get(start..start + 8).ok_or(CpioError::Truncated {
        offset,
        what: "header",
        needed: HEADER_LEN as u64,
        available: header.len(),
    })?;
    let mut value: u32 = 0;
    for &d in digits {
        let nibble = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => {
                return Err(CpioError::BadNumber {
                    offset: offset + start,
                    field: FIELDS[index],
                });
            }
        };
        value = (value << 4) | u32::from(nibble);
    }
    Ok(value)
}

/// `start + len` padded to 4 relative to `base`, checked against `limit`.
fn padded_end(base: usize, pos: usize, len: u64) -> Option<u64> {
    let rel = (pos - base) as u64 + len;
    let padded = rel.checked_add(3)? & !3;
    Some(base as u64 + padded)
}

/// Parse the archive that starts at `start` in `buf`, up to and including its
/// `TRAILER!!!` entry. Padding is counted from `start` (archives start 4-aligned in
/// a well-formed initramfs). Offsets in errors are offsets in `buf`.
pub fn read_archive(buf: &Blob, start: usize) -> Result<Archive, CpioError> {
    let bytes: &[u8] = buf;
    let mut pos = start;
    let mut entries = Vec::new();
    loop {
        let available = bytes.len().saturating_sub(pos);
        if available == 0 {
            return Err(CpioError::NoTrailer { offset: pos });
        }
        let Some(header) = bytes.get(pos..pos + HEADER_LEN) else {
            if bytes.get(pos..).is_some_and(|rest| {
                rest.len() >= 6 && (&rest[..6] == MAGIC_NEWC || &rest[..6] == MAGIC_CRC)
            }) || available < 6
            {
                return Err(CpioError::Truncated {
                    offset: pos,
                    what: "header",
                    needed: HEADER_LEN as u64,
                    available,
                });
            }
            return Err(bad_magic(bytes, pos));
        };
        let magic = &header[..6];
        let with_check = if magic == MAGIC_NEWC {
            false
        } else if magic == MAGIC_CRC {
            true
        } else {
            return Err(bad_magic(bytes, pos));
        };
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            *v = hex_field(header, i, pos)?;
        }
        let [
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            filesize,
            dev_major,
            dev_minor,
            rdev_major,
            rdev_minor,
            namesize,
            check,
        ] = f;
        let name_start = pos + HEADER_LEN;
        if namesize == 0 {
            return Err(CpioError::BadName { offset: pos });
        }
        let name_end = name_start as u64 + u64::from(namesize);
        if name_end > bytes.len() as u64 {
            return Err(CpioError::Truncated {
                offset: pos,
                what: "name",
                needed: u64::from(namesize),
                available: bytes.len() - name_start.min(bytes.len()),
            });
        }
        let name_end = name_end as usize;
        let raw_name = &bytes[name_start..name_end];
        let (last, name) = raw_name
            .split_last()
            .ok_or(CpioError::BadName { offset: pos })?;
        if *last != 0 || name.contains(&0) {
            return Err(CpioError::BadName { offset: pos });
        }
        let data_start =
            padded_end(start, name_end, 0).ok_or(CpioError::BadName { offset: pos })?;
        let data_end = data_start + u64::from(filesize);
        if data_end > bytes.len() as u64 {
            return Err(CpioError::Truncated {
                offset: pos,
                what: "file data",
                needed: u64::from(filesize),
                available: bytes.len().saturating_sub(data_start as usize),
            });
        }
        let (data_start, data_end) = (data_start as usize, data_end as usize);
        // Data padding may be missing at the very end of the buffer; nothing follows then.
        let next = padded_end(start, data_end, 0)
            .map(|n| n.min(bytes.len() as u64) as usize)
            .unwrap_or(bytes.len());
        if name == TRAILER {
            return Ok(Archive { entries, end: next });
        }
        let data = buf.slice(data_start..data_end);
        if with_check && FileType::from_mode(mode) == FileType::File {
            let sum = data
                .iter()
                .fold(0u32, |acc, &b| acc.wrapping_add(u32::from(b)));
            if sum != check {
                return Err(CpioError::Checksum {
                    offset: pos,
                    name: String::from_utf8_lossy(name).into_owned(),
                    expected: check,
                    found: sum,
                });
            }
        }
        entries.push(Entry {
            name: name.to_vec(),
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            dev_major,
            dev_minor,
            rdev_major,
            rdev_minor,
            data,
        });
        pos = next;
    }
}

fn bad_magic(bytes: &[u8], pos: usize) -> CpioError {
    let found_bytes = &bytes[pos.min(bytes.len())..(pos + 6).min(bytes.len())];
    let found = String::from_utf8_lossy(found_bytes).into_owned();
    if found_bytes == b"070707"
        || found_bytes.starts_with(&[0xc7, 0x71])
        || found_bytes.starts_with(&[0x71, 0xc7])
    {
        CpioError::UnsupportedFormat { offset: pos, found }
    } else {
        CpioError::BadMagic { offset: pos, found }
    }
}
