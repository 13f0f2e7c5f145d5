//! Reader unit tests on small hand-built images (1 MiB, 2048 sectors).

use super::*;
use crate::format::MemDisk;
use crate::format::gpt::{EFI_SYSTEM, LINUX_FILESYSTEM, LINUX_SWAP};

const SECTORS: u64 = 2048;
const LAST: u64 = SECTORS - 1;
const DISK_GUID: Uuid = Uuid::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);

struct Part {
    slot: usize,
    type_guid: Uuid,
    first: u64,
    last: u64,
    attrs: u64,
    name: &'static str,
}

fn part(slot: usize, type_guid: Uuid, first: u64, last: u64, name: &'static str) -> Part {
    Part {
        slot,
        type_guid,
        first,
        last,
        attrs: 0,
        name,
    }
}

fn part_guid(slot: usize) -> Uuid {
    Uuid::from_u128(0xabcd_0000_0000_4000_8000_0000_0000_0000 + slot as u128)
}

struct Layout {
    entry_size: u32,
    num_entries: u32,
}

const USUAL: Layout = Layout {
    entry_size: 128,
    num_entries: 128,
};

impl Layout {
    fn array_sectors(&self) -> u64 {
        (u64::from(self.entry_size) * u64::from(self.num_entries)).div_ceil(512)
    }
}

