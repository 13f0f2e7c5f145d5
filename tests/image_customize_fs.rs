//! `kiln image customize / sysprep / inspect` on disks made at test time: a
//! bare xfs filesystem, GPT + ESP + xfs (qcow2), MBR + ext4, and the overcloud
//! LVM layout (GPT, /boot, VG vg0 with xfs root and ext4 /var; qcow2). Every
//! effect is read back without kiln: the filesystems are cut out of a raw view
//! of the image and dumped with debugfs, a read-only loop mount or mcopy,
//! password hashes are checked with python3's crypt, and every filesystem
//! passes e2fsck -fn / xfs_repair -n / fsck.fat -n afterwards.
//!
//! Needs root, /dev/fuse, loop devices, xfsprogs, e2fsprogs, dosfstools,
//! mtools, gdisk, fdisk, lvm2, qemu-utils, busybox-static and python3.

#[allow(dead_code)]
#[path = "common/fixtures.rs"]
mod fixtures;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fixtures::{Fixture, blkid, dump, extract, fsck, raw_view, run, sha256};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKilnFixtureKeyForTests0000000000000 kiln@test";

/// kiln with its temporary files in `tmp`, so leftovers of this run (and only
/// of this run) can be looked for there.
fn kiln(tmp: &Path, args: &[&str]) -> Output {
    Command::new(KILN)
        .env("TMPDIR", tmp)
        .args(args)
        .output()
        .expect("run kiln")
}

