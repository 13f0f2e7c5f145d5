//! Write conformance: kiln's qcow2 output must pass `qemu-img check`, hold the same disk as
//! its source (`qemu-img compare`), carry the requested options (`qemu-img info`), be clean
//! for `kiln image check`, and not depend on the thread count or on the run.

use crate::args;
use crate::common::*;
use std::path::{Path, PathBuf};

fn mixed_source(dir: &Path) -> PathBuf {
    let src = dir.join("source.raw");
    make_disk(&src, DISK_SIZE, 21, Content::Mixed);
    src
}

fn compressed_clusters(image: &Path) -> usize {
    Qcow2::open(image).compressed_count()
}

/// `kiln image convert OPTS -O qcow2 SRC OUT_DIR/out.qcow2`, then: qemu-img check clean
/// (exit 0: no errors, no leaks), qemu-img compare identical, same virtual size, compat
/// 1.1, the expected cluster size and compression type, no backing file, compressed
/// clusters exactly when `-c` was given, and kiln's own check clean.
fn write_and_verify(
    src: &Path,
    out_dir: &Path,
    opts: &[&str],
    cluster: u64,
    ctype: &str,
) -> PathBuf {
    let all: Vec<&str> = opts.iter().copied().chain(["-O", "qcow2"]).collect();
    let out = kiln_convert(&all, src, out_dir, "out.qcow2");
    let (code, check) = qemu_check(&out);
    assert_eq!(
        code,
        0,
        "qemu-img check of kiln's output: {}",
        check.report()
    );
    let compare = qemu_img(args!["compare", src, &out]);
    assert!(compare.ok(), "qemu-img compare: {}", compare.report());
    let src_size = qemu_info(src)["virtual-size"].to_string();
    assert_qemu_info(
        &out,
        &[
            ("format", "qcow2"),
            ("virtual-size", &src_size),
            ("cluster-size", &cluster.to_string()),
            ("format-specific.data.compat", "1.1"),
            ("format-specific.data.compression-type", ctype),
            ("backing-filename", "null"),
        ],
    );
    let compressed = compressed_clusters(&out);
    if opts.contains(&"-c") {
        assert!(compressed > 0, "-c stored no compressed cluster");
    } else {
        assert_eq!(compressed, 0, "compressed clusters without -c");
    }
    let ours = kiln(args!["image", "check", &out]);
    assert!(ours.ok(), "kiln check of its own output: {}", ours.report());
    out
}

#[test]
fn write_uncompressed_default_cluster_size() {
    let dir = tempfile::tempdir().unwrap();
    let src = mixed_source(dir.path());
    write_and_verify(&src, &dir.path().join("out"), &[], 65536, "zlib");
}

#[test]
fn write_cluster_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let src = mixed_source(dir.path());
    for cluster in [4096u64, 65536, 2 * MIB] {
        let out = dir.path().join(format!("out-{cluster}"));
        let size = cluster.to_string();
        write_and_verify(&src, &out, &["--cluster-size", &size], cluster, "zlib");
    }
}

#[test]
fn write_compressed_zlib() {
    let dir = tempfile::tempdir().unwrap();
    let src = mixed_source(dir.path());
    write_and_verify(&src, &dir.path().join("out"), &["-c"], 65536, "zlib");
}

#[test]
fn write_compressed_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let src = mixed_source(dir.path());
    let opts = ["-c", "--compression", "zstd"];
    write_and_verify(&src, &dir.path().join("out"), &opts, 65536, "zstd");
}

#[test]
fn write_from_qcow2_sources() {
    let dir = tempfile::tempdir().unwrap();
    // A backing chain is flattened into one standalone image.
    let chain = Variant::BackingChain.build(&dir.path().join("chain"));
    let out = dir.path().join("out-chain");
    write_and_verify(
        &chain,
        &out,
        &["-f", "qcow2", "--cluster-size", "4096"],
        4096,
        "zlib",
    );
    // zstd-compressed clusters recompressed with zlib.
    let zstd = Variant::CompressedZstd.build(&dir.path().join("zstd"));
    write_and_verify(&zstd, &dir.path().join("out-zstd"), &["-c"], 65536, "zlib");
}

/// Converts `src` once per entry of `runs` (extra options each) and asserts that all
/// outputs are byte-identical.
fn assert_same_output(src: &Path, work: &Path, runs: &[Vec<&str>]) {
    let outputs: Vec<(String, PathBuf)> = runs
        .iter()
        .enumerate()
        .map(|(i, opts)| {
            let opts: Vec<&str> = opts.iter().copied().chain(["-O", "qcow2"]).collect();
            let out = kiln_convert(&opts, src, &work.join(format!("run-{i}")), "out.qcow2");
            (opts.join(" "), out)
        })
        .collect();
    for (opts, out) in &outputs[1..] {
        if let Some(diff) = first_difference(&outputs[0].1, out) {
            panic!("`{}` and `{opts}` differ: {diff}", outputs[0].0);
        }
    }
}

#[test]
fn write_output_independent_of_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let src = mixed_source(dir.path());
    for (i, extra) in [vec!["-c"], vec!["-c", "--compression", "zstd"], vec![]]
        .into_iter()
        .enumerate()
    {
        let runs: Vec<Vec<&str>> = ["1", "2", "4"]
            .iter()
            .map(|j| extra.iter().copied().chain(["-j", j]).collect())
            .collect();
        assert_same_output(&src, &dir.path().join(format!("set-{i}")), &runs);
    }
}

#[test]
fn write_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let src = mixed_source(dir.path());
    assert_same_output(&src, &dir.path().join("plain"), &[vec![], vec![]]);
    assert_same_output(&src, &dir.path().join("zlib"), &[vec!["-c"], vec!["-c"]]);
}

#[test]
fn write_all_zero_source_has_no_data_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("zero.raw");
    std::fs::File::create(&src)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let out = write_and_verify(&src, &dir.path().join("out"), &[], 65536, "zlib");
    let data: Vec<_> = qemu_map(&out)
        .into_iter()
        .filter(|e| e["data"] == true)
        .collect();
    assert!(
        data.is_empty(),
        "data extents in an all-zero image: {data:?}"
    );
    // Header, refcount table, refcount block, L1 table and at most one L2 table or two.
    let len = file_len(&out);
    assert!(len <= 6 * 65536, "{len} bytes for an all-zero 64 MiB disk");
}

#[test]
fn write_compressed_is_much_smaller() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("text.raw");
    make_disk(&src, 8 * MIB, 22, Content::Text);
    let qemu_out = dir.path().join("qemu.qcow2");
    qcow2_from_raw(&src, &qemu_out, "", true);
    let (src_len, qemu_len) = (file_len(&src), file_len(&qemu_out));
    assert!(
        qemu_len * 3 < src_len,
        "test data compresses too little: {qemu_len}"
    );
    let ours = write_and_verify(&src, &dir.path().join("out"), &["-c"], 65536, "zlib");
    let our_len = file_len(&ours);
    assert!(
        our_len * 3 < src_len && our_len * 2 < qemu_len * 3,
        "kiln -c: {our_len} bytes, qemu-img -c: {qemu_len}, source {src_len}"
    );
}