fn sector(img: &mut [u8], lba: u64) -> &mut [u8] {
    let at = lba as usize * 512;
    &mut img[at..at + 512]
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Recompute the entry array CRC and the header CRC of the header at `lba`, from
/// whatever its fields say now.
fn reseal(img: &mut [u8], lba: u64) {
    let h = sector(img, lba).to_vec();
    let start = (le64(&h, 72) as usize).saturating_mul(512);
    let len = le32(&h, 80) as usize * le32(&h, 84) as usize;
    // Leave the CRC alone when the fields point outside the image.
    if let Some(array) = img.get(start..start.saturating_add(len)) {
        let entries_crc = crc32fast::hash(array);
        put32(sector(img, lba), 88, entries_crc);
    }
    let h = sector(img, lba);
    let size = (le32(h, 12) as usize).clamp(20, 512);
    let crc = header_crc(&h[..size]);
    put32(h, 16, crc);
}

fn image_with(layout: &Layout, parts: &[Part]) -> Vec<u8> {
    let mut img = vec![0u8; SECTORS as usize * 512];
    let mbr = sector(&mut img, 0);
    mbr[446 + 4] = 0xEE;
    put32(mbr, 446 + 8, 1);
    put32(mbr, 446 + 12, (SECTORS - 1) as u32);
    mbr[510] = 0x55;
    mbr[511] = 0xAA;

    let es = layout.entry_size as usize;
    let mut array = vec![0u8; es * layout.num_entries as usize];
    for p in parts {
        let e = &mut array[p.slot * es..p.slot * es + 128];
        e[0..16].copy_from_slice(&p.type_guid.to_bytes_le());
        e[16..32].copy_from_slice(&part_guid(p.slot).to_bytes_le());
        put64(e, 32, p.first);
        put64(e, 40, p.last);
        put64(e, 48, p.attrs);
        e[56..128].copy_from_slice(&encode_name(p.name));
    }
    let n = layout.array_sectors();
    let backup_array = SECTORS - 1 - n;
    for (my, alt, entries) in [(1, LAST, 2), (LAST, 1, backup_array)] {
        let at = entries as usize * 512;
        img[at..at + array.len()].copy_from_slice(&array);
        let h = sector(&mut img, my);
        h[..8].copy_from_slice(b"EFI PART");
        put32(h, 8, 0x0001_0000);
        put32(h, 12, 92);
        put64(h, 24, my);
        put64(h, 32, alt);
        put64(h, 40, 2 + n);
        put64(h, 48, SECTORS - 2 - n);
        h[56..72].copy_from_slice(&DISK_GUID.to_bytes_le());
        put64(h, 72, entries);
        put32(h, 80, layout.num_entries);
        put32(h, 84, layout.entry_size);
        reseal(&mut img, my);
    }
    img
}

fn image(parts: &[Part]) -> Vec<u8> {
    image_with(&USUAL, parts)
}

fn three_parts() -> Vec<Part> {
    vec![
        Part {
            attrs: 1 << 60,
            ..part(0, EFI_SYSTEM, 34, 99, "EFI")
        },
        part(2, LINUX_FILESYSTEM, 100, 1000, "root ü 根 😀"),
        part(3, LINUX_SWAP, 1001, SECTORS - 34, ""),
    ]
}

fn read(img: Vec<u8>) -> Result<Option<GptTable>, GptError> {
    read_gpt(&MemDisk(img))
}

fn read_ok(img: Vec<u8>) -> GptTable {
    read(img).unwrap().expect("a GPT")
}

/// Apply `f` to both headers, reseal them, and return the reader's error.
fn both_broken(f: impl Fn(&mut [u8])) -> (GptError, String) {
    let mut img = image(&three_parts());
    for lba in [1, LAST] {
        f(sector(&mut img, lba));
        reseal(&mut img, lba);
    }
    let err = read(img).expect_err("both headers broken");
    let msg = err.to_string();
    (err, msg)
}

#[test]
fn reads_every_field_of_a_valid_table() {
    let t = read_ok(image(&three_parts()));
    assert!(t.primary_ok && t.backup_ok);
    assert_eq!(t.disk_guid, DISK_GUID);
    assert_eq!(t.sector_size, 512);
    assert_eq!((t.first_usable_lba, t.last_usable_lba), (34, SECTORS - 34));
    let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
    assert_eq!(
        numbers,
        [1, 3, 4],
        "empty slot 2 is skipped, numbers keep slots"
    );
    let p = &t.partitions[1];
    assert_eq!(p.type_guid, LINUX_FILESYSTEM);
    assert_eq!(p.type_name, Some("Linux filesystem"));
    assert_eq!(p.part_guid, part_guid(2));
    assert_eq!((p.first_lba, p.last_lba, p.sectors()), (100, 1000, 901));
    assert_eq!(p.name, "root ü 根 😀");
    assert_eq!(t.partitions[0].attributes, 1 << 60);
    assert_eq!(t.partitions[2].name, "");
}

#[test]
fn guids_are_mixed_endian_on_disk() {
    let mut img = image(&three_parts());
    // The ESP type as the spec shows its bytes on disk.
    let esp_on_disk = [
        0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9,
        0x3B,
    ];
    let at = 2 * 512 + 3 * 128;
    img[at..at + 16].copy_from_slice(&esp_on_disk);
    reseal(&mut img, 1);
    let t = read_ok(img);
    assert!(!t.backup_ok, "the backup array was not changed");
    assert_eq!(t.partitions[2].type_guid, EFI_SYSTEM);
    assert_eq!(
        t.partitions[2].type_guid.to_string(),
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    );
}

#[test]
fn larger_entries_and_fewer_of_them_are_accepted() {
    let layout = Layout {
        entry_size: 256,
        num_entries: 20,
    };
    let parts = vec![part(19, EFI_SYSTEM, 100, 200, "last slot")];
    let t = read_ok(image_with(&layout, &parts));
    assert!(t.primary_ok && t.backup_ok);
    assert_eq!(t.partitions[0].number, 20);
    assert_eq!(t.partitions[0].name, "last slot");
    assert_eq!(t.first_usable_lba, 2 + 10);
}

#[test]
fn names_stop_at_nul_and_survive_bad_utf16() {
    assert_eq!(decode_name(&encode_name("abc")), "abc");
    assert_eq!(decode_name(&encode_name("😀é")), "😀é");
    let full = "n".repeat(36);
    assert_eq!(decode_name(&encode_name(&full)), full, "no NUL needed");
    let mut raw = encode_name("ab");
    raw[6] = b'z'; // after the NUL: ignored
    assert_eq!(decode_name(&raw), "ab");
    let lone_surrogate = [0x3D, 0xD8, b'x', 0];
    assert_eq!(decode_name(&lone_surrogate), "\u{FFFD}x");
    assert_eq!(decode_name(b"a"), "", "odd byte count");
}

#[test]
fn header_crc_is_ieee_crc32_with_the_crc_field_zeroed() {
    // CRC32 (IEEE) of "123456789" is 0xCBF43926.
    assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    let mut h = *b"0123456789abcdefWXYZ123456789";
    let with_zeros = header_crc(&h);
    h[16..20].copy_from_slice(&[0; 4]);
    assert_eq!(with_zeros, crc32fast::hash(&h));
}

#[test]
fn damaged_primary_header_falls_back_to_backup() {
    let good = read_ok(image(&three_parts()));
    let mut img = image(&three_parts());
    sector(&mut img, 1)[16] ^= 1;
    let t = read_ok(img);
    assert!(!t.primary_ok && t.backup_ok);
    assert_eq!(t.partitions, good.partitions);
    assert_eq!(t.disk_guid, good.disk_guid);
}

#[test]
fn damaged_primary_entries_fall_back_to_backup() {
    let good = read_ok(image(&three_parts()));
    let mut img = image(&three_parts());
    img[2 * 512 + 40] ^= 0x80; // last LBA of entry 1
    let t = read_ok(img);
    assert!(!t.primary_ok && t.backup_ok);
    assert_eq!(t.partitions, good.partitions);
}

#[test]
fn missing_primary_signature_falls_back_to_backup() {
    let mut img = image(&three_parts());
    sector(&mut img, 1).fill(0);
    let t = read_ok(img);
    assert!(!t.primary_ok && t.backup_ok);
    assert_eq!(t.partitions.len(), 3);
}

#[test]
fn damaged_or_different_backup_only_clears_backup_ok() {
    let mut img = image(&three_parts());
    sector(&mut img, LAST)[100] ^= 1; // past the 92 header bytes
    let t = read_ok(img);
    assert!(
        t.primary_ok && t.backup_ok,
        "bytes past the header size are not checked"
    );

    let mut img = image(&three_parts());
    sector(&mut img, LAST)[60] ^= 1; // disk GUID
    let t = read_ok(img);
    assert!(t.primary_ok && !t.backup_ok);

    let mut img = image(&three_parts());
    sector(&mut img, LAST)[60] ^= 1;
    reseal(&mut img, LAST); // valid, but a different disk GUID
    let t = read_ok(img);
    assert!(t.primary_ok && !t.backup_ok);

    let mut img = image(&three_parts());
    sector(&mut img, LAST).fill(0);
    let t = read_ok(img);
    assert!(t.primary_ok && !t.backup_ok);
}

#[test]
fn both_headers_damaged_is_an_error_naming_both() {
    let mut img = image(&three_parts());
    sector(&mut img, 1)[16] ^= 1;
    sector(&mut img, LAST)[16] ^= 1;
    let msg = read(img).unwrap_err().to_string();
    assert!(
        msg.contains("primary GPT header at LBA 1: header CRC32 mismatch"),
        "{msg}"
    );
    assert!(
        msg.contains("backup GPT header at LBA 2047: header CRC32 mismatch"),
        "{msg}"
    );
}

fn primary_field(err: &GptError) -> &'static str {
    match err {
        GptError::NoValidTable { primary, .. } => match **primary {
            GptError::HeaderField { field, .. } => field,
            ref other => panic!("not a header field error: {other}"),
        },
        other => panic!("not NoValidTable: {other}"),
    }
}

