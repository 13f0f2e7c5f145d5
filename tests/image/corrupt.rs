//! `kiln image check` against `qemu-img check` on clean and damaged images, and hostile
//! input for info / check / convert: they must finish, never panic, fail with a message
//! where the input is invalid, and leave nothing behind.

use crate::args;
use crate::common::*;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------
// Part 1: check

/// Exit code of `kiln image check`; `--json` must give the same code and valid JSON.
fn kiln_check_code(image: &Path) -> i32 {
    let plain = kiln(args!["image", "check", image]);
    let json = kiln(args!["image", "check", "--json", image]);
    for run in [&plain, &json] {
        if let Some(why) = run.crash() {
            panic!("{why}: {}", run.report());
        }
    }
    assert_eq!(
        plain.code(),
        json.code(),
        "{}\n{}",
        plain.report(),
        json.report()
    );
    json.json();
    plain.code().unwrap()
}

#[test]
fn check_clean_on_qemu_images() {
    use Variant::*;
    let mut problems = Vec::new();
    for v in [
        Compat010,
        Cluster4k,
        CompressedZstd,
        ExtendedL2OverBacking,
        RefcountBits1,
        RefcountBits64,
        PreallocMetadataV3,
        BackingChain,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let image = v.build(dir.path()); // asserts that qemu-img check is clean
        let code = kiln_check_code(&image);
        if code != 0 {
            problems.push(format!("{v:?}: kiln check exit {code}"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn check_dirty_lazy_refcounts_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let image = Variant::LazyRefcountsDirty.build(dir.path()); // qemu-img check says 2
    assert_eq!(kiln_check_code(&image), 2);
}

/// Damages a valid image (64 KiB clusters, 16-bit refcounts); qemu-img check must give
/// `expected` (so the damage is what the test claims) and kiln check the same.
fn assert_check_finds(expected: i32, damage: impl FnOnce(&Qcow2)) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("source.raw");
    let image = dir.path().join("victim.qcow2");
    make_disk(&src, 4 * MIB + 512, 11, Content::Mixed);
    qcow2_from_raw(&src, &image, "", false);
    assert_qemu_check_clean(&image);
    assert_eq!(kiln_check_code(&image), 0, "kiln check before the damage");
    damage(&Qcow2::open(&image));
    let (qemu_code, run) = qemu_check(&image);
    assert_eq!(qemu_code, expected, "qemu-img check: {}", run.report());
    assert_eq!(
        kiln_check_code(&image),
        expected,
        "kiln check after the damage"
    );
}

#[test]
fn check_used_cluster_with_refcount_zero_is_corruption() {
    assert_check_finds(2, |q| {
        let data = q.first_data_cluster();
        q.set_refcount(data.host >> q.cluster_bits, 0);
    });
}

#[test]
fn check_refcount_two_on_singly_used_cluster_is_corruption() {
    // The L2 entry's COPIED flag claims refcount 1, so qemu counts this as corruption.
    assert_check_finds(2, |q| {
        let data = q.first_data_cluster();
        q.set_refcount(data.host >> q.cluster_bits, 2);
    });
}

#[test]
fn check_refcount_on_unused_cluster_is_leak() {
    assert_check_finds(3, |q| {
        let index = q.file_len().div_ceil(q.cluster_size());
        q.set_len((index + 1) * q.cluster_size());
        assert_eq!(q.refcount(index), 0);
        q.set_refcount(index, 1);
    });
}

#[test]
fn check_unreferenced_data_cluster_is_leak() {
    assert_check_finds(3, |q| q.set_u64(q.first_data_cluster().entry_pos, 0));
}

#[test]
fn check_l2_entry_past_end_of_file_is_corruption() {
    assert_check_finds(2, |q| {
        let past = q.file_len().next_multiple_of(q.cluster_size()) + 16 * q.cluster_size();
        q.set_u64(q.first_data_cluster().entry_pos, COPIED | past);
    });
}

/// Points the first used L1 entry at `offset`, so an L2 table overlaps other metadata.
fn l2_table_at(q: &Qcow2, offset: u64) {
    let (index, _) = q.first_l2_table();
    q.set_u64(q.l1_table_offset + 8 * index, COPIED | offset);
}

#[test]
fn check_l2_table_overlapping_l1_table_is_corruption() {
    assert_check_finds(2, |q| l2_table_at(q, q.l1_table_offset));
}

#[test]
fn check_l2_table_overlapping_refcount_table_is_corruption() {
    assert_check_finds(2, |q| l2_table_at(q, q.refcount_table_offset));
}

#[test]
fn check_l2_table_inside_header_cluster_is_corruption() {
    // Offset 0 means "unallocated", so the header is reached with an unaligned offset.
    assert_check_finds(2, |q| l2_table_at(q, 512));
}

// ---------------------------------------------------------------------------------------
// Part 2: hostile input

/// What info / check must do with a hostile file (beyond finishing without a crash).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Want {
    /// Non-zero exit with a message (for check: exit 1 or 2).
    Fail,
    /// Succeed and report format "raw": no qcow2 magic means raw, as qemu-img probes.
    Raw,
    /// Anything but a crash.
    Any,
}

/// What `convert -f qcow2 -O raw` must do with a hostile file.
#[derive(Clone, Copy, PartialEq, Debug)]
enum ConvertWant {
    /// Non-zero exit with a message, nothing written.
    Fail,
    /// Fail, or give exactly qemu-img's bytes (qemu-img must then succeed too).
    FailOrMatchQemu,
    /// If both kiln and qemu-img succeed, the bytes must be the same.
    MatchQemuIfBothSucceed,
}

struct Bad {
    name: String,
    path: PathBuf,
    info: Want,
    check: Want,
    convert: ConvertWant,
}

impl Bad {
    fn new(name: &str, path: PathBuf, info: Want, check: Want, convert: ConvertWant) -> Self {
        let name = name.to_string();
        Bad {
            name,
            path,
            info,
            check,
            convert,
        }
    }
}

/// Runs kiln info, check and convert on one hostile file; returns what went wrong.
fn judge(bad: &Bad, work: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut note = |what: &str, run: &Run, msg: &str| {
        problems.push(format!("[{}] {what}: {msg}\n{}", bad.name, run.report()));
    };
    let info = kiln_untrusted(args!["image", "info", "--json", &bad.path]);
    let check = kiln_untrusted(args!["image", "check", &bad.path]);
    for (what, run) in [("info", &info), ("check", &check)] {
        if let Some(why) = run.crash() {
            note(what, run, &why);
        }
    }
    let info_json = serde_json::from_str::<Value>(&info.stdout).ok();
    if info.ok() && info_json.is_none() {
        note("info", &info, "--json output is not JSON");
    }
    match bad.info {
        Want::Fail if info.ok() || info.stderr.trim().is_empty() => {
            note("info", &info, "must fail with an error message")
        }
        Want::Raw if !info.ok() || info_json.as_ref().is_some_and(|j| j["format"] != "raw") => {
            note("info", &info, "must succeed and report format raw")
        }
        _ => {}
    }
    let said = !(check.stdout.trim().is_empty() && check.stderr.trim().is_empty());
    if bad.check == Want::Fail && !(matches!(check.code(), Some(1 | 2)) && said) {
        note("check", &check, "must exit 1 or 2 and say why");
    }

    let out_dir = work.join("out");
    let opts = ["-f", "qcow2", "-O", "raw"];
    let c = kiln_convert_into(&out_dir, "disk.raw", &opts, &bad.path, true);
    if let Some(why) = c.run.crash() {
        note("convert", &c.run, &why);
    }
    if let Some(leftover) = &c.leftover {
        note("convert", &c.run, leftover);
    }
    if !c.run.ok() && c.run.stderr.trim().is_empty() {
        note("convert", &c.run, "failed without an error message");
    }
    if c.run.ok() && c.leftover.is_none() {
        match bad.convert {
            ConvertWant::Fail => note("convert", &c.run, "must fail"),
            want => {
                if let Some(problem) = compare_with_qemu(&bad.path, &c.dst, work, want) {
                    note("convert", &c.run, &problem);
                }
            }
        }
    }
    fs::remove_dir_all(&out_dir).unwrap();
    problems
}

/// After kiln converted a hostile file, compares with qemu-img's reading of it.
fn compare_with_qemu(image: &Path, ours: &Path, work: &Path, want: ConvertWant) -> Option<String> {
    // qemu rounds the virtual size down to whole sectors; skip what cannot compare.
    let header = fs::read(image).unwrap();
    let size_field = header
        .get(24..32)
        .map(|b| u64::from_be_bytes(b.try_into().unwrap()));
    if file_len(ours) > 64 * MIB || size_field.is_none_or(|size| size % 512 != 0) {
        return None;
    }
    let theirs = work.join("qemu.raw");
    let qemu = qemu_img(args!["convert", "-f", "qcow2", "-O", "raw", image, &theirs]);
    let problem = if qemu.ok() {
        first_difference(ours, &theirs)
            .map(|d| format!("kiln and qemu-img read it differently: {d}"))
    } else if want == ConvertWant::FailOrMatchQemu {
        Some(format!(
            "kiln read it but qemu-img refuses: {}",
            qemu.report()
        ))
    } else {
        None
    };
    let _ = fs::remove_file(&theirs);
    problem
}

fn judge_all(cases: &[Bad], work: &Path) {
    let problems: Vec<String> = cases.iter().flat_map(|b| judge(b, work)).collect();
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

/// A valid image to damage: 4 KiB clusters, 8 MiB + 512 of mixed data (5 L1 entries).
fn base_image(dir: &Path) -> PathBuf {
    let src = dir.join("base.raw");
    let image = dir.join("base.qcow2");
    make_disk(&src, 8 * MIB + 512, 31, Content::Mixed);
    qcow2_from_raw(&src, &image, "cluster_size=4096", false);
    assert_qemu_check_clean(&image);
    image
}

/// A copy of `base` named `name`, changed by `edit`.
fn damaged(base: &Path, name: &str, edit: impl FnOnce(&Qcow2)) -> PathBuf {
    let path = base.with_file_name(format!("{name}.qcow2"));
    fs::copy(base, &path).unwrap();
    edit(&Qcow2::open(&path));
    path
}

#[test]
fn bad_truncated_files() {
    use ConvertWant as C;
    use Want::*;
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path());
    let q = Qcow2::open(&base);
    let cs = q.cluster_size();
    let cuts = [
        ("truncated-0", 0, Raw, Any),
        ("truncated-3", 3, Raw, Any),
        ("truncated-100", 100, Fail, Fail),
        (
            "truncated-mid-l1",
            q.l1_table_offset + q.l1_size * 4 + 3,
            Any,
            Fail,
        ),
        ("truncated-mid-l2", q.first_l2_table().1 + cs / 2, Any, Fail),
        (
            "truncated-mid-data",
            q.first_data_cluster().host + cs / 2,
            Any,
            Fail,
        ),
    ];
    let cases: Vec<Bad> = cuts
        .into_iter()
        .map(|(name, len, info, check)| {
            let path = damaged(&base, name, |q| q.set_len(len));
            if len > 100 {
                assert_eq!(qemu_check(&path).0, 2, "qemu-img check of {name}");
            }
            Bad::new(name, path, info, check, C::Fail)
        })
        .collect();
    judge_all(&cases, dir.path());
}

#[test]
fn bad_header_fields() {
    use ConvertWant as C;
    use Want::*;
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path());
    let beyond_eof = file_len(&base).next_multiple_of(4096) + (1 << 30);
    let u32_field = |name: &str, pos: u64, v: u32| damaged(&base, name, |q| q.set_u32(pos, v));
    let mut cases = vec![
        Bad::new(
            "bad-magic",
            u32_field("bad-magic", 0, 0x1234_5678),
            Raw,
            Any,
            C::Fail,
        ),
        Bad::new(
            "l1-size-past-eof",
            u32_field("l1-size-past-eof", hdr::L1_SIZE, 0x10_0000),
            Any,
            Fail,
            C::FailOrMatchQemu,
        ),
        Bad::new(
            "l1-size-huge",
            u32_field("l1-size-huge", hdr::L1_SIZE, 0x7fff_ffff),
            Any,
            Fail,
            C::Fail,
        ),
        Bad::new(
            "l1-offset-past-eof",
            damaged(&base, "l1-offset-past-eof", |q| {
                q.set_u64(hdr::L1_TABLE_OFFSET, beyond_eof)
            }),
            Any,
            Fail,
            C::Fail,
        ),
    ];
    // Header values the spec rules out: everything must fail.
    let invalid = [
        ("version-1", hdr::VERSION, 1),
        ("version-4", hdr::VERSION, 4),
        ("cluster-bits-8", hdr::CLUSTER_BITS, 8),
        ("cluster-bits-22", hdr::CLUSTER_BITS, 22),
        ("refcount-order-7", hdr::REFCOUNT_ORDER, 7),
        ("header-length-72", hdr::HEADER_LENGTH, 72),
    ];
    for (name, pos, v) in invalid {
        cases.push(Bad::new(name, u32_field(name, pos, v), Fail, Fail, C::Fail));
    }
    let long_name = damaged(&base, "backing-name-5000", |q| {
        q.write_at(512, &[b'a'; 3584]);
        q.set_u64(hdr::BACKING_FILE_OFFSET, 512);
        q.set_u32(hdr::BACKING_FILE_SIZE, 5000);
    });
    cases.push(Bad::new(
        "backing-name-5000",
        long_name,
        Fail,
        Fail,
        C::Fail,
    ));
    for case in cases.iter().filter(|c| c.convert == C::Fail) {
        let q = dir.path().join("q");
        let qemu = qemu_img(args!["convert", "-O", "raw", &case.path, q]);
        assert!(
            !qemu.ok() || qemu_check(&case.path).0 != 0,
            "{}: qemu-img finds nothing wrong",
            case.name
        );
    }
    judge_all(&cases, dir.path());
}

#[test]
fn bad_compressed_cluster_data() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("text.raw");
    make_disk(&src, MIB, 41, Content::Text);
    let mut rng = Rng::new(41);
    let mut cases = Vec::new();
    for ctype in ["zlib", "zstd"] {
        let image = dir.path().join(format!("{ctype}.qcow2"));
        qcow2_from_raw(&src, &image, &format!("compression_type={ctype}"), true);
        let name = format!("garbage-{ctype}");
        let path = damaged(&image, &name, |q| {
            let (offset, len) = q.first_compressed_data();
            let mut garbage = vec![0u8; len as usize];
            rng.fill(&mut garbage);
            q.write_at(offset, &garbage);
        });
        let qemu = qemu_img(args!["convert", "-O", "raw", &path, dir.path().join("q")]);
        assert!(!qemu.ok(), "qemu-img reads the garbage: {}", qemu.report());
        cases.push(Bad::new(
            &name,
            path,
            Want::Any,
            Want::Any,
            ConvertWant::Fail,
        ));
    }
    judge_all(&cases, dir.path());
}

