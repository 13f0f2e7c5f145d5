//! `kiln image customize / sysprep / inspect` on a real Debian 12 image (the
//! shared build of recipes/debian-vm.yaml), with apt running in the guest
//! against Debian's archive. Every result is read back independently of kiln:
//! debugfs on a `qemu-img convert`ed raw copy, blkid, python3's crypt for the
//! password hash, apt's own package index for the archive's version,
//! `qemu-img check`, and virt-inspector (libguestfs) where it is installed.

#[path = "common/debian.rs"]
mod debian;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const PASSWORD: &str = "kiln-deb-s3cret";
/// A background process started in the guest by --run-command; kiln must not
/// leave it running.
const STRAY_SLEEP: &str = "31337";

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("start command");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kiln(args: &[&str]) -> Output {
    Command::new(KILN).args(args).output().expect("run kiln")
}

fn kiln_ok(args: &[&str]) -> Output {
    run(Command::new(KILN).args(args))
}

fn copy_of_image(dir: &Path) -> PathBuf {
    let copy = dir.join("debian.qcow2");
    std::fs::copy(debian::debian_vm_image(), &copy).unwrap();
    copy
}

fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    stdout(&out).split(' ').next().unwrap().to_string()
}

fn assert_qemu_img_check_clean(image: &Path) {
    let out = run(Command::new("qemu-img").arg("check").arg(image));
    assert!(
        stdout(&out).contains("No errors were found"),
        "{}",
        stdout(&out)
    );
}

/// A partition of the raw copy with the filesystem blkid found on it.
#[derive(Debug)]
struct Partition {
    number: usize,
    offset: u64,
    blkid: BTreeMap<String, String>,
}

/// A raw conversion of an image (made with qemu-img, not kiln), read with
/// debugfs and blkid.
struct RawCopy {
    _dir: tempfile::TempDir,
    raw: PathBuf,
    partitions: Vec<Partition>,
    /// Byte offset of the ext4 root filesystem.
    root: u64,
}

impl RawCopy {
    fn of(image: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("check.raw");
        run(Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(image)
            .arg(&raw));
        let out = run(Command::new("sfdisk").arg("-J").arg(&raw));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut partitions = Vec::new();
        for (i, part) in json["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let offset = part["start"].as_u64().unwrap() * 512;
            // blkid exits 2 when it finds nothing (the BIOS boot partition).
            let out = Command::new("blkid")
                .args(["-p", "-o", "export", "-O"])
                .arg(offset.to_string())
                .arg(&raw)
                .output()
                .unwrap();
            let blkid = stdout(&out)
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            partitions.push(Partition {
                number: i + 1,
                offset,
                blkid,
            });
        }
        let root = partitions
            .iter()
            .find(|p| p.blkid.get("TYPE").map(String::as_str) == Some("ext4"))
            .expect("an ext4 partition")
            .offset;
        RawCopy {
            _dir: dir,
            raw,
            partitions,
            root,
        }
    }

    fn debugfs(&self, request: &str) -> Output {
        run(Command::new("debugfs").arg("-R").arg(request).arg(format!(
            "{}?offset={}",
            self.raw.display(),
            self.root
        )))
    }

    /// `stat` output of a guest path, None when it does not exist.
    fn stat(&self, path: &str) -> Option<String> {
        let out = self.debugfs(&format!("stat {path}"));
        let text = stdout(&out);
        (!text.is_empty()).then_some(text)
    }

    fn exists(&self, path: &str) -> bool {
        self.stat(path).is_some()
    }

    /// A guest file's text; a final symlink is followed (os-release is one)
    /// within the guest.
    fn cat(&self, path: &str) -> String {
        let mut path = path.to_string();
        for _ in 0..8 {
            let Some(target) = self.link_target(&path) else {
                assert!(self.exists(&path), "{path} is not in the guest");
                return stdout(&self.debugfs(&format!("cat {path}")));
            };
            path = match target.strip_prefix('/') {
                Some(_) => target,
                None => format!("{}/{target}", path.rsplit_once('/').unwrap().0),
            };
        }
        panic!("{path}: too many levels of symlinks");
    }

    /// Names in a guest directory, without `.` and `..`.
    fn ls(&self, path: &str) -> BTreeSet<String> {
        // -p: /inode/mode/uid/gid/name/size/ per entry.
        stdout(&self.debugfs(&format!("ls -p {path}")))
            .lines()
            .filter_map(|l| l.split('/').nth(5).map(String::from))
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .collect()
    }

