//! System Use Sharing Protocol entries (where Rock Ridge keeps names), with
//! continuation areas followed a bounded number of times.

use super::IsoReadError;

/// Continuation areas followed per record; real names need one at most.
const MAX_CONTINUATIONS: usize = 8;
/// A continuation area lies within one logical block.
pub const MAX_AREA: u32 = 2048;

/// One entry: its two-letter signature and the bytes after the 4-byte header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub signature: [u8; 2],
    pub data: Vec<u8>,
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Where a CE entry points: block, offset in it, length.
fn continuation(data: &[u8]) -> Option<(u32, u32, u32)> {
    Some((le32(data, 0)?, le32(data, 8)?, le32(data, 16)?))
}

/// Entries of one area; a malformed entry ends the area (as the kernel does).
fn parse_area(area: &[u8], out: &mut Vec<Entry>) -> Option<(u32, u32, u32)> {
    let mut next = None;
    let mut pos = 0;
    while pos + 4 <= area.len() {
        let len = usize::from(area[pos + 2]);
        if len < 4 || pos + len > area.len() {
            break;
        }
        let signature = [area[pos], area[pos + 1]];
        let data = &area[pos + 4..pos + len];
        match &signature {
            b"ST" => break,
            b"CE" => next = continuation(data),
            _ => out.push(Entry {
                signature,
                data: data.to_vec(),
            }),
        }
        pos += len;
    }
    next
}

/// All entries of a record's system use area (after `skip` bytes, from the
/// root's SP entry) and its continuation areas, read with `read_area`.
pub fn entries(
    system_use: &[u8],
    skip: usize,
    mut read_area: impl FnMut(u32, u32, u32) -> Result<Vec<u8>, IsoReadError>,
) -> Result<Vec<Entry>, IsoReadError> {
    let mut out = Vec::new();
    let mut next = parse_area(system_use.get(skip..).unwrap_or_default(), &mut out);
    for _ in 0..MAX_CONTINUATIONS {
        let Some((block, offset, len)) = next else {
            break;
        };
        let area = read_area(block, offset, len.min(MAX_AREA))?;
        next = parse_area(&area, &mut out);
    }
    Ok(out)
}

/// The SP entry opening the root's `.` record: SUSP is in use, and how many
/// bytes to skip in every system use area.
pub fn sharing_protocol_skip(root_dot_system_use: &[u8]) -> Option<usize> {
    let su = root_dot_system_use;
    (su.len() >= 7 && su[..4] == *b"SP\x07\x01" && su[4..6] == [0xBE, 0xEF])
        .then(|| usize::from(su[6]))
}

/// The Rock Ridge name of a record: NM pieces joined; None when there is
/// none (or it names `.` or `..`).
pub fn rock_ridge_name(entries: &[Entry]) -> Option<Vec<u8>> {
    let mut name = Vec::new();
    let mut found = false;
    for e in entries.iter().filter(|e| e.signature == *b"NM") {
        let Some((&flags, piece)) = e.data.split_first() else {
            continue;
        };
        if flags & 0x06 != 0 {
            return None;
        }
        found = true;
        name.extend_from_slice(piece);
        if flags & 0x01 == 0 {
            break;
        }
    }
    (found && !name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sig: &[u8; 2], data: &[u8]) -> Vec<u8> {
        let mut e = vec![sig[0], sig[1], (data.len() + 4) as u8, 1];
        e.extend_from_slice(data);
        e
    }

    fn ce(block: u32, offset: u32, len: u32) -> Vec<u8> {
        let mut d = Vec::new();
        for v in [block, offset, len] {
            d.extend_from_slice(&v.to_le_bytes());
            d.extend_from_slice(&v.to_be_bytes());
        }
        entry(b"CE", &d)
    }

    #[test]
    fn names_continue_across_entries_and_areas() {
        let mut su = entry(b"NM", b"\x01long_");
        su.extend(ce(30, 100, 11));
        let area = entry(b"NM", b"\x00name.json");
        let mut asked = Vec::new();
        let all = entries(&su, 0, |b, o, l| {
            asked.push((b, o, l));
            Ok(area.clone())
        })
        .unwrap();
        assert_eq!(asked, vec![(30, 100, 11)]);
        assert_eq!(rock_ridge_name(&all).unwrap(), b"long_name.json");
    }

    #[test]
    fn continuation_loops_stop() {
        let su = ce(30, 0, 28);
        let mut reads = 0;
        let all = entries(&su, 0, |_, _, _| {
            reads += 1;
            Ok(ce(30, 0, 28))
        })
        .unwrap();
        assert!(all.is_empty());
        assert_eq!(reads, MAX_CONTINUATIONS);
    }

    #[test]
    fn malformed_entries_end_the_area() {
        let mut su = entry(b"NM", b"\x00ok");
        su.extend_from_slice(b"NM\x02\x01");
        su.extend(entry(b"NM", b"\x00lost"));
        let all = entries(&su, 0, |_, _, _| unreachable!()).unwrap();
        assert_eq!(rock_ridge_name(&all).unwrap(), b"ok");
        let short = entries(b"NM\xff\x01", 0, |_, _, _| unreachable!()).unwrap();
        assert!(short.is_empty());
    }

    #[test]
    fn sp_gives_the_skip() {
        assert_eq!(sharing_protocol_skip(b"SP\x07\x01\xBE\xEF\x00PX"), Some(0));
        assert_eq!(sharing_protocol_skip(b"SP\x07\x01\xBE\xEE\x00"), None);
        assert_eq!(sharing_protocol_skip(b"SP"), None);
    }
}
