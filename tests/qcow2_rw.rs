//! The in-place qcow2 writer, judged by qemu-img: images made by qemu-img
//! (several cluster sizes, versions 2 and 3, refcount widths, compressed, with a
//! backing file, with an internal snapshot) get the same seeded random writes as
//! a raw copy; afterwards `qemu-img check` must find no leak or corruption,
//! `qemu-img compare` must find the image equal to the raw copy, and a snapshot
//! taken before the writes must still hold its old content.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::format::qcow2::{Qcow2RwError, WritableQcow2};

const MIB: u64 = 1 << 20;

/// xorshift64*: a fixed seed gives the same operations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Compressible bytes: a small alphabet in short runs.
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let b = b"kiln-qcow2"[self.below(10) as usize];
            let run = 1 + self.below(8) as usize;
            out.extend(std::iter::repeat_n(b, run.min(len - out.len())));
        }
        out
    }
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// `qemu-img check` must report nothing: no corruption, no leak.
fn assert_check_clean(img: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2", s(img)])
        .output()
        .expect("run qemu-img check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("No errors were found"),
        "qemu-img check {}: {text}",
        img.display()
    );
    let file = fs::File::open(img).unwrap();
    let ours = kiln::format::qcow2::check::check(&file).unwrap();
    assert!(ours.is_clean(), "kiln check: {:?}", ours.messages);
}

fn assert_same_content(img: &Path, raw: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw", s(img), s(raw)])
        .output()
        .expect("run qemu-img compare");
    assert!(
        out.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw disk of `size` bytes: data in about half its clusters, the rest zero.
fn random_raw(path: &Path, size: u64, cluster: u64, rng: &mut Rng) {
    let f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let chunk = cluster.max(64 << 10);
    let mut at = 0;
    while at < size {
        if rng.below(2) == 0 {
            let len = chunk.min(size - at);
            f.write_all_at(&rng.bytes(len as usize), at).unwrap();
        }
        at += chunk;
    }
}

/// Apply seeded random writes and zero writes to the image and the raw copy.
fn random_writes(img: &mut WritableQcow2, raw: &Path, ops: usize, rng: &mut Rng) {
    let reference = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(raw)
        .unwrap();
    let size = img.virtual_size();
    let cs = img.cluster_size();
    for _ in 0..ops {
        let kind = rng.below(10);
        let (offset, len) = if kind < 3 {
            // Whole clusters.
            let first = rng.below(size / cs);
            let n = (1 + rng.below(3)).min(size / cs - first);
            (first * cs, n * cs)
        } else {
            let offset = rng.below(size);
            let len = (1 + rng.below(3 * cs)).min(size - offset);
            (offset, len)
        };
        if kind >= 8 {
            img.write_zeroes(offset, len).unwrap();
            reference
                .write_all_at(&vec![0u8; len as usize], offset)
                .unwrap();
        } else {
            let data = rng.bytes(len as usize);
            img.write_at(offset, &data).unwrap();
            reference.write_all_at(&data, offset).unwrap();
        }
    }
    // Read back through the writer before flushing: it must see its own writes.
    for _ in 0..20 {
        let offset = rng.below(size);
        let len = (1 + rng.below(2 * cs)).min(size - offset) as usize;
        let mut got = vec![0u8; len];
        img.read_exact_at(&mut got, offset).unwrap();
        let mut want = vec![0u8; len];
        reference.read_exact_at(&mut want, offset).unwrap();
        assert!(got == want, "read back at {offset} ({len} bytes)");
    }
}

struct Case {
    name: &'static str,
    cluster: u64,
    compat: &'static str,
    refcount_bits: u32,
    size: u64,
    /// Options for `qemu-img convert` (compression) or None for no compression.
    compress: Option<&'static str>,
    backing: bool,
    snapshot: bool,
}

fn run_case(c: &Case, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let img = dir.path().join("disk.qcow2");
    let reference = dir.path().join("reference.raw");
    let mut rng = Rng(seed);
    random_raw(&base, c.size, c.cluster, &mut rng);
    fs::copy(&base, &reference).unwrap();
    let opts = format!(
        "cluster_size={},compat={},refcount_bits={}",
        c.cluster, c.compat, c.refcount_bits
    );
    let size = c.size.to_string();
    if c.backing {
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &opts,
            "-b",
            "base.raw",
            "-F",
            "raw",
            s(&img),
            &size,
        ]);
        // Some clusters of the overlay allocated by QEMU itself.
        let io = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 0x5a 8192 20000", s(&img)])
            .output()
            .unwrap();
        assert!(io.status.success(), "{io:?}");
        let r = fs::OpenOptions::new().write(true).open(&reference).unwrap();
        r.write_all_at(&[0x5a; 20000], 8192).unwrap();
    } else {
        let mut args = vec!["convert", "-q", "-f", "raw", "-O", "qcow2", "-o", &opts];
        let with_compression;
        if let Some(kind) = c.compress {
            with_compression = format!("{opts},compression_type={kind}");
            args = vec![
                "convert",
                "-q",
                "-c",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                &with_compression,
            ];
        }
        args.extend([s(&base), s(&img)]);
        qemu_img(&args);
    }
    assert_check_clean(&img);

    let mut w = WritableQcow2::open(&img).unwrap();
    random_writes(&mut w, &reference, 150, &mut rng);
    w.flush().unwrap();
    drop(w);
    assert_check_clean(&img);
    assert_same_content(&img, &reference);

    if c.snapshot {
        qemu_img(&["snapshot", "-c", "before", s(&img)]);
        let frozen = dir.path().join("frozen.raw");
        fs::copy(&reference, &frozen).unwrap();
        let mut w = WritableQcow2::open(&img).unwrap();
        random_writes(&mut w, &reference, 150, &mut rng);
        w.flush().unwrap();
        drop(w);
        assert_check_clean(&img);
        assert_same_content(&img, &reference);
        let snap = dir.path().join("snap.raw");
        qemu_img(&[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            "-l",
            "snapshot.name=before",
            s(&img),
            s(&snap),
        ]);
        assert!(
            fs::read(&snap).unwrap() == fs::read(&frozen).unwrap(),
            "{}: snapshot content changed",
            c.name
        );
    }

    // A second session on the same image reuses what the first one freed.
    let mut w = WritableQcow2::open(&img).unwrap();
    random_writes(&mut w, &reference, 100, &mut rng);
    w.flush().unwrap();
    drop(w);
    assert_check_clean(&img);
    assert_same_content(&img, &reference);
}