/// A header field name and a way to break it.
type Breakage = (&'static str, fn(&mut [u8]));

#[test]
fn header_fields_are_bounds_checked() {
    let cases: &[Breakage] = &[
        ("header size", |h| put32(h, 12, 91)),
        ("header size", |h| put32(h, 12, 513)),
        ("header size", |h| put32(h, 12, u32::MAX)),
        ("my LBA", |h| put64(h, 24, 5)),
        ("alternate LBA", |h| put64(h, 32, SECTORS)),
        ("alternate LBA", |h| put64(h, 32, 0)),
        ("last usable LBA", |h| put64(h, 48, u64::MAX)),
        ("first usable LBA", |h| put64(h, 40, 2020)),
        ("first usable LBA", |h| put64(h, 40, 0)),
        ("first usable LBA", |h| put64(h, 48, LAST)),
        ("partition entry size", |h| put32(h, 84, 0)),
        ("partition entry size", |h| put32(h, 84, 64)),
        ("partition entry size", |h| put32(h, 84, 132)),
        ("partition entry size", |h| put32(h, 84, 8192)),
        ("partition entry size", |h| put32(h, 84, u32::MAX)),
        ("number of partition entries", |h| put32(h, 80, u32::MAX)),
        ("number of partition entries", |h| put32(h, 80, 32769)),
        ("partition entry array LBA", |h| put64(h, 72, u64::MAX)),
        ("partition entry array LBA", |h| put64(h, 72, SECTORS - 10)),
        ("partition entry array LBA", |h| put64(h, 72, 0)),
        ("partition entry array LBA", |h| put64(h, 72, 40)),
    ];
    for &(field, f) in cases {
        let (err, msg) = both_broken(f);
        assert_eq!(primary_field(&err), field, "{msg}");
        assert!(
            msg.contains("primary GPT header at LBA 1") && msg.contains("backup"),
            "{msg}"
        );
    }
}

#[test]
fn the_byte_limit_on_the_entry_array_is_inclusive() {
    // 32768 entries of 128 bytes is exactly 4 MiB: allowed by the limit, but it
    // does not fit a 1 MiB disk, so the error is about where the array sits.
    let (err, msg) = both_broken(|h| put32(h, 80, 32768));
    assert_eq!(primary_field(&err), "partition entry array LBA", "{msg}");
}

fn both_entries(f: impl Fn(&mut Vec<Part>)) -> String {
    let mut parts = three_parts();
    f(&mut parts);
    read(image(&parts)).unwrap_err().to_string()
}

#[test]
fn partitions_are_checked_against_the_usable_range_and_each_other() {
    let msg = both_entries(|p| p[1].first = 1001);
    assert!(
        msg.contains(
            "partition 3 (entry at byte offset 1280): first LBA 1001 is after last LBA 1000"
        ),
        "{msg}"
    );
    let msg = both_entries(|p| p[0].first = 33);
    assert!(
        msg.contains("partition 1") && msg.contains("outside the usable range 34..=2014"),
        "{msg}"
    );
    let msg = both_entries(|p| p[2].last = SECTORS - 33);
    assert!(
        msg.contains("partition 4") && msg.contains("outside"),
        "{msg}"
    );
    let msg = both_entries(|p| p[2].first = 1000);
    assert!(
        msg.contains("partition 3 (LBA 100..=1000) overlaps partition 4 (LBA 1000..=2014)"),
        "{msg}"
    );
    // One partition inside another, not adjacent in the array.
    let msg = both_entries(|p| {
        p[2].first = 500;
        p[2].last = 600;
    });
    assert!(msg.contains("overlaps"), "{msg}");
    assert!(msg.contains("primary") && msg.contains("backup"), "{msg}");
}

#[test]
fn no_gpt_is_none() {
    assert!(read(vec![]).unwrap().is_none());
    assert!(read(vec![0; 511]).unwrap().is_none());
    assert!(read(vec![0; 1024]).unwrap().is_none());
    assert!(read(vec![0; 1 << 20]).unwrap().is_none());

    // A valid GPT behind an MBR without an 0xEE record is not a GPT disk.
    let mut img = image(&three_parts());
    img[446 + 4] = 0x83;
    assert!(read(img).unwrap().is_none());
    let mut img = image(&three_parts());
    img[511] = 0;
    assert!(read(img).unwrap().is_none());

    // A protective MBR but no signature anywhere.
    let mut img = image(&three_parts());
    sector(&mut img, 1).fill(0);
    sector(&mut img, LAST).fill(0);
    assert!(read(img).unwrap().is_none());
}

#[test]
fn hybrid_mbr_counts_as_protective() {
    let mut img = image(&three_parts());
    img[446 + 4] = 0x0C;
    img[446 + 16 + 4] = 0xEE;
    assert_eq!(read_ok(img).partitions.len(), 3);
}

#[test]
fn truncated_disk_is_an_error() {
    let mut img = image(&three_parts());
    img.truncate(SECTORS as usize * 512 / 2);
    let msg = read(img).unwrap_err().to_string();
    assert!(
        msg.contains("alternate LBA (header byte 32) is 2047"),
        "{msg}"
    );
    assert!(
        msg.contains("backup GPT header at LBA 1023: no \"EFI PART\""),
        "{msg}"
    );
}

#[test]
fn odd_sized_disk_uses_whole_sectors() {
    let mut img = image(&three_parts());
    img.extend_from_slice(&[0xFF; 100]);
    let t = read_ok(img);
    assert!(t.primary_ok && t.backup_ok);
}
