//! Debian's own initramfs (made by initramfs-tools for the installed kernel) against
//! lsinitramfs / unmkinitramfs, plain and with an early microcode archive in front.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use kiln::format::initrd::Initrd;
use kiln::initrd::repack::merged_tree;
use kiln::initrd::tree::PathKey;
use kiln::initrd::{Content, Edits, RepackOptions, Staged, StagedKind, repack};

use crate::common::*;

fn debian_initrd() -> PathBuf {
    let mut found: Vec<PathBuf> = fs::read_dir("/boot")
        .expect("/boot")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("initrd.img-") && !n.ends_with(".new"))
        })
        .collect();
    found.sort();
    found.pop().expect(
        "no /boot/initrd.img-*: install linux-image-amd64 and initramfs-tools (.ci/packages)",
    )
}

fn lsinitramfs(img: &Path) -> BTreeSet<String> {
    require("lsinitramfs");
    let r = run(std::process::Command::new("lsinitramfs").arg(img), TIMEOUT);
    r.assert_ok();
    r.stdout_str().lines().map(String::from).collect()
}

/// The Debian initrd, and the same with a GNU cpio early archive and zero padding
/// in front (as initramfs-tools does when microcode is installed).
fn variants(tmp: &Path) -> Vec<PathBuf> {
    let plain = debian_initrd();
    let early_src = tmp.join("early-src");
    fs::create_dir_all(early_src.join("kernel/x86/microcode")).unwrap();
    fs::write(
        early_src.join("kernel/x86/microcode/AuthenticAMD.bin"),
        bytes(7, 12345),
    )
    .unwrap();
    sh(
        &early_src,
        "find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet > ../early.cpio",
    );
    let with_early = tmp.join("with-early.img");
    sh(
        tmp,
        &format!(
            "{{ cat early.cpio; head -c 512 /dev/zero; cat {}; }} > {}",
            plain.display(),
            with_early.display()
        ),
    );
    vec![plain, with_early]
}

#[test]
fn ls_lists_what_lsinitramfs_lists() {
    let tmp = tempfile::tempdir().unwrap();
    for img in variants(tmp.path()) {
        let want = lsinitramfs(&img);
        assert!(
            want.len() > 100,
            "lsinitramfs found only {} entries",
            want.len()
        );
        assert_eq!(kiln_paths(&img), want, "{}", img.display());
    }
}

/// Repacking through `repack` with one added file keeps every other entry identical
/// (metadata and contents, read back by kiln and by unmkinitramfs) and the early
/// segment byte-identical.
#[test]
fn repack_with_one_added_file_keeps_everything_else() {
    require("unmkinitramfs");
    let tmp = tempfile::tempdir().unwrap();
    for (i, img) in variants(tmp.path()).into_iter().enumerate() {
        let input = Initrd::parse(fs::read(&img).unwrap()).unwrap();
        // Added under /lib, a symlink to usr/lib in Debian's merged-/usr initrd: the
        // file must land in usr/lib, as the kernel would put it.
        let lib_is_link = {
            let (tree, _) = merged_tree(&input, 0);
            tree.get(&PathKey::normalize(b"lib").unwrap())
                .is_some_and(|n| n.file_type() == kiln::format::cpio::FileType::Symlink)
        };
        let edits = Edits {
            remove: vec![],
            add: vec![Staged {
                path: "/lib/kiln-test/hello.txt".into(),
                kind: StagedKind::File(Content::Bytes(b"hello from kiln\n".to_vec())),
                mode: 0o4751,
                uid: 12,
                gid: 34,
            }],
        };
        let out = repack(&input, &edits, &RepackOptions::default()).unwrap();
        let out_path = tmp.path().join(format!("repacked-{i}.img"));
        fs::write(&out_path, &out).unwrap();
        let output = Initrd::parse(out.clone()).unwrap();

        // Early segment bytes (and the padding after them) unchanged.
        let main_in = input
            .segments
            .iter()
            .position(|s| s.compression != kiln::format::initrd::Compression::None)
            .unwrap();
        let early_end = input.segments[main_in].offset as usize;
        assert_eq!(
            &out[..early_end],
            &input.bytes[..early_end],
            "early bytes differ"
        );
        assert_eq!(output.segments.len(), input.segments.len());
        assert_eq!(
            output.segments[main_in].compression,
            input.segments[main_in].compression
        );

        let added = if lib_is_link {
            "usr/lib/kiln-test/hello.txt"
        } else {
            "lib/kiln-test/hello.txt"
        };
        let added_dir = added.rsplit_once('/').unwrap().0;
        let (before, _) = merged_tree(&input, 0);
        let (after, _) = merged_tree(&output, 0);
        let mut diffs = Vec::new();
        for (k, n) in &before.nodes {
            match after.get(k) {
                None => diffs.push(format!("lost {}", k.display())),
                Some(m) => {
                    let same = n.mode == m.mode
                        && n.uid == m.uid
                        && n.gid == m.gid
                        && n.mtime == m.mtime
                        && n.data == m.data
                        && n.rdev_major == m.rdev_major
                        && n.rdev_minor == m.rdev_minor;
                    if !same {
                        diffs.push(format!("changed {}", k.display()));
                    }
                }
            }
        }
        let new: Vec<String> = after
            .nodes
            .keys()
            .filter(|k| before.get(k).is_none())
            .map(|k| k.display())
            .collect();
        assert!(diffs.is_empty(), "{}", diffs.join("\n"));
        assert_eq!(new, vec![format!("/{added_dir}"), format!("/{added}")]);
        let node = after
            .get(&PathKey::normalize(added.as_bytes()).unwrap())
            .unwrap();
        assert_eq!(
            (node.mode, node.uid, node.gid, &*node.data),
            (0o104751, 12, 34, &b"hello from kiln\n"[..])
        );

        // The same judged by unmkinitramfs.
        let a = tmp.path().join(format!("unmk-in-{i}"));
        let b = tmp.path().join(format!("unmk-out-{i}"));
        sh(
            tmp.path(),
            &format!("unmkinitramfs {} {}", img.display(), a.display()),
        );
        sh(
            tmp.path(),
            &format!("unmkinitramfs {} {}", out_path.display(), b.display()),
        );
        let want = snapshot(&a, true);
        let mut got = snapshot(&b, true);
        let prefix = if i == 0 { "" } else { "main/" };
        let file = format!("{prefix}{added}");
        let dir = format!("{prefix}{added_dir}");
        let meta = got
            .remove(&file)
            .unwrap_or_else(|| panic!("unmkinitramfs lacks {file}"));
        assert_eq!(
            meta.content,
            format!("16 bytes, hash {:016x}", fnv(b"hello from kiln\n"))
        );
        assert!(got.remove(&dir).is_some());
        assert_same_tree(
            &without_dir_mtimes(&want),
            &without_dir_mtimes(&got),
            "unmkinitramfs of input vs repacked",
        );
    }
}

