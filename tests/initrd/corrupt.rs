//! Corrupt, truncated and mixed-up inputs: a clean error naming the problem, no
//! panic, no hang, and no output file.

use std::fs;
use std::path::Path;

use crate::common::*;

/// A small valid initrd: an early plain archive, zero padding, then `compression`.
fn good_image(tmp: &Path, compression: &str) -> Vec<u8> {
    let src = tmp.join(format!("src-{compression}"));
    fs::create_dir(&src).unwrap();
    make_tree(&src, false);
    let early = tmp.join("early-src");
    if !early.exists() {
        fs::create_dir_all(early.join("kernel/x86/microcode")).unwrap();
        fs::write(
            early.join("kernel/x86/microcode/GenuineIntel.bin"),
            bytes(3, 4000),
        )
        .unwrap();
    }
    let img = tmp.join(format!("good-{compression}.img"));
    kiln(&[
        "initrd".as_ref(),
        "pack".as_ref(),
        src.as_os_str(),
        "-o".as_ref(),
        img.as_os_str(),
        "--compression".as_ref(),
        compression.as_ref(),
        "--early".as_ref(),
        early.as_os_str(),
    ])
    .assert_ok();
    fs::read(&img).unwrap()
}

/// Every command on `image` fails cleanly and leaves nothing behind.
#[track_caller]
fn assert_rejected(tmp: &Path, image: &[u8], what: &str, expect_in_message: &str) {
    let work = tmp.join("work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir(&work).unwrap();
    let img = work.join("bad.img");
    fs::write(&img, image).unwrap();
    let before = names(&work);
    let ls = kiln_untrusted(&["initrd".as_ref(), "ls".as_ref(), img.as_os_str()]);
    ls.assert_clean_failure();
    assert!(
        ls.stderr
            .to_lowercase()
            .contains(&expect_in_message.to_lowercase()),
        "{what}: message should mention {expect_in_message:?}: {}",
        ls.report()
    );
    let out = work.join("out.img");
    kiln_untrusted(&[
        "initrd".as_ref(),
        "rm".as_ref(),
        img.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "init".as_ref(),
    ])
    .assert_clean_failure();
    let dest = work.join("dest");
    kiln_untrusted(&[
        "initrd".as_ref(),
        "extract".as_ref(),
        img.as_os_str(),
        dest.as_os_str(),
    ])
    .assert_clean_failure();
    assert_eq!(
        names(&work),
        before,
        "{what}: something was left in the output folder"
    );
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn cut_streams_of_every_compression() {
    let tmp = tempfile::tempdir().unwrap();
    for compression in ["gzip", "zstd", "xz"] {
        let good = good_image(tmp.path(), compression);
        // The main segment starts after the early archive and padding.
        let ls = kiln(&[
            "initrd".as_ref(),
            "ls".as_ref(),
            "--json".as_ref(),
            tmp.path()
                .join(format!("good-{compression}.img"))
                .as_os_str(),
        ])
        .assert_ok()
        .json();
        let segs = ls["segments"].as_array().unwrap();
        let start = segs[1]["offset"].as_u64().unwrap() as usize;
        let last = segs.last().unwrap();
        let end = (last["offset"].as_u64().unwrap() + last["length"].as_u64().unwrap()) as usize;
        assert_eq!(end, good.len());
        for cut in [start + 1, start + 10, (start + end) / 2, end - 1] {
            assert_rejected(
                tmp.path(),
                &good[..cut],
                &format!("{compression} cut at {cut}"),
                compression,
            );
        }
        // Garbage between the early archive and the compressed stream.
        let mut mixed = good[..start].to_vec();
        mixed.extend_from_slice(b"\0\0\0\0GARBAGE!");
        mixed.extend_from_slice(&good[start..]);
        assert_rejected(
            tmp.path(),
            &mixed,
            &format!("{compression} garbage between segments"),
            "unrecognized data",
        );
        // Garbage after the last segment.
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"\0\0\x01\x02");
        assert_rejected(
            tmp.path(),
            &trailing,
            "garbage at the end",
            "unrecognized data",
        );
        // A flipped byte in the middle of the compressed data.
        let mut flipped = good.clone();
        flipped[(start + end) / 2] ^= 0x55;
        fs::write(tmp.path().join("flipped.img"), &flipped).unwrap();
        kiln_untrusted(&[
            "initrd".as_ref(),
            "ls".as_ref(),
            tmp.path().join("flipped.img").as_os_str(),
        ])
        .assert_clean_failure();
    }
}

#[test]
fn cut_streams_of_foreign_compressors() {
    require("cpio");
    require("lz4");
    require("bzip2");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src, false);
    sh(&src, "find . | cpio -o -H newc --quiet > ../main.cpio");
    for (name, cmd) in [("lz4", "lz4 -l -q -c"), ("bzip2", "bzip2 -c")] {
        sh(tmp.path(), &format!("{cmd} < main.cpio > {name}.img"));
        let good = fs::read(tmp.path().join(format!("{name}.img"))).unwrap();
        for cut in [good.len() / 2, good.len() - 1] {
            assert_rejected(
                tmp.path(),
                &good[..cut],
                &format!("{name} cut at {cut}"),
                name,
            );
        }
    }
}

