use std::path::Path;

use kiln::disk::{Layout, assemble, builtin_layout};
use kiln::fs::FsType;

use crate::common::*;

fn blkid(dev: &Path, tag: &str) -> String {
    run(
        "blkid",
        &[
            os("-p"),
            os("-o"),
            os("value"),
            os("-s"),
            os(tag),
            dev.as_os_str(),
        ],
    )
    .trim()
    .to_string()
}

fn debugfs(fs: &Path, request: &str) -> String {
    run("debugfs", &[os("-R"), os(request), fs.as_os_str()])
}

#[test]
fn efi_layout_assembles_checks_clean_and_is_reproducible() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    build_tree(&tree);
    let layout = builtin_layout("efi").unwrap().unwrap();
    let plan = plan(&layout, 700 * MIB, "efi-seed");
    let disk = work.path().join("disk.raw");
    let result = assemble(&plan, &tree, &disk).unwrap();
    assert_eq!(result.partitions.len(), 3);
    assert_eq!(result.partitions[2].mount_point.as_deref(), Some("/"));
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 700 * MIB);

    let v = run("sgdisk", &[os("-v"), disk.as_os_str()]);
    assert!(v.contains("No problems found"), "{v}");
    let listing = run("sgdisk", &[os("-p"), disk.as_os_str()]);
    assert!(
        listing.contains("EF00") && listing.contains("EF02") && listing.contains("8300"),
        "{listing}"
    );

    // Root: clean, its UUID is the planned one, and it holds the tree minus boot/efi.
    let root_part = &plan.partitions[2];
    let root = extract(
        &disk,
        root_part.offset,
        root_part.size,
        &work.path().join("root.ext4"),
    );
    run("e2fsck", &[os("-fn"), root.as_os_str()]);
    let root_fs = root_part.filesystem.as_ref().unwrap();
    assert_eq!(blkid(&root, "UUID"), root_fs.uuid.to_string());
    assert_eq!(blkid(&root, "LABEL"), "cloudimg-rootfs");
    let dump = work.path().join("dump");
    std::fs::create_dir(&dump).unwrap();
    debugfs(&root, &format!("rdump / {}", dump.display()));
    for rel in ["etc/hostname", "usr/bin/tool", "etc/secret", "boot/vmlinuz"] {
        assert_eq!(
            std::fs::read(dump.join(rel)).unwrap(),
            std::fs::read(tree.join(rel)).unwrap(),
            "{rel}"
        );
    }
    assert_eq!(
        std::fs::read_dir(dump.join("boot/efi")).unwrap().count(),
        0,
        "ESP contents stay out of /"
    );
    let secret = debugfs(&root, "stat /etc/secret");
    assert!(
        secret.contains("User:  1000")
            && secret.contains("Group:  1001")
            && secret.contains("Mode:  0600"),
        "{secret}"
    );
    let tool = debugfs(&root, "stat /usr/bin/tool");
    assert!(
        tool.contains("Links: 2") && tool.contains("Mode:  04755"),
        "{tool}"
    );
    let same_inode = |p: &str| {
        debugfs(&root, &format!("stat {p}"))
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(
        same_inode("/usr/bin/tool"),
        same_inode("/usr/bin/tool-link")
    );
    assert!(
        debugfs(&root, "stat /etc/tool-symlink").contains("Fast link dest: \"../usr/bin/tool\"")
    );
    let null = debugfs(&root, "stat /dev/null");
    assert!(
        null.contains("Type: character special")
            && null.contains("Device major/minor number: 01:03"),
        "{null}"
    );
    assert!(debugfs(&root, "ea_get /etc/with-xattr user.kiln").contains("hello"));
    let tmp = debugfs(&root, "stat /tmp");
    assert!(tmp.contains("Mode:  01777"), "{tmp}");
    // Inode times are clamped to SOURCE_DATE_EPOCH; older ones are kept.
    let hostname = debugfs(&root, "stat /etc/hostname");
    assert!(
        hostname.contains(&format!("mtime: {:#x}", EPOCH)),
        "{hostname}"
    );
    let etc = debugfs(&root, "stat /etc");
    assert!(etc.contains(&format!("mtime: {:#x}", EPOCH - 100)), "{etc}");

    // ESP: a clean FAT holding exactly boot/efi, with the planned volume id.
    let esp_part = &plan.partitions[0];
    let esp = extract(
        &disk,
        esp_part.offset,
        esp_part.size,
        &work.path().join("esp.vfat"),
    );
    run("fsck.fat", &[os("-n"), esp.as_os_str()]);
    let esp_fs = esp_part.filesystem.as_ref().unwrap();
    assert_eq!(blkid(&esp, "UUID"), esp_fs.fs_uuid_string());
    let loader = run(
        "mtype",
        &[os("-i"), esp.as_os_str(), os("::/EFI/BOOT/BOOTX64.EFI")],
    );
    assert_eq!(loader, "not really a loader");
    let top = run("mdir", &[os("-b"), os("-i"), esp.as_os_str(), os("::/")]);
    assert_eq!(top.lines().count(), 2, "{top}");
    // The fstab text names exactly these filesystems.
    let fstab = plan.fstab();
    assert!(
        fstab.contains(&format!("UUID={} / ext4", blkid(&root, "UUID"))),
        "{fstab}"
    );
    assert!(
        fstab.contains(&format!("UUID={} /boot/efi vfat", blkid(&esp, "UUID"))),
        "{fstab}"
    );
    // The BIOS boot partition is left zero for the boot loader.
    let bsp = &plan.partitions[1];
    let bytes = std::fs::read(extract(
        &disk,
        bsp.offset,
        bsp.size,
        &work.path().join("bsp"),
    ))
    .unwrap();
    assert!(bytes.iter().all(|&b| b == 0));

    // Same tree, same seed: the same bytes, even though the tree's ctimes moved
    // (chmod changes ctime only) and a second copy of the tree is used.
    for rel in ["etc/hostname", "usr/bin/tool", "etc"] {
        let p = tree.join(rel);
        let mode = std::fs::metadata(&p).unwrap().permissions();
        std::fs::set_permissions(&p, mode).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let tree2 = work.path().join("tree2");
    build_tree(&tree2);
    let disk2 = work.path().join("disk2.raw");
    assemble(&plan, &tree2, &disk2).unwrap();
    assert!(
        std::fs::read(&disk).unwrap() == std::fs::read(&disk2).unwrap(),
        "two builds differ"
    );
    // Nothing left behind next to the tree or the disk.
    let mut names: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bsp",
            "disk.raw",
            "disk2.raw",
            "dump",
            "esp.vfat",
            "root.ext4",
            "tree",
            "tree2"
        ]
    );
}

