//! The GPT reader. Hostile input is the normal case here: every header field is
//! checked before use, arithmetic on disk values is checked, and allocations are
//! bounded by [`MAX_ENTRY_ARRAY_BYTES`].

use uuid::Uuid;

use super::{
    GptError, GptPartition, GptTable, HeaderAt, HeaderKind, MAX_ENTRY_ARRAY_BYTES, MAX_ENTRY_SIZE,
    SECTOR_SIZE, types,
};
use crate::format::BlockSource;

const SIGNATURE: &[u8; 8] = b"EFI PART";
const MIN_HEADER_SIZE: u32 = 92;
const MIN_ENTRY_SIZE: u32 = 128;
/// Bytes of an entry the spec defines; the rest of a larger entry is reserved.
const ENTRY_FIELDS: usize = 128;

type Sector = [u8; SECTOR_SIZE as usize];

/// Read the GPT of `disk`.
///
/// `Ok(None)` when the disk has no GPT: it is shorter than 3 sectors, LBA 0 holds no
/// protective MBR (0x55AA and a partition record of type 0xEE; hybrid MBRs count),
/// or neither LBA 1 nor the last LBA starts with the "EFI PART" signature.
///
/// When the primary header or its entry array is damaged the table is read from
/// the backup header at the last LBA and [`GptTable::primary_ok`] is false. When
/// both are damaged the error ([`GptError::NoValidTable`]) names both problems.
pub fn read_gpt(disk: &dyn BlockSource) -> Result<Option<GptTable>, GptError> {
    let sectors = disk.virtual_size() / SECTOR_SIZE;
    if sectors < 3 {
        return Ok(None);
    }
    let last = sectors - 1;
    if !has_protective_mbr(&read_sector(disk, 0)?) {
        return Ok(None);
    }
    let primary_sector = read_sector(disk, 1)?;
    let backup_sector = read_sector(disk, last)?;
    if primary_sector[..8] != *SIGNATURE && backup_sector[..8] != *SIGNATURE {
        return Ok(None);
    }

    let primary_at = HeaderAt {
        kind: HeaderKind::Primary,
        lba: 1,
    };
    let backup_at = HeaderAt {
        kind: HeaderKind::Backup,
        lba: last,
    };
    match load(disk, sectors, primary_at, &primary_sector) {
        Ok(primary) => {
            let backup_ok = primary.header.alternate_lba == last
                && load(disk, sectors, backup_at, &backup_sector)
                    .is_ok_and(|backup| backup.mirrors(&primary));
            Ok(Some(primary.into_table(true, backup_ok)))
        }
        Err(primary_err) => match load(disk, sectors, backup_at, &backup_sector) {
            Ok(backup) => Ok(Some(backup.into_table(false, true))),
            Err(backup_err) => Err(GptError::NoValidTable {
                primary: Box::new(primary_err),
                backup: Box::new(backup_err),
            }),
        },
    }
}

/// The fields of a header that passed every check in [`parse_header`].
#[derive(Debug)]
struct Header {
    at: HeaderAt,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: Uuid,
    entries_lba: u64,
    num_entries: u32,
    entry_size: u32,
    entries_crc: u32,
}

/// A header with its validated partitions.
struct Loaded {
    header: Header,
    partitions: Vec<GptPartition>,
}

impl Loaded {
    /// True when `self` (a backup) describes the same table as `primary` and the
    /// two headers point at each other.
    fn mirrors(&self, primary: &Loaded) -> bool {
        let (b, p) = (&self.header, &primary.header);
        b.alternate_lba == p.at.lba
            && b.at.lba == p.alternate_lba
            && b.disk_guid == p.disk_guid
            && b.first_usable == p.first_usable
            && b.last_usable == p.last_usable
            && b.num_entries == p.num_entries
            && b.entry_size == p.entry_size
            && b.entries_crc == p.entries_crc
            && self.partitions == primary.partitions
    }

    fn into_table(self, primary_ok: bool, backup_ok: bool) -> GptTable {
        GptTable {
            disk_guid: self.header.disk_guid,
            sector_size: SECTOR_SIZE,
            first_usable_lba: self.header.first_usable,
            last_usable_lba: self.header.last_usable,
            partitions: self.partitions,
            primary_ok,
            backup_ok,
        }
    }
}

fn load(
    disk: &dyn BlockSource,
    sectors: u64,
    at: HeaderAt,
    sector: &Sector,
) -> Result<Loaded, GptError> {
    let header = parse_header(at, sector, sectors)?;
    let array = read_entry_array(disk, &header)?;
    let partitions = parse_entries(&header, &array)?;
    Ok(Loaded { header, partitions })
}

