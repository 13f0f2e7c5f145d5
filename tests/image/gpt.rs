//! GPT writer and reader against sgdisk (gdisk), the reference implementation.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::format::gpt::{
    self, BIOS_BOOT, EFI_SYSTEM, GptError, GptPartition, GptSpec, GptTable, LINUX_ROOT_X86_64,
    LINUX_SWAP, PartitionSpec,
};
use kiln::format::raw::RawImage;
use uuid::Uuid;

const MIB: u64 = 1 << 20;
const DISK_SIZE: u64 = 2048 * MIB;
const DISK_GUID: Uuid = Uuid::from_u128(0x5eed_0000_1111_4222_8333_4444_5555_6666);
const SWAP_GUID: Uuid = Uuid::from_u128(0x0bad_cafe_0000_4000_8000_0000_0000_0042);

fn spec() -> GptSpec {
    let p = |name: &str, type_guid, size| PartitionSpec {
        name: name.into(),
        type_guid,
        part_guid: None,
        size,
        attributes: 0,
    };
    GptSpec {
        disk_guid: DISK_GUID,
        partitions: vec![
            p("EFI système", EFI_SYSTEM, Some(100 * MIB)),
            PartitionSpec {
                attributes: 1 << 2, // legacy BIOS bootable
                ..p("BIOS 引导", BIOS_BOOT, Some(MIB))
            },
            PartitionSpec {
                part_guid: Some(SWAP_GUID),
                attributes: 1 << 63,
                ..p("swap", LINUX_SWAP, Some(64 * MIB + 1))
            },
            p("root ü", LINUX_ROOT_X86_64, None),
        ],
    }
}

/// (first, last) LBAs the layout rules give `spec()` on `DISK_SIZE`, worked out by hand.
const EXPECTED_LBAS: [(u64, u64); 4] = [
    (2048, 2048 + 100 * 2048 - 1),        // ESP: 100 MiB at 1 MiB
    (206848, 206848 + 2048 - 1),          // BIOS boot: 1 MiB
    (208896, 208896 + 65 * 2048 - 1),     // swap: 64 MiB + 1 byte rounds up to 65 MiB
    (342016, DISK_SIZE / 512 - 2048 - 1), // root: to the last 1 MiB boundary before the backup
];

struct Disk {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn new_disk() -> Disk {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    File::create(&path).unwrap();
    Disk { _dir: dir, path }
}

fn write(disk: &Disk, size: u64, spec: &GptSpec) -> Result<GptTable, GptError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk.path)
        .unwrap();
    gpt::write_gpt(&mut file, size, spec)
}

fn written_disk() -> (Disk, GptTable) {
    let disk = new_disk();
    let table = write(&disk, DISK_SIZE, &spec()).expect("write_gpt");
    (disk, table)
}

fn read(path: &Path) -> Result<Option<GptTable>, GptError> {
    let image = RawImage::new(File::open(path).unwrap()).unwrap();
    gpt::read_gpt(&image)
}

fn patch(path: &Path, offset: u64, f: impl FnOnce(u8) -> u8) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    file.read_exact_at(&mut b, offset).unwrap();
    file.write_all_at(&[f(b[0])], offset).unwrap();
}

/// Run sgdisk; (success, stdout + stderr).
fn sgdisk(args: &[&str], path: &Path) -> (bool, String) {
    let out = Command::new("sgdisk")
        .args(args)
        .arg(path)
        .output()
        .expect("sgdisk (package gdisk) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn sgdisk_ok(args: &[&str], path: &Path) -> String {
    let (ok, text) = sgdisk(args, path);
    assert!(ok, "sgdisk {args:?} failed:\n{text}");
    text
}

fn field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in sgdisk output:\n{text}"))
        .trim()
}

fn guid(s: &str) -> Uuid {
    Uuid::parse_str(s.split_whitespace().next().unwrap()).unwrap()
}

fn number(s: &str) -> u64 {
    s.split_whitespace().next().unwrap().parse().unwrap()
}