#[test]
fn mbr_layout_assembles() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    build_tree(&tree);
    let layout = builtin_layout("mbr").unwrap().unwrap();
    let plan = plan(&layout, 64 * MIB, "mbr-seed");
    let disk = work.path().join("disk.raw");
    assemble(&plan, &tree, &disk).unwrap();
    let dump = run("sfdisk", &[os("-d"), disk.as_os_str()]);
    assert!(dump.contains("label: dos"), "{dump}");
    let id = format!("label-id: {:#010x}", plan.mbr_disk_id.unwrap());
    assert!(dump.contains(&id), "{dump}");
    let line = dump.lines().find(|l| l.contains("start=")).unwrap();
    assert!(
        line.contains("start=        2048") && line.contains(&format!("size={:>12}", 62 * 2048)),
        "{line}"
    );
    assert!(
        line.contains("type=83") && line.contains("bootable"),
        "{line}"
    );
    run("sfdisk", &[os("-V"), disk.as_os_str()]);
    let root = extract(&disk, MIB, 62 * MIB, &work.path().join("root.ext4"));
    run("e2fsck", &[os("-fn"), root.as_os_str()]);
    // With no ESP the boot/efi files stay in the root filesystem.
    assert!(debugfs(&root, "cat /boot/efi/loader/loader.conf").contains("timeout 0"));
}

#[test]
fn xfs_root_from_a_protofile() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    build_tree(&tree);
    let layout = Layout::from_yaml_str(
        "- local_loop: {name: image0}\n\
         - partitioning:\n    base: image0\n    label: gpt\n    partitions:\n\
         \x20     - {name: ESP, type: EF00, size: 40MiB, mkfs: {type: vfat, mount: {mount_point: /boot/efi}}}\n\
         \x20     - {name: root, size: 100%, mkfs: {type: xfs, mount: {mount_point: /, fstab: {fsck-passno: 1}}}}\n",
    )
    .unwrap();
    let plan = plan(&layout, 400 * MIB, "xfs-seed");
    let disk = work.path().join("disk.raw");
    let result = assemble(&plan, &tree, &disk).unwrap();
    let notes = result
        .notes
        .iter()
        .find(|(n, _)| *n == 2)
        .unwrap()
        .1
        .xfs
        .clone()
        .unwrap();
    assert_eq!(notes.hardlink_copies, 1);
    assert_eq!(notes.dropped_xattrs, [tree.join("etc/with-xattr")]);
    run("sgdisk", &[os("-v"), disk.as_os_str()]);
    let p = &plan.partitions[1];
    assert_eq!(p.filesystem.as_ref().unwrap().fs_type, FsType::Xfs);
    let root = extract(&disk, p.offset, p.size, &work.path().join("root.xfs"));
    run("xfs_repair", &[os("-n"), root.as_os_str()]);
    assert_eq!(
        blkid(&root, "UUID"),
        p.filesystem.as_ref().unwrap().uuid.to_string()
    );
    assert_eq!(blkid(&root, "LABEL"), "img-rootfs");
    let db = |cmds: &[&str]| {
        let mut args = vec![os("-r")];
        for c in cmds {
            args.push(os("-c"));
            args.push(os(c));
        }
        args.push(root.as_os_str());
        run("xfs_db", &args)
    };
    assert!(db(&["path /tmp", "print core.mode"]).contains("041777"));
    assert!(
        db(&["path /usr/bin/tool", "print core.mode core.uid"]).contains("core.mode = 0104755")
    );
    assert!(db(&["path /etc/secret", "print core.uid core.gid"]).contains("core.uid = 1000"));
    assert!(db(&["path /dev/null", "print core.mode"]).contains("020666"));
    assert!(db(&["path /boot/efi", "print core.nextents"]).contains("core.nextents = 0"));
    assert!(plan.fstab().contains(" / xfs defaults 0 1"));
}

#[test]
fn a_tree_too_big_fails_naming_the_partition_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    build_tree(&tree);
    std::fs::write(tree.join("boot/big"), vec![7u8; 12 << 20]).unwrap();
    let plan = plan(&builtin_layout("efi").unwrap().unwrap(), 572 * MIB, "small");
    let disk = work.path().join("disk.raw");
    let e = assemble(&plan, &tree, &disk).unwrap_err().to_string();
    assert!(
        e.contains("partition 3 (root)") && e.contains("mke2fs"),
        "{e}"
    );
    let names: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["tree"], "no disk, no staged tree left");
}

#[test]
fn disk_usage_counts_hard_links_once() {
    let work = tempfile::tempdir().unwrap();
    build_tree(work.path());
    let usage = kiln::fs::usage::disk_usage(work.path()).unwrap();
    // usr/bin/tool is 800000 bytes with two names; everything else is small.
    assert!((800_000..1_000_000).contains(&usage), "{usage}");
}
