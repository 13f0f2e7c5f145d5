//! base-image: disks made with sgdisk / sfdisk and `mke2fs -d` at an offset
//! (qcow2 through `kiln image convert`) give back the tree they were made from.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::{
    assert_fails_with, assert_ok, assert_same_tree, run_host, sh, snapshot, tricky_tree,
};

const SCRIPT: &str = "root.d/10-base-image";
const MIB: u64 = 1 << 20;

/// A 64 MiB sparse raw disk: partition 1 a 1 MiB BIOS boot partition, partition
/// 2 an ext4 filesystem made from `tree` at its offset. `table` is "gpt" or "mbr".
fn disk_from_tree(dir: &Path, tree: &Path, table: &str) -> PathBuf {
    let raw = dir.join(format!("disk-{table}.raw"));
    let root_start = 4 * MIB;
    let root_size = 56 * MIB;
    sh(&format!("truncate -s 64M '{}'", raw.display()));
    match table {
        "gpt" => sh(&format!(
            "sgdisk -n1:2048:+1M -t1:ef02 -n2:{}:+{}K -t2:8304 '{}' >/dev/null",
            root_start / 512,
            root_size / 1024,
            raw.display()
        )),
        _ => sh(&format!(
            "printf 'label: dos\\nstart=2048, size=2048, type=83\\nstart={}, size={}, type=83\\n' | sfdisk -q '{}'",
            root_start / 512,
            root_size / 512,
            raw.display()
        )),
    };
    sh(&format!(
        "mke2fs -q -F -t ext4 -d '{}' -E offset={root_start} '{}' {}k",
        tree.display(),
        raw.display(),
        root_size / 1024
    ));
    sh(&format!(
        "e2fsck -fn '{}?offset={root_start}' >/dev/null",
        raw.display()
    ));
    raw
}

fn extract(image: &Path, tmp: &Path, extra: &[(&str, &str)]) -> (PathBuf, std::process::Output) {
    let target = tmp.join("root");
    let _ = fs::remove_dir_all(&target);
    fs::create_dir(&target).unwrap();
    let build = tmp.join("build");
    fs::create_dir_all(&build).unwrap();
    let mut env = vec![
        ("TARGET_ROOT", target.to_str().unwrap().to_string()),
        ("DIB_BASE_IMAGE", image.to_str().unwrap().to_string()),
        ("TMP_BUILD_DIR", build.to_str().unwrap().to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = run_host("base-image", SCRIPT, &env);
    // Its scratch files are gone, whatever the outcome.
    assert_eq!(
        fs::read_dir(&build).unwrap().count(),
        0,
        "base-image left files in TMP_BUILD_DIR"
    );
    (target, out)
}

#[test]
fn qcow2_gpt_root_comes_back_with_owners_modes_links_devices_and_xattrs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tricky_tree(&src);
    let raw = disk_from_tree(tmp.path(), &src, "gpt");
    let qcow2 = tmp.path().join("disk.qcow2");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["image", "convert", "-q", "-O", "qcow2", "-c"])
        .arg(&raw)
        .arg(&qcow2)
        .output()
        .unwrap();
    assert_ok(&out);
    fs::remove_file(&raw).unwrap();

    let (target, out) = extract(&qcow2, tmp.path(), &[]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("partition 2"));
    assert_same_tree(&snapshot(&src, &[]), &snapshot(&target, &[]));
}

#[test]
fn raw_mbr_disk_and_file_url() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tricky_tree(&src);
    let raw = disk_from_tree(tmp.path(), &src, "mbr");
    let url = format!("file://{}", raw.display());
    let (target, out) = extract(Path::new(&url), tmp.path(), &[]);
    assert_ok(&out);
    assert_same_tree(&snapshot(&src, &[]), &snapshot(&target, &[]));
}

#[test]
fn whole_disk_filesystem_and_explicit_partition() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tricky_tree(&src);
    // A filesystem image without a partition table.
    let fs_image = tmp.path().join("fs.img");
    sh(&format!(
        "mke2fs -q -F -t ext4 -d '{}' '{}' 32M",
        src.display(),
        fs_image.display()
    ));
    let (target, out) = extract(&fs_image, tmp.path(), &[]);
    assert_ok(&out);
    assert_same_tree(&snapshot(&src, &[]), &snapshot(&target, &[]));

    // DIB_BASE_IMAGE_ROOT_PARTITION picks the partition; a wrong one is named.
    let raw = disk_from_tree(tmp.path(), &src, "gpt");
    let (_, out) = extract(&raw, tmp.path(), &[("DIB_BASE_IMAGE_ROOT_PARTITION", "1")]);
    assert_fails_with(&out, &["no ext2/3/4 partition number 1"]);
    let (target, out) = extract(&raw, tmp.path(), &[("DIB_BASE_IMAGE_ROOT_PARTITION", "2")]);
    assert_ok(&out);
    assert_same_tree(&snapshot(&src, &[]), &snapshot(&target, &[]));
}

#[test]
fn xfs_root_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("xfs.raw");
    let part = tmp.path().join("xfs.part");
    sh(&format!(
        "truncate -s 400M '{raw}'
         sgdisk -n1:2048:0 -t1:8304 '{raw}' >/dev/null
         truncate -s 320M '{part}'
         mkfs.xfs -q -f '{part}'
         dd if='{part}' of='{raw}' bs=1M seek=1 conv=notrunc,sparse status=none",
        raw = raw.display(),
        part = part.display()
    ));
    let (target, out) = extract(&raw, tmp.path(), &[]);
    assert_fails_with(
        &out,
        &[
            "partition 1 is xfs",
            "xfs and btrfs roots are not supported",
        ],
    );
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
    let (_, out) = extract(&raw, tmp.path(), &[("DIB_BASE_IMAGE_ROOT_PARTITION", "1")]);
    assert_fails_with(
        &out,
        &["partition 1 of", "is xfs", "ext2/3/4 root filesystems only"],
    );
}

#[test]
fn missing_image_and_unset_variable_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, out) = extract(Path::new("/nonexistent/base.qcow2"), tmp.path(), &[]);
    assert_fails_with(&out, &["/nonexistent/base.qcow2 is not a readable file"]);
    let target = tmp.path().join("root2");
    fs::create_dir(&target).unwrap();
    let out = run_host(
        "base-image",
        SCRIPT,
        &[("TARGET_ROOT", target.to_str().unwrap())],
    );
    assert_fails_with(&out, &["DIB_BASE_IMAGE is not set"]);
}
