//! `--module` and `--firmware` against kmod's own tools on the Debian kernel's
//! modules (linux-image-amd64): modprobe --show-depends + modinfo softdeps are the
//! oracle for the set, and modprobe on a root made only of the staged items
//! proves the regenerated indexes work.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::initrd::firmware::firmware;
use kiln::initrd::modinfo;
use kiln::initrd::modules::{ModuleError, default_kernel, modules_with_deps, resolve};
use kiln::initrd::staging::{Content, StagedKind};

use crate::util::{materialize, run};

const MODULES: [&str; 9] = [
    "ext4",
    "btrfs",
    "xfs",
    "nvme",
    "virtio_net",
    "dummy",
    "crc32c_generic",
    "crypto-crc32c", // an alias: both crc32c implementations
    "virtio-blk",    // '-' for '_'
];

/// The Debian kernel whose modules are installed (`/lib/modules/6.1.*-amd64`).
fn kernel() -> String {
    let mut found: Vec<String> = fs::read_dir("/lib/modules")
        .expect("/lib/modules: install linux-image-amd64 (.ci/packages)")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.ends_with("-amd64")
                && Path::new("/lib/modules")
                    .join(n)
                    .join("modules.dep")
                    .exists()
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("no Debian -amd64 kernel modules: install linux-image-amd64")
}

fn empty_conf() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `modprobe --show-depends` for `name` under `root`: module paths relative to
/// lib/modules/V. Configuration from modprobe.d is switched off (`-C empty`),
/// as kiln reads only the kernel's own indexes.
fn show_depends(root: &Path, v: &str, name: &str) -> BTreeSet<String> {
    let conf = empty_conf();
    let (ok, out, err) = run(Command::new("modprobe")
        .arg("-C")
        .arg(conf.path())
        .arg("-d")
        .arg(root)
        .args(["-S", v, "--show-depends", name]));
    assert!(
        ok,
        "modprobe --show-depends {name} in {}: {err}",
        root.display()
    );
    let prefix = format!("/lib/modules/{v}/");
    out.lines()
        .filter_map(|l| l.strip_prefix("insmod "))
        .map(|l| {
            let p = l.split_whitespace().next().unwrap();
            let p = p.strip_prefix(root.to_str().unwrap()).unwrap_or(p);
            let p = if p.starts_with('/') {
                p.to_string()
            } else {
                format!("/{p}")
            };
            p.strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("{p}"))
                .to_string()
        })
        .collect()
}

/// `modinfo -F FIELD` of a module file.
fn modinfo_field(file: &Path, field: &str) -> Vec<String> {
    let (ok, out, err) = run(Command::new("modinfo").args(["-F", field]).arg(file));
    assert!(ok, "modinfo {}: {err}", file.display());
    out.lines().map(str::to_string).collect()
}

/// The oracle: modprobe's set for NAME, plus, recursively, modprobe's set for
/// every softdep that modinfo lists for a module in the set (kmod itself keeps
/// only the last softdep line of a module; an initrd wants them all).
fn oracle(v: &str, name: &str) -> BTreeSet<String> {
    let dir = Path::new("/lib/modules").join(v);
    let mut set = BTreeSet::new();
    let mut names = vec![name.to_string()];
    let mut asked = BTreeSet::new();
    while let Some(n) = names.pop() {
        if !asked.insert(n.clone()) {
            continue;
        }
        for m in show_depends(Path::new("/"), v, &n) {
            if set.insert(m.clone()) {
                for line in modinfo_field(&dir.join(&m), "softdep") {
                    names.extend(
                        line.split_whitespace()
                            .filter(|w| *w != "pre:" && *w != "post:")
                            .map(str::to_string),
                    );
                }
            }
        }
    }
    set
}

#[test]
fn module_sets_match_modprobe_and_modinfo() {
    let v = kernel();
    let mdir = Path::new("/lib/modules");
    for name in MODULES {
        let got = resolve(mdir, &v, &[name.to_string()], &[]).unwrap();
        let got: BTreeSet<String> = got.modules.into_iter().collect();
        assert_eq!(got, oracle(&v, name), "{name}");
    }
    // btrfs really has softdeps beyond what kmod keeps.
    let b = resolve(mdir, &v, &["btrfs".into()], &[]).unwrap().modules;
    assert!(b.iter().any(|m| m.ends_with("/xxhash_generic.ko")), "{b:?}");
}