    /// The target of a guest symlink.
    fn link_target(&self, path: &str) -> Option<String> {
        let stat = self.stat(path)?;
        let rest = stat.split("Fast link dest: \"").nth(1)?;
        Some(rest.split('"').next()?.to_string())
    }
}

/// dpkg status stanzas by package name (`Package: X` + fields; continuation
/// lines dropped).
fn dpkg_stanzas(status: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for stanza in status.split("\n\n") {
        let fields: BTreeMap<String, String> = stanza
            .lines()
            .filter(|l| !l.starts_with([' ', '\t']))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        if let Some(name) = fields.get("Package") {
            let key = match fields.get("Architecture") {
                // Multi-Arch: same packages may be installed for two arches.
                Some(a) if out.contains_key(name) => format!("{name}:{a}"),
                _ => name.clone(),
            };
            out.insert(key, fields);
        }
    }
    out
}

fn installed(stanzas: &BTreeMap<String, BTreeMap<String, String>>, name: &str) -> Option<String> {
    let s = stanzas.get(name)?;
    (s.get("Status")? == "install ok installed").then(|| s["Version"].clone())
}

/// Versions of `name` in the package indexes apt downloaded from the archive.
fn archive_versions(guest: &RawCopy, name: &str) -> BTreeSet<String> {
    let lists = "/var/lib/apt/lists";
    let mut out = BTreeSet::new();
    for file in guest.ls(lists) {
        if !file.ends_with("_Packages") {
            continue;
        }
        let index = guest.cat(&format!("{lists}/{file}"));
        for (_, stanza) in dpkg_stanzas(&index) {
            if stanza.get("Package").map(String::as_str) == Some(name) {
                out.insert(stanza["Version"].clone());
            }
        }
    }
    out
}

fn stray_sleep_running() -> bool {
    std::fs::read_dir("/proc").unwrap().any(|e| {
        let Ok(e) = e else { return false };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        cmdline == format!("sleep\0{STRAY_SLEEP}\0").as_bytes()
    })
}

