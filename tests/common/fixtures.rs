//! Guest disk images made at test time with the real tools (mkfs.xfs with a
//! protofile, mke2fs -d, mkfs.vfat + mcopy, sgdisk/sfdisk, LVM tools, qemu-img),
//! and the independent read-back side: filesystem bytes cut out of a raw view
//! of the image, dumped to a host directory with debugfs (ext4), a read-only
//! loop mount in a throw-away mount namespace (xfs) or mcopy (vfat), checked
//! with e2fsck -fn / xfs_repair -n / fsck.fat -n and identified with blkid.
//!
//! Each fixture holds a small Linux-like root: os-release, accounts, fstab
//! naming the other filesystems by UUID=, LABEL= or /dev/mapper, busybox-static
//! with applet links (so commands run in the chroot), a dpkg status with two
//! packages and ELF binaries for the architecture detection.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh(script: &str) -> String {
    run(Command::new("sh").args(["-euc", script]))
}

pub fn sha256(path: &Path) -> String {
    sh(&format!("sha256sum < '{}'", path.display()))
}

/// Filesystem types of the fixtures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    Ext4,
    Xfs,
    Vfat,
}

impl Fs {
    pub fn blkid_name(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Xfs => "xfs",
            Fs::Vfat => "vfat",
        }
    }
}

/// One filesystem of a fixture and where its bytes lie on the raw disk.
#[derive(Debug, Clone)]
pub struct Volume {
    pub fs: Fs,
    /// Where the guest's fstab mounts it ("/" for the root).
    pub mountpoint: &'static str,
    /// (disk offset, length) of each piece, in filesystem order.
    pub extents: Vec<(u64, u64)>,
}

pub struct Fixture {
    pub image: PathBuf,
    pub qcow2: bool,
    pub volumes: Vec<Volume>,
    /// The two packages of the dpkg status: (name, version).
    pub packages: Vec<(&'static str, &'static str)>,
}

impl Fixture {
    pub fn volume(&self, mountpoint: &str) -> &Volume {
        self.volumes
            .iter()
            .find(|v| v.mountpoint == mountpoint)
            .unwrap_or_else(|| panic!("no volume mounted at {mountpoint}"))
    }
}

pub const PACKAGES: &[(&str, &str)] = &[
    ("base-files", "12.4+deb12u5"),
    ("libzstd1", "1.5.4+dfsg2-5"),
];

const MIB: u64 = 1 << 20;
/// mkfs.xfs refuses filesystems below 300 MiB; the files stay sparse.
const XFS_MIB: u64 = 300;