/// The staged items, written out as a root, satisfy kmod: modprobe finds the same
/// modules there as on the host, and a dry-run load succeeds.
#[test]
fn regenerated_indexes_work_for_modprobe() {
    let v = kernel();
    let names: Vec<String> = MODULES.iter().map(|s| s.to_string()).collect();
    let items = modules_with_deps(Path::new("/lib/modules"), &v, &names, &[]).unwrap();
    let root = tempfile::tempdir().unwrap();
    materialize(root.path(), &items);
    for f in [
        "modules.dep",
        "modules.dep.bin",
        "modules.alias",
        "modules.alias.bin",
        "modules.softdep",
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        let p = root.path().join("lib/modules").join(&v).join(f);
        assert!(p.is_file(), "{} missing", p.display());
    }
    for name in MODULES {
        assert_eq!(
            show_depends(root.path(), &v, name),
            show_depends(Path::new("/"), &v, name),
            "{name}"
        );
        let conf = empty_conf();
        let (ok, out, err) = run(Command::new("modprobe")
            .arg("-C")
            .arg(conf.path())
            .arg("-d")
            .arg(root.path())
            .args(["-S", &v, "-n", "-v", name]));
        assert!(ok, "modprobe -n -v {name}: {out}{err}");
    }
    // A module that was not added is unknown there.
    let conf = empty_conf();
    let (ok, _, _) = run(Command::new("modprobe")
        .arg("-C")
        .arg(conf.path())
        .arg("-d")
        .arg(root.path())
        .args(["-S", &v, "--show-depends", "e1000e"]));
    assert!(!ok, "e1000e should not be in the staged root");
    // modules.dep lists exactly the staged modules, modules.order is filtered.
    let dep =
        fs::read_to_string(root.path().join("lib/modules").join(&v).join("modules.dep")).unwrap();
    let staged_mods: BTreeSet<String> = items
        .iter()
        .filter_map(|s| s.path.strip_prefix(&format!("/lib/modules/{v}/")))
        .filter(|p| p.contains(".ko"))
        .map(str::to_string)
        .collect();
    let dep_mods: BTreeSet<String> = dep
        .lines()
        .filter_map(|l| l.split(':').next())
        .map(str::to_string)
        .collect();
    assert_eq!(dep_mods, staged_mods);
    let order = fs::read_to_string(
        root.path()
            .join("lib/modules")
            .join(&v)
            .join("modules.order"),
    )
    .unwrap();
    assert_eq!(order.lines().count(), staged_mods.len());
}

/// Modules already in the initrd are kept in the regenerated indexes without
/// being added again.
#[test]
fn already_present_modules_stay_indexed() {
    let v = kernel();
    let ext4 = show_depends(Path::new("/"), &v, "ext4");
    let present: Vec<String> = ext4.iter().cloned().collect();
    let items =
        modules_with_deps(Path::new("/lib/modules"), &v, &["dummy".into()], &present).unwrap();
    for p in &present {
        assert!(
            !items.iter().any(|s| s.path.ends_with(p.as_str())),
            "{p} added again"
        );
    }
    let root = tempfile::tempdir().unwrap();
    materialize(root.path(), &items);
    // Put the "already present" files in place, as the initrd has them.
    for p in &present {
        let dst = root.path().join("lib/modules").join(&v).join(p);
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(Path::new("/lib/modules").join(&v).join(p), dst).unwrap();
    }
    assert_eq!(show_depends(root.path(), &v, "ext4"), ext4);
    assert_eq!(
        show_depends(root.path(), &v, "dummy"),
        show_depends(Path::new("/"), &v, "dummy")
    );
    // A present module the host does not have is an error naming it.
    let e = modules_with_deps(
        Path::new("/lib/modules"),
        &v,
        &["dummy".into()],
        &["kernel/nope.ko".into()],
    )
    .unwrap_err();
    assert!(e.to_string().contains("kernel/nope.ko"), "{e}");
}

#[test]
fn unknown_module_and_missing_kernel_are_named() {
    let v = kernel();
    match resolve(
        Path::new("/lib/modules"),
        &v,
        &["no_such_module_kiln".into()],
        &[],
    ) {
        Err(ModuleError::NotFound { name, .. }) => assert_eq!(name, "no_such_module_kiln"),
        other => panic!("{other:?}"),
    }
    let t = tempfile::tempdir().unwrap();
    // The running kernel (not the Debian one) has no modules in an empty dir.
    let e = default_kernel(t.path()).unwrap_err().to_string();
    assert!(e.contains(&t.path().display().to_string()), "{e}");
}