#[test]
fn customize_runs_apt_in_the_guest_and_leaves_nothing_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let image = copy_of_image(dir.path());
    let (tmp_before, resolv_before) = {
        let guest = RawCopy::of(&image);
        let status = dpkg_stanzas(&guest.cat("/var/lib/dpkg/status"));
        assert!(installed(&status, "xauth").is_some(), "fixture lacks xauth");
        assert!(installed(&status, "hello").is_none(), "fixture has hello");
        assert!(installed(&status, "libjq1").is_none(), "fixture has libjq1");
        (guest.ls("/tmp"), guest.stat("/etc/resolv.conf"))
    };
    // The image built by kiln has no resolv.conf; the first operation plants
    // the symlink systemd-resolved guests have, which kiln must set aside
    // while apt runs with the host's, and put back.
    assert_eq!(resolv_before, None);
    let out = kiln(&[
        "image",
        "customize",
        "-a",
        image.to_str().unwrap(),
        "--link",
        "/run/systemd/resolve/stub-resolv.conf:/etc/resolv.conf",
        "--install",
        "hello,jq",
        "--uninstall",
        "xauth",
        "--update",
        "--root-password",
        &format!("password:{PASSWORD}"),
        "--hostname",
        "custdeb",
        "--timezone",
        "Europe/Berlin",
        "--firstboot-install",
        "tree",
        "--run-command",
        &format!(
            "dpkg-query -W -f='${{Version}}' hello > /root/hello-version && \
             apt-cache policy hello > /root/hello-policy && \
             (setsid sleep {STRAY_SLEEP} </dev/null >/dev/null 2>&1 &)"
        ),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stray_sleep_running(),
        "a process started in the guest outlived kiln"
    );
    assert_qemu_img_check_clean(&image);

    let guest = RawCopy::of(&image);
    let status_text = guest.cat("/var/lib/dpkg/status");
    let through_kiln = kiln_ok(&[
        "image",
        "cat",
        image.to_str().unwrap(),
        "/var/lib/dpkg/status",
    ]);
    assert_eq!(stdout(&through_kiln), status_text, "kiln image cat differs");
    let status = dpkg_stanzas(&status_text);

    // hello from the archive, at the version apt's index of the archive has.
    let hello = installed(&status, "hello").expect("hello installed");
    let offered = archive_versions(&guest, "hello");
    assert!(
        offered.contains(&hello),
        "hello {hello} is not a version of the archive's index {offered:?}"
    );
    assert_eq!(guest.cat("/root/hello-version"), hello);
    assert!(
        guest
            .cat("/root/hello-policy")
            .contains(&format!("Installed: {hello}"))
    );
    assert!(
        guest
            .stat("/usr/bin/hello")
            .unwrap()
            .contains("Type: regular")
    );
    // jq came with the libraries it depends on.
    for name in ["jq", "libjq1", "libonig5"] {
        assert!(installed(&status, name).is_some(), "{name} not installed");
    }
    assert!(guest.exists("/usr/bin/jq"));
    // xauth is gone (it has no conffiles, so dpkg forgets it entirely).
    assert!(
        installed(&status, "xauth").is_none(),
        "xauth still installed"
    );
    assert!(!guest.exists("/usr/bin/xauth"));

    // Debian 12's libxcrypt defaults to yescrypt, so does virt-customize.
    let shadow = guest.cat("/etc/shadow");
    let hash = shadow
        .lines()
        .find_map(|l| l.strip_prefix("root:"))
        .and_then(|rest| rest.split(':').next())
        .unwrap()
        .to_string();
    assert!(
        hash.starts_with("$y$"),
        "root's hash is not yescrypt: {hash}"
    );
    run(Command::new("python3").args(["-W", "ignore", "-c"]).arg(format!(
        "import crypt,sys; sys.exit(0 if crypt.crypt('{PASSWORD}', '{hash}') == '{hash}' else 1)"
    )));

    assert_eq!(guest.cat("/etc/hostname").trim(), "custdeb");
    assert_eq!(guest.cat("/etc/timezone").trim(), "Europe/Berlin");
    assert_eq!(
        guest.link_target("/etc/localtime").as_deref(),
        Some("/usr/share/zoneinfo/Europe/Berlin")
    );

    let scripts = guest.ls("/usr/lib/kiln-firstboot/scripts");
    assert_eq!(scripts.len(), 1, "{scripts:?}");
    let script = guest.cat(&format!(
        "/usr/lib/kiln-firstboot/scripts/{}",
        scripts.first().unwrap()
    ));
    assert!(script.contains("install 'tree'"), "{script}");
    assert!(
        installed(&status, "tree").is_none(),
        "tree is for first boot"
    );
    assert!(guest.exists("/etc/systemd/system/multi-user.target.wants/kiln-firstboot.service"));

    // The guest's resolv.conf is its own again; nothing of kiln's sandbox stays.
    assert_eq!(
        guest.link_target("/etc/resolv.conf").as_deref(),
        Some("/run/systemd/resolve/stub-resolv.conf")
    );
    assert!(!guest.exists("/etc/resolv.conf.ORIG"));
    assert_eq!(guest.ls("/tmp"), tmp_before);

    // What apt itself leaves, as it does under virt-customize: the indexes of
    // `apt-get update` in /var/lib/apt/lists and the downloaded .debs in
    // /var/cache/apt/archives (sysprep's package-manager-cache removes those).
    // Nothing half-downloaded stays.
    assert!(guest.ls("/var/lib/apt/lists/partial").is_empty());
    assert!(guest.ls("/var/cache/apt/archives/partial").is_empty());
    assert!(
        guest
            .ls("/var/cache/apt/archives")
            .contains(&format!("hello_{hello}_amd64.deb"))
    );
}

#[test]
fn install_of_a_missing_package_fails_naming_it_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let image = copy_of_image(dir.path());
    let before = sha256(&image);
    let missing = "kiln-no-such-package-e4a1";
    let out = kiln(&[
        "image",
        "customize",
        "-a",
        image.to_str().unwrap(),
        "--hostname",
        "changed-first",
        "--install",
        missing,
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(missing), "{stderr}");
    // apt's own complaint comes through.
    assert!(stderr.contains("Unable to locate package"), "{stderr}");
    assert_eq!(
        sha256(&image),
        before,
        "a failed customize changed the image"
    );
}

