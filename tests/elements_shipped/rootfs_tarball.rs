//! rootfs-tarball: GNU tar archives of a tricky tree unpack to the same tree.

use std::fs;

use crate::common::{
    assert_fails_with, assert_ok, assert_same_tree, run_host, sh, snapshot, tricky_tree,
};

const SCRIPT: &str = "root.d/10-rootfs-tarball";

/// Archive a tricky tree with GNU tar through `compress` (a tar flag), unpack
/// it with the element, compare.
fn round_trip(compress: &str, name: &str, as_url: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tricky_tree(&src);
    let tarball = tmp.path().join(name);
    sh(&format!(
        "tar --create {compress} --file '{}' --directory '{}' --xattrs --xattrs-include='*' --numeric-owner .",
        tarball.display(),
        src.display()
    ));
    let target = tmp.path().join("root");
    fs::create_dir(&target).unwrap();
    let location = if as_url {
        format!("file://{}", tarball.display())
    } else {
        tarball.display().to_string()
    };
    let out = run_host(
        "rootfs-tarball",
        SCRIPT,
        &[
            ("TARGET_ROOT", target.to_str().unwrap()),
            ("DIB_ROOTFS_TARBALL", &location),
        ],
    );
    assert_ok(&out);
    assert_same_tree(&snapshot(&src, &[]), &snapshot(&target, &[]));
}

#[test]
fn zstd_tarball_keeps_owners_modes_links_devices_and_xattrs() {
    round_trip("--zstd", "root.tar.zst", false);
}

#[test]
fn gzip_and_xz_tarballs_and_file_urls() {
    round_trip("--gzip", "root.tar.gz", true);
    round_trip("--xz", "root.tar.xz", false);
    round_trip("", "root.tar", true);
}

#[test]
fn unset_missing_or_remote_tarball_and_busy_target_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("root");
    fs::create_dir(&target).unwrap();
    let t = target.to_str().unwrap();
    let out = run_host("rootfs-tarball", SCRIPT, &[("TARGET_ROOT", t)]);
    assert_fails_with(&out, &["DIB_ROOTFS_TARBALL is not set"]);

    let missing = tmp.path().join("nowhere.tar.zst");
    let out = run_host(
        "rootfs-tarball",
        SCRIPT,
        &[
            ("TARGET_ROOT", t),
            ("DIB_ROOTFS_TARBALL", missing.to_str().unwrap()),
        ],
    );
    assert_fails_with(&out, &["nowhere.tar.zst does not exist"]);

    let out = run_host(
        "rootfs-tarball",
        SCRIPT,
        &[
            ("TARGET_ROOT", t),
            ("DIB_ROOTFS_TARBALL", "https://example.com/r.tar"),
        ],
    );
    assert_fails_with(&out, &["only local paths and file:// URLs"]);

    let garbage = tmp.path().join("garbage.tar");
    fs::write(&garbage, vec![7u8; 4096]).unwrap();
    let out = run_host(
        "rootfs-tarball",
        SCRIPT,
        &[
            ("TARGET_ROOT", t),
            ("DIB_ROOTFS_TARBALL", garbage.to_str().unwrap()),
        ],
    );
    assert_fails_with(&out, &["could not unpack", "garbage.tar"]);

    fs::write(target.join("leftover"), "x").unwrap();
    let out = run_host(
        "rootfs-tarball",
        SCRIPT,
        &[
            ("TARGET_ROOT", t),
            ("DIB_ROOTFS_TARBALL", garbage.to_str().unwrap()),
        ],
    );
    assert_fails_with(&out, &["is not empty"]);
}
