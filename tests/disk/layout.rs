use kiln::disk::layout::TableKind;
use kiln::disk::{DiskPlan, Layout, PlanOptions, builtin_layout};
use kiln::format::gpt;
use kiln::fs::FsType;

use crate::common::*;

#[test]
fn builtin_efi_layout_matches_dib() {
    let l = builtin_layout("block-device-efi").unwrap().unwrap();
    assert_eq!(l.table, TableKind::Gpt);
    let names: Vec<_> = l.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["ESP", "BSP", "root"]);
    let esp = l.partitions[0].filesystem.as_ref().unwrap();
    assert_eq!(
        (esp.fs_type, esp.label.as_str()),
        (FsType::Vfat, "MKFS_ESP")
    );
    assert_eq!(esp.mount.as_ref().unwrap().mount_point, "/boot/efi");
    assert!(l.partitions[1].filesystem.is_none());
    let root = l.root_partition().unwrap().filesystem.as_ref().unwrap();
    assert_eq!(
        (root.fs_type, root.label.as_str()),
        (FsType::Ext4, "cloudimg-rootfs")
    );

    let p = plan(&l, 2048 * MIB, "seed-a");
    let offsets: Vec<_> = p
        .partitions
        .iter()
        .map(|p| (p.offset / MIB, p.size / MIB))
        .collect();
    assert_eq!(offsets, [(1, 550), (551, 8), (559, 2048 - 559 - 1)]);
    assert_eq!(
        p.partitions[0].partition_type,
        kiln::disk::types::PartitionType::Gpt(gpt::EFI_SYSTEM)
    );
    let fstab = p.fstab();
    let lines: Vec<_> = fstab.lines().collect();
    let root_uuid = p.root().filesystem.as_ref().unwrap().uuid;
    assert_eq!(lines[0], format!("UUID={root_uuid} / ext4 defaults 0 1"));
    assert!(
        lines[1].starts_with("UUID=") && lines[1].ends_with(" /boot/efi vfat defaults 0 2"),
        "{fstab}"
    );

    // The seed decides every identifier.
    let again = plan(&l, 2048 * MIB, "seed-a");
    let other = plan(&l, 2048 * MIB, "seed-b");
    assert_eq!(p, again);
    assert_ne!(p.disk_guid, other.disk_guid);
    assert_ne!(p.root().filesystem, other.root().filesystem);
}

#[test]
fn builtin_mbr_layout_and_graph_form() {
    let l = builtin_layout("mbr").unwrap().unwrap();
    assert_eq!(l.table, TableKind::Mbr);
    assert!(l.partitions[0].boot);
    // DIB's graph spelling of the same thing parses to the same layout.
    let graph = Layout::from_yaml_str(
        "- local_loop: {name: image0}\n\
         - partitioning: {base: image0, label: mbr, partitions: [{name: root, flags: [boot, primary], size: 100%}]}\n\
         - mkfs: {name: mkfs_root, base: root}\n\
         - mount: {name: mount_mkfs_root, base: mkfs_root, mount_point: /}\n\
         - fstab: {name: fstab_mount_mkfs_root, base: mount_mkfs_root, options: defaults, fsck-passno: 1}\n",
    )
    .unwrap();
    assert_eq!(graph, l);
}

#[test]
fn computed_size_follows_dib() {
    let l = builtin_layout("efi").unwrap().unwrap();
    let usage = 600 * MIB;
    let p = DiskPlan::new(
        &l,
        &PlanOptions {
            image_size: None,
            tree_usage: Some(usage),
            extra_size: None,
            seed: "s".into(),
            timestamp: EPOCH,
        },
    )
    .unwrap();
    // 600/0.6 = 1000 MiB of data + 64 MiB journal + 558 MiB fixed + 2 MiB.
    assert_eq!(p.disk_size, (1000 + 64 + 558 + 2) * MIB);
    assert_eq!(p.root().size, 1000 * MIB + 64 * MIB);
}

fn layout_error(yaml: &str) -> String {
    Layout::from_yaml_str(yaml).unwrap_err().to_string()
}

const HEAD: &str = "- local_loop: {name: image0}\n- partitioning:\n    base: image0\n    label: gpt\n    partitions:\n";

#[test]
fn bad_layouts_name_the_key() {
    let two_roots = format!(
        "{HEAD}      - {{name: a, size: 1GiB, mkfs: {{type: ext4, label: a, mount: {{mount_point: /}}}}}}\n      - {{name: b, size: 100%, mkfs: {{type: ext4, label: b, mount: {{mount_point: /}}}}}}\n"
    );
    let e = layout_error(&two_roots);
    assert!(
        e.contains("partitions[1].mkfs.mount.mount_point") && e.contains("two root"),
        "{e}"
    );

    let unknown_type = format!(
        "{HEAD}      - {{name: r, type: 'ZZ00', size: 100%, mkfs: {{type: ext4, mount: {{mount_point: /}}}}}}\n"
    );
    let e = layout_error(&unknown_type);
    assert!(
        e.contains("[1].partitioning.partitions[0].type") && e.contains("ZZ00"),
        "{e}"
    );

    let unknown_fs = format!(
        "{HEAD}      - {{name: r, size: 100%, mkfs: {{type: btrfs, mount: {{mount_point: /}}}}}}\n"
    );
    let e = layout_error(&unknown_fs);
    assert!(
        e.contains("partitions[0].mkfs.type") && e.contains("btrfs"),
        "{e}"
    );

    let typo = format!("{HEAD}      - {{name: r, sise: 100%}}\n");
    let e = layout_error(&typo);
    assert!(e.contains("partitions[0].sise"), "{e}");

    let long_label = format!(
        "{HEAD}      - {{name: r, size: 100%, mkfs: {{type: xfs, label: much-too-long-label, mount: {{mount_point: /}}}}}}\n"
    );
    assert!(layout_error(&long_label).contains("mkfs.label"));

    let no_root = format!(
        "{HEAD}      - {{name: r, size: 100%, mkfs: {{type: ext4, mount: {{mount_point: /srv}}}}}}\n"
    );
    assert!(layout_error(&no_root).contains("no filesystem is mounted at /"));

    let lvm = "- local_loop: {name: image0}\n- lvm: {name: lvm, base: [root]}\n";
    assert!(layout_error(lvm).contains("[1].lvm"));

    // Sizes that do not fit are found when planning, naming the partition's size key.
    let big = format!(
        "{HEAD}      - {{name: esp, type: EF00, size: 600MiB, mkfs: {{type: vfat, mount: {{mount_point: /boot/efi}}}}}}\n      - {{name: root, size: 100%, mkfs: {{type: ext4, mount: {{mount_point: /}}}}}}\n"
    );
    let l = Layout::from_yaml_str(&big).unwrap();
    let e = DiskPlan::new(
        &l,
        &PlanOptions {
            image_size: Some(512 * MIB),
            tree_usage: None,
            extra_size: None,
            seed: "s".into(),
            timestamp: EPOCH,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("[1].partitioning.partitions[0].size") && e.contains("esp"),
        "{e}"
    );
}
