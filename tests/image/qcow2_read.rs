//! Read conformance: on every kind of qcow2 that qemu makes, `kiln image convert -O raw`
//! must give the same bytes as `qemu-img convert -O raw`, and `kiln image info --json`
//! must agree with `qemu-img info`. Images kiln cannot read correctly must be refused.

use crate::args;
use crate::common::*;
use std::fs;
use std::path::Path;

/// Converts `image` to raw with kiln (plus `opts`) and with qemu-img: same bytes.
fn assert_reads_like_qemu(image: &Path, work: &Path, opts: &[&str]) {
    let expected = work.join("qemu.raw");
    qemu_img_ok(args!["convert", "-O", "raw", image, &expected]);
    let opts: Vec<&str> = opts.iter().copied().chain(["-O", "raw"]).collect();
    let ours = kiln_convert(&opts, image, &work.join("kiln-out"), "disk.raw");
    assert_same_bytes(&ours, &expected);
    assert_info_matches_qemu(image);
}

fn read_case(variant: Variant, opts: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let image = variant.build(dir.path());
    assert_reads_like_qemu(&image, dir.path(), opts);
}

#[test]
fn read_compat_0_10() {
    read_case(Variant::Compat010, &["-j", "1"]);
}

#[test]
fn read_compat_1_1() {
    read_case(Variant::Compat11, &[]);
}

#[test]
fn read_cluster_4k() {
    read_case(Variant::Cluster4k, &["-f", "qcow2"]);
}

#[test]
fn read_cluster_2m() {
    read_case(Variant::Cluster2m, &[]);
}

#[test]
fn read_compressed_zlib() {
    read_case(Variant::CompressedZlib, &["-j", "1"]);
}

#[test]
fn read_compressed_zstd() {
    read_case(Variant::CompressedZstd, &[]);
}

#[test]
fn read_compressed_compat_0_10_4k_clusters() {
    read_case(Variant::CompressedCompat010, &[]);
}

#[test]
fn read_extended_l2_subclusters() {
    read_case(Variant::ExtendedL2, &["-j", "1"]);
}

#[test]
fn read_extended_l2_over_backing_file() {
    read_case(Variant::ExtendedL2OverBacking, &[]);
}

#[test]
fn read_refcount_bits_1() {
    read_case(Variant::RefcountBits1, &[]);
}

#[test]
fn read_refcount_bits_64() {
    read_case(Variant::RefcountBits64, &["-j", "1"]);
}

#[test]
fn read_lazy_refcounts_dirty() {
    read_case(Variant::LazyRefcountsDirty, &[]);
}

#[test]
fn read_preallocation_metadata_compat_0_10() {
    read_case(Variant::PreallocMetadataV2, &[]);
}

#[test]
fn read_preallocation_metadata_compat_1_1() {
    read_case(Variant::PreallocMetadataV3, &["-j", "1"]);
}

#[test]
fn read_backing_chain_relative_paths() {
    read_case(Variant::BackingChain, &[]);
}

#[test]
fn read_backing_chain_without_format_extension() {
    read_case(Variant::BackingChainNoFormat, &["-j", "1"]);
}

#[test]
fn read_missing_backing_file_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let top = Variant::BackingChain.build(dir.path());
    fs::remove_file(dir.path().join("base/base.raw")).unwrap();
    let qemu = qemu_img(args![
        "convert",
        "-O",
        "raw",
        &top,
        dir.path().join("q.raw")
    ]);
    assert!(!qemu.ok(), "qemu-img should fail too: {}", qemu.report());
    let out = dir.path().join("out");
    let c = kiln_convert_into(&out, "disk.raw", &["-O", "raw"], &top, false);
    c.run.assert_clean_failure();
    assert_eq!(c.leftover, None, "{}", c.run.report());
    assert!(
        c.run.stderr.contains("base.raw"),
        "the error must name the missing file: {}",
        c.run.report()
    );
}

/// kiln must refuse `image`: convert fails cleanly, writes nothing, and the message
/// mentions one of `words` (compared lowercase, with '-' and '_' read as spaces).
fn assert_refused(image: &Path, out: &Path, words: &[&str]) {
    let c = kiln_convert_into(out, "disk.raw", &["-O", "raw"], image, false);
    c.run.assert_clean_failure();
    assert_eq!(c.leftover, None, "{}", c.run.report());
    let msg = c.run.stderr.to_lowercase().replace(['-', '_'], " ");
    assert!(
        words.iter().any(|w| msg.contains(w)),
        "the error should mention {words:?}: {}",
        c.run.report()
    );
}

/// A plain valid qcow2 of 1 MiB mixed data.
fn small_qcow2(dir: &Path, name: &str) -> std::path::PathBuf {
    let src = dir.join(format!("{name}.raw"));
    let img = dir.join(format!("{name}.qcow2"));
    make_disk(&src, MIB, 7, Content::Mixed);
    qcow2_from_raw(&src, &img, "", false);
    img
}

#[test]
fn read_refuses_unknown_incompatible_feature() {
    let dir = tempfile::tempdir().unwrap();
    let img = small_qcow2(dir.path(), "unknown-feature");
    let q = Qcow2::open(&img);
    let features = q.u64_at(hdr::INCOMPATIBLE_FEATURES);
    q.set_u64(hdr::INCOMPATIBLE_FEATURES, features | 1 << 40);
    let qemu = qemu_img(args!["info", &img]);
    assert!(!qemu.ok(), "qemu-img refuses it too: {}", qemu.report());
    assert_refused(&img, &dir.path().join("out"), &["feature"]);
}

#[test]
fn read_refuses_encryption() {
    let dir = tempfile::tempdir().unwrap();
    let luks = dir.path().join("luks.qcow2");
    // qemu-img times its PBKDF with getrusage and gives up when a short benchmark
    // measures 0 ms ("Unable to get accurate CPU usage"); only that is retried.
    let mut attempts = 0;
    loop {
        let r = qemu_img(args![
            "create",
            "--object",
            "secret,id=sec0,data=hunter2",
            "-f",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0",
            &luks,
            "1M"
        ]);
        attempts += 1;
        if r.ok() {
            break;
        }
        let flaky = r.report().contains("Unable to get accurate CPU usage");
        assert!(
            flaky && attempts < 5,
            "creating the LUKS image: {}",
            r.report()
        );
    }
    assert_qemu_info(&luks, &[("encrypted", "true")]);
    assert_refused(&luks, &dir.path().join("out-luks"), &["encrypt"]);

    // The legacy AES method (crypt_method 1), which qemu-img no longer creates.
    let aes = small_qcow2(dir.path(), "aes");
    Qcow2::open(&aes).set_u32(hdr::CRYPT_METHOD, 1);
    assert_refused(&aes, &dir.path().join("out-aes"), &["encrypt"]);
}

#[test]
fn read_refuses_external_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ext.qcow2");
    let data = dir.path().join("ext.data");
    let data = data.to_str().unwrap();
    let opts = format!("data_file={data},data_file_raw=on");
    qemu_img_ok(args!["create", "-f", "qcow2", "-o", opts, &img, "1M"]);
    qemu_io(&img, &["write -P 0x42 0 64k"]);
    assert_qemu_info(&img, &[("format-specific.data.data-file", data)]);
    assert_refused(&img, &dir.path().join("out"), &["data file"]);
}