#[test]
fn sysprep_resets_the_debian_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = copy_of_image(dir.path());
    let image_arg = image.to_str().unwrap();
    // State a used machine has: a machine id, a package cache, logs.
    kiln_ok(&[
        "image",
        "customize",
        "-a",
        image_arg,
        "--write",
        "/etc/machine-id:4f1c2a7e9d3b4c5a8e6f7a8b9c0d1e2f",
        "--write",
        "/var/cache/apt/archives/hello_2.10-3_amd64.deb:not really a deb",
        "--write",
        "/var/cache/apt/pkgcache.bin:cache",
        "--write",
        "/var/log/apt/history.log:Start-Date: 2026-01-01",
        "--write",
        "/var/log/dpkg.log.1:rotated",
        "--write",
        "/root/.bash_history:ls",
    ]);
    let paths_to_go = [
        "/var/cache/apt/archives/hello_2.10-3_amd64.deb",
        "/var/cache/apt/pkgcache.bin",
        "/var/log/dpkg.log.1",
        "/root/.bash_history",
    ];
    {
        let guest = RawCopy::of(&image);
        assert!(!guest.cat("/etc/machine-id").is_empty());
        let keys: Vec<_> = guest
            .ls("/etc/ssh")
            .into_iter()
            .filter(|n| n.starts_with("ssh_host_"))
            .collect();
        assert!(!keys.is_empty(), "the fixture has no ssh host keys");
        assert!(!guest.cat("/var/log/dpkg.log").is_empty());
        for p in paths_to_go {
            assert!(guest.exists(p), "{p} not planted");
        }
    }
    kiln_ok(&["image", "sysprep", "-a", image_arg]);
    assert_qemu_img_check_clean(&image);
    let guest = RawCopy::of(&image);
    // machine-id emptied, not deleted: systemd makes a new one at boot.
    let machine_id = guest.stat("/etc/machine-id").expect("machine-id kept");
    assert!(machine_id.contains("Type: regular"), "{machine_id}");
    assert!(machine_id.contains("Size: 0"), "{machine_id}");
    let keys: Vec<_> = guest
        .ls("/etc/ssh")
        .into_iter()
        .filter(|n| n.starts_with("ssh_host_"))
        .collect();
    assert!(keys.is_empty(), "ssh host keys left: {keys:?}");
    assert!(guest.exists("/etc/ssh/sshd_config"));
    for p in paths_to_go {
        assert!(!guest.exists(p), "{p} left by sysprep");
    }
    for log in ["/var/log/dpkg.log", "/var/log/apt/history.log"] {
        assert_eq!(guest.cat(log), "", "{log} not emptied");
    }
}

/// `kiln image inspect --json` of `image`: its single OS.
fn kiln_inspect(image: &Path) -> serde_json::Value {
    let out = kiln_ok(&["image", "inspect", "--json", image.to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    match json {
        serde_json::Value::Array(mut oses) => {
            assert_eq!(oses.len(), 1, "one OS expected");
            oses.remove(0)
        }
        os => os,
    }
}

fn os_release_value(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

fn str_field<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// kiln's packages as (name, dpkg version, arch).
fn kiln_packages(os: &serde_json::Value) -> BTreeSet<(String, String, String)> {
    os["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                str_field(p, "name").to_string(),
                str_field(p, "version").to_string(),
                str_field(p, "arch").to_string(),
            )
        })
        .collect()
}

/// kiln's mountpoints with the fstab device resolved to kiln's own device name
/// through its filesystem list.
fn kiln_mounts(os: &serde_json::Value) -> BTreeSet<(String, String)> {
    let filesystems = os["filesystems"].as_array().unwrap();
    os["mountpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let spec = str_field(m, "device");
            let uuid = spec.strip_prefix("UUID=").unwrap_or(spec);
            let device = filesystems
                .iter()
                .find(|f| f["uuid"].as_str() == Some(uuid))
                .map_or(spec, |f| str_field(f, "device"));
            (str_field(m, "mountpoint").to_string(), device.to_string())
        })
        .collect()
}

