//! The agent's node side: inventory from sysfs, root device hints, config drive.
//!
//! Oracles: the fixture's known values and this machine's own tools (getconf,
//! /proc/meminfo, ip, lsblk, hostname) for the inventory; sgdisk -v, sfdisk,
//! fsck.fat -n, mlabel, mcopy and cloud-init's own config drive reader for the
//! config drive.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::agent::configdrive::{
    ConfigDriveError, DiskIo, TableKind, write_config_drive, write_config_drive_on,
};
use kiln::agent::hints::{HintError, RootDeviceHints, select_root_device};
use kiln::agent::inventory::{BootMode, Disk, collect_inventory};
use kiln::format::configdrive::{ConfigDriveContent, MetaData, NetworkData};
use kiln::format::gpt::{
    EFI_SYSTEM, GptSpec, LINUX_FILESYSTEM, MICROSOFT_BASIC_DATA, PartitionSpec, read_gpt, write_gpt,
};
use kiln::format::raw::RawImage;
use serde_json::json;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/agent")
        .join(name)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------- inventory

#[test]
fn inventory_from_fixture_sysfs() {
    let inv = collect_inventory(&fixture("sysfs-uefi")).unwrap();
    assert_eq!(inv.cpu.count, 4);
    assert_eq!(
        inv.cpu.model_name.as_deref(),
        Some("Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz")
    );
    assert_eq!(
        inv.cpu.frequency.as_deref(),
        Some("3900"),
        "cpufreq max wins"
    );
    assert!(inv.cpu.flags.iter().any(|f| f == "vmx"));
    assert_eq!(inv.memory.total, 8046080 * 1024);
    assert_eq!(inv.memory.physical_mb, Some(8192), "two 4 GiB DIMMs");
    assert_eq!(inv.hostname.as_deref(), Some("node-7"));
    assert_eq!(inv.boot.current_boot_mode, BootMode::Uefi);
    assert_eq!(inv.boot.pxe_interface.as_deref(), Some("52:54:00:12:34:56"));
    assert_eq!(inv.system_vendor.manufacturer.as_deref(), Some("Dell Inc."));
    assert_eq!(
        inv.system_vendor.product_name.as_deref(),
        Some("PowerEdge R640")
    );
    assert_eq!(inv.system_vendor.serial_number.as_deref(), Some("ABC1234"));
    assert_eq!(
        inv.system_vendor.firmware.version.as_deref(),
        Some("2.11.2")
    );

    // loop, zram, sr, dm, md and the empty sdz are left out.
    let names: Vec<&str> = inv.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["/dev/nvme0n1", "/dev/sda", "/dev/vda"]);
    let sda = &inv.disks[1];
    assert_eq!(sda.size, 937703088 * 512);
    assert_eq!(sda.model.as_deref(), Some("ST500NM0011"));
    assert_eq!(sda.vendor.as_deref(), Some("ATA"));
    assert_eq!(
        sda.serial.as_deref(),
        Some("Z1M0ABCD"),
        "from VPD page 0x80"
    );
    assert_eq!(sda.wwn.as_deref(), Some("0x5000c500a1b2c3d4"));
    assert_eq!(sda.hctl.as_deref(), Some("0:0:0:0"));
    assert_eq!(
        sda.by_path.as_deref(),
        Some("/dev/disk/by-path/pci-0000:00:1f.2-ata-1")
    );
    assert!(sda.rotational);
    assert_eq!(sda.tran.as_deref(), Some("sata"));
    let nvme = &inv.disks[0];
    assert_eq!(nvme.serial.as_deref(), Some("S4J4NX0N123456"));
    assert_eq!(nvme.wwn.as_deref(), Some("eui.0025385b71b0a1c2"));
    assert_eq!(nvme.hctl, None);
    assert!(!nvme.rotational);
    assert_eq!(nvme.tran.as_deref(), Some("nvme"));
    let vda = &inv.disks[2];
    assert_eq!(vda.serial.as_deref(), Some("vd-serial-1"));
    assert_eq!(vda.size, 8 * GIB);
    assert_eq!(vda.tran, None, "lsblk gives virtio-blk no transport");

    // lo and the bridge (no device link) are left out.
    let nics: Vec<(&str, &str, bool)> = inv
        .interfaces
        .iter()
        .map(|i| (i.name.as_str(), i.mac_address.as_str(), i.has_carrier))
        .collect();
    assert_eq!(
        nics,
        [
            ("eno2", "3c:fd:fe:aa:bb:cc", false),
            ("ens3", "52:54:00:12:34:56", true)
        ]
    );
    assert_eq!(inv.interfaces[0].vendor.as_deref(), Some("0x8086"));
    assert_eq!(inv.interfaces[0].product.as_deref(), Some("0x1572"));

    // IPA's field names, and the conductor can read it back.
    let v = serde_json::to_value(&inv).unwrap();
    for path in [
        "/cpu/count",
        "/cpu/model_name",
        "/cpu/architecture",
        "/memory/total",
        "/memory/physical_mb",
        "/disks/0/wwn_with_extension",
        "/interfaces/0/mac_address",
        "/interfaces/0/lldp",
        "/system_vendor/serial_number",
        "/boot/current_boot_mode",
    ] {
        assert!(v.pointer(path).is_some(), "{path} missing in {v}");
    }
    assert_eq!(v["boot"]["current_boot_mode"], "uefi");
    let back: kiln::agent::inventory::Inventory = serde_json::from_value(v).unwrap();
    assert_eq!(back, inv);
}

