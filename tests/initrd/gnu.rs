//! Round trips against GNU cpio and the compressor CLIs.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use crate::common::*;

fn decompressor(compression: &str) -> &'static str {
    match compression {
        "none" => "cat",
        "gzip" => "gzip -dc",
        "zstd" => "zstd -dc",
        "xz" => "xz -dc",
        other => panic!("{other}"),
    }
}

/// What kiln packs, GNU cpio (after the compressor's own CLI) lists and extracts to
/// the same tree: paths, contents, modes with setuid bits, symlinks, fifos, hard-link
/// inode sharing, mtimes, and owners and device nodes as root.
#[test]
fn what_kiln_packs_gnu_cpio_reads() {
    require("cpio");
    for tool in ["gzip", "zstd", "xz"] {
        require(tool);
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src, true);
    let want = snapshot(&src, true);
    let want_paths: BTreeSet<String> = want.keys().cloned().chain([".".to_string()]).collect();
    for compression in ["none", "gzip", "zstd", "xz"] {
        let img = tmp.path().join(format!("{compression}.img"));
        kiln(&[
            "initrd".as_ref(),
            "pack".as_ref(),
            src.as_os_str(),
            "-o".as_ref(),
            img.as_os_str(),
            "--compression".as_ref(),
            compression.as_ref(),
        ])
        .assert_ok();
        let stream = tmp.path().join(format!("{compression}.cpio"));
        sh(
            tmp.path(),
            &format!(
                "{} < {} > {}",
                decompressor(compression),
                img.display(),
                stream.display()
            ),
        );

        let listed: BTreeSet<String> = gnu_cpio_each_archive(&stream, &["-t"], tmp.path())
            .iter()
            .flat_map(|r| r.stdout_str().lines().map(String::from).collect::<Vec<_>>())
            .collect();
        assert_eq!(
            listed, want_paths,
            "{compression}: cpio -t lists other paths"
        );
        let archives = gnu_cpio_each_archive(&stream, &["-t"], tmp.path()).len();
        assert_eq!(
            archives, 1,
            "{compression}: a single cpio -t must read the whole archive"
        );

        let dest = tmp.path().join(format!("out-{compression}"));
        fs::create_dir(&dest).unwrap();
        gnu_cpio_each_archive(&stream, &["-idm", "--no-absolute-filenames"], &dest);
        // GNU cpio sets directory mtimes before filling them; compare those without mtimes.
        let got = snapshot(&dest, true);
        assert_same_tree(
            &without_dir_mtimes(&want),
            &without_dir_mtimes(&got),
            &format!("kiln pack --compression {compression} | cpio -idm"),
        );
    }
}

