//! FAT16/FAT32 writer checked against the real tools: fsck.fat must find nothing to
//! complain about, mtools must read back exactly the tree that went in, and minfo,
//! fsck.fat -v and file(1) must agree on type and label.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::format::fat::{FatError, FatOptions, FatSummary, FatType, write_fat};

const MIB: u64 = 1 << 20;
/// 2023-11-14 22:13:20 UTC.
const TIMESTAMP: i64 = 1_700_000_000;

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(seed: u64, len: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// A tree entry: a directory (`None`) or a file with its contents.
type Spec = Vec<(String, Option<Vec<u8>>)>;

/// A tree with everything that is hard for FAT: deep nesting, long names, spaces and
/// mixed case, names that collide in 8.3 form, empty file and directory, a file of
/// several MiB, files at cluster-size boundaries, and 250 entries in one directory.
fn tree_spec() -> Spec {
    let mut spec: Spec = Vec::new();
    let mut file = |path: &str, data: Vec<u8>| spec.push((path.to_string(), Some(data)));
    file("README.TXT", b"exact upper-case 8.3 name\n".to_vec());
    file("notes.txt", b"lower-case 8.3 name\n".to_vec());
    file("MixedCase.Txt", b"mixed case\n".to_vec());
    file(".hidden", b"leading dot\n".to_vec());
    file("archive.tar.gz", b"two dots\n".to_vec());
    file("no_extension_but_long", b"no dot\n".to_vec());
    file(
        "This is a rather long name, with spaces; (symbols) [+=] & more.data",
        b"symbols\n".to_vec(),
    );
    file(
        &format!("{}.txt", "x".repeat(200)),
        b"200 characters\n".to_vec(),
    );
    file("ünïcødé-名前.txt", "unicode name\n".as_bytes().to_vec());
    file(
        "My Documents/Sub Folder/deeper level/deepest/file in the deep.txt",
        b"four levels down\n".to_vec(),
    );
    file("a/b/c/d/e/f.txt", b"six levels down\n".to_vec());
    file("a/b/sibling.txt", b"beside c\n".to_vec());
    for i in 1..=12 {
        file(
            &format!("longfilename{i}.txt"),
            format!("collides in 8.3 form, number {i}\n").into_bytes(),
        );
    }
    // Names that look like generated short names: the generator must step around them.
    file(
        "longfi~1.txt",
        b"lower-case name shaped like a tail\n".to_vec(),
    );
    file("LONGFI~3.TXT", b"exact name shaped like a tail\n".to_vec());
    file("empty.bin", Vec::new());
    file("big/random.bin", noise(7, 5 * MIB + 12_345));
    for (seed, len) in [
        (8, 511),
        (9, 512),
        (10, 2048),
        (11, 2049),
        (12, 4096),
        (13, 4097),
    ] {
        file(&format!("big/{len}.bin"), noise(seed, len));
    }
    // 250 entries of 4 slots each: 32 KB of directory, several clusters at every size.
    for i in 0..250 {
        file(
            &format!("many/entry {i:03} with a long name.txt"),
            format!("entry {i}\n").into_bytes(),
        );
    }
    spec.push(("empty dir".to_string(), None));
    spec.push(("a/b/c/empty too".to_string(), None));
    spec
}

/// Create `spec` under `root`, in reverse order if asked (to vary directory order).
fn make_tree(root: &Path, spec: &Spec, reverse: bool) {
    let items: Vec<_> = if reverse {
        spec.iter().rev().collect()
    } else {
        spec.iter().collect()
    };
    for (rel, data) in items {
        let path = root.join(rel);
        match data {
            None => fs::create_dir_all(&path).unwrap(),
            Some(data) => {
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, data).unwrap();
            }
        }
    }
}

fn new_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    make_tree(dir.path(), &tree_spec(), false);
    dir
}