#[test]
fn v3_64k_clusters_plain() {
    run_case(
        &Case {
            name: "v3-64k",
            cluster: 64 << 10,
            compat: "1.1",
            refcount_bits: 16,
            size: 16 * MIB,
            compress: None,
            backing: false,
            snapshot: false,
        },
        1,
    );
}

#[test]
fn v3_512_byte_clusters_zlib_compressed() {
    run_case(
        &Case {
            name: "v3-512-zlib",
            cluster: 512,
            compat: "1.1",
            refcount_bits: 16,
            size: 2 * MIB,
            compress: Some("zlib"),
            backing: false,
            snapshot: false,
        },
        2,
    );
}

#[test]
fn v3_64k_zstd_compressed_with_snapshot() {
    run_case(
        &Case {
            name: "v3-64k-zstd-snap",
            cluster: 64 << 10,
            compat: "1.1",
            refcount_bits: 16,
            size: 16 * MIB,
            compress: Some("zstd"),
            backing: false,
            snapshot: true,
        },
        3,
    );
}

#[test]
fn v2_4k_clusters_with_backing_file() {
    run_case(
        &Case {
            name: "v2-4k-backing",
            cluster: 4096,
            compat: "0.10",
            refcount_bits: 16,
            size: 4 * MIB,
            compress: None,
            backing: true,
            snapshot: false,
        },
        4,
    );
}

#[test]
fn v3_with_backing_file_and_snapshot() {
    run_case(
        &Case {
            name: "v3-8k-backing-snap",
            cluster: 8192,
            compat: "1.1",
            refcount_bits: 16,
            size: 4 * MIB,
            compress: None,
            backing: true,
            snapshot: true,
        },
        5,
    );
}

#[test]
fn v2_1k_clusters_compressed_with_snapshot() {
    run_case(
        &Case {
            name: "v2-1k-zlib-snap",
            cluster: 1024,
            compat: "0.10",
            refcount_bits: 16,
            size: 2 * MIB,
            compress: Some("zlib"),
            backing: false,
            snapshot: true,
        },
        6,
    );
}

#[test]
fn v3_2m_clusters_64_bit_refcounts_with_snapshot() {
    run_case(
        &Case {
            name: "v3-2m-rc64-snap",
            cluster: 2 << 20,
            compat: "1.1",
            refcount_bits: 64,
            size: 24 * MIB,
            compress: None,
            backing: false,
            snapshot: true,
        },
        7,
    );
}

#[test]
fn narrow_refcounts() {
    // QEMU cannot snapshot a compressed image with narrow refcounts (a host
    // cluster shared by many compressed clusters would overflow), so those
    // widths get a snapshot without compression.
    let cases = [
        (1, Some("zlib"), false),
        (2, None, true),
        (4, None, true),
        (8, Some("zlib"), true),
        (32, Some("zstd"), false),
    ];
    for (bits, compress, snapshot) in cases {
        run_case(
            &Case {
                name: "narrow",
                cluster: 4096,
                compat: "1.1",
                refcount_bits: bits,
                size: 2 * MIB,
                compress,
                backing: false,
                snapshot,
            },
            100 + u64::from(bits),
        );
    }
}