#[test]
fn inspect_agrees_with_the_image_contents() {
    let image = debian::debian_vm_image();
    let before = sha256(&image);
    let os = kiln_inspect(&image);
    // inspect only reads (and the shared fixture must stay as built).
    assert_eq!(
        sha256(&image),
        before,
        "kiln image inspect changed the image"
    );
    let guest = RawCopy::of(&image);

    let os_release = guest.cat("/etc/os-release");
    assert_eq!(
        str_field(&os, "distro"),
        os_release_value(&os_release, "ID")
    );
    assert_eq!(str_field(&os, "distro"), "debian");
    assert_eq!(
        str_field(&os, "product_name"),
        os_release_value(&os_release, "PRETTY_NAME")
    );
    // os-release says "12"; the point release is in /etc/debian_version.
    let point = guest.cat("/etc/debian_version").trim().to_string();
    let (major, minor) = point.split_once('.').expect("debian_version is M.N");
    assert_eq!(major, os_release_value(&os_release, "VERSION_ID"));
    assert_eq!(major, "12");
    assert_eq!(str_field(&os, "version"), point);
    assert_eq!(os["major_version"].as_u64(), major.parse().ok());
    assert_eq!(os["minor_version"].as_u64(), minor.parse().ok());
    assert_eq!(
        str_field(&os, "hostname"),
        guest.cat("/etc/hostname").trim()
    );
    // e_machine of the guest's /bin/sh target: 62 is EM_X86_64.
    let elf = dir_dump(&guest, "/usr/bin/dash");
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 62);
    assert_eq!(str_field(&os, "arch"), "x86_64");
    assert_eq!(str_field(&os, "package_format"), "deb");
    assert!(guest.exists("/usr/bin/apt-get"));
    assert_eq!(str_field(&os, "package_management"), "apt");

    let status = dpkg_stanzas(&guest.cat("/var/lib/dpkg/status"));
    let expected: BTreeSet<_> = status
        .values()
        .filter(|s| {
            s.get("Status")
                .is_some_and(|v| v.ends_with(" ok installed"))
        })
        .map(|s| {
            (
                s["Package"].clone(),
                s["Version"].clone(),
                s["Architecture"].clone(),
            )
        })
        .collect();
    let packages = kiln_packages(&os);
    assert!(expected.len() > 100, "{} packages", expected.len());
    assert_eq!(os["packages"].as_array().unwrap().len(), expected.len());
    assert_eq!(packages, expected);

    // Filesystems as blkid sees them; kiln names partition N /dev/sdaN.
    let blkid: BTreeSet<_> = guest
        .partitions
        .iter()
        .filter_map(|p| {
            Some((
                format!("/dev/sda{}", p.number),
                p.blkid.get("TYPE")?.clone(),
                p.blkid.get("LABEL").cloned(),
                p.blkid.get("UUID").cloned(),
            ))
        })
        .collect();
    let from_kiln = kiln_filesystems(&os);
    assert_eq!(from_kiln, blkid);
    // Mountpoints as fstab has them, every device one of the image's.
    let fstab: BTreeSet<_> = guest
        .cat("/etc/fstab")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| {
            let f: Vec<_> = l.split_whitespace().collect();
            (f[1].to_string(), f[0].to_string(), f[2].to_string())
        })
        .collect();
    let mounts: BTreeSet<_> = os["mountpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                str_field(m, "mountpoint").to_string(),
                str_field(m, "device").to_string(),
                str_field(m, "fstype").to_string(),
            )
        })
        .collect();
    assert_eq!(mounts, fstab);
    for (mountpoint, device) in kiln_mounts(&os) {
        assert!(
            device.starts_with("/dev/sda"),
            "{mountpoint}: {device} is none of the image's filesystems"
        );
    }
    assert_eq!(str_field(&os, "root"), "/dev/sda3");
}

/// A guest file's bytes (debugfs dump to a host file).
fn dir_dump(guest: &RawCopy, path: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dumped");
    guest.debugfs(&format!("dump {path} {}", out.display()));
    std::fs::read(&out).unwrap_or_else(|e| panic!("dumping {path}: {e}"))
}

/// virt-inspector's XML as JSON (python3's XML parser): the first OS, with
/// applications, mountpoints and filesystems as lists of objects.
fn virt_inspector(image: &Path) -> serde_json::Value {
    let out = run(Command::new("virt-inspector")
        .env("LIBGUESTFS_BACKEND", "direct")
        // /dev/kvm exists on this machine but KVM does not work; TCG does.
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
        .args(["--no-icon", "--format=qcow2", "-a"])
        .arg(image));
    let script = r#"
import json, sys, xml.etree.ElementTree as ET
os_ = ET.fromstring(sys.stdin.read()).find("operatingsystem")
out = {c.tag: c.text for c in os_ if len(c) == 0}
out["applications"] = [{c.tag: c.text for c in a} for a in os_.find("applications")]
out["mountpoints"] = [[m.text, m.get("dev")] for m in os_.find("mountpoints")]
out["filesystems"] = [dict({c.tag: c.text for c in f}, dev=f.get("dev")) for f in os_.find("filesystems")]
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let parsed = child.wait_with_output().unwrap();
    assert!(parsed.status.success(), "virt-inspector XML not parsed");
    serde_json::from_slice(&parsed.stdout).unwrap()
}

