//! `kiln initrd add --package`: package payloads read by kiln compared with what
//! the real tools (dpkg-deb, rpmbuild/rpm2cpio/cpio, rpm -qp) see in packages
//! they built at test time; corrupt packages give clean errors.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln::initrd::package::{
    PackageError, PackageKind, package_contents, package_info, package_payload,
};
use kiln::initrd::staging::{Content, Staged, StagedKind};

const KVER: &str = "6.1.0-kiln";

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Pseudo-random bytes (xorshift), different per call site seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn write_mode(path: &Path, data: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A fake out-of-tree driver package tree under `root`.
fn driver_tree(root: &Path, seed: u64) {
    let upd = root.join(format!("lib/modules/{KVER}/updates"));
    write_mode(&upd.join("drv.ko"), &noise(seed, 150_000), 0o644);
    symlink("drv.ko", upd.join("drv-alias.ko")).unwrap();
    write_mode(
        &root.join("usr/share/doc/kiln-drv/README"),
        b"kiln test driver\n",
        0o644,
    );
    write_mode(&root.join("usr/bin/drvtool"), &noise(seed + 1, 3000), 0o755);
    fs::hard_link(root.join("usr/bin/drvtool"), root.join("usr/bin/drvtool2")).unwrap();
    write_mode(&root.join("etc/drv/secret.conf"), b"key=1\n", 0o600);
    write_mode(&root.join("etc/drv/empty.conf"), b"", 0o644);
    fs::create_dir_all(root.join("usr/share/kiln-drv/empty")).unwrap();
    for d in ["lib", "usr", "etc", "usr/share/kiln-drv/empty", "etc/drv"] {
        fs::set_permissions(root.join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// What a tool extracted: path -> (type, mode, content or link target).
#[derive(Clone, PartialEq, Eq)]
enum Node {
    File(u32, Vec<u8>),
    Dir(u32),
    Link(String),
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::File(mode, data) => write!(
                f,
                "File({mode:o}, {} bytes, starting {:02x?})",
                data.len(),
                &data[..data.len().min(8)]
            ),
            Node::Dir(mode) => write!(f, "Dir({mode:o})"),
            Node::Link(t) => write!(f, "Link({t:?})"),
        }
    }
}

fn staged_map(items: &[Staged]) -> BTreeMap<String, Node> {
    let mut m = BTreeMap::new();
    for s in items {
        let node = match &s.kind {
            StagedKind::File(Content::Bytes(b)) => Node::File(s.mode, b.clone()),
            StagedKind::File(Content::Host(p)) => panic!("package item read from host {p:?}"),
            StagedKind::Dir => Node::Dir(s.mode),
            StagedKind::Symlink(t) => Node::Link(t.clone()),
        };
        assert!(
            m.insert(s.path.clone(), node).is_none(),
            "duplicate {}",
            s.path
        );
    }
    m
}

/// Walk an extracted tree.
fn disk_map(root: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
            let mode = md.mode() & 0o7777;
            if md.file_type().is_symlink() {
                out.insert(
                    rel,
                    Node::Link(fs::read_link(&p).unwrap().display().to_string()),
                );
            } else if md.is_dir() {
                out.insert(rel, Node::Dir(mode));
                walk(root, &p, out);
            } else {
                assert!(md.is_file(), "{p:?}");
                out.insert(rel, Node::File(mode, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Kiln's list must be exactly the archive's list of names (`listed`), and every
/// item must match the extracted tree in type, mode, content and link target;
/// every extracted file and symlink must be in kiln's list.
fn assert_matches(kiln: &[Staged], listed: &BTreeSet<String>, extracted: &Path) {
    let ours = staged_map(kiln);
    let keys: BTreeSet<String> = ours.keys().cloned().collect();
    assert_eq!(&keys, listed, "kiln's paths differ from the tool's listing");
    let disk = disk_map(extracted);
    for (path, node) in &ours {
        let on_disk = disk
            .get(path)
            .unwrap_or_else(|| panic!("{path} listed by kiln, not extracted"));
        assert!(
            node == on_disk,
            "{path}: kiln {node:?} != extracted {on_disk:?}"
        );
    }
    for (path, node) in &disk {
        if !matches!(node, Node::Dir(_)) {
            assert!(
                ours.contains_key(path),
                "{path} extracted but not staged by kiln"
            );
        }
    }
    assert!(
        kiln.iter()
            .all(|s| s.path.starts_with('/') && !s.path.contains("/./"))
    );
}

fn tool_name(raw: &str) -> Option<String> {
    let p = raw.trim_start_matches('.').trim_end_matches('/');
    (!p.is_empty()).then(|| p.to_string())
}

// ---------------------------------------------------------------- deb

fn build_deb(dir: &Path, compression: &str) -> PathBuf {
    let root = dir.join(format!("root-{compression}"));
    driver_tree(&root, 7);
    let debian = root.join("DEBIAN");
    fs::create_dir_all(&debian).unwrap();
    fs::set_permissions(&debian, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        debian.join("control"),
        "Package: kiln-drv\nVersion: 1:2.5-1\nArchitecture: amd64\nMaintainer: kiln <kiln@example.org>\nDescription: test driver\n a kmod for tests\n",
    )
    .unwrap();
    let out = dir.join(format!("kiln-drv-{compression}.deb"));
    run(Command::new("dpkg-deb")
        .arg("--root-owner-group")
        .arg(format!("-Z{compression}"))
        .arg("--build")
        .arg(&root)
        .arg(&out)
        .stdout(Stdio::null()));
    out
}

fn dpkg_listing(deb: &Path) -> BTreeSet<String> {
    let out = String::from_utf8(run(Command::new("dpkg-deb").arg("-c").arg(deb))).unwrap();
    out.lines()
        .filter_map(|l| {
            // perms owner size date time name [-> target | link to target]
            let name = l.split_whitespace().nth(5)?;
            tool_name(name)
        })
        .collect()
}

fn check_deb(deb: &Path, dir: &Path) {
    let items = package_payload(deb).unwrap_or_else(|e| panic!("{e}"));
    let x = dir.join(format!("x-{}", deb.file_name().unwrap().to_string_lossy()));
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&x));
    assert_matches(&items, &dpkg_listing(deb), &x);
    assert!(items.iter().all(|s| s.uid == 0 && s.gid == 0));
    // Spot checks that do not depend on the oracle.
    let m = staged_map(&items);
    assert_eq!(
        m[&format!("/lib/modules/{KVER}/updates/drv.ko")],
        Node::File(0o644, noise(7, 150_000))
    );
    assert_eq!(
        m["/etc/drv/secret.conf"],
        Node::File(0o600, b"key=1\n".to_vec())
    );
    assert_eq!(m["/usr/bin/drvtool"], m["/usr/bin/drvtool2"]);
    assert_eq!(m["/usr/share/kiln-drv/empty"], Node::Dir(0o755));

    let info = package_info(deb).unwrap();
    let field = |f: &str| {
        String::from_utf8(run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(f)))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(info.kind, PackageKind::Deb);
    assert_eq!(info.name, field("Package"));
    assert_eq!(info.version, field("Version"));
    assert_eq!(info.arch, field("Architecture"));
}

#[test]
fn deb_payloads_match_dpkg_deb() {
    let dir = tempfile::tempdir().unwrap();
    for z in ["gzip", "xz", "zstd", "none"] {
        let deb = build_deb(dir.path(), z);
        check_deb(&deb, dir.path());
    }
}

/// A .deb whose data.tar is bzip2-compressed (dpkg-deb reads but no longer
/// builds those): re-wrap the members of a -Znone package.
#[test]
fn deb_with_bzip2_data_matches_dpkg_deb() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(dir.path(), "none");
    let members = ar_read(&fs::read(&deb).unwrap());
    let mut out = Vec::new();
    for (name, data) in members {
        if name == "data.tar" {
            let mut bz = Command::new("bzip2")
                .arg("-c")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("bzip2");
            bz.stdin.take().unwrap().write_all(&data).unwrap();
            let z = bz.wait_with_output().unwrap();
            assert!(z.status.success());
            out.push(("data.tar.bz2".to_string(), z.stdout));
        } else {
            out.push((name, data));
        }
    }
    let bzdeb = dir.path().join("bz.deb");
    fs::write(&bzdeb, ar_write(&out)).unwrap();
    check_deb(&bzdeb, dir.path());
}

/// Minimal ar reader/writer for building broken packages (test-side, independent
/// of kiln's parser).
fn ar_read(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    assert_eq!(&bytes[..8], b"!<arch>\n");
    let mut pos = 8;
    let mut out = Vec::new();
    while pos + 60 <= bytes.len() {
        let h = &bytes[pos..pos + 60];
        let name = String::from_utf8_lossy(&h[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: usize = String::from_utf8_lossy(&h[48..58]).trim().parse().unwrap();
        out.push((name, bytes[pos + 60..pos + 60 + size].to_vec()));
        pos += 60 + size + (size & 1);
    }
    out
}

fn ar_write(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = b"!<arch>\n".to_vec();
    for (name, data) in members {
        let h = format!(
            "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
            name,
            0,
            0,
            0,
            100644,
            data.len()
        );
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        if !data.len().is_multiple_of(2) {
            out.push(b'\n');
        }
    }
    out
}

/// A tar with raw names written byte for byte (so "../evil" survives).
fn raw_tar(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, ty, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(*ty);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn hand_deb(version: &[u8], data_tar: Vec<u8>) -> Vec<u8> {
    let control = raw_tar(&[(
        "./control",
        tar::EntryType::Regular,
        b"Package: evil\nVersion: 1\nArchitecture: all\n",
    )]);
    ar_write(&[
        ("debian-binary".into(), version.to_vec()),
        ("control.tar".into(), control),
        ("data.tar".into(), data_tar),
    ])
}

fn err_of(bytes: &[u8], dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    let err = package_payload(&p).expect_err(name);
    let msg = err.to_string();
    assert!(msg.contains(name), "error does not name the file: {msg}");
    msg
}

#[test]
fn corrupt_debs_give_clean_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let evil = hand_deb(
        b"2.0\n",
        raw_tar(&[
            ("./lib/ok.ko", tar::EntryType::Regular, b"x"),
            ("./../evil", tar::EntryType::Regular, b"x"),
        ]),
    );
    let msg = err_of(&evil, d, "evil.deb");
    assert!(msg.contains("..") && msg.contains("evil"), "{msg}");
    // The same archive with a harmless name is accepted (the test can fail).
    let fine = hand_deb(
        b"2.0\n",
        raw_tar(&[("./lib/ok.ko", tar::EntryType::Regular, b"x")]),
    );
    fs::write(d.join("fine.deb"), &fine).unwrap();
    assert_eq!(package_payload(&d.join("fine.deb")).unwrap().len(), 1);

    let v3 = hand_deb(b"3.0\n", raw_tar(&[("./a", tar::EntryType::Regular, b"x")]));
    let msg = err_of(&v3, d, "v3.deb");
    assert!(
        msg.contains("3.0") && msg.contains("debian-binary"),
        "{msg}"
    );

    let dev = hand_deb(
        b"2.0\n",
        raw_tar(&[("./dev/console", tar::EntryType::Char, b"")]),
    );
    let msg = err_of(&dev, d, "dev.deb");
    assert!(
        msg.contains("character device") && msg.contains("/dev/console"),
        "{msg}"
    );

    // A real package cut short: the last member's size runs past the end.
    let real = fs::read(build_deb(d, "xz")).unwrap();
    let msg = err_of(&real[..real.len() - 100], d, "cut.deb");
    assert!(
        msg.contains("data.tar.xz") && msg.contains("remain"),
        "{msg}"
    );

    // Garbage after a valid xz magic in data.tar.xz.
    let mut members = ar_read(&real);
    let data = &mut members.iter_mut().find(|m| m.0 == "data.tar.xz").unwrap().1;
    let keep = 16.min(data.len());
    let len = data.len();
    data[keep..].copy_from_slice(&noise(99, len - keep));
    let msg = err_of(&ar_write(&members), d, "garbage.deb");
    assert!(msg.contains("data.tar.xz"), "{msg}");
    // Data that is not what its name says.
    let data = &mut members.iter_mut().find(|m| m.0 == "data.tar.xz").unwrap().1;
    data[..6].copy_from_slice(b"hello!");
    let msg = err_of(&ar_write(&members), d, "notxz.deb");
    assert!(msg.contains("should be xz"), "{msg}");

    // Not a package at all.
    let msg = err_of(b"#!/bin/sh\necho hi\n", d, "script.deb");
    assert!(msg.contains("not an RPM or .deb"), "{msg}");
}

// ---------------------------------------------------------------- rpm

fn build_rpm(dir: &Path, payload: &str) -> PathBuf {
    let tag = payload.replace('.', "_");
    let src = dir.join(format!("src-{tag}"));
    driver_tree(&src, 11);
    write_mode(&src.join("etc/drv/grouped.conf"), b"g\n", 0o640);
    let top = dir.join(format!("top-{tag}"));
    let spec = dir.join(format!("drv-{tag}.spec"));
    fs::write(
        &spec,
        format!(
            r#"Name: kiln-drv
Version: 1.2
Release: 3.el9
Epoch: 2
Summary: kiln test driver
License: MIT
AutoReqProv: no
%global debug_package %{{nil}}
%define __os_install_post %{{nil}}
%define _build_id_links none
%define _binary_payload {payload}
%description
A fake kmod package built by kiln's tests.
%install
mkdir -p %{{buildroot}}
cp -a {src}/. %{{buildroot}}/
%files
%defattr(-,root,root,-)
%dir /lib/modules/{KVER}/updates
/lib/modules/{KVER}/updates/drv.ko
/lib/modules/{KVER}/updates/drv-alias.ko
/usr/share/doc/kiln-drv/README
/usr/bin/drvtool
/usr/bin/drvtool2
%attr(0600,root,root) /etc/drv/secret.conf
/etc/drv/empty.conf
%attr(0640,root,daemon) /etc/drv/grouped.conf
%dir /usr/share/kiln-drv/empty
"#,
            src = src.display()
        ),
    )
    .unwrap();
    run(Command::new("rpmbuild")
        .arg("-bb")
        .arg("--nodeps")
        .arg("--quiet")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .arg(&spec)
        .stdout(Stdio::null()));
    let rpms: Vec<PathBuf> = fs::read_dir(top.join("RPMS"))
        .unwrap()
        .flat_map(|a| fs::read_dir(a.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(rpms.len(), 1, "{rpms:?}");
    rpms[0].clone()
}

fn rpm2cpio(rpm: &Path, cpio_args: &[&str], cwd: &Path) -> Vec<u8> {
    let cpio = run(Command::new("rpm2cpio").arg(rpm));
    let mut child = Command::new("cpio")
        .args(cpio_args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cpio");
    child.stdin.take().unwrap().write_all(&cpio).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "cpio {cpio_args:?}");
    out.stdout
}

fn check_rpm(rpm: &Path, dir: &Path, compressor: &str) {
    let used = run(Command::new("rpm")
        .args(["-qp", "--qf", "%{PAYLOADCOMPRESSOR}"])
        .arg(rpm));
    assert_eq!(
        String::from_utf8_lossy(&used),
        compressor,
        "rpmbuild ignored the payload setting"
    );
    let payload = package_contents(rpm, 1 << 30).unwrap_or_else(|e| panic!("{e}"));
    let x = dir.join(format!("x-{}", rpm.file_name().unwrap().to_string_lossy()));
    fs::create_dir_all(&x).unwrap();
    rpm2cpio(rpm, &["-idm", "--quiet", "--no-absolute-filenames"], &x);
    let listed: BTreeSet<String> = String::from_utf8(rpm2cpio(rpm, &["-t", "--quiet"], &x))
        .unwrap()
        .lines()
        .filter_map(tool_name)
        .collect();
    assert_matches(&payload.items, &listed, &x);

    let m = staged_map(&payload.items);
    assert_eq!(
        m[&format!("/lib/modules/{KVER}/updates/drv.ko")],
        Node::File(0o644, noise(11, 150_000))
    );
    assert_eq!(m["/usr/bin/drvtool"], m["/usr/bin/drvtool2"]);
    assert_eq!(
        m["/etc/drv/grouped.conf"],
        Node::File(0o640, b"g\n".to_vec())
    );
    assert!(payload.items.iter().all(|s| s.uid == 0 && s.gid == 0));
    assert!(
        payload
            .notes
            .iter()
            .any(|n| n.contains("/etc/drv/grouped.conf") && n.contains("daemon")),
        "{:?}",
        payload.notes
    );
    assert_eq!(payload.notes.len(), 1, "{:?}", payload.notes);

    let info = package_info(rpm).unwrap();
    let q = String::from_utf8(run(Command::new("rpm")
        .arg("-qp")
        .arg("--qf")
        .arg("%{NAME}\n%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\n%{ARCH}\n")
        .arg(rpm)))
    .unwrap();
    let q: Vec<&str> = q.lines().collect();
    assert_eq!(info.kind, PackageKind::Rpm);
    assert_eq!([info.name.as_str(), &info.version, &info.arch], q[..3]);
}

#[test]
fn rpm_payloads_match_rpm2cpio() {
    let dir = tempfile::tempdir().unwrap();
    for (payload, compressor) in [
        ("w9.gzdio", "gzip"),
        ("w6.xzdio", "xz"),
        ("w19.zstdio", "zstd"),
        ("w9.bzdio", "bzip2"),
        ("w6.lzdio", "lzma"),
    ] {
        let rpm = build_rpm(dir.path(), payload);
        check_rpm(&rpm, dir.path(), compressor);
    }
}

#[test]
fn corrupt_rpms_give_clean_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rpm = fs::read(build_rpm(d, "w6.xzdio")).unwrap();

    let msg = err_of(&rpm[..96], d, "lead-only.rpm");
    assert!(msg.contains("signature header"), "{msg}");
    let msg = err_of(&rpm[..50], d, "half-lead.rpm");
    assert!(msg.contains("lead"), "{msg}");
    let msg = err_of(&rpm[..96 + 40], d, "mid-sig.rpm");
    assert!(
        msg.contains("signature header") && msg.contains("ends early"),
        "{msg}"
    );
    // Somewhere inside the main header (a few KiB in).
    let msg = err_of(&rpm[..3000], d, "mid-header.rpm");
    assert!(
        msg.contains("header") && msg.contains("ends early"),
        "{msg}"
    );
    let msg = err_of(&rpm[..rpm.len() - 20_000], d, "mid-payload.rpm");
    assert!(msg.contains("payload"), "{msg}");

    let mut bad = rpm.clone();
    bad[96] ^= 0xff;
    let msg = err_of(&bad, d, "bad-sig-magic.rpm");
    assert!(
        msg.contains("signature header at offset 96") && msg.contains("magic"),
        "{msg}"
    );

    let mut bad = rpm.clone();
    bad[0] = 0;
    let msg = err_of(&bad, d, "bad-lead.rpm");
    assert!(msg.contains("not an RPM or .deb"), "{msg}");

    // Garbage in the middle of the compressed payload.
    let mut bad = rpm.clone();
    let n = bad.len();
    bad[n - 60_000..n - 1000].copy_from_slice(&noise(5, 59_000));
    let msg = err_of(&bad, d, "garbage.rpm");
    assert!(msg.contains("payload") && msg.contains("xz"), "{msg}");

    // The payload bound is enforced.
    let p = d.join("ok.rpm");
    fs::write(&p, &rpm).unwrap();
    let err = package_contents(&p, 100_000).unwrap_err();
    assert!(matches!(err, PackageError::Rpm { .. }));
    assert!(err.to_string().contains("limit"), "{err}");
    assert!(package_contents(&p, 1 << 30).is_ok());
}

/// Bytes flipped all over real packages: every result is Ok or a clean Err.
#[test]
fn mutated_packages_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let deb = fs::read(build_deb(d, "gzip")).unwrap();
    let rpm = fs::read(build_rpm(d, "w9.gzdio")).unwrap();
    let p = d.join("mutant");
    let mut errors = 0;
    for (i, orig) in [deb, rpm].iter().enumerate() {
        let head = orig.len().min(4096);
        for round in 0..150u64 {
            let mut m = orig.clone();
            let r = noise(round * 7 + i as u64, 16);
            for k in 0..4 {
                // Mostly the structured front (lead, headers, ar, tar headers).
                let span = if k % 2 == 0 { head } else { m.len() };
                let pos =
                    u32::from_le_bytes([r[4 * k], r[4 * k + 1], r[4 * k + 2], 0]) as usize % span;
                m[pos] ^= r[4 * k + 3] | 1;
            }
            fs::write(&p, &m).unwrap();
            if package_contents(&p, 16 << 20).is_err() {
                errors += 1;
            }
            let _ = package_info(&p);
        }
    }
    assert!(errors > 0);
}