/// Byte ranges of metadata in a valid image, with weights: header, L1 table, the used
/// part of the first L2 table, refcount table and block.
fn metadata_regions(image: &Path) -> Vec<(u64, u64, u64)> {
    let q = Qcow2::open(image);
    let used_l2 = (q.size.div_ceil(q.cluster_size()) * 8).min(q.cluster_size());
    let refblock = q.u64_at(q.refcount_table_offset);
    let used_refs = q.file_len() / q.cluster_size() * 2;
    vec![
        (0, 112, 40),
        (q.l1_table_offset, q.l1_size * 8, 15),
        (q.first_l2_table().1, used_l2, 35),
        (q.refcount_table_offset, 16, 4),
        (refblock, used_refs, 6),
    ]
}

/// One (start, len) of `regions`, chosen with their weights.
fn pick_weighted(rng: &mut Rng, regions: &[(u64, u64, u64)]) -> (u64, u64) {
    let mut pick = rng.below(regions.iter().map(|r| r.2).sum());
    for &(start, len, weight) in regions {
        if pick < weight {
            return (start, len);
        }
        pick -= weight;
    }
    unreachable!()
}

#[test]
fn bad_random_byte_flips() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    make_disk(&src, MIB + 512, 51, Content::Mixed);
    let bases: Vec<PathBuf> = [("plain", false), ("compressed", true)]
        .into_iter()
        .map(|(name, compress)| {
            let image = dir.path().join(format!("{name}.qcow2"));
            qcow2_from_raw(&src, &image, "cluster_size=4096", compress);
            assert_qemu_check_clean(&image);
            image
        })
        .collect();
    let regions: Vec<_> = bases.iter().map(|b| metadata_regions(b)).collect();
    let mut rng = Rng::new(0x5EED);
    let mut problems = Vec::new();
    for i in 0..200 {
        let which = i % bases.len();
        let mut changes = Vec::new();
        let path = damaged(&bases[which], "flipped", |q| {
            for _ in 0..1 + rng.below(4) {
                let (start, len) = pick_weighted(&mut rng, &regions[which]);
                let pos = start + rng.below(len);
                let old = q.read_at(pos, 1)[0];
                let new = if rng.below(2) == 0 {
                    old ^ 1 << rng.below(8)
                } else {
                    rng.next_u64() as u8
                };
                q.write_at(pos, &[new]);
                changes.push(format!("{pos:#x}: {old:#04x}->{new:#04x}"));
            }
        });
        let name = format!(
            "flip {i} of {}: {}",
            bases[which].display(),
            changes.join(", ")
        );
        let bad = Bad::new(
            &name,
            path,
            Want::Any,
            Want::Any,
            ConvertWant::MatchQemuIfBothSucceed,
        );
        problems.extend(judge(&bad, dir.path()));
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}