/// dpkg's version string from libguestfs' split: `[epoch:]version[-release]`.
/// libguestfs splits at the first '-' of the upstream part, dpkg's revision
/// starts after the last (libedit2 `3.1-20221030-2`), so rejoining is the
/// only comparison that is exact for both.
fn dpkg_version(app: &serde_json::Value) -> String {
    let mut v = String::new();
    if let Some(epoch) = app["epoch"].as_str().filter(|e| *e != "0") {
        v.push_str(epoch);
        v.push(':');
    }
    v.push_str(str_field(app, "version"));
    if let Some(release) = app["release"].as_str().filter(|r| !r.is_empty()) {
        v.push('-');
        v.push_str(release);
    }
    v
}

#[test]
fn inspect_agrees_with_virt_inspector() {
    let found = Command::new("sh")
        .args(["-c", "command -v virt-inspector"])
        .output()
        .unwrap();
    if !found.status.success() {
        eprintln!("virt-inspector is not installed (libguestfs-tools): comparison skipped");
        return;
    }
    let image = debian::debian_vm_image();
    let os = kiln_inspect(&image);
    let theirs = virt_inspector(&image);
    for key in [
        "root",
        "distro",
        "arch",
        "hostname",
        "package_format",
        "package_management",
    ] {
        assert_eq!(str_field(&os, key), str_field(&theirs, key), "{key}");
    }
    for key in ["major_version", "minor_version"] {
        assert_eq!(
            os[key].as_u64().map(|n| n.to_string()).as_deref(),
            theirs[key].as_str(),
            "{key}"
        );
    }
    // libguestfs ignores Debian's os-release (it lacks the point release) and
    // names the product by /etc/debian_version alone ("12.15"); kiln keeps the
    // version from there but the product name from os-release's PRETTY_NAME
    // ("Debian GNU/Linux 12 (bookworm)"), which is what the OS calls itself.
    assert_eq!(
        str_field(&theirs, "product_name"),
        str_field(&os, "version")
    );
    assert!(
        str_field(&os, "product_name").starts_with("Debian GNU/Linux 12"),
        "{}",
        str_field(&os, "product_name")
    );

    let their_packages: BTreeSet<_> = theirs["applications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                str_field(a, "name").to_string(),
                dpkg_version(a),
                str_field(a, "arch").to_string(),
            )
        })
        .collect();
    let ours = kiln_packages(&os);
    assert_eq!(
        theirs["applications"].as_array().unwrap().len(),
        os["packages"].as_array().unwrap().len()
    );
    assert_eq!(ours, their_packages);

    let their_mounts: BTreeSet<_> = theirs["mountpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m[0].as_str().unwrap().to_string(),
                m[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(kiln_mounts(&os), their_mounts);
    let their_filesystems: BTreeSet<_> = theirs["filesystems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                str_field(f, "dev").to_string(),
                str_field(f, "type").to_string(),
                f["label"].as_str().map(String::from),
                f["uuid"].as_str().map(String::from),
            )
        })
        .collect();
    let ours = kiln_filesystems(&os);
    assert_eq!(ours, their_filesystems);
}

#[test]
fn ls_lists_what_debugfs_lists_and_refuses_what_is_no_directory() {
    let image = debian::debian_vm_image();
    let image_arg = image.to_str().unwrap();
    let guest = RawCopy::of(&image);
    for dir in ["/", "/etc/ssh", "/var/log"] {
        let listed = kiln_ok(&["image", "ls", image_arg, dir]);
        let ours: BTreeSet<String> = stdout(&listed).lines().map(String::from).collect();
        assert_eq!(ours, guest.ls(dir), "{dir}");
    }
    for (path, complaint) in [
        ("/etc/no-such-dir", "does not exist"),
        ("/etc/hostname", "is not a directory"),
    ] {
        let out = kiln(&["image", "ls", image_arg, path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "ls {path} succeeded");
        assert!(stderr.contains(&format!("{path} {complaint}")), "{stderr}");
    }
}

/// (device, type, label, UUID) of every filesystem `kiln image inspect --json`
/// reports for one OS.
fn kiln_filesystems(
    os: &serde_json::Value,
) -> BTreeSet<(String, String, Option<String>, Option<String>)> {
    os["filesystems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                str_field(f, "device").to_string(),
                str_field(f, "fstype").to_string(),
                f["label"].as_str().map(String::from),
                f["uuid"].as_str().map(String::from),
            )
        })
        .collect()
}