/// A modules tree with .ko.xz and .ko.zst files (made here from the Debian
/// modules, indexed by depmod): the set and the modinfo fields read through the
/// decompressors match kmod's. .ko.gz (Debian's kmod lacks zlib) is checked
/// against the uncompressed module's modinfo.
#[test]
fn compressed_modules() {
    let v = kernel();
    let src = Path::new("/lib/modules").join(&v);
    let t = tempfile::tempdir().unwrap();
    let kdir = t.path().join("lib/modules").join(&v);
    let wanted = oracle(&v, "btrfs");
    for (i, m) in wanted.iter().enumerate() {
        let bytes = fs::read(src.join(m)).unwrap();
        let (suffix, data) = if i % 2 == 0 {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut liblzma::read::XzEncoder::new(&bytes[..], 6), &mut out)
                .unwrap();
            (".xz", out)
        } else {
            (".zst", zstd::encode_all(&bytes[..], 3).unwrap())
        };
        let dst = kdir.join(format!("{m}{suffix}"));
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::write(&dst, data).unwrap();
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        fs::copy(src.join(f), kdir.join(f)).unwrap();
    }
    let (ok, _, err) = run(Command::new("depmod").arg("-b").arg(t.path()).arg(&v));
    assert!(ok, "depmod: {err}");
    let set = resolve(&t.path().join("lib/modules"), &v, &["btrfs".into()], &[]).unwrap();
    let got: BTreeSet<String> = set
        .modules
        .iter()
        .map(|m| {
            m.trim_end_matches(".xz")
                .trim_end_matches(".zst")
                .to_string()
        })
        .collect();
    assert_eq!(got, wanted);
    for m in &set.modules {
        let f = kdir.join(m);
        let ours = modinfo::read(&f).unwrap();
        for field in ["softdep", "firmware", "depends", "license"] {
            let mine: Vec<String> = ours
                .iter()
                .filter(|(k, _)| k == field)
                .map(|(_, v)| v.clone())
                .collect();
            assert_eq!(mine, modinfo_field(&f, field), "{m} {field}");
        }
    }
    // gzip: same entries as the uncompressed file.
    let plain = src.join(wanted.iter().find(|m| m.ends_with("btrfs.ko")).unwrap());
    let gz = t.path().join("btrfs.ko.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&fs::read(&plain).unwrap()).unwrap();
    fs::write(&gz, enc.finish().unwrap()).unwrap();
    assert_eq!(modinfo::read(&gz).unwrap(), modinfo::read(&plain).unwrap());
    let softdeps: Vec<String> = modinfo::read(&plain)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k == "softdep")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(softdeps, modinfo_field(&plain, "softdep"));
}

/// Firmware declared by modules (modinfo firmware=) comes along when the host
/// has it; the rest is reported, not an error. `--firmware` by name too.
#[test]
fn module_firmware_and_firmware_by_name() {
    let v = kernel();
    let mdir = Path::new("/lib/modules");
    let dir = mdir.join(&v);
    let fw_dir = Path::new("/lib/firmware");
    for name in ["carl9170", "iwlwifi", "usbduxsigma"] {
        let set = resolve(mdir, &v, &[name.into()], &[]).unwrap();
        let mut present = BTreeSet::new();
        let mut missing = BTreeSet::new();
        for m in &set.modules {
            for fw in modinfo_field(&dir.join(m), "firmware") {
                let found = ["", ".zst", ".xz"]
                    .iter()
                    .any(|s| fw_dir.join(format!("{fw}{s}")).exists());
                if found {
                    present.insert(fw)
                } else {
                    missing.insert(fw)
                };
            }
        }
        let staged_fw: BTreeSet<String> = set
            .staged
            .iter()
            .filter(|s| matches!(s.kind, StagedKind::File(_)))
            .filter_map(|s| s.path.strip_prefix("/lib/firmware/"))
            .map(str::to_string)
            .collect();
        assert_eq!(staged_fw, present, "{name}");
        let reported: BTreeSet<String> = set
            .missing_firmware
            .iter()
            .map(|(_, f)| f.clone())
            .collect();
        assert_eq!(reported, missing, "{name}");
        if name == "iwlwifi" {
            assert!(!missing.is_empty());
        }
    }
    // --firmware NAME: a file from the host's /lib/firmware, by its name.
    let name = "carl9170-1.fw";
    let items = firmware(Path::new("/"), &[name.into()]).unwrap();
    let want = PathBuf::from("/lib/firmware").join(name);
    assert!(items.iter().any(|s| s.path == format!("/lib/firmware/{name}")
        && matches!(&s.kind, StagedKind::File(Content::Host(h)) if fs::canonicalize(h).unwrap() == fs::canonicalize(&want).unwrap())));
    assert!(firmware(Path::new("/"), &["kiln-no-such.bin".into()]).is_err());
}