/// Entries of `kiln initrd ls --json` by path (segments merged, later wins), with
/// the metadata a repack must keep.
fn entries_by_path(img: &Path) -> std::collections::BTreeMap<String, serde_json::Value> {
    let ls = kiln(&[
        "initrd".as_ref(),
        "ls".as_ref(),
        "--json".as_ref(),
        img.as_os_str(),
    ]);
    let mut out = std::collections::BTreeMap::new();
    for seg in ls.json()["segments"].as_array().unwrap() {
        for e in seg["entries"].as_array().unwrap() {
            let path = e["path"]
                .as_str()
                .unwrap()
                .trim_start_matches("./")
                .to_string();
            let mut kept = e.clone();
            // Inode numbers are renumbered by design.
            kept.as_object_mut().unwrap().remove("ino");
            out.insert(path, kept);
        }
    }
    out
}

#[test]
fn adding_a_module_keeps_every_other_entry_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let input = debian_initrd();
    let version = input
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("initrd.img-")
        .to_string();
    let before = entries_by_path(&input);
    let module = format!("usr/lib/modules/{version}/kernel/drivers/net/dummy.ko");
    assert!(
        !before.contains_key(&module),
        "{module} already in the initrd"
    );

    let out = tmp.path().join("added.img");
    kiln(&[
        "initrd".as_ref(),
        "add".as_ref(),
        input.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--module".as_ref(),
        "dummy".as_ref(),
        "--kernel-version".as_ref(),
        version.as_ref(),
    ])
    .assert_ok();
    let after = entries_by_path(&out);

    // The module is there (through the merged-/usr /lib link) and modprobe's
    // index now names it; nothing else changed but the regenerated indexes.
    assert!(after.contains_key(&module), "{module} missing after add");
    let index_prefix = format!("usr/lib/modules/{version}/modules.");
    for (path, entry) in &before {
        if path.starts_with(&index_prefix) {
            continue;
        }
        // Directories gaining a child keep their metadata too.
        assert_eq!(after.get(path), Some(entry), "{path} changed");
    }
    let new: Vec<&String> = after.keys().filter(|p| !before.contains_key(*p)).collect();
    assert!(
        new.iter()
            .all(|p| p.starts_with(&format!("usr/lib/modules/{version}/"))),
        "unexpected new entries: {new:?}"
    );
    // kmod inside the initrd must find the module: check the text index.
    let extracted = tmp.path().join("x");
    kiln(&[
        "initrd".as_ref(),
        "extract".as_ref(),
        out.as_os_str(),
        extracted.as_os_str(),
    ]);
    let dep = fs::read_to_string(extracted.join(format!("usr/lib/modules/{version}/modules.dep")))
        .unwrap();
    assert!(
        dep.lines()
            .any(|l| l.starts_with("kernel/drivers/net/dummy.ko:")),
        "modules.dep does not list dummy"
    );
    let listed = lsinitramfs(&out);
    assert!(
        listed.contains(&module),
        "lsinitramfs does not see {module}"
    );
}