fn kiln_ok(tmp: &Path, args: &[&str]) -> Output {
    let out = kiln(tmp, args);
    assert!(
        out.status.success(),
        "kiln {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Loop devices whose backing file lies under `tmp` (kiln's FUSE files).
fn loops_under(tmp: &Path) -> Vec<String> {
    let all = run(Command::new("losetup").args(["-a", "-O", "NAME,BACK-FILE", "-n"]));
    all.lines()
        .filter(|l| l.contains(tmp.to_str().unwrap()))
        .map(String::from)
        .collect()
}

/// Nothing of kiln's is left: no loop device on its files, no mount of its
/// work directory, no temporary directory.
fn assert_nothing_left(tmp: &Path) {
    assert_eq!(loops_under(tmp), Vec::<String>::new(), "loop devices left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(tmp.to_str().unwrap()),
        "mounts left: {mounts}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// The filesystems of the image, each dumped into its own host directory,
/// after checking every one with its fsck (and the qcow2 with qemu-img check).
struct ReadBack {
    _dir: tempfile::TempDir,
    trees: BTreeMap<&'static str, PathBuf>,
    /// (type, label, UUID) as blkid reports them, by mount point.
    ids: BTreeMap<&'static str, (String, String, String)>,
}

impl ReadBack {
    fn new(fx: &Fixture) -> Self {
        if fx.qcow2 {
            let out = run(Command::new("qemu-img").arg("check").arg(&fx.image));
            assert!(out.contains("No errors were found"), "{out}");
        }
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        raw_view(fx, &raw);
        let mut trees = BTreeMap::new();
        let mut ids = BTreeMap::new();
        for (i, vol) in fx.volumes.iter().enumerate() {
            let file = dir.path().join(format!("fs{i}"));
            extract(&raw, vol, &file);
            fsck(&file, vol.fs);
            ids.insert(
                vol.mountpoint,
                (
                    blkid(&file, "TYPE"),
                    blkid(&file, "LABEL"),
                    blkid(&file, "UUID"),
                ),
            );
            let tree = dir.path().join(format!("tree{i}"));
            dump(&file, vol.fs, &tree);
            std::fs::remove_file(&file).unwrap();
            trees.insert(vol.mountpoint, tree);
        }
        std::fs::remove_file(&raw).unwrap();
        ReadBack {
            _dir: dir,
            trees,
            ids,
        }
    }

    /// Host path of guest `path` in the filesystem mounted at `mountpoint`.
    fn at(&self, mountpoint: &str, path: &str) -> PathBuf {
        self.trees[mountpoint].join(path.trim_start_matches('/'))
    }

    fn root(&self, path: &str) -> PathBuf {
        self.at("/", path)
    }

    fn read(&self, mountpoint: &str, path: &str) -> String {
        let p = self.at(mountpoint, path);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }
}

/// True when `password` hashes to `hash` (python3's crypt, i.e. libxcrypt).
fn password_matches(password: &str, hash: &str) -> bool {
    Command::new("python3")
        .args(["-W", "ignore", "-c"])
        .arg("import crypt,sys; sys.exit(0 if crypt.crypt(sys.argv[1], sys.argv[2]) == sys.argv[2] else 1)")
        .args([password, hash])
        .status()
        .unwrap()
        .success()
}

fn shadow_hash(shadow: &str, user: &str) -> String {
    shadow
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{user}:")))
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no {user} in shadow:\n{shadow}"))
        .to_string()
}

/// One customize call with a broad set of operations, then each effect read
/// back; `var` is the mount point holding /var ("/" or "/var").
fn customize_and_check(fx: &Fixture, var: &str) {
    let work = tempfile::tempdir().unwrap();
    let tmp = work.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let upload = work.path().join("upload.bin");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&upload, &payload).unwrap();
    let bundle = work.path().join("bundle");
    std::fs::create_dir_all(bundle.join("sub")).unwrap();
    std::fs::write(bundle.join("sub/b.txt"), "copied in\n").unwrap();
    let image = fx.image.to_str().unwrap();
    let upload_arg = format!("{}:/opt/kiln/uploaded.bin", upload.display());
    let copy_in_arg = format!("{}:/srv", bundle.display());
    let ssh_arg = format!("alice:string:{SSH_KEY}");

    kiln_ok(
        &tmp,
        &[
            "image",
            "customize",
            "-a",
            image,
            "--root-password",
            "password:R00t-pw",
            "--password",
            "alice:password:Alice-pw",
            "--hostname",
            "kiln-custom",
            "--write",
            "/etc/motd:hello from kiln",
            "--append-line",
            "/etc/hosts:10.0.0.1 kiln-host",
            "--mkdir",
            "/opt/kiln/deep",
            "--upload",
            &upload_arg,
            "--copy-in",
            &copy_in_arg,
            "--chmod",
            "0600:/opt/kiln/uploaded.bin",
            "--link",
            "/etc/motd:/etc/motd.link",
            "--touch",
            "/etc/touched",
            "--delete",
            "/etc/delete-me",
            "--move",
            "/etc/move-me:/etc/moved",
            "--edit",
            "/etc/edit-me:s/colour/color/g",
            "--truncate",
            "/etc/truncate-me",
            "--timezone",
            "Europe/Berlin",
            "--ssh-inject",
            &ssh_arg,
            "--firstboot-command",
            "echo first-boot-ran",
            "--run-command",
            "echo ran-in-chroot > /var/ran; id -u > /opt/kiln/uid",
            // After a command ran, the guest's mounts are still in place.
            "--write",
            "/var/after-run:still on /var",
        ],
    );
    assert_nothing_left(&tmp);

    let back = ReadBack::new(fx);
    let shadow = back.read("/", "etc/shadow");
    assert!(password_matches("R00t-pw", &shadow_hash(&shadow, "root")));
    assert!(password_matches("Alice-pw", &shadow_hash(&shadow, "alice")));
    assert!(!password_matches("wrong", &shadow_hash(&shadow, "root")));
    assert_eq!(back.read("/", "etc/hostname").trim(), "kiln-custom");
    assert_eq!(back.read("/", "etc/motd"), "hello from kiln");
    // --hostname may add its own line to /etc/hosts; the appended line is last.
    let hosts = back.read("/", "etc/hosts");
    assert!(
        hosts.starts_with("127.0.0.1 localhost\n") && hosts.ends_with("\n10.0.0.1 kiln-host\n"),
        "{hosts}"
    );
    assert!(back.root("opt/kiln/deep").is_dir());
    let uploaded = back.root("opt/kiln/uploaded.bin");
    assert_eq!(std::fs::read(&uploaded).unwrap(), payload);
    assert_eq!(
        uploaded.metadata().unwrap().permissions().mode() & 0o7777,
        0o600
    );
    assert_eq!(back.read("/", "srv/bundle/sub/b.txt"), "copied in\n");
    assert_eq!(
        std::fs::read_link(back.root("etc/motd.link")).unwrap(),
        Path::new("/etc/motd")
    );
    assert_eq!(back.root("etc/touched").metadata().unwrap().len(), 0);
    assert!(!back.root("etc/delete-me").exists());
    assert!(!back.root("etc/move-me").exists());
    assert_eq!(back.read("/", "etc/moved"), "to be moved\n");
    assert_eq!(back.read("/", "etc/edit-me"), "color one\ncolor two\n");
    assert_eq!(back.root("etc/truncate-me").metadata().unwrap().len(), 0);
    assert_eq!(
        std::fs::read_link(back.root("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Europe/Berlin")
    );
    assert_eq!(back.read("/", "etc/timezone"), "Europe/Berlin\n");
    let keys = back.root("home/alice/.ssh/authorized_keys");
    assert_eq!(
        std::fs::read_to_string(&keys).unwrap(),
        format!("{SSH_KEY}\n")
    );
    assert_eq!(keys.metadata().unwrap().uid(), 1000);
    let scripts: Vec<String> = std::fs::read_dir(back.root("usr/lib/kiln-firstboot/scripts"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        scripts.len() == 1 && scripts[0].contains("echo first-boot-ran"),
        "{scripts:?}"
    );
    assert!(back.root("etc/rc.d/S99kiln-firstboot").is_file());
    // The command ran in the guest as root, and /var was the guest's /var.
    assert_eq!(back.read("/", "opt/kiln/uid").trim(), "0");
    let var_rel = if var == "/" { "var/ran" } else { "ran" };
    assert_eq!(back.read(var, var_rel), "ran-in-chroot\n");
    let after_rel = if var == "/" {
        "var/after-run"
    } else {
        "after-run"
    };
    assert_eq!(back.read(var, after_rel), "still on /var");
    if var != "/" {
        for name in ["var/ran", "var/after-run"] {
            assert!(
                !back.root(name).exists(),
                "{name} went under the /var mount point of the root, not into the var volume"
            );
        }
    }
}

/// A failing --run-command and a --dry-run each leave the image byte-identical.
fn failures_and_dry_runs_change_nothing(fx: &Fixture) {
    let work = tempfile::tempdir().unwrap();
    let tmp = work.path();
    let image = fx.image.to_str().unwrap();
    let before = sha256(&fx.image);
    let out = kiln(
        tmp,
        &[
            "image",
            "customize",
            "-a",
            image,
            "--write",
            "/etc/never:x",
            "--run-command",
            "echo into-var > /var/never; exit 3",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("exit 3") || stderr.contains("status: 3"),
        "{stderr}"
    );
    assert_eq!(sha256(&fx.image), before);
    assert_nothing_left(tmp);
    kiln_ok(
        tmp,
        &[
            "image",
            "customize",
            "-a",
            image,
            "-n",
            "--write",
            "/etc/dry:run",
            "--mkdir",
            "/var/dry",
        ],
    );
    kiln_ok(tmp, &["image", "sysprep", "-a", image, "--dry-run"]);
    assert_eq!(sha256(&fx.image), before);
    assert_nothing_left(tmp);
}

/// `inspect --json` against blkid, the fstab and the dpkg status.
fn inspect_agrees(fx: &Fixture, fstab: &[(&str, &str)]) {
    let work = tempfile::tempdir().unwrap();
    let tmp = work.path();
    let out = kiln_ok(
        tmp,
        &["image", "inspect", "--json", fx.image.to_str().unwrap()],
    );
    assert_nothing_left(tmp);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["distro"], "debian", "{info:#}");
    // The fixture's os-release says 12, its /etc/debian_version 12.5: Debian's
    // point release is the version (as virt-inspector reports it).
    assert_eq!(info["version"], "12.5");
    assert_eq!(info["major_version"], 12);
    assert_eq!(info["minor_version"], 5);
    assert_eq!(info["product_name"], "Kiln Fixture GNU/Linux 12 (bookworm)");
    assert_eq!(info["arch"], "x86_64");
    assert_eq!(info["package_format"], "deb");
    let packages: Vec<(String, String)> = info["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = fx
        .packages
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(packages, expected);

    let back = ReadBack::new(fx);
    let mut found: Vec<(String, String, String)> = info["filesystems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["fstype"] != "LVM2_member")
        .map(|f| {
            (
                f["fstype"].as_str().unwrap().to_string(),
                f["label"].as_str().unwrap_or("").to_string(),
                f["uuid"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let mut expected: Vec<(String, String, String)> = back.ids.values().cloned().collect();
    found.sort();
    expected.sort();
    assert_eq!(found, expected);
    let mountpoints: Vec<(String, String)> = info["mountpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountpoint"].as_str().unwrap().to_string(),
                m["device"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut expected: Vec<(String, String)> = fstab
        .iter()
        .map(|(mp, dev)| (mp.to_string(), dev.to_string()))
        .collect();
    expected.sort();
    assert_eq!(mountpoints, expected);
}

/// The fstab entries of the fixture as (mountpoint, device), read back.
fn fstab_of(fx: &Fixture) -> Vec<(String, String)> {
    let back = ReadBack::new(fx);
    back.read("/", "etc/fstab")
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let dev = f.next()?;
            Some((f.next()?.to_string(), dev.to_string()))
        })
        .collect()
}

fn all_checks(fx: &Fixture, var: &str) {
    let fstab = fstab_of(fx);
    let fstab: Vec<(&str, &str)> = fstab
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    inspect_agrees(fx, &fstab);
    customize_and_check(fx, var);
    failures_and_dry_runs_change_nothing(fx);
}

#[test]
fn bare_xfs_raw() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixtures::bare_xfs(dir.path());
    all_checks(&fx, "/");
}

#[test]
fn gpt_esp_xfs_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixtures::gpt_esp_xfs_qcow2(dir.path());
    all_checks(&fx, "/");
    // The ESP was mounted at /boot/efi and left intact.
    let back = ReadBack::new(&fx);
    assert_eq!(
        back.read("/boot/efi", "EFI/BOOT/BOOTX64.EFI"),
        "not really a loader"
    );
    assert_eq!(back.ids["/boot/efi"].0, "vfat");
}

#[test]
fn mbr_ext4_raw() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixtures::mbr_ext4(dir.path());
    all_checks(&fx, "/");
}

#[test]
fn lvm_overcloud_layout_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixtures::lvm_qcow2(dir.path());
    all_checks(&fx, "/var");

    // sysprep: machine-id emptied (kept), host keys gone, logs on the var LV
    // emptied (current) or deleted (rotated).
    let work = tempfile::tempdir().unwrap();
    kiln_ok(
        work.path(),
        &["image", "sysprep", "-a", fx.image.to_str().unwrap()],
    );
    assert_nothing_left(work.path());
    let back = ReadBack::new(&fx);
    assert_eq!(back.root("etc/machine-id").metadata().unwrap().len(), 0);
    assert!(!back.root("etc/ssh/ssh_host_ed25519_key").exists());
    assert!(!back.root("etc/ssh/ssh_host_ed25519_key.pub").exists());
    assert!(back.root("etc/ssh/sshd_config").exists());
    assert_eq!(back.at("/var", "log/messages").metadata().unwrap().len(), 0);
    assert!(!back.at("/var", "log/messages.1").exists());
    assert_eq!(
        back.at("/var", "log/apt/history.log")
            .metadata()
            .unwrap()
            .len(),
        0
    );
    // /boot kept what it had.
    assert_eq!(back.read("/boot", "grub/grub.cfg"), "set timeout=5\n");
    // The host knows no vg0 of the test: nothing was activated.
    let dm = std::fs::read_dir("/dev/mapper")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(
        !dm.iter().any(|n| n.to_string_lossy().starts_with("vg0-")),
        "{dm:?}"
    );
}