fn write_files(root: &Path, files: &[(&str, &[u8])]) {
    for (path, bytes) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

fn dpkg_status() -> String {
    PACKAGES
        .iter()
        .map(|(name, version)| {
            format!(
                "Package: {name}\nStatus: install ok installed\nPriority: required\n\
                 Architecture: amd64\nVersion: {version}\nDescription: {name} for the fixture\n\n"
            )
        })
        .collect()
}

/// The /var part of a guest root (its own volume in the LVM fixture).
pub fn var_tree(var: &Path) {
    write_files(
        var,
        &[
            ("lib/dpkg/status", dpkg_status().as_bytes()),
            ("log/messages", b"Jan  1 00:00:00 fixture booted\n"),
            ("log/messages.1", b"an older log\n"),
            ("log/apt/history.log", b"Start-Date: 2024-01-01\n"),
        ],
    );
    std::fs::create_dir_all(var.join("tmp")).unwrap();
}

/// A guest root at `root` with `fstab`; /var is filled unless `separate_var`.
pub fn linux_root(root: &Path, fstab: &str, separate_var: bool) {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static installed");
    let zone = std::fs::read("/usr/share/zoneinfo/Europe/Berlin").expect("tzdata installed");
    write_files(
        root,
        &[
            (
                "etc/os-release",
                b"PRETTY_NAME=\"Kiln Fixture GNU/Linux 12 (bookworm)\"\nNAME=\"Kiln Fixture\"\n\
                  VERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nID=debian\n",
            ),
            ("etc/debian_version", b"12.5\n"),
            ("etc/hostname", b"fixture\n"),
            ("etc/hosts", b"127.0.0.1 localhost\n"),
            ("etc/machine-id", b"0123456789abcdef0123456789abcdef\n"),
            (
                "etc/passwd",
                b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n",
            ),
            (
                "etc/shadow",
                b"root:*:19000:0:99999:7:::\nalice:!:19000:0:99999:7:::\n",
            ),
            ("etc/group", b"root:x:0:\nalice:x:1000:\n"),
            ("etc/fstab", fstab.as_bytes()),
            ("etc/ssh/ssh_host_ed25519_key", b"PRIVATE HOST KEY\n"),
            (
                "etc/ssh/ssh_host_ed25519_key.pub",
                b"ssh-ed25519 AAAA host\n",
            ),
            ("etc/ssh/sshd_config", b"PermitRootLogin no\n"),
            ("etc/delete-me", b"to be deleted\n"),
            ("etc/move-me", b"to be moved\n"),
            ("etc/edit-me", b"colour one\ncolour two\n"),
            ("etc/truncate-me", b"some bytes to drop\n"),
            ("bin/busybox", &busybox),
            ("usr/bin/busybox", &busybox),
            ("usr/share/zoneinfo/Europe/Berlin", &zone),
        ],
    );
    for applet in [
        "sh", "echo", "cat", "ls", "mkdir", "rm", "mv", "id", "true", "false", "printf", "test",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    for dir in [
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "root",
        "srv",
        "boot",
        "var",
        "home/alice",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    sh(&format!(
        "chown 1000:1000 '{0}/home/alice' && chmod 640 '{0}/etc/shadow' && chmod 1777 '{0}/tmp' \
         && chmod 755 '{0}/bin/busybox' '{0}/usr/bin/busybox'",
        root.display()
    ));
    if !separate_var {
        var_tree(&root.join("var"));
    }
}

/// An ext4 filesystem file made with mke2fs -d from `tree`.
pub fn ext4_file(file: &Path, tree: &Path, label: &str, size_mib: u64) {
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", label, "-d"])
        .arg(tree)
        .arg(file)
        .arg(format!("{size_mib}M")));
}

/// An xfs filesystem file holding `tree`, made with mkfs.xfs and a protofile
/// (this mkfs.xfs has no directory import).
pub fn xfs_file(file: &Path, tree: &Path, label: &str) {
    let proto = file.with_extension("proto");
    let mut text = String::from("/dev/null\n0 0\nd--755 0 0\n");
    protofile_dir(tree, &mut text, 1);
    text.push_str("$\n");
    std::fs::write(&proto, text).unwrap();
    run(Command::new("truncate")
        .arg(format!("-s{XFS_MIB}M"))
        .arg(file));
    run(Command::new("mkfs.xfs")
        .args(["-q", "-f", "-L", label, "-p"])
        .arg(&proto)
        .arg(file));
}

fn protofile_dir(dir: &Path, out: &mut String, depth: usize) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let indent = " ".repeat(depth);
    for path in entries {
        let meta = path.symlink_metadata().unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            !name.contains(' '),
            "protofile names have no spaces: {name}"
        );
        let mode = meta.permissions().mode() & 0o777;
        let sticky = meta.permissions().mode() & 0o1000 != 0;
        let (uid, gid) = (meta.uid(), meta.gid());
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).unwrap();
            out.push_str(&format!(
                "{indent}{name} l--{mode:03o} {uid} {gid} {}\n",
                target.display()
            ));
        } else if meta.is_dir() {
            // The protofile has no sticky bit; such directories get 777.
            let mode = if sticky { 0o777 } else { mode };
            out.push_str(&format!("{indent}{name} d--{mode:03o} {uid} {gid}\n"));
            protofile_dir(&path, out, depth + 1);
            out.push_str(&format!("{indent}$\n"));
        } else {
            out.push_str(&format!(
                "{indent}{name} ---{mode:03o} {uid} {gid} {}\n",
                path.display()
            ));
        }
    }
}

/// A FAT filesystem file holding `tree` (an EFI system partition).
pub fn vfat_file(file: &Path, tree: &Path, label: &str, size_mib: u64) {
    run(Command::new("truncate")
        .arg(format!("-s{size_mib}M"))
        .arg(file));
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", label])
        .arg(file));
    let mut cmd = Command::new("mcopy");
    cmd.args(["-s", "-i"]).arg(file);
    for entry in std::fs::read_dir(tree).unwrap() {
        cmd.arg(entry.unwrap().path());
    }
    run(cmd.arg("::/"));
}