/// Every path below `root` (relative, '/'-separated) with its contents, `None` for
/// directories.
fn snapshot(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Option<Vec<u8>>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(rel, None);
                walk(root, &path, out);
            } else {
                assert!(meta.is_file(), "{rel} is neither file nor directory");
                out.insert(rel, Some(fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn options(size: u64, fat_type: Option<FatType>, label: Option<&str>) -> FatOptions {
    FatOptions {
        size,
        fat_type,
        label: label.map(str::to_string),
        volume_id: None,
        timestamp: Some(TIMESTAMP),
    }
}

fn create(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap()
}

fn write_image(image: &Path, src: &Path, opts: &FatOptions) -> FatSummary {
    let out = create(image);
    let summary = write_fat(&out, 0, src, opts).unwrap();
    assert_eq!(fs::metadata(image).unwrap().len(), opts.size);
    summary
}

/// Seconds any tool may run: a broken image can send fsck.fat into a very long walk.
const TOOL_TIMEOUT: &str = "120";

/// `program` run under timeout(1), so a test fails instead of hanging.
fn tool(program: &str) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", TOOL_TIMEOUT, program]);
    cmd
}

fn mtools(program: &str) -> Command {
    let mut cmd = tool(program);
    cmd.env("MTOOLS_SKIP_CHECK", "1").env("LC_ALL", "C.UTF-8");
    cmd
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// What fsck.fat -n counted: (files, used clusters, total clusters).
struct FsckCount {
    files: usize,
    used: u32,
    clusters: u32,
}

/// Run `fsck.fat -n` and fail on any output line besides its banner and summary.
fn fsck_clean(image: &Path) -> FsckCount {
    let text = run(tool("fsck.fat").arg("-n").arg(image));
    let prefix = format!("{}: ", image.display());
    let mut count = None;
    for line in text.lines() {
        if line.starts_with("fsck.fat ") && line.ends_with(')') {
            continue; // "fsck.fat 4.2 (2021-01-31)"
        }
        let words: Vec<&str> = line
            .strip_prefix(&prefix)
            .map(|rest| rest.split_whitespace().collect())
            .unwrap_or_default();
        if let [files, "files,", clusters, "clusters"] = words[..]
            && let Some((used, total)) = clusters.split_once('/')
        {
            count = Some(FsckCount {
                files: files.parse().unwrap(),
                used: used.parse().unwrap(),
                clusters: total.parse().unwrap(),
            });
            continue;
        }
        panic!("fsck.fat complained: {line:?}\nfull output:\n{text}");
    }
    count.unwrap_or_else(|| panic!("no summary from fsck.fat:\n{text}"))
}

/// Check fsck.fat agrees with the summary and with the number of entries.
fn check_fsck(image: &Path, summary: &FatSummary, entries: usize, labelled: bool) {
    let count = fsck_clean(image);
    assert_eq!(count.clusters, summary.clusters, "cluster count");
    assert_eq!(count.used, summary.used_clusters, "used clusters");
    // fsck.fat counts the volume label entry as a file.
    assert_eq!(count.files, entries + usize::from(labelled), "file count");
}

/// Type and label as minfo, fsck.fat -v and file(1) see them.
fn check_type_and_label(image: &Path, spec: &str, fat_type: FatType, label: &str) {
    let padded = format!("{label:<11}");
    let (bits, name) = match fat_type {
        FatType::Fat16 => ("16", "FAT16   "),
        FatType::Fat32 => ("32", "FAT32   "),
    };
    let info = run(mtools("minfo").args(["-i", spec, "::"]));
    assert!(info.contains(&format!("disk type=\"{name}\"")), "{info}");
    assert!(info.contains(&format!("disk label=\"{padded}\"")), "{info}");
    let verbose = run(tool("fsck.fat").args(["-n", "-v"]).arg(image));
    assert!(
        verbose.contains(&format!("2 FATs, {bits} bit entries")),
        "{verbose}"
    );
    let file = run(tool("file").arg("-s").arg(image));
    assert!(file.contains(&format!("FAT ({bits} bit)")), "{file}");
    if label == "NO NAME" {
        assert!(file.contains("unlabeled"), "{file}");
    } else {
        assert!(file.contains(&format!("label: \"{padded}\"")), "{file}");
    }
}

/// Extract the whole filesystem with mcopy and compare it with the source tree.
fn check_round_trip(spec: &str, src: &Path) {
    let out = tempfile::tempdir().unwrap();
    let text = run(mtools("mcopy")
        .args(["-s", "-n", "-i", spec, "::/*"])
        .arg(out.path()));
    assert!(text.trim().is_empty(), "mcopy said: {text}");
    let want = snapshot(src);
    let got = snapshot(out.path());
    let want_names: Vec<_> = want.keys().collect();
    let got_names: Vec<_> = got.keys().collect();
    assert_eq!(got_names, want_names, "file lists differ");
    for (name, data) in &want {
        assert!(got[name] == *data, "{name}: contents differ");
    }
}

fn round_trip(size: u64, fat_type: Option<FatType>, label: Option<&str>, expect: FatType) {
    let src = new_tree();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.img");
    let summary = write_image(&image, src.path(), &options(size, fat_type, label));
    assert_eq!(summary.fat_type, expect);
    let entries = snapshot(src.path()).len();
    check_fsck(&image, &summary, entries, label.is_some());
    let spec = image.to_str().unwrap();
    check_type_and_label(
        &image,
        spec,
        expect,
        &label.map_or("NO NAME".to_string(), str::to_uppercase),
    );
    check_round_trip(spec, src.path());
}

#[test]
fn fat16_64mib_round_trip() {
    round_trip(64 * MIB, None, Some("kiln test"), FatType::Fat16);
}

#[test]
fn fat16_cluster_size_and_timestamps() {
    let src = new_tree();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.img");
    let summary = write_image(&image, src.path(), &options(64 * MIB, None, None));
    // mkfs.fat uses 2 KiB clusters at 64 MiB.
    assert_eq!(summary.cluster_size, 2048);
    let spec = image.to_str().unwrap();
    let listing = run(mtools("mdir").args(["-i", spec, "::/"]));
    // Every entry carries TIMESTAMP; 8.3 tails are generated for colliding names.
    assert!(listing.contains("2023-11-14  22:13"), "{listing}");
    assert!(!listing.contains("1980-01-01"), "{listing}");
    assert!(listing.contains("LONGFI~1 TXT"), "{listing}");
    assert!(listing.contains("LONGF~10 TXT"), "{listing}");
    assert!(listing.contains("README   TXT"), "{listing}");
    // Entries are stored sorted by name, whatever order the source directory lists.
    let listing = run(mtools("mdir").args(["-i", spec, "::/many"]));
    let positions: Vec<usize> = (0..250)
        .map(|i| {
            let name = format!("entry {i:03} with a long name.txt");
            listing
                .find(&name)
                .unwrap_or_else(|| panic!("{name} missing"))
        })
        .collect();
    assert!(
        positions.is_sorted(),
        "many/ is not in name order:\n{listing}"
    );
}

#[test]
fn fat32_600mib_round_trip() {
    round_trip(600 * MIB, None, None, FatType::Fat32);
}

#[test]
fn fat32_forced_at_64mib_round_trip() {
    round_trip(
        64 * MIB,
        Some(FatType::Fat32),
        Some("FORCED32"),
        FatType::Fat32,
    );
}

#[test]
fn fat16_root_grows_past_512_entries() {
    let src = tempfile::tempdir().unwrap();
    for i in 0..700 {
        fs::write(src.path().join(format!("root file {i:03}.txt")), [i as u8]).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.img");
    let summary = write_image(&image, src.path(), &options(32 * MIB, None, Some("ROOT")));
    assert_eq!(summary.fat_type, FatType::Fat16);
    check_fsck(&image, &summary, 700, true);
    check_round_trip(image.to_str().unwrap(), src.path());
}

#[test]
fn written_at_offset_inside_larger_file_fat16() {
    written_at_offset(FatType::Fat16);
}

#[test]
fn written_at_offset_inside_larger_file_fat32() {
    written_at_offset(FatType::Fat32);
}

fn written_at_offset(fat_type: FatType) {
    let src = new_tree();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let offset = MIB;
    let size = 64 * MIB;
    let total = offset + size + MIB;
    let mut out = create(&image);
    // Old contents everywhere: the filesystem must not depend on zeros around it.
    let junk = vec![0xA5u8; MIB as usize];
    for _ in 0..total / MIB {
        out.write_all(&junk).unwrap();
    }
    let opts = options(size, Some(fat_type), Some("PART"));
    let summary = write_fat(&out, offset, src.path(), &opts).unwrap();

    // Bytes outside the region are untouched.
    let mut head = vec![0u8; offset as usize];
    out.seek(SeekFrom::Start(0)).unwrap();
    out.read_exact(&mut head).unwrap();
    assert!(
        head.iter().all(|&b| b == 0xA5),
        "bytes before the region changed"
    );
    let mut tail = vec![0u8; MIB as usize];
    out.seek(SeekFrom::Start(offset + size)).unwrap();
    out.read_exact(&mut tail).unwrap();
    assert!(
        tail.iter().all(|&b| b == 0xA5),
        "bytes after the region changed"
    );
    assert_eq!(fs::metadata(&image).unwrap().len(), total);

    // mtools reads it in place.
    let spec = format!("{}@@{offset}", image.display());
    check_round_trip(&spec, src.path());
    let info = run(mtools("minfo").args(["-i", &spec, "::"]));
    assert!(info.contains("disk label=\"PART       \""), "{info}");
    // The partition start is recorded as hidden sectors.
    assert!(info.contains("hidden sectors: 2048"), "{info}");

    // Every byte in use is the same as when written into a fresh, zeroed file.
    let fresh_path = dir.path().join("fresh.img");
    write_fat(&create(&fresh_path), offset, src.path(), &opts).unwrap();
    let fresh = fs::read(&fresh_path).unwrap();
    let fresh = &fresh[offset as usize..];
    let used_end = used_end(fresh, &summary) as usize;
    let mut written = vec![0u8; used_end];
    out.seek(SeekFrom::Start(offset)).unwrap();
    out.read_exact(&mut written).unwrap();
    let first_diff = written.iter().zip(fresh).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "filesystem depends on old contents");

    // fsck.fat checks a copy of the slice.
    let slice = dir.path().join("slice.img");
    let mut region = vec![0u8; size as usize];
    out.seek(SeekFrom::Start(offset)).unwrap();
    out.read_exact(&mut region).unwrap();
    fs::write(&slice, &region).unwrap();
    check_fsck(&slice, &summary, snapshot(src.path()).len(), true);
    check_type_and_label(&slice, slice.to_str().unwrap(), fat_type, "PART");
}

#[test]
fn same_input_gives_identical_bytes() {
    let spec = tree_spec();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    make_tree(a.path(), &spec, false);
    // Created in the opposite order, so directories list in a different order.
    make_tree(b.path(), &spec, true);
    let dir = tempfile::tempdir().unwrap();
    for (size, fat_type) in [(64 * MIB, None), (64 * MIB, Some(FatType::Fat32))] {
        let opts = options(size, fat_type, Some("SAME"));
        let images: Vec<PathBuf> = [a.path(), b.path(), a.path()]
            .iter()
            .enumerate()
            .map(|(i, src)| {
                let image = dir.path().join(format!("{i}.img"));
                write_image(&image, src, &opts);
                image
            })
            .collect();
        let first = fs::read(&images[0]).unwrap();
        for other in &images[1..] {
            assert!(
                first == fs::read(other).unwrap(),
                "{} differs",
                other.display()
            );
        }
        // A different timestamp changes the bytes (dates and the derived volume id).
        let later = FatOptions {
            timestamp: Some(TIMESTAMP + 86_400),
            ..opts.clone()
        };
        let image = dir.path().join("later.img");
        write_image(&image, a.path(), &later);
        assert!(first != fs::read(&image).unwrap());
    }
}

/// Where the last used cluster ends, from the boot sector's geometry.
fn used_end(image: &[u8], summary: &FatSummary) -> u64 {
    let u16_at = |at: usize| u64::from(u16::from_le_bytes([image[at], image[at + 1]]));
    let u32_at = |at: usize| u64::from(u32::from_le_bytes(image[at..at + 4].try_into().unwrap()));
    let fat_sectors = match u16_at(22) {
        0 => u32_at(36),
        n => n,
    };
    let data = (u16_at(14) + u64::from(image[16]) * fat_sectors) * 512 + u16_at(17) * 32;
    data + u64::from(summary.used_clusters) * u64::from(summary.cluster_size)
}

/// The error of writing `src` with `opts`; nothing may have been written.
fn write_error(src: &Path, opts: &FatOptions) -> String {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.img");
    let out = create(&image);
    let err: FatError = write_fat(&out, 0, src, opts).unwrap_err();
    assert_eq!(
        fs::metadata(&image).unwrap().len(),
        0,
        "written despite {err}"
    );
    err.to_string()
}

#[test]
fn symlink_is_rejected() {
    let src = new_tree();
    let link = src.path().join("a/b/link to readme");
    std::os::unix::fs::symlink("../../README.TXT", &link).unwrap();
    let msg = write_error(src.path(), &options(64 * MIB, None, None));
    assert!(msg.contains(link.to_str().unwrap()), "{msg}");
    assert!(msg.contains("symbolic link"), "{msg}");
}

#[test]
fn special_file_is_rejected() {
    let src = new_tree();
    let sock = src.path().join("my socket");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let msg = write_error(src.path(), &options(64 * MIB, None, None));
    assert!(msg.contains(sock.to_str().unwrap()), "{msg}");
    assert!(msg.contains("socket"), "{msg}");
}

#[test]
fn too_small_or_bad_size_is_rejected() {
    let src = new_tree();
    let msg = write_error(src.path(), &options(MIB, None, None));
    assert!(msg.contains("1048576 bytes"), "{msg}");
    assert!(msg.contains("FAT16 (too small"), "{msg}");
    assert!(msg.contains("FAT32 (too small"), "{msg}");

    let msg = write_error(src.path(), &options(16 * MIB, Some(FatType::Fat32), None));
    assert!(msg.contains("cannot hold FAT32: too small"), "{msg}");
    assert!(msg.contains("65525 clusters"), "{msg}");

    let msg = write_error(src.path(), &options(4096 * MIB, Some(FatType::Fat16), None));
    assert!(msg.contains("cannot hold FAT16: too large"), "{msg}");

    let msg = write_error(src.path(), &options(64 * MIB + 100, None, None));
    assert!(msg.contains("multiple of 512"), "{msg}");
}

#[test]
fn tree_larger_than_filesystem_is_rejected() {
    // The 5 MiB file cannot fit a 4 MiB filesystem.
    let src = new_tree();
    let msg = write_error(src.path(), &options(4 * MIB, None, None));
    assert!(msg.contains("does not fit"), "{msg}");
    assert!(msg.contains("clusters of 512 bytes"), "{msg}");
}

#[test]
fn bad_label_is_rejected() {
    let src = new_tree();
    let msg = write_error(src.path(), &options(64 * MIB, None, Some("TOO LONG LABEL")));
    assert!(msg.contains("\"TOO LONG LABEL\""), "{msg}");
    assert!(msg.contains("longer than 11"), "{msg}");
    let msg = write_error(src.path(), &options(64 * MIB, None, Some("A*B")));
    assert!(msg.contains("label \"A*B\""), "{msg}");
    assert!(msg.contains("'*'"), "{msg}");
}

#[test]
fn names_fat_cannot_hold_are_rejected() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("Report.txt"), b"1").unwrap();
    fs::write(src.path().join("REPORT.TXT"), b"2").unwrap();
    let msg = write_error(src.path(), &options(64 * MIB, None, None));
    assert!(msg.contains("differs only in case"), "{msg}");

    let src = tempfile::tempdir().unwrap();
    let bad = src.path().join("what?.txt");
    fs::write(&bad, b"1").unwrap();
    let msg = write_error(src.path(), &options(64 * MIB, None, None));
    assert!(msg.contains(bad.to_str().unwrap()), "{msg}");
    assert!(msg.contains("cannot be stored on FAT"), "{msg}");
}

#[test]
fn file_over_4gib_is_rejected() {
    let src = tempfile::tempdir().unwrap();
    let huge = src.path().join("huge.bin");
    File::create(&huge).unwrap().set_len(4 << 30).unwrap(); // sparse
    let msg = write_error(src.path(), &options(600 * MIB, None, None));
    assert!(msg.contains(huge.to_str().unwrap()), "{msg}");
    assert!(
        msg.contains("exceeds the FAT limit of 4294967295 bytes"),
        "{msg}"
    );
}