/// What GNU cpio packs (newc and the checksummed "crc" format), compressed with each
/// CLI and with an early uncompressed archive plus zero padding in front, kiln lists
/// exactly as `cpio -t` does and extracts to the same tree.
#[test]
fn what_gnu_cpio_packs_kiln_reads() {
    require("cpio");
    for tool in ["gzip", "zstd", "xz", "lz4", "bzip2"] {
        require(tool);
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src, false);
    let early_src = tmp.path().join("early");
    fs::create_dir_all(early_src.join("kernel/x86/microcode")).unwrap();
    fs::write(
        early_src.join("kernel/x86/microcode/GenuineIntel.bin"),
        bytes(99, 5000),
    )
    .unwrap();
    sh(
        &early_src,
        "find . | LC_ALL=C sort | cpio -o -H newc --quiet > ../early.cpio",
    );
    let early_paths: BTreeSet<String> = sh(tmp.path(), "cpio -t --quiet < early.cpio")
        .stdout_str()
        .lines()
        .map(String::from)
        .collect();

    let want = snapshot(&src, true);
    for format in ["newc", "crc"] {
        sh(
            &src,
            &format!("find . | LC_ALL=C sort | cpio -o -H {format} --quiet > ../main.cpio"),
        );
        let cpio_paths: BTreeSet<String> = sh(tmp.path(), "cpio -t --quiet < main.cpio")
            .stdout_str()
            .lines()
            .map(String::from)
            .collect();
        for (name, compress) in [
            ("none", "cat"),
            ("gzip", "gzip -9 -n -c"),
            ("zstd", "zstd -q -19 -c"),
            ("xz", "xz --check=crc32 -c"),
            ("lz4", "lz4 -l -q -c"),
            ("bzip2", "bzip2 -c"),
        ] {
            for with_early in [false, true] {
                let img = tmp.path().join(format!("{format}-{name}-{with_early}.img"));
                let early = if with_early {
                    "cat early.cpio; head -c 3072 /dev/zero;"
                } else {
                    ""
                };
                sh(
                    tmp.path(),
                    &format!("{{ {early} {compress} < main.cpio; }} > {}", img.display()),
                );
                let what = format!("{format} archive, {name}, early segment: {with_early}");

                let mut want_paths = cpio_paths.clone();
                if with_early {
                    want_paths.extend(early_paths.iter().cloned());
                }
                assert_eq!(kiln_paths(&img), want_paths, "{what}: kiln ls");
                let ls = kiln(&[
                    "initrd".as_ref(),
                    "ls".as_ref(),
                    "--json".as_ref(),
                    img.as_os_str(),
                ])
                .json();
                let segs: Vec<&str> = ls["segments"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["compression"].as_str().unwrap())
                    .collect();
                let mut want_segs = if with_early { vec!["none"] } else { vec![] };
                want_segs.push(name);
                assert_eq!(segs, want_segs, "{what}: segments");
                if with_early {
                    let early_len = fs::metadata(tmp.path().join("early.cpio")).unwrap().len();
                    assert_eq!(
                        ls["segments"][1]["offset"],
                        early_len + 3072,
                        "{what}: second segment offset"
                    );
                }

                let dest = tmp.path().join(format!("x-{format}-{name}-{with_early}"));
                kiln(&[
                    "initrd".as_ref(),
                    "extract".as_ref(),
                    img.as_os_str(),
                    dest.as_os_str(),
                ])
                .assert_ok();
                let mut got = snapshot(&dest, true);
                if with_early {
                    assert_eq!(
                        fs::read(dest.join("kernel/x86/microcode/GenuineIntel.bin")).unwrap(),
                        bytes(99, 5000)
                    );
                    got.retain(|k, _| !k.starts_with("kernel"));
                }
                assert_same_tree(&want, &got, &format!("kiln extract of {what}"));
            }
        }
    }
}

/// `kiln initrd rm` removes files and whole directories and nothing else, and
/// refuses paths that are not there.
#[test]
fn rm_removes_exactly_what_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src, false);
    let img = tmp.path().join("in.img");
    kiln(&[
        "initrd".as_ref(),
        "pack".as_ref(),
        src.as_os_str(),
        "-o".as_ref(),
        img.as_os_str(),
        "--compression".as_ref(),
        "gzip".as_ref(),
    ])
    .assert_ok();
    let out = tmp.path().join("out.img");
    kiln(&[
        "initrd".as_ref(),
        "rm".as_ref(),
        img.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "/usr/lib/modules".as_ref(),
        "etc/a".as_ref(),
    ])
    .assert_ok();
    let before = kiln_paths(&img);
    let after = kiln_paths(&out);
    let removed: BTreeSet<String> = before.difference(&after).cloned().collect();
    let expect: BTreeSet<String> = before
        .iter()
        .filter(|p| p.starts_with("usr/lib/modules") || *p == "etc/a")
        .cloned()
        .collect();
    assert_eq!(removed, expect);
    assert!(after.is_subset(&before));
    // Output keeps the input's compression; the hard link partner survives intact.
    let ls = kiln(&[
        "initrd".as_ref(),
        "ls".as_ref(),
        "--json".as_ref(),
        out.as_os_str(),
    ])
    .json();
    assert_eq!(ls["segments"][0]["compression"], "gzip");
    let dest = tmp.path().join("x");
    kiln(&[
        "initrd".as_ref(),
        "extract".as_ref(),
        out.as_os_str(),
        dest.as_os_str(),
    ])
    .assert_ok();
    assert_eq!(fs::read(dest.join("etc/b")).unwrap(), b"same inode\n");

    let before_names = names(tmp.path());
    let r = kiln(&[
        "initrd".as_ref(),
        "rm".as_ref(),
        img.as_os_str(),
        "-o".as_ref(),
        tmp.path().join("new.img").as_os_str(),
        "etc/fstab".as_ref(),
        "no/such/file".as_ref(),
    ]);
    r.assert_clean_failure();
    assert!(r.stderr.contains("no/such/file"), "{}", r.report());
    assert_eq!(names(tmp.path()), before_names);
    let _ = Path::new("");
}