pub fn blkid(file: &Path, key: &str) -> String {
    sh(&format!(
        "blkid -p -s {key} -o value '{}' || true",
        file.display()
    ))
    .trim()
    .to_string()
}

/// Copy `fs` into `image` at `offset`.
fn place(image: &Path, fs: &Path, offset: u64) {
    run(Command::new("dd")
        .arg(format!("if={}", fs.display()))
        .arg(format!("of={}", image.display()))
        .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
        .arg(format!("seek={offset}"))
        .arg("oflag=seek_bytes"));
}

/// First byte and length of GPT or MBR partition `n`, as sfdisk reports them.
pub fn partition(image: &Path, n: usize) -> (u64, u64) {
    let out = run(Command::new("sfdisk").arg("-J").arg(image));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = &json["partitiontable"]["partitions"][n - 1];
    (
        p["start"].as_u64().unwrap() * 512,
        p["size"].as_u64().unwrap() * 512,
    )
}

fn blank_disk(image: &Path, size_mib: u64) {
    run(Command::new("truncate")
        .arg(format!("-s{size_mib}M"))
        .arg(image));
}

pub fn to_qcow2(raw: &Path) -> PathBuf {
    let q = raw.with_extension("qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(&q));
    std::fs::remove_file(raw).unwrap();
    q
}

/// (a) A bare xfs filesystem, raw, no partition table.
pub fn bare_xfs(dir: &Path) -> Fixture {
    let tree = dir.join("tree");
    linux_root(&tree, "LABEL=bareroot / xfs defaults 0 0\n", false);
    let image = dir.join("bare-xfs.img");
    xfs_file(&image, &tree, "bareroot");
    Fixture {
        image,
        qcow2: false,
        volumes: vec![Volume {
            fs: Fs::Xfs,
            mountpoint: "/",
            extents: vec![(0, XFS_MIB * MIB)],
        }],
        packages: PACKAGES.to_vec(),
    }
}

/// (b) GPT with an EFI system partition (vfat, /boot/efi by UUID) and an xfs
/// root, as qcow2.
pub fn gpt_esp_xfs_qcow2(dir: &Path) -> Fixture {
    let esp_tree = dir.join("esp-tree");
    write_files(
        &esp_tree,
        &[("EFI/BOOT/BOOTX64.EFI", b"not really a loader")],
    );
    let esp = dir.join("esp.vfat");
    vfat_file(&esp, &esp_tree, "ESP", 34);
    let esp_uuid = blkid(&esp, "UUID");
    let root_fs = dir.join("root.xfs");
    let tree = dir.join("tree");
    // The root's UUID is only known after mkfs: name it by label.
    linux_root(
        &tree,
        &format!(
            "LABEL=gptroot / xfs defaults 0 0\nUUID={esp_uuid} /boot/efi vfat umask=0077 0 1\n"
        ),
        false,
    );
    std::fs::create_dir_all(tree.join("boot/efi")).unwrap();
    xfs_file(&root_fs, &tree, "gptroot");
    let image = dir.join("gpt-xfs.raw");
    blank_disk(&image, 1 + 34 + XFS_MIB + 1);
    run(Command::new("sgdisk")
        .args(["-n1:2048:+34M", "-t1:ef00", "-n2:0:+300M", "-t2:8304"])
        .arg(&image));
    let (esp_off, esp_len) = partition(&image, 1);
    let (root_off, _) = partition(&image, 2);
    place(&image, &esp, esp_off);
    place(&image, &root_fs, root_off);
    Fixture {
        image: to_qcow2(&image),
        qcow2: true,
        volumes: vec![
            Volume {
                fs: Fs::Xfs,
                mountpoint: "/",
                extents: vec![(root_off, XFS_MIB * MIB)],
            },
            Volume {
                fs: Fs::Vfat,
                mountpoint: "/boot/efi",
                extents: vec![(esp_off, esp_len)],
            },
        ],
        packages: PACKAGES.to_vec(),
    }
}

/// (c) MBR with one ext4 root partition (by UUID), raw.
pub fn mbr_ext4(dir: &Path) -> Fixture {
    let uuid = "6a0c2f1e-52a5-4d8e-9c37-0b7f1f7e8a11";
    let tree = dir.join("tree");
    linux_root(
        &tree,
        &format!("UUID={uuid} / ext4 errors=remount-ro 0 1\n"),
        false,
    );
    let root_fs = dir.join("root.ext4");
    ext4_file(&root_fs, &tree, "mbrroot", 48);
    run(Command::new("tune2fs").args(["-U", uuid]).arg(&root_fs));
    let image = dir.join("mbr-ext4.img");
    blank_disk(&image, 50);
    run(Command::new("sfdisk")
        .args(["-q", "-X", "dos"])
        .arg(&image)
        .stdin(
            std::fs::File::open(write_script(
                dir,
                "start=2048, size=48M, type=83, bootable\n",
            ))
            .unwrap(),
        ));
    let (off, _) = partition(&image, 1);
    place(&image, &root_fs, off);
    Fixture {
        image,
        qcow2: false,
        volumes: vec![Volume {
            fs: Fs::Ext4,
            mountpoint: "/",
            extents: vec![(off, 48 * MIB)],
        }],
        packages: PACKAGES.to_vec(),
    }
}

fn write_script(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("sfdisk.script");
    std::fs::write(&p, text).unwrap();
    p
}

/// Settings for the LVM tools while building the fixture: nothing activated,
/// the host's devices file and metadata backups untouched.
const LVM_CONF: &str =
    "global { activation = 0 } devices { use_devicesfile = 0 } backup { backup = 0 archive = 0 }";

/// (d) The overcloud whole-disk layout: GPT, /boot ext4 (by UUID), an LVM PV
/// with VG vg0 holding LV root (xfs) and LV var (ext4, /var), as qcow2. The
/// PV is made on a loop device of partition 2 that is detached again; the
/// volumes' disk ranges come from `lvs --segments`.
pub fn lvm_qcow2(dir: &Path) -> Fixture {
    let image = dir.join("lvm.raw");
    let var_mib = 40;
    blank_disk(&image, 1 + 32 + XFS_MIB + var_mib + 8);
    run(Command::new("sgdisk")
        .args(["-n1:2048:+32M", "-n2:0:0", "-t2:8e00"])
        .arg(&image));
    let (pv_off, _) = partition(&image, 2);
    let report = sh(&format!(
        "export LVM_SUPPRESS_FD_WARNINGS=1
         dev=$(losetup -f --show -o {pv_off} '{img}')
         trap 'losetup -d $dev' EXIT
         lvm() {{ \"$@\" --config '{LVM_CONF}' --devices $dev; }}
         lvm pvcreate -q $dev >&2
         lvm vgcreate -q vg0 $dev >&2
         lvm lvcreate -q -an -Zn -L {XFS_MIB}M -n root vg0 >&2
         lvm lvcreate -q -an -Zn -L {var_mib}M -n var vg0 >&2
         lvm pvs --noheadings --units b --nosuffix -o pe_start
         lvm lvs --noheadings --segments --units b --nosuffix \
             -o lv_name,seg_pe_ranges,vg_extent_size",
        img = image.display()
    ));
    let mut lines = report.lines().map(str::split_whitespace);
    let pe_start: u64 = lines.next().unwrap().next().unwrap().parse().unwrap();
    let mut lv_extents = std::collections::BTreeMap::<String, Vec<(u64, u64)>>::new();
    for mut fields in lines {
        let (name, ranges, extent) = (
            fields.next().unwrap(),
            fields.next().unwrap(),
            fields.next().unwrap().parse::<u64>().unwrap(),
        );
        let (first, last) = ranges.rsplit(':').next().unwrap().split_once('-').unwrap();
        let (first, last): (u64, u64) = (first.parse().unwrap(), last.parse().unwrap());
        lv_extents.entry(name.to_string()).or_default().push((
            pv_off + pe_start + first * extent,
            (last - first + 1) * extent,
        ));
    }

    let boot_tree = dir.join("boot-tree");
    write_files(&boot_tree, &[("grub/grub.cfg", b"set timeout=5\n")]);
    let boot_fs = dir.join("boot.ext4");
    ext4_file(&boot_fs, &boot_tree, "boot", 32);
    let boot_uuid = blkid(&boot_fs, "UUID");
    let tree = dir.join("tree");
    linux_root(
        &tree,
        &format!(
            "/dev/mapper/vg0-root / xfs defaults 0 0\nUUID={boot_uuid} /boot ext4 defaults 0 2\n\
             /dev/mapper/vg0-var /var ext4 defaults 0 2\n"
        ),
        true,
    );
    let root_fs = dir.join("root.xfs");
    xfs_file(&root_fs, &tree, "img-rootfs");
    let var = dir.join("var-tree");
    var_tree(&var);
    let var_fs = dir.join("var.ext4");
    ext4_file(&var_fs, &var, "var", var_mib);

    let (boot_off, boot_len) = partition(&image, 1);
    place(&image, &boot_fs, boot_off);
    for (lv, fs) in [("root", &root_fs), ("var", &var_fs)] {
        let bytes = std::fs::read(fs).unwrap();
        let mut done = 0usize;
        for &(off, len) in &lv_extents[lv] {
            let piece = dir.join("piece");
            let end = (done + len as usize).min(bytes.len());
            std::fs::write(&piece, &bytes[done..end]).unwrap();
            place(&image, &piece, off);
            done = end;
        }
    }
    Fixture {
        image: to_qcow2(&image),
        qcow2: true,
        volumes: vec![
            Volume {
                fs: Fs::Xfs,
                mountpoint: "/",
                extents: lv_extents["root"].clone(),
            },
            Volume {
                fs: Fs::Ext4,
                mountpoint: "/boot",
                extents: vec![(boot_off, boot_len)],
            },
            Volume {
                fs: Fs::Ext4,
                mountpoint: "/var",
                extents: lv_extents["var"].clone(),
            },
        ],
        packages: PACKAGES.to_vec(),
    }
}

/// The image as a raw disk (a qemu-img conversion for qcow2, a copy for raw).
pub fn raw_view(fx: &Fixture, out: &Path) {
    if fx.qcow2 {
        run(Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&fx.image)
            .arg(out));
    } else {
        run(Command::new("cp")
            .arg("--sparse=always")
            .arg(&fx.image)
            .arg(out));
    }
}

/// The bytes of `vol` cut out of the raw disk `raw` into `out`.
pub fn extract(raw: &Path, vol: &Volume, out: &Path) {
    let _ = std::fs::remove_file(out);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .unwrap();
    let mut disk = std::fs::File::open(raw).unwrap();
    use std::io::{Read, Seek, SeekFrom};
    for &(off, len) in &vol.extents {
        disk.seek(SeekFrom::Start(off)).unwrap();
        std::io::copy(&mut (&mut disk).take(len), &mut file).unwrap();
    }
}

/// The filesystem file `fs` checked read-only by its own tool.
pub fn fsck(fs: &Path, kind: Fs) {
    match kind {
        Fs::Ext4 => run(Command::new("e2fsck").arg("-fn").arg(fs)),
        Fs::Xfs => run(Command::new("xfs_repair").args(["-n", "-f"]).arg(fs)),
        Fs::Vfat => run(Command::new("fsck.fat").arg("-n").arg(fs)),
    };
}

/// Every file of the filesystem file `fs` copied into the new host directory
/// `out` (modes, owners and symlinks kept): debugfs rdump for ext4, a
/// read-only loop mount in a private mount namespace for xfs (norecovery: the
/// log is never replayed), mcopy for vfat.
pub fn dump(fs: &Path, kind: Fs, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    match kind {
        Fs::Ext4 => {
            run(Command::new("debugfs")
                .arg("-R")
                .arg(format!("rdump / {}", out.display()))
                .arg(fs));
        }
        Fs::Xfs => {
            let mnt = out.with_extension("mnt");
            std::fs::create_dir_all(&mnt).unwrap();
            run(Command::new("unshare")
                .args(["-m", "sh", "-euc"])
                .arg(format!(
                    "mount --make-rprivate /
                 mount -t xfs -o ro,norecovery,loop '{fs}' '{mnt}'
                 rc=0; cp -a '{mnt}/.' '{out}/' || rc=$?
                 umount '{mnt}'; exit $rc",
                    fs = fs.display(),
                    mnt = mnt.display(),
                    out = out.display()
                )));
            std::fs::remove_dir(&mnt).unwrap();
        }
        Fs::Vfat => {
            run(Command::new("mcopy")
                .args(["-s", "-n", "-i"])
                .arg(fs)
                .arg("::/")
                .arg(out));
        }
    }
}