fn read_sector(disk: &dyn BlockSource, lba: u64) -> Result<Sector, GptError> {
    let mut buf = [0u8; SECTOR_SIZE as usize];
    read_at(disk, &mut buf, lba.saturating_mul(SECTOR_SIZE))?;
    Ok(buf)
}

fn read_at(disk: &dyn BlockSource, buf: &mut [u8], offset: u64) -> Result<(), GptError> {
    disk.read_exact_at(buf, offset)
        .map_err(|source| GptError::Read {
            offset,
            len: buf.len() as u64,
            source,
        })
}

fn has_protective_mbr(mbr: &Sector) -> bool {
    mbr[510..512] == [0x55, 0xAA] && (0..4).any(|i| mbr[446 + 16 * i + 4] == 0xEE)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// GUIDs are stored with their first three fields little-endian.
fn guid(b: &[u8], at: usize) -> Uuid {
    let mut x = [0u8; 16];
    x.copy_from_slice(&b[at..at + 16]);
    Uuid::from_bytes_le(x)
}

/// CRC32 of the first `size` header bytes with the CRC field (bytes 16..20) taken
/// as zero. `size` must be at least 20 and at most the buffer length.
pub(super) fn header_crc(header: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..16]);
    h.update(&[0; 4]);
    h.update(&header[20..]);
    h.finalize()
}

/// A GPT name: UTF-16LE code units up to the first NUL.
pub(super) fn decode_name(raw: &[u8]) -> String {
    let units = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0);
    char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

fn parse_header(at: HeaderAt, s: &Sector, sectors: u64) -> Result<Header, GptError> {
    let last = sectors - 1;
    let bad = |field: &'static str, offset: usize, value: u64, problem: String| {
        Err(GptError::HeaderField {
            at,
            field,
            offset,
            value,
            problem,
        })
    };

    if s[..8] != *SIGNATURE {
        return Err(GptError::NoSignature { at });
    }
    let header_size = le32(s, 12);
    if header_size < MIN_HEADER_SIZE || u64::from(header_size) > SECTOR_SIZE {
        return bad(
            "header size",
            12,
            header_size.into(),
            format!("must be {MIN_HEADER_SIZE}..={SECTOR_SIZE}"),
        );
    }
    let stored = le32(s, 16);
    let computed = header_crc(&s[..header_size as usize]);
    if stored != computed {
        return Err(GptError::HeaderCrc {
            at,
            stored,
            computed,
            size: header_size,
        });
    }

    let my_lba = le64(s, 24);
    if my_lba != at.lba {
        return bad(
            "my LBA",
            24,
            my_lba,
            format!("the header was read from LBA {}", at.lba),
        );
    }
    let alternate_lba = le64(s, 32);
    if alternate_lba > last {
        return bad(
            "alternate LBA",
            32,
            alternate_lba,
            format!("beyond the last LBA {last} of the disk"),
        );
    }
    if alternate_lba == 0 || alternate_lba == my_lba {
        return bad(
            "alternate LBA",
            32,
            alternate_lba,
            "must be the LBA of the other header".into(),
        );
    }

    let first_usable = le64(s, 40);
    let last_usable = le64(s, 48);
    if last_usable > last {
        return bad(
            "last usable LBA",
            48,
            last_usable,
            format!("beyond the last LBA {last} of the disk"),
        );
    }
    if first_usable > last_usable {
        return bad(
            "first usable LBA",
            40,
            first_usable,
            format!("greater than the last usable LBA {last_usable}"),
        );
    }
    let reserved = [
        (0, "the protective MBR"),
        (my_lba, "this header"),
        (alternate_lba, "the alternate header"),
    ];
    for (lba, what) in reserved {
        if (first_usable..=last_usable).contains(&lba) {
            return bad(
                "first usable LBA",
                40,
                first_usable,
                format!("usable range {first_usable}..={last_usable} contains LBA {lba} ({what})"),
            );
        }
    }

    let disk_guid = guid(s, 56);
    let entries_lba = le64(s, 72);
    let num_entries = le32(s, 80);
    let entry_size = le32(s, 84);
    let entries_crc = le32(s, 88);

    if entry_size < MIN_ENTRY_SIZE || !entry_size.is_multiple_of(8) || entry_size > MAX_ENTRY_SIZE {
        return bad(
            "partition entry size",
            84,
            entry_size.into(),
            format!("must be a multiple of 8 in {MIN_ENTRY_SIZE}..={MAX_ENTRY_SIZE}"),
        );
    }
    let array_bytes = u64::from(num_entries) * u64::from(entry_size);
    if array_bytes > MAX_ENTRY_ARRAY_BYTES {
        return bad(
            "number of partition entries",
            80,
            num_entries.into(),
            format!(
                "{num_entries} entries of {entry_size} bytes exceed the {MAX_ENTRY_ARRAY_BYTES}-byte limit"
            ),
        );
    }
    let array_sectors = array_bytes.div_ceil(SECTOR_SIZE);
    if array_sectors > 0 {
        let array_last = match entries_lba.checked_add(array_sectors - 1) {
            Some(l) if l <= last => l,
            _ => {
                return bad(
                    "partition entry array LBA",
                    72,
                    entries_lba,
                    format!(
                        "the array of {array_sectors} sectors does not end before the last LBA {last} of the disk"
                    ),
                );
            }
        };
        let array = entries_lba..=array_last;
        for (lba, what) in reserved {
            if array.contains(&lba) {
                return bad(
                    "partition entry array LBA",
                    72,
                    entries_lba,
                    format!(
                        "the array (LBA {entries_lba}..={array_last}) contains LBA {lba} ({what})"
                    ),
                );
            }
        }
        if entries_lba <= last_usable && array_last >= first_usable {
            return bad(
                "partition entry array LBA",
                72,
                entries_lba,
                format!(
                    "the array (LBA {entries_lba}..={array_last}) overlaps the usable range {first_usable}..={last_usable}"
                ),
            );
        }
    }

    Ok(Header {
        at,
        alternate_lba,
        first_usable,
        last_usable,
        disk_guid,
        entries_lba,
        num_entries,
        entry_size,
        entries_crc,
    })
}

