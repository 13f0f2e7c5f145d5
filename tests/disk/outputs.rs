use kiln::build::output::{Checksums, OutputOptions, OutputType, write_outputs};
use kiln::disk::{assemble, builtin_layout};

use crate::common::*;

#[test]
fn raw_qcow2_tar_squashfs_and_checksums() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    build_tree(&tree);
    let plan = plan(
        &builtin_layout("mbr").unwrap().unwrap(),
        48 * MIB,
        "out-seed",
    );
    let disk = work.path().join("disk.raw");
    assemble(&plan, &tree, &disk).unwrap();
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let opts = OutputOptions {
        checksums: Checksums {
            sha256: true,
            md5: true,
        },
        timestamp: EPOCH,
        ..OutputOptions::default()
    };
    let types = [
        OutputType::Raw,
        OutputType::Qcow2,
        OutputType::Tar,
        OutputType::Squashfs,
    ];
    let written = write_outputs(Some(&disk), &tree, &out, "img", &types, &opts).unwrap();
    assert_eq!(written.len(), 12);

    run(
        "qemu-img",
        &[
            os("compare"),
            os("-f"),
            os("raw"),
            os("-F"),
            os("qcow2"),
            disk.as_os_str(),
            out.join("img.qcow2").as_os_str(),
        ],
    );
    run("cmp", &[disk.as_os_str(), out.join("img.raw").as_os_str()]);
    let info = run(
        "qemu-img",
        &[
            os("info"),
            os("--output=json"),
            out.join("img.qcow2").as_os_str(),
        ],
    );
    assert!(info.contains("\"compression-type\": \"zlib\""), "{info}");
    run(
        "qemu-img",
        &[os("check"), out.join("img.qcow2").as_os_str()],
    );

    // Checksums verify with the coreutils tools from the output folder.
    let check = std::process::Command::new("sha256sum")
        .current_dir(&out)
        .args([
            "-c",
            "img.qcow2.sha256",
            "img.tar.sha256",
            "img.raw.sha256",
            "img.squash.sha256",
        ])
        .status()
        .unwrap();
    assert!(check.success());
    let check = std::process::Command::new("md5sum")
        .current_dir(&out)
        .args(["-c", "img.raw.md5"])
        .status()
        .unwrap();
    assert!(check.success());

    // tar: GNU tar reads it, and it carries the hard link, device, owners, xattr.
    let tar = out.join("img.tar");
    let listing = run("tar", &[os("--numeric-owner"), os("-tvf"), tar.as_os_str()]);
    assert!(
        listing.contains(" usr/bin/tool-link link to usr/bin/tool"),
        "{listing}"
    );
    assert!(
        listing.lines().any(|l| l.starts_with("crw-rw-rw- 0/0")
            && l.contains("1,3")
            && l.ends_with(" dev/null")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rw------- 1000/1001") && l.ends_with(" etc/secret")),
        "{listing}"
    );
    assert!(
        listing.contains(" proc/\n") && !listing.contains("proc/1"),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.contains("2023-11-14 22:13 etc/hostname")),
        "mtime clamped: {listing}"
    );
    let x = work.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run(
        "tar",
        &[
            os("--xattrs"),
            os("--xattrs-include=*"),
            os("-C"),
            x.as_os_str(),
            os("-xf"),
            tar.as_os_str(),
        ],
    );
    let attrs = kiln::fs::xattr::list(&x.join("etc/with-xattr")).unwrap();
    assert_eq!(attrs, [(os("user.kiln").to_os_string(), b"hello".to_vec())]);
    // Writing it again gives the same bytes.
    let again = work.path().join("again");
    std::fs::create_dir(&again).unwrap();
    write_outputs(None, &tree, &again, "img", &[OutputType::Tar], &opts).unwrap();
    assert!(std::fs::read(&tar).unwrap() == std::fs::read(again.join("img.tar")).unwrap());

    let sq = run(
        "unsquashfs",
        &[os("-lls"), out.join("img.squash").as_os_str()],
    );
    assert!(
        sq.contains("squashfs-root/boot/efi/EFI/BOOT/BOOTX64.EFI"),
        "{sq}"
    );
    assert!(
        sq.contains("squashfs-root/etc/tool-symlink -> ../usr/bin/tool"),
        "{sq}"
    );
    assert!(!sq.contains("proc/1"), "{sq}");

    // Only the outputs are in the folder: no temporary names left.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 12);
    // raw/qcow2 without a disk is an error, not a panic.
    let e = write_outputs(None, &tree, &again, "img", &[OutputType::Qcow2], &opts).unwrap_err();
    assert!(
        e.to_string()
            .contains("qcow2 output needs the assembled disk"),
        "{e}"
    );
}