/// A partition as `sgdisk -i N` describes it (type_name left out: sgdisk's names differ).
fn sgdisk_partition(path: &Path, n: u32) -> GptPartition {
    let text = sgdisk_ok(&["-i", &n.to_string()], path);
    let name = field(&text, "Partition name:");
    GptPartition {
        number: n,
        type_guid: guid(field(&text, "Partition GUID code:")),
        type_name: None,
        part_guid: guid(field(&text, "Partition unique GUID:")),
        first_lba: number(field(&text, "First sector:")),
        last_lba: number(field(&text, "Last sector:")),
        attributes: u64::from_str_radix(field(&text, "Attribute flags:"), 16).unwrap(),
        name: name
            .strip_prefix('\'')
            .and_then(|n| n.strip_suffix('\''))
            .unwrap()
            .to_string(),
    }
}

fn without_type_name(p: &GptPartition) -> GptPartition {
    GptPartition {
        type_name: None,
        ..p.clone()
    }
}

/// The numbers of the partitions `sgdisk -p` lists.
fn sgdisk_numbers(path: &Path) -> Vec<u32> {
    let text = sgdisk_ok(&["-p"], path);
    text.lines()
        .skip_while(|l| !l.starts_with("Number"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn written_table_passes_sgdisk_verify() {
    let (disk, _) = written_disk();
    let (ok, text) = sgdisk(&["-v"], &disk.path);
    assert!(ok, "sgdisk -v exit status:\n{text}");
    assert!(text.contains("No problems found"), "{text}");
    // sgdisk -v says "No problems found" even after loading a damaged header; the
    // complaints are on the lines before.
    for word in ["Caution", "Warning", "ERROR", "Problem"] {
        assert!(!text.contains(word), "{word} in:\n{text}");
    }
}

#[test]
fn sgdisk_sees_the_chosen_guids_names_and_aligned_starts() {
    let (disk, table) = written_disk();
    let text = sgdisk_ok(&["-p"], &disk.path);
    assert_eq!(guid(field(&text, "Disk identifier (GUID):")), DISK_GUID);
    assert!(
        text.contains("Partition table holds up to 128 entries"),
        "{text}"
    );
    assert_eq!(sgdisk_numbers(&disk.path), [1, 2, 3, 4]);

    let spec = spec();
    for (i, want) in spec.partitions.iter().enumerate() {
        let n = i as u32 + 1;
        let got = sgdisk_partition(&disk.path, n);
        assert_eq!(got.type_guid, want.type_guid, "partition {n}");
        let part_guid = want
            .part_guid
            .unwrap_or_else(|| gpt::derived_partition_guid(&DISK_GUID, n));
        assert_eq!(got.part_guid, part_guid, "partition {n}");
        assert_eq!(got.name, want.name, "partition {n}");
        assert_eq!(got.attributes, want.attributes, "partition {n}");
        assert_eq!(
            (got.first_lba, got.last_lba),
            EXPECTED_LBAS[i],
            "partition {n}"
        );
        assert_eq!(
            got.first_lba % 2048,
            0,
            "partition {n} start not 1 MiB aligned"
        );
        assert_eq!(got, without_type_name(&table.partitions[i]));
    }
    assert_eq!(table.partitions[2].part_guid, SWAP_GUID);
}

#[test]
fn reader_returns_exactly_what_was_written() {
    let (disk, written) = written_disk();
    let read = read(&disk.path).unwrap().expect("a GPT");
    assert_eq!(read, written);
    assert!(read.primary_ok && read.backup_ok);
    assert_eq!(read.disk_guid, DISK_GUID);
    assert_eq!(read.sector_size, 512);
    assert_eq!(
        (read.first_usable_lba, read.last_usable_lba),
        (34, DISK_SIZE / 512 - 34)
    );
    let names: Vec<_> = read.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["EFI système", "BIOS 引导", "swap", "root ü"]);
    let types: Vec<_> = read.partitions.iter().map(|p| p.type_name).collect();
    assert_eq!(
        types,
        [
            Some("EFI System"),
            Some("BIOS boot"),
            Some("Linux swap"),
            Some("Linux root (x86-64)")
        ]
    );
    let lbas: Vec<_> = read
        .partitions
        .iter()
        .map(|p| (p.first_lba, p.last_lba))
        .collect();
    assert_eq!(lbas, EXPECTED_LBAS);

    // Only the table sectors were written: the 2 GiB file stays sparse.
    let allocated = std::fs::metadata(&disk.path).unwrap().blocks() * 512;
    assert!(allocated < MIB, "{allocated} bytes allocated");
}

#[test]
fn names_outside_the_basic_plane_round_trip() {
    let disk = new_disk();
    let mut spec = spec();
    spec.partitions[3].name = "😀 root".into();
    write(&disk, DISK_SIZE, &spec).unwrap();
    let t = read(&disk.path).unwrap().unwrap();
    assert_eq!(t.partitions[3].name, "😀 root");
}

#[test]
fn reader_agrees_with_sgdisk_on_a_table_sgdisk_made() {
    let disk = new_disk();
    std::fs::File::options()
        .write(true)
        .open(&disk.path)
        .unwrap()
        .set_len(256 * MIB)
        .unwrap();
    let disk_guid = "0A1B2C3D-4E5F-4A6B-9C7D-8E9FA0B1C2D3";
    sgdisk_ok(
        &[
            "-o",
            "-U",
            disk_guid,
            "-n",
            "1:2048:+10M",
            "-t",
            "1:ef00",
            "-c",
            "1:EFI",
            "-n",
            "2:0:+20M",
            "-t",
            "2:8300",
            "-c",
            "2:données",
            "-A",
            "2:set:2",
            "-A",
            "2:set:60",
            "-n",
            "5:0:+3M",
            "-t",
            "5:8200",
            "-n",
            "3:0:0",
            "-t",
            "3:8304",
            "-c",
            "3:root",
        ],
        &disk.path,
    );
    let t = read(&disk.path).unwrap().expect("a GPT");
    assert!(t.primary_ok && t.backup_ok);
    let text = sgdisk_ok(&["-p"], &disk.path);
    assert_eq!(t.disk_guid, guid(field(&text, "Disk identifier (GUID):")));
    assert_eq!(t.disk_guid, Uuid::parse_str(disk_guid).unwrap());
    let usable = field(&text, "First usable sector is");
    assert_eq!(
        usable,
        format!(
            "{}, last usable sector is {}",
            t.first_usable_lba, t.last_usable_lba
        )
    );

    let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
    assert_eq!(numbers, sgdisk_numbers(&disk.path));
    assert_eq!(numbers, [1, 2, 3, 5], "slot 4 is empty");
    for p in &t.partitions {
        assert_eq!(without_type_name(p), sgdisk_partition(&disk.path, p.number));
    }
    assert_eq!(t.partitions[1].name, "données");
    assert_eq!(t.partitions[1].attributes, (1 << 60) | (1 << 2));
    assert_eq!(t.partitions[2].type_guid, LINUX_ROOT_X86_64);
}

#[test]
fn damaged_primary_header_falls_back_to_backup() {
    let (disk, written) = written_disk();
    patch(&disk.path, 512 + 16, |b| b ^ 0xFF); // primary header CRC
    // sgdisk agrees the primary is now broken.
    let (_, text) = sgdisk(&["-v"], &disk.path);
    assert!(text.contains("Main header: ERROR"), "{text}");

    let t = read(&disk.path).unwrap().expect("a GPT");
    assert!(!t.primary_ok, "primary should be reported damaged");
    assert!(t.backup_ok);
    assert_eq!(t.partitions, written.partitions);
    assert_eq!(t.disk_guid, written.disk_guid);
}

#[test]
fn damaged_primary_entries_fall_back_to_backup() {
    let (disk, written) = written_disk();
    patch(&disk.path, 2 * 512 + 128 + 56, |b| b ^ 1); // name of entry 2
    let t = read(&disk.path).unwrap().expect("a GPT");
    assert!(!t.primary_ok && t.backup_ok);
    assert_eq!(t.partitions, written.partitions);
}

#[test]
fn both_headers_damaged_is_a_clean_error() {
    let (disk, _) = written_disk();
    let last = DISK_SIZE / 512 - 1;
    patch(&disk.path, 512 + 16, |b| b ^ 0xFF);
    patch(&disk.path, last * 512 + 16, |b| b ^ 0xFF);
    let err = read(&disk.path).unwrap_err();
    assert!(matches!(err, GptError::NoValidTable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("primary GPT header at LBA 1: header CRC32 mismatch"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "backup GPT header at LBA {last}: header CRC32 mismatch"
        )),
        "{msg}"
    );
}

#[test]
fn truncated_disk_is_an_error() {
    let (disk, _) = written_disk();
    let file = OpenOptions::new().write(true).open(&disk.path).unwrap();
    file.set_len(DISK_SIZE / 2).unwrap();
    let msg = read(&disk.path).unwrap_err().to_string();
    assert!(
        msg.contains("primary GPT header at LBA 1: alternate LBA"),
        "{msg}"
    );
    assert!(msg.contains("beyond the last LBA"), "{msg}");
}

#[test]
fn disk_without_gpt_is_none() {
    let disk = new_disk();
    let file = OpenOptions::new().write(true).open(&disk.path).unwrap();
    file.set_len(64 * MIB).unwrap();
    assert_eq!(read(&disk.path).unwrap(), None, "all zeros");

    // An MBR-only disk: a Linux partition record and the boot signature.
    let mut mbr = [0u8; 512];
    mbr[446 + 4] = 0x83;
    mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    mbr[446 + 12..446 + 16].copy_from_slice(&4096u32.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    file.write_all_at(&mbr, 0).unwrap();
    assert_eq!(read(&disk.path).unwrap(), None, "MBR only");

    // A GPT whose protective MBR was replaced is not read as a GPT.
    let (disk, _) = written_disk();
    patch(&disk.path, 446 + 4, |_| 0x83);
    assert_eq!(read(&disk.path).unwrap(), None);
}

#[test]
fn same_spec_gives_identical_bytes() {
    let size = 256 * MIB;
    let mut spec = spec();
    spec.partitions[0].size = Some(8 * MIB);
    let (a, b) = (new_disk(), new_disk());
    let ta = write(&a, size, &spec).unwrap();
    let tb = write(&b, size, &spec).unwrap();
    assert_eq!(ta, tb);
    let bytes_a = std::fs::read(&a.path).unwrap();
    assert_eq!(bytes_a.len() as u64, size);
    assert!(bytes_a == std::fs::read(&b.path).unwrap(), "images differ");

    // The derived partition GUIDs follow the disk GUID.
    spec.disk_guid = Uuid::from_u128(1);
    let c = new_disk();
    let tc = write(&c, size, &spec).unwrap();
    assert_ne!(tc.partitions[0].part_guid, ta.partitions[0].part_guid);
    assert_eq!(
        tc.partitions[2].part_guid, SWAP_GUID,
        "given GUIDs are kept"
    );
}

#[test]
fn writer_refuses_to_shrink_or_overfill() {
    let disk = new_disk();
    let file = OpenOptions::new().write(true).open(&disk.path).unwrap();
    file.set_len(DISK_SIZE + 512).unwrap();
    let msg = write(&disk, DISK_SIZE, &spec()).unwrap_err().to_string();
    assert!(msg.contains("refusing to shrink"), "{msg}");
    assert_eq!(
        std::fs::metadata(&disk.path).unwrap().len(),
        DISK_SIZE + 512
    );

    let disk = new_disk();
    let msg = write(&disk, 160 * MIB, &spec()).unwrap_err().to_string();
    assert!(msg.contains("partition 3 (\"swap\")"), "{msg}");
    assert_eq!(
        std::fs::metadata(&disk.path).unwrap().len(),
        0,
        "nothing written"
    );
}