#[test]
fn inventory_of_a_bios_machine_without_dmi_falls_back_to_memtotal() {
    let root = tempfile::tempdir().unwrap();
    let p = root.path();
    for d in ["proc/sys/kernel", "sys/block", "sys/class/net"] {
        std::fs::create_dir_all(p.join(d)).unwrap();
    }
    std::fs::write(p.join("proc/cpuinfo"), "processor : 0\n").unwrap();
    // A "4 GiB" VM: the kernel keeps some for itself.
    std::fs::write(p.join("proc/meminfo"), "MemTotal: 4012345 kB\n").unwrap();
    let inv = collect_inventory(p).unwrap();
    assert_eq!(inv.boot.current_boot_mode, BootMode::Bios);
    assert_eq!(inv.boot.pxe_interface, None);
    assert_eq!(inv.memory.physical_mb, Some(4096));
    assert!(inv.disks.is_empty() && inv.interfaces.is_empty());
    assert_eq!(inv.hostname, None);

    std::fs::write(p.join("proc/cpuinfo"), "nothing here\n").unwrap();
    let e = collect_inventory(p).unwrap_err().to_string();
    assert!(e.contains("cpuinfo") && e.contains("processor"), "{e}");
    std::fs::remove_file(p.join("proc/meminfo")).unwrap();
    std::fs::write(p.join("proc/cpuinfo"), "processor : 0\n").unwrap();
    let e = collect_inventory(p).unwrap_err().to_string();
    assert!(e.contains("meminfo"), "{e}");
}