fn read_entry_array(disk: &dyn BlockSource, h: &Header) -> Result<Vec<u8>, GptError> {
    // parse_header bounded both: at most MAX_ENTRY_ARRAY_BYTES, inside the disk.
    let len = u64::from(h.num_entries) * u64::from(h.entry_size);
    let mut array = vec![0u8; len as usize];
    let offset = h.entries_lba.saturating_mul(SECTOR_SIZE);
    read_at(disk, &mut array, offset)?;
    let computed = crc32fast::hash(&array);
    if computed != h.entries_crc {
        return Err(GptError::EntriesCrc {
            at: h.at,
            lba: h.entries_lba,
            len,
            stored: h.entries_crc,
            computed,
        });
    }
    Ok(array)
}

fn parse_entries(h: &Header, array: &[u8]) -> Result<Vec<GptPartition>, GptError> {
    let entry_size = h.entry_size as usize;
    let array_offset = h.entries_lba.saturating_mul(SECTOR_SIZE);
    let mut partitions = Vec::new();
    for (index, e) in array.chunks_exact(entry_size).enumerate() {
        let number = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let e = &e[..ENTRY_FIELDS];
        let type_guid = guid(e, 0);
        if type_guid.is_nil() {
            continue;
        }
        let offset = array_offset.saturating_add((index * entry_size) as u64);
        let first_lba = le64(e, 32);
        let last_lba = le64(e, 40);
        let bad = |problem: String| {
            Err(GptError::Partition {
                at: h.at,
                number,
                offset,
                problem,
            })
        };
        if first_lba > last_lba {
            return bad(format!(
                "first LBA {first_lba} is after last LBA {last_lba}"
            ));
        }
        if first_lba < h.first_usable || last_lba > h.last_usable {
            return bad(format!(
                "LBA {first_lba}..={last_lba} is outside the usable range {}..={}",
                h.first_usable, h.last_usable
            ));
        }
        partitions.push(GptPartition {
            number,
            type_guid,
            type_name: types::type_name(&type_guid),
            part_guid: guid(e, 16),
            first_lba,
            last_lba,
            attributes: le64(e, 48),
            name: decode_name(&e[56..ENTRY_FIELDS]),
        });
    }

    let mut by_start: Vec<&GptPartition> = partitions.iter().collect();
    by_start.sort_by_key(|p| (p.first_lba, p.number));
    for pair in by_start.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.first_lba <= a.last_lba {
            return Err(GptError::Overlap {
                at: h.at,
                a: a.number,
                a_first: a.first_lba,
                a_last: a.last_lba,
                b: b.number,
                b_first: b.first_lba,
                b_last: b.last_lba,
            });
        }
    }
    Ok(partitions)
}

// Used by unit tests to spell out on-disk names.
#[cfg(test)]
pub(super) fn encode_name(name: &str) -> [u8; 72] {
    let mut out = [0u8; 72];
    for (i, u) in name.encode_utf16().take(36).enumerate() {
        out[2 * i..2 * i + 2].copy_from_slice(&u.to_le_bytes());
    }
    out
}

#[cfg(test)]
#[path = "read_tests.rs"]
mod tests;