#[test]
fn broken_cpio_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let good = good_image(tmp.path(), "none");
    // The early archive is first; its first entry header is at 0.
    let mut bad_magic = good.clone();
    bad_magic[..6].copy_from_slice(b"070709");
    assert_rejected(tmp.path(), &bad_magic, "bad magic", "unrecognized data");
    // The main archive: corrupt the header of the entry named "init".
    let init = find(&good, b"init\0") - 110;
    let mut bad = good.clone();
    bad[init..init + 6].copy_from_slice(b"07070X");
    assert_rejected(tmp.path(), &bad, "bad magic in the middle", "magic");
    let mut name_past_end = good.clone();
    name_past_end[init + 94..init + 102].copy_from_slice(b"7FFFFFF0");
    assert_rejected(
        tmp.path(),
        &name_past_end,
        "name size past the end",
        "truncated",
    );
    let mut size_past_end = good.clone();
    size_past_end[init + 54..init + 62].copy_from_slice(b"FFFFFFFF");
    assert_rejected(
        tmp.path(),
        &size_past_end,
        "file size past the end",
        "truncated",
    );
    let mut not_hex = good.clone();
    not_hex[init + 14..init + 22].copy_from_slice(b"-0000001");
    assert_rejected(tmp.path(), &not_hex, "non-hex field", "mode");
    // Archive without its trailer.
    let trailer = find(&good, b"TRAILER!!!") - 110;
    let last_trailer = good.len()
        - good[..]
            .windows(10)
            .rev()
            .position(|w| w == b"TRAILER!!!")
            .unwrap()
        - 10
        - 110;
    assert!(last_trailer > trailer);
    assert_rejected(tmp.path(), &good[..last_trailer], "no trailer", "trailer");
    // An old-format (odc) archive.
    let mut odc = good.clone();
    odc[..6].copy_from_slice(b"070707");
    assert_rejected(tmp.path(), &odc, "odc", "not supported");
}

/// A file past newc's 32-bit size field (a sparse 5 GiB file) cannot be packed.
#[test]
fn files_past_4_gib_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("small"), b"x").unwrap();
    let f = fs::File::create(src.join("huge")).unwrap();
    f.set_len(5 << 30).unwrap();
    let out_dir = tmp.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let r = kiln_untrusted(&[
        "initrd".as_ref(),
        "pack".as_ref(),
        src.as_os_str(),
        "-o".as_ref(),
        out_dir.join("x.img").as_os_str(),
    ]);
    r.assert_clean_failure();
    assert!(
        r.stderr.contains("huge") && r.stderr.contains("32 bits"),
        "{}",
        r.report()
    );
    assert!(names(&out_dir).is_empty());
}

/// Empty input, only zero padding, and a compression the kernel has but kiln does not read.
#[test]
fn empty_and_zero_files() {
    let tmp = tempfile::tempdir().unwrap();
    assert_rejected(tmp.path(), b"", "empty file", "empty");
    assert_rejected(tmp.path(), &[0u8; 4096], "zeros", "empty");
    assert_rejected(tmp.path(), b"\x5d\x00\x00\x80\x00", "lzma", "not supported");
}
