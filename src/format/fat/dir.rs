//! Directory entries: 32-byte short entries, VFAT long-name entries, and the byte
//! image of a whole directory.

use super::name::{ShortName, lfn_checksum};
use super::time::DosTime;

pub const ENTRY_SIZE: usize = 32;

pub const ATTR_VOLUME_ID: u8 = 0x08;
pub const ATTR_DIRECTORY: u8 = 0x10;
pub const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_LONG_NAME: u8 = 0x0F;

/// UTF-16 units in one long-name entry.
const LFN_UNITS: usize = 13;
/// Byte offsets of the 13 UTF-16 units inside a long-name entry.
const LFN_OFFSETS: [usize; LFN_UNITS] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
/// Marks the long-name entry that holds the end of the name (stored first).
const LFN_LAST: u8 = 0x40;

pub const DOT: ShortName = *b".          ";
pub const DOTDOT: ShortName = *b"..         ";

/// One short (8.3) directory entry.
pub fn short_entry(
    name: &ShortName,
    attr: u8,
    cluster: u32,
    size: u32,
    when: &DosTime,
) -> [u8; ENTRY_SIZE] {
    let mut e = [0u8; ENTRY_SIZE];
    e[0..11].copy_from_slice(name);
    e[11] = attr;
    // 12: reserved (NT case flags), left 0.
    e[13] = when.hundredths;
    e[14..16].copy_from_slice(&when.time.to_le_bytes());
    e[16..18].copy_from_slice(&when.date.to_le_bytes());
    e[18..20].copy_from_slice(&when.date.to_le_bytes()); // last access date
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&when.time.to_le_bytes());
    e[24..26].copy_from_slice(&when.date.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// How many long-name entries `long` takes.
pub fn lfn_slots(long: &str) -> usize {
    long.encode_utf16().count().div_ceil(LFN_UNITS)
}

/// The long-name entries of `long` in on-disk order (the last part of the name
/// first), each carrying the checksum of `short`, the entry that follows them.
pub fn lfn_entries(long: &str, short: &ShortName) -> Vec<[u8; ENTRY_SIZE]> {
    let units: Vec<u16> = long.encode_utf16().collect();
    let checksum = lfn_checksum(short);
    let count = units.len().div_ceil(LFN_UNITS);
    let mut entries = Vec::with_capacity(count);
    for seq in (1..=count).rev() {
        let part = &units[(seq - 1) * LFN_UNITS..units.len().min(seq * LFN_UNITS)];
        let mut e = [0u8; ENTRY_SIZE];
        // Sequence numbers run 1..=20, so they fit a byte.
        e[0] = seq as u8 | if seq == count { LFN_LAST } else { 0 };
        e[11] = ATTR_LONG_NAME;
        e[13] = checksum;
        for (i, &off) in LFN_OFFSETS.iter().enumerate() {
            // The name, then one 0x0000 terminator if there is room, then 0xFFFF.
            let unit = match i.cmp(&part.len()) {
                std::cmp::Ordering::Less => part[i],
                std::cmp::Ordering::Equal => 0x0000,
                std::cmp::Ordering::Greater => 0xFFFF,
            };
            e[off..off + 2].copy_from_slice(&unit.to_le_bytes());
        }
        entries.push(e);
    }
    entries
}

/// Builds the bytes of one directory, entry after entry.
#[derive(Default)]
pub struct DirBuilder {
    bytes: Vec<u8>,
}

impl DirBuilder {
    pub fn push(&mut self, entry: &[u8; ENTRY_SIZE]) {
        self.bytes.extend_from_slice(entry);
    }

    /// A named entry: its long-name entries when `long` is given, then the short one.
    pub fn push_named(
        &mut self,
        long: Option<&str>,
        short: &ShortName,
        attr: u8,
        cluster: u32,
        size: u32,
        when: &DosTime,
    ) {
        if let Some(long) = long {
            for e in lfn_entries(long, short) {
                self.push(&e);
            }
        }
        self.push(&short_entry(short, attr, cluster, size, when));
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(e: &[u8; ENTRY_SIZE], i: usize) -> u16 {
        u16::from_le_bytes([e[LFN_OFFSETS[i]], e[LFN_OFFSETS[i] + 1]])
    }

    #[test]
    fn long_name_entries() {
        let short = *b"LONGFI~1TXT";
        let entries = lfn_entries("longfilename1.txt", &short);
        assert_eq!(entries.len(), 2);
        assert_eq!(lfn_slots("longfilename1.txt"), 2);
        // Same bytes mtools writes for this name.
        let first: Vec<u8> = [
            "422e0074007800740000000f00d4ffffffffffffffffffffffff0000ffffffff",
            "016c006f006e00670066000f00d469006c0065006e0061006d00000065003100",
        ]
        .iter()
        .flat_map(|h| {
            (0..h.len())
                .step_by(2)
                .map(move |i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        })
        .collect();
        assert_eq!(entries.concat(), first);
    }

    #[test]
    fn exact_multiple_has_no_terminator() {
        let name = "abcdefghijklm"; // 13 units
        let entries = lfn_entries(name, b"ABCDEF~1   ");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0][0], 0x41);
        assert_eq!(unit(&entries[0], 12), u16::from(b'm'));
    }

    #[test]
    fn short_entry_fields() {
        let when = DosTime {
            date: 0x1234,
            time: 0x5678,
            hundredths: 100,
        };
        let e = short_entry(b"FOO     BAR", ATTR_ARCHIVE, 0x0003_0002, 77, &when);
        assert_eq!(&e[0..11], b"FOO     BAR");
        assert_eq!(e[11], ATTR_ARCHIVE);
        assert_eq!(e[13], 100);
        assert_eq!(&e[20..22], &[3, 0]);
        assert_eq!(&e[26..28], &[2, 0]);
        assert_eq!(&e[28..32], &[77, 0, 0, 0]);
        assert_eq!(&e[22..26], &[0x78, 0x56, 0x34, 0x12]);
    }
}