/// 512-byte clusters: qemu-img's one-cluster refcount table covers 8 MiB of
/// file, so writing 12 MiB forces the table to move and grow.
#[test]
fn refcount_table_grows() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("grow.qcow2");
    let reference = dir.path().join("grow.raw");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        s(&img),
        "16M",
    ]);
    fs::File::create(&reference)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    let before = read_reftable_position(&img);
    let mut rng = Rng(9);
    let mut w = WritableQcow2::open(&img).unwrap();
    let r = fs::OpenOptions::new().write(true).open(&reference).unwrap();
    for i in 0..12u64 {
        let data = rng.bytes(MIB as usize);
        w.write_at(i * MIB + 100, &data).unwrap();
        r.write_all_at(&data, i * MIB + 100).unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let after = read_reftable_position(&img);
    assert!(after.1 > before.1, "table {before:?} -> {after:?}");
    assert_check_clean(&img);
    assert_same_content(&img, &reference);
}

/// (refcount table offset, clusters) from the header.
fn read_reftable_position(img: &Path) -> (u64, u32) {
    let f = fs::File::open(img).unwrap();
    let mut b = [0u8; 12];
    f.read_exact_at(&mut b, 48).unwrap();
    (
        u64::from_be_bytes(b[..8].try_into().unwrap()),
        u32::from_be_bytes(b[8..].try_into().unwrap()),
    )
}

/// Zeroing whole clusters frees their storage (zero flag on v3).
#[test]
fn zeroing_whole_clusters_frees_them() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("full.raw");
    let img = dir.path().join("full.qcow2");
    let mut rng = Rng(11);
    fs::write(&raw, rng.bytes(4 * MIB as usize)).unwrap();
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        s(&raw),
        s(&img),
    ]);
    let mut w = WritableQcow2::open(&img).unwrap();
    w.write_zeroes(0, 2 * MIB).unwrap();
    w.flush().unwrap();
    drop(w);
    let zeroed = allocated_bytes(&img);
    let reference = dir.path().join("ref.raw");
    fs::copy(&raw, &reference).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&reference)
        .unwrap()
        .write_all_at(&vec![0u8; 2 * MIB as usize], 0)
        .unwrap();
    assert_check_clean(&img);
    assert_same_content(&img, &reference);
    assert!(
        zeroed <= 2 * MIB + MIB / 2,
        "{zeroed} bytes still allocated"
    );
}

/// Bytes of the disk that `qemu-img map` reports as data.
fn allocated_bytes(img: &Path) -> u64 {
    let out = qemu_img(&["map", "--output=json", s(img)]);
    let map: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    map.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum()
}

fn temp_image(dir: &Path, opts: &str) -> PathBuf {
    let img = dir.join("t.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", opts, s(&img), "4M"]);
    img
}

#[test]
fn dirty_images_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = temp_image(dir.path(), "compat=1.1");
    let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&[1], 79).unwrap(); // incompatible feature bit 0: dirty
    let err = WritableQcow2::open(&img).err().expect("dirty image opened");
    assert!(matches!(err, Qcow2RwError::Dirty { .. }), "{err}");
    assert!(err.to_string().contains("qemu-img check -r all"), "{err}");
}

#[test]
fn extended_l2_images_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = temp_image(dir.path(), "extended_l2=on");
    let err = WritableQcow2::open(&img).err().expect("extended L2 opened");
    assert!(err.to_string().contains("extended L2"), "{err}");
}

#[test]
fn writes_past_the_disk_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let img = temp_image(dir.path(), "compat=1.1");
    let before = fs::read(&img).unwrap();
    let mut w = WritableQcow2::open(&img).unwrap();
    let err = w.write_at(4 * MIB - 10, &[1u8; 11]).unwrap_err();
    assert!(matches!(err, Qcow2RwError::OutOfRange { .. }), "{err}");
    w.flush().unwrap();
    drop(w);
    assert!(fs::read(&img).unwrap() == before);
}

/// A crash before `flush` (simulated by never dropping the writer) leaves the
/// image as it was: on a fully compressed image every write goes to new
/// clusters that no metadata on disk points at yet.
#[test]
fn unflushed_writes_leave_the_image_unchanged_and_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("base.raw");
    let img = dir.path().join("packed.qcow2");
    let mut rng = Rng(13);
    random_raw(&raw, 4 * MIB, 4096, &mut rng);
    qemu_img(&[
        "convert",
        "-q",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4096",
        s(&raw),
        s(&img),
    ]);
    let scratch = dir.path().join("scratch.raw");
    fs::copy(&raw, &scratch).unwrap();
    let mut w = WritableQcow2::open(&img).unwrap();
    random_writes(&mut w, &scratch, 200, &mut rng);
    std::mem::forget(w);
    assert_check_clean(&img);
    assert_same_content(&img, &raw);
}