#[test]
fn inventory_of_this_machine() {
    let inv = collect_inventory(Path::new("/")).unwrap();
    let online: u32 = run(Command::new("getconf").arg("_NPROCESSORS_ONLN"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(inv.cpu.count, online);
    let arch = run(Command::new("uname").arg("-m"));
    assert_eq!(inv.cpu.architecture, arch.trim());

    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(inv.memory.total, kib * 1024);
    assert!(inv.memory.physical_mb.unwrap() * MIB >= inv.memory.total);

    let hostname = run(&mut Command::new("hostname"));
    assert_eq!(inv.hostname.as_deref(), Some(hostname.trim()));
    let efi = Path::new("/sys/firmware/efi").exists();
    assert_eq!(inv.boot.current_boot_mode == BootMode::Uefi, efi);

    // Disks against lsblk (whole disks of type "disk" with a size).
    let lsblk = run(Command::new("lsblk").args([
        "-b",
        "-d",
        "-n",
        "-J",
        "-o",
        "NAME,SIZE,TYPE,ROTA,TRAN,MODEL,VENDOR,SERIAL",
    ]));
    let lsblk: serde_json::Value = serde_json::from_str(&lsblk).unwrap();
    let mut expected: Vec<(String, u64, bool)> = lsblk["blockdevices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["type"] == "disk")
        .map(|d| {
            let size = d["size"].as_u64().unwrap_or(0);
            let rota = d["rota"].as_bool().unwrap_or(false);
            (format!("/dev/{}", d["name"].as_str().unwrap()), size, rota)
        })
        .filter(|(n, size, _)| {
            *size > 0 && !n.starts_with("/dev/zram") && !n.starts_with("/dev/ram")
        })
        .collect();
    expected.sort();
    let got: Vec<(String, u64, bool)> = inv
        .disks
        .iter()
        .map(|d| (d.name.clone(), d.size, d.rotational))
        .collect();
    assert_eq!(got, expected);
    let text = |v: &serde_json::Value| v.as_str().map(|s| s.trim().to_string());
    for d in &inv.disks {
        let l = lsblk["blockdevices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| format!("/dev/{}", l["name"].as_str().unwrap()) == d.name)
            .unwrap();
        assert_eq!(d.tran, text(&l["tran"]), "{}", d.name);
        assert_eq!(d.model, text(&l["model"]), "{}", d.name);
        assert_eq!(d.vendor, text(&l["vendor"]), "{}", d.name);
        // No serial comparison: lsblk takes it from the udev database, which a
        // container may not have (udev itself reads virtio's `serial` attribute,
        // as the inventory does).
    }

    // Interfaces and their addresses against `ip`.
    let links = run(Command::new("ip").args(["-j", "link", "show"]));
    let links: serde_json::Value = serde_json::from_str(&links).unwrap();
    for nic in &inv.interfaces {
        let link = links
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["ifname"] == nic.name.as_str())
            .unwrap_or_else(|| panic!("{} not in ip link", nic.name));
        assert_eq!(link["address"], nic.mac_address.as_str());
        let addrs = run(Command::new("ip").args(["-j", "-4", "addr", "show", "dev", &nic.name]));
        let addrs: serde_json::Value = serde_json::from_str(&addrs).unwrap();
        let first = addrs[0]["addr_info"][0]["local"].as_str();
        assert_eq!(nic.ipv4_address.as_deref(), first, "{}", nic.name);
    }
    assert!(inv.interfaces.iter().all(|i| i.name != "lo"));
}

// ---------------------------------------------------------------- hints

fn disk(name: &str, gib: f64, model: &str, serial: &str, rotational: bool) -> Disk {
    Disk {
        name: name.into(),
        size: (gib * GIB as f64) as u64,
        model: (!model.is_empty()).then(|| model.into()),
        vendor: Some("ATA".into()),
        serial: (!serial.is_empty()).then(|| serial.into()),
        wwn: Some(format!("0x5000{}", name.len())),
        wwn_with_extension: None,
        wwn_vendor_extension: None,
        rotational,
        hctl: Some(format!("{}:0:0:0", name.len() % 3)),
        by_path: None,
        tran: Some(
            if name.contains("nvme") {
                "nvme"
            } else {
                "sata"
            }
            .into(),
        ),
    }
}

fn disks() -> Vec<Disk> {
    vec![
        disk("/dev/sda", 500.0, "ST500NM0011", "Z1M0ABCD", true),
        disk("/dev/sdb", 10.0, "Samsung SSD 860", "S3Z1NB0K", false),
        disk("/dev/sdc", 2.0, "QEMU HARDDISK", "", true),
        disk("/dev/nvme0n1", 4.0, "", "NV123", false),
        disk("/dev/nvme1n1", 10.5, "Samsung SSD 970 EVO", "NV456", false),
    ]
}

#[test]
fn hints_select_the_expected_disk() {
    let cases: &[(serde_json::Value, &str)] = &[
        (json!(null), "/dev/nvme0n1"), // smallest of at least 4 GiB
        (json!({}), "/dev/nvme0n1"),
        (json!({"size": 10}), "/dev/sdb"),
        (json!({"size": "10"}), "/dev/sdb"),
        (json!({"size": "== 10"}), "/dev/sdb"),
        (json!({"size": "!= 500"}), "/dev/sdb"),
        (json!({"size": ">= 100"}), "/dev/sda"),
        (json!({"size": "> 10"}), "/dev/sda"),
        (json!({"size": "< 3"}), "/dev/sdc"),
        (json!({"size": "<= 4"}), "/dev/sdc"),
        (json!({"size": "> 10", "rotational": false}), "/dev/nvme1n1"),
        (json!({"size": "<or> 4 <or> 2"}), "/dev/sdc"),
        (json!({"model": "samsung ssd 970 evo"}), "/dev/nvme1n1"),
        (json!({"model": "s== QEMU HARDDISK"}), "/dev/sdc"),
        (json!({"model": "s!= ST500NM0011"}), "/dev/sdb"),
        (json!({"model": "<in> 970"}), "/dev/nvme1n1"),
        (json!({"model": "<in> SSD 8"}), "/dev/sdb"),
        (
            json!({"model": "<or> nothing <or> QEMU HARDDISK"}),
            "/dev/sdc",
        ),
        (json!({"serial": "NV123"}), "/dev/nvme0n1"),
        (json!({"serial": "s>= Z"}), "/dev/sda"),
        (json!({"name": "sdc"}), "/dev/sdc"),
        (json!({"name": "/dev/sdb"}), "/dev/sdb"),
        (json!({"name": "<or> sdz <or> nvme1n1"}), "/dev/nvme1n1"),
        (json!({"rotational": true}), "/dev/sda"),
        (json!({"rotational": "no"}), "/dev/sdb"),
        (json!({"rotational": 0}), "/dev/sdb"),
        (json!({"wwn": "0x50008"}), "/dev/sda"),
        (json!({"hctl": "0:0:0:0"}), "/dev/nvme0n1"),
        (json!({"vendor": "  ata  "}), "/dev/sda"),
        (json!({"tran": "nvme", "size": "> 5"}), "/dev/nvme1n1"),
    ];
    let disks = disks();
    for (hints, want) in cases {
        let parsed = RootDeviceHints::parse(hints).unwrap_or_else(|e| panic!("{hints}: {e}"));
        let got = select_root_device(&disks, &parsed).unwrap_or_else(|e| panic!("{hints}: {e}"));
        assert_eq!(got.name, *want, "hints {hints}");
    }
    // Hints deserialize straight from a plan's YAML and serialize back.
    let h: RootDeviceHints =
        serde_yaml_ng::from_str("size: \">= 4\"\nrotational: false\n").unwrap();
    assert_eq!(select_root_device(&disks, &h).unwrap().name, "/dev/sdb");
    assert_eq!(
        serde_json::to_value(&h).unwrap(),
        json!({"size": ">= 4", "rotational": false})
    );
}

#[test]
fn hint_errors_name_the_hint() {
    let bad: &[(serde_json::Value, &str)] = &[
        (json!({"colour": "red"}), "colour"),
        (json!({"size": "big"}), "size"),
        (json!({"size": 0}), "size"),
        (json!({"size": "-5"}), "size"),
        (json!({"size": "10.5"}), "size"),
        (json!({"size": ">="}), "size"),
        (json!({"size": ""}), "size"),
        (json!({"model": ""}), "model"),
        (json!({"model": 12}), "model"),
        (json!({"model": "<in>"}), "model"),
        (json!({"serial": "<or> <or>"}), "serial"),
        (json!({"rotational": "maybe"}), "rotational"),
        (json!({"rotational": 2}), "rotational"),
        (json!(["size"]), "map"),
    ];
    for (hints, named) in bad {
        let e = RootDeviceHints::parse(hints)
            .expect_err(&hints.to_string())
            .to_string();
        assert!(e.contains(named), "{hints}: {e}");
    }
    let e = serde_yaml_ng::from_str::<RootDeviceHints>("size: huge\n").unwrap_err();
    assert!(e.to_string().contains("size"), "{e}");

    // Nothing matches: the error lists every disk seen.
    let disks = disks();
    let h = RootDeviceHints::parse(&json!({"serial": "NOPE"})).unwrap();
    let e = select_root_device(&disks, &h).unwrap_err();
    assert!(matches!(e, HintError::NoMatch { .. }));
    let msg = e.to_string();
    for d in &disks {
        assert!(msg.contains(&d.name), "{msg}");
    }
    // A disk without a serial never matches a serial hint.
    let h = RootDeviceHints::parse(&json!({"serial": "s!= X", "size": "< 3"})).unwrap();
    assert!(select_root_device(&disks, &h).is_err());
    // No hints and only small disks.
    let small = vec![disk("/dev/sdc", 2.0, "", "", true)];
    let e = select_root_device(&small, &RootDeviceHints::none()).unwrap_err();
    assert!(matches!(e, HintError::NoDiskLargeEnough { .. }), "{e}");
    assert!(e.to_string().contains("/dev/sdc"));
    let e = select_root_device(&[], &RootDeviceHints::none()).unwrap_err();
    assert!(e.to_string().contains("none"), "{e}");
}

// ---------------------------------------------------------------- config drive

fn content(hostname: &str) -> ConfigDriveContent {
    ConfigDriveContent {
        meta_data: MetaData {
            uuid: "0b7a1a2e-5f4c-4f8e-9d51-3c2b1a0f9e8d".into(),
            name: "node-0".into(),
            hostname: hostname.into(),
            public_keys: BTreeMap::from([(
                "default".into(),
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiln kiln@test".into(),
            )]),
            launch_index: 0,
            availability_zone: "nova".into(),
            meta: BTreeMap::from([
                ("role".into(), "Controller".into()),
                ("index".into(), "0".into()),
            ]),
        },
        user_data: Some(b"#cloud-config\nruncmd: [echo hi]\n".to_vec()),
        network_data: NetworkData::dhcp(&["52:54:00:12:34:56", "52:54:00:12:34:57"]).unwrap(),
        vendor_data: json!({}),
        kiln_config: json!({"ntp": {"servers": ["10.0.0.1"]}, "role": "Controller"}),
    }
}

/// A whole-disk GPT image of `image_mib` in a file of `disk_mib` (the image is
/// smaller than the disk, as after streaming it onto a real disk).
fn gpt_disk(dir: &Path, name: &str, image_mib: u64, disk_mib: u64) -> PathBuf {
    let path = dir.join(name);
    let mut f = create_rw(&path);
    let spec = GptSpec {
        disk_guid: uuid::Uuid::from_u128(0x1234_5678),
        partitions: vec![
            PartitionSpec {
                name: "ESP".into(),
                type_guid: EFI_SYSTEM,
                part_guid: None,
                size: Some(8 * MIB),
                attributes: 0,
            },
            PartitionSpec {
                name: "root".into(),
                type_guid: LINUX_FILESYSTEM,
                part_guid: None,
                size: None,
                attributes: 0,
            },
        ],
    };
    write_gpt(&mut f, image_mib * MIB, &spec).unwrap();
    // Some image bytes in the root partition, which must survive.
    f.write_all_at(b"root filesystem bytes", 9 * MIB).unwrap();
    f.set_len(disk_mib * MIB).unwrap();
    path
}

fn create_rw(path: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap()
}

fn read_region(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

/// Extract the filesystem to its own file and check it with dosfstools and mtools;
/// returns the tree copied out with mcopy.
fn check_fat(dir: &Path, disk: &Path, offset: u64, size: u64, tag: &str) -> PathBuf {
    let fs = dir.join(format!("{tag}.fat"));
    std::fs::write(&fs, read_region(disk, offset, size)).unwrap();
    run(Command::new("fsck.fat").arg("-n").arg(&fs));
    let label = run(Command::new("mlabel").arg("-i").arg(&fs).args(["-s", "::"]));
    assert!(
        label.contains("CONFIG-2") || label.contains("config-2"),
        "mlabel: {label}"
    );
    let tree = dir.join(format!("{tag}.tree"));
    std::fs::create_dir_all(&tree).unwrap();
    run(Command::new("mcopy")
        .args(["-s", "-n", "-i"])
        .arg(&fs)
        .arg("::openstack")
        .arg(&tree));
    tree
}

fn assert_tree_equals(tree: &Path, content: &ConfigDriveContent) {
    let files = content.files().unwrap();
    for (rel, bytes) in &files {
        let got = std::fs::read(tree.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(&got, bytes, "{rel}");
    }
    let mut found = 0;
    for version in ["2012-08-10", "latest"] {
        found += std::fs::read_dir(tree.join("openstack").join(version))
            .unwrap()
            .count();
    }
    assert_eq!(found, files.len(), "no other files");
}

fn sgdisk_clean(disk: &Path) {
    let out = run(Command::new("sgdisk").arg("-v").arg(disk));
    assert!(out.contains("No problems found"), "sgdisk -v: {out}");
}

#[test]
fn config_drive_on_a_gpt_image_smaller_than_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = gpt_disk(d, "disk.img", 48, 200);
    let c = content("overcloud-controller-0");
    let s = write_config_drive(&disk, &c).unwrap();
    assert_eq!(
        (s.table, s.partition, s.replaced),
        (TableKind::Gpt, 3, false)
    );
    assert!(s.size <= 64 * MIB && s.size >= MIB && s.size.is_multiple_of(MIB));
    // At the end: the last 1 MiB boundary before the backup table.
    assert_eq!(s.offset + s.size, 199 * MIB);
    sgdisk_clean(&disk);

    let table = read_gpt(&RawImage::new(File::open(&disk).unwrap()).unwrap())
        .unwrap()
        .unwrap();
    assert!(table.primary_ok && table.backup_ok, "{table:?}");
    assert_eq!(table.partitions.len(), 3);
    let p = &table.partitions[2];
    assert_eq!(p.name, "config-2");
    assert_eq!(p.type_guid, MICROSOFT_BASIC_DATA);
    assert_eq!(
        (p.first_lba * 512, (p.last_lba + 1) * 512),
        (s.offset, s.offset + s.size)
    );
    assert_eq!(table.partitions[1].name, "root", "image partitions kept");
    assert_eq!(read_region(&disk, 9 * MIB, 21), b"root filesystem bytes");
    let info = run(Command::new("sgdisk").args(["-i", "3"]).arg(&disk));
    assert!(info.contains("Partition name: 'config-2'"), "{info}");
    // The image's old backup header (its last sector) is gone.
    assert_ne!(&read_region(&disk, 48 * MIB - 512, 8)[..], b"EFI PART");

    let tree = check_fat(d, &disk, s.offset, s.size, "first");
    assert_tree_equals(&tree, &c);
    cloud_init_reads(&tree, &c);

    // Redeploy with new metadata: replaced in place, still one config drive.
    let c2 = content("overcloud-controller-9");
    let s2 = write_config_drive(&disk, &c2).unwrap();
    assert!(s2.replaced);
    assert_eq!((s2.partition, s2.offset), (3, s.offset));
    sgdisk_clean(&disk);
    let table = read_gpt(&RawImage::new(File::open(&disk).unwrap()).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(table.partitions.len(), 3);
    let tree = check_fat(d, &disk, s2.offset, s2.size, "second");
    assert_tree_equals(&tree, &c2);
}

#[test]
fn config_drive_on_a_table_made_by_sgdisk() {
    // An independent writer's table: partitions not on our 1 MiB grid, a gap
    // before the last one, and an entry slot left empty in the middle.
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("sg.img");
    create_rw(&disk).set_len(30 * MIB).unwrap();
    run(Command::new("sgdisk")
        .args([
            "-a",
            "1",
            "-n",
            "1:34:2047",
            "-t",
            "1:ef02",
            "-n",
            "3:4096:+10M",
            "-c",
            "3:root",
        ])
        .arg(&disk));
    let file = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    file.set_len(90 * MIB).unwrap();
    drop(file);
    let c = content("sg");
    let s = write_config_drive(&disk, &c).unwrap();
    assert_eq!(s.partition, 2, "first free entry");
    assert_eq!(s.offset + s.size, 89 * MIB);
    sgdisk_clean(&disk);
    let listing = run(Command::new("sgdisk").arg("-p").arg(&disk));
    assert!(
        listing.contains("config-2") && listing.contains("root"),
        "{listing}"
    );
    let tree = check_fat(dir.path(), &disk, s.offset, s.size, "sg");
    assert_tree_equals(&tree, &c);
}

#[test]
fn config_drive_bytes_are_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let a = gpt_disk(dir.path(), "a.img", 40, 100);
    let b = gpt_disk(dir.path(), "b.img", 40, 100);
    // Garbage where the drive goes (its last MiB ends at 99 MiB) must not show through.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&b)
        .unwrap()
        .write_all_at(&vec![0xA5; MIB as usize], 98 * MIB)
        .unwrap();
    write_config_drive(&a, &content("h")).unwrap();
    write_config_drive(&b, &content("h")).unwrap();
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    let other = gpt_disk(dir.path(), "c.img", 40, 100);
    write_config_drive(&other, &content("other-host")).unwrap();
    assert!(std::fs::read(&a).unwrap() != std::fs::read(&other).unwrap());
}

/// A disk in memory, as a remote target (an iSCSI LUN) would be.
struct MemDisk(std::sync::Mutex<Vec<u8>>);

impl DiskIo for MemDisk {
    fn size(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let data = self.0.lock().unwrap();
        let src = data
            .get(offset as usize..offset as usize + buf.len())
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut data = self.0.lock().unwrap();
        let dst = data
            .get_mut(offset as usize..offset as usize + buf.len())
            .ok_or(std::io::ErrorKind::WriteZero)?;
        dst.copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn config_drive_on_any_disk_io_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let file = gpt_disk(dir.path(), "f.img", 40, 80);
    let mem = std::sync::Arc::new(MemDisk(std::sync::Mutex::new(
        std::fs::read(&file).unwrap(),
    )));
    let c = content("mem");
    let a = write_config_drive(&file, &c).unwrap();
    let b = write_config_drive_on(mem.clone(), "lun0", &c).unwrap();
    assert_eq!(a, b);
    assert!(*mem.0.lock().unwrap() == std::fs::read(&file).unwrap());
    let e = write_config_drive_on(
        std::sync::Arc::new(MemDisk(std::sync::Mutex::new(vec![0; 4096]))),
        "lun1",
        &c,
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("lun1: "), "{e}");
}

#[test]
fn config_drive_on_an_mbr_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("mbr.img");
    let f = create_rw(&disk);
    f.set_len(32 * MIB).unwrap();
    kiln::disk::mbr::write_mbr(
        &f,
        0x1234abcd,
        &[kiln::disk::mbr::MbrPartition {
            bootable: true,
            type_id: 0x83,
            first_lba: 2048,
            sectors: 30 * 2048,
        }],
    )
    .unwrap();
    f.set_len(100 * MIB).unwrap();
    drop(f);
    let c = content("compute-0");
    let s = write_config_drive(&disk, &c).unwrap();
    assert_eq!((s.table, s.partition), (TableKind::Mbr, 2));
    assert_eq!(s.offset + s.size, 100 * MIB);

    let dump = run(Command::new("sfdisk").arg("-J").arg(&disk));
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let parts = dump["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{dump}");
    assert_eq!(parts[0]["start"], 2048);
    assert_eq!(parts[0]["bootable"], true, "existing entry kept");
    assert_eq!(parts[1]["start"].as_u64().unwrap() * 512, s.offset);
    assert_eq!(parts[1]["size"].as_u64().unwrap() * 512, s.size);
    assert!(
        ["e", "c"].contains(&parts[1]["type"].as_str().unwrap()),
        "{dump}"
    );
    let tree = check_fat(dir.path(), &disk, s.offset, s.size, "mbr");
    assert_tree_equals(&tree, &c);

    let again = write_config_drive(&disk, &content("compute-1")).unwrap();
    assert!(again.replaced);
    assert_eq!(again.partition, 2);
}

#[test]
fn config_drive_refusals_leave_the_disk_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = content("h");

    // No partition table at all.
    let bare = d.join("bare.img");
    std::fs::write(&bare, vec![0u8; 8 * MIB as usize]).unwrap();
    let e = write_config_drive(&bare, &c).unwrap_err();
    assert!(
        matches!(e, ConfigDriveError::NoPartitionTable { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("bare.img"));
    assert!(std::fs::read(&bare).unwrap().iter().all(|&b| b == 0));

    // The image fills the disk: no room at the end.
    let full = gpt_disk(d, "full.img", 48, 48);
    let before = std::fs::read(&full).unwrap();
    let e = write_config_drive(&full, &c).unwrap_err();
    assert!(matches!(e, ConfigDriveError::NoRoom { .. }), "{e}");
    assert!(std::fs::read(&full).unwrap() == before);

    // The disk is smaller than the image's table says.
    let short = gpt_disk(d, "short.img", 48, 48);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&short)
        .unwrap()
        .set_len(40 * MIB)
        .unwrap();
    let e = write_config_drive(&short, &c).unwrap_err();
    assert!(matches!(e, ConfigDriveError::Gpt { .. }), "{e}");

    // A damaged primary header: the image did not arrive intact. With the backup
    // still in the image (smaller than the disk) no table is found at all; with
    // the backup at the disk's end, the primary's damage is named.
    for (image, disk, damaged_gpt) in [(40, 100, false), (48, 48, true)] {
        let damaged = gpt_disk(d, "damaged.img", image, disk);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&damaged)
            .unwrap();
        f.write_all_at(&[0xFF; 4], 512 + 16).unwrap();
        drop(f);
        let before = std::fs::read(&damaged).unwrap();
        let e = write_config_drive(&damaged, &c).unwrap_err();
        if damaged_gpt {
            assert!(matches!(e, ConfigDriveError::DamagedGpt { .. }), "{e}");
        } else {
            assert!(e.to_string().contains("CRC32 mismatch"), "{e}");
        }
        assert!(std::fs::read(&damaged).unwrap() == before);
    }

    // All four MBR slots in use.
    let four = d.join("four.img");
    let f = create_rw(&four);
    f.set_len(64 * MIB).unwrap();
    let part = |i: u64| kiln::disk::mbr::MbrPartition {
        bootable: false,
        type_id: 0x83,
        first_lba: 2048 + i * 2048,
        sectors: 2048,
    };
    kiln::disk::mbr::write_mbr(&f, 1, &[part(0), part(1), part(2), part(3)]).unwrap();
    drop(f);
    let e = write_config_drive(&four, &c).unwrap_err();
    assert!(matches!(e, ConfigDriveError::NoFreeSlot { .. }), "{e}");

    // Content errors come first and name the field.
    let mut bad = c.clone();
    bad.meta_data.uuid = String::new();
    let disk = gpt_disk(d, "ok.img", 40, 100);
    let before = std::fs::read(&disk).unwrap();
    let e = write_config_drive(&disk, &bad).unwrap_err().to_string();
    assert!(e.contains("uuid"), "{e}");
    assert!(std::fs::read(&disk).unwrap() == before);
    let missing = write_config_drive(&d.join("nope.img"), &c)
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope.img"), "{missing}");
}

// ---------------------------------------------------------------- cloud-init

/// Debian packages cloud-init's config drive reader imports.
const CLOUD_INIT_PY_DEPS: &[&str] = &[
    "python3-yaml",
    "python3-requests",
    "python3-jinja2",
    "python3-jsonpatch",
    "python3-jsonschema",
    "python3-configobj",
    "python3-netifaces",
    "python3-oauthlib",
];

fn system_python() -> &'static str {
    // Debian's python3 sees the apt-installed modules; a pyenv shim does not.
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn python_deps_present() -> bool {
    Command::new(system_python())
        .args([
            "-c",
            "import yaml, requests, jinja2, jsonpatch, jsonschema, configobj, oauthlib",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// cloud-init's own Python package, unpacked from Debian's cloud-init .deb
/// (downloaded once into the target directory).
fn cloud_init_pythonpath() -> Option<PathBuf> {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cloud-init-deb");
    let unpacked = cache.join("root/usr/lib/python3/dist-packages");
    if unpacked.join("cloudinit").is_dir() {
        return Some(unpacked);
    }
    std::fs::create_dir_all(&cache).unwrap();
    run(Command::new("apt-get")
        .args(["download", "cloud-init"])
        .current_dir(&cache));
    let deb = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("apt-get download cloud-init left no .deb");
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(cache.join("root")));
    Some(unpacked)
}

fn cloud_init_reads(tree: &Path, c: &ConfigDriveContent) {
    if !python_deps_present() {
        let installed = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(CLOUD_INIT_PY_DEPS)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed || !python_deps_present() {
            eprintln!(
                "SKIPPED cloud-init check: python deps missing and apt-get cannot install {CLOUD_INIT_PY_DEPS:?}"
            );
            return;
        }
    }
    let pythonpath = cloud_init_pythonpath().unwrap();
    let script = r#"
import json, sys
from cloudinit.sources.DataSourceConfigDrive import read_config_drive
from cloudinit.sources.helpers import openstack
r = read_config_drive(sys.argv[1])
md = r["metadata"]
net = openstack.convert_net_json(r["networkdata"], known_macs=json.loads(sys.argv[2]))
print(json.dumps({
    "uuid": md["uuid"], "hostname": md["hostname"], "keys": md["public_keys"],
    "meta": md["meta"], "userdata": r["userdata"].decode() if isinstance(r["userdata"], bytes) else r["userdata"],
    "vendordata": r.get("vendordata"),
    "net": [[s.get("type") for s in cfg.get("subnets", [])] + [cfg.get("mac_address")] for cfg in net["config"] if cfg.get("type") == "physical"],
}))
"#;
    let macs: BTreeMap<String, String> = c
        .network_data
        .links
        .iter()
        .enumerate()
        .map(|(i, l)| (l.ethernet_mac_address.clone(), format!("eth{i}")))
        .collect();
    let out = run(Command::new(system_python())
        .args(["-c", script])
        .arg(tree)
        .arg(serde_json::to_string(&macs).unwrap())
        .env("PYTHONPATH", &pythonpath));
    let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(got["uuid"], c.meta_data.uuid.as_str());
    assert_eq!(got["hostname"], c.meta_data.hostname.as_str());
    assert_eq!(got["keys"], json!(c.meta_data.public_keys));
    assert_eq!(got["meta"]["role"], "Controller");
    assert_eq!(
        got["userdata"].as_str().unwrap().as_bytes(),
        c.user_data.as_deref().unwrap()
    );
    assert_eq!(got["vendordata"], json!({}));
    assert_eq!(
        got["net"],
        json!([
            ["dhcp4", "52:54:00:12:34:56"],
            ["dhcp4", "52:54:00:12:34:57"]
        ])
    );
}
