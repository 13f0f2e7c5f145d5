//! Extraction stays inside the destination whatever the archive says.

use std::fs;
use std::path::Path;

use crate::common::*;

/// One newc entry, written by hand (independent of kiln's writer).
fn entry(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
    let namesize = name.len() + 1;
    let fields = [
        1,
        mode,
        0,
        0,
        1,
        1_700_000_000,
        data.len() as u32,
        0,
        0,
        0,
        0,
        namesize as u32,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn archive(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, m, d) in entries {
        entry(&mut out, n, *m, d);
    }
    entry(&mut out, "TRAILER!!!", 0, b"");
    out
}

#[test]
fn hostile_names_and_symlinks_stay_inside() {
    let tmp = tempfile::tempdir().unwrap();
    let outside_target = tmp.path().join("outside");
    fs::create_dir(&outside_target).unwrap();
    let dest_parent = tmp.path().join("work");
    fs::create_dir(&dest_parent).unwrap();
    let dest = dest_parent.join("dest");
    let target = outside_target.to_str().unwrap();
    let img = tmp.path().join("evil.img");
    let hostile = archive(&[
        ("../evil", 0o100644, b"evil"),
        ("a/../../evil2", 0o100644, b"evil"),
        ("/abs", 0o100644, b"absolute"),
        ("//etc/passwd", 0o100644, b"not the host's"),
        ("link", 0o120777, target.as_bytes()),
        ("link/file", 0o100644, b"through the link"),
        ("up", 0o120777, b".."),
        ("up/escaped", 0o100644, b"through a relative link"),
        ("ok/fine", 0o100644, b"fine"),
    ]);
    // Plain, and the same inside a compressed stream after a harmless early archive.
    let early = archive(&[("early", 0o100644, b"e")]);
    for (i, image) in [
        hostile.clone(),
        [early, vec![0; 16], zstd(&hostile)].concat(),
    ]
    .iter()
    .enumerate()
    {
        fs::write(&img, image).unwrap();
        let r = kiln_untrusted(&[
            "initrd".as_ref(),
            "extract".as_ref(),
            img.as_os_str(),
            dest.as_os_str(),
        ]);
        // Unsafe entries are refused and reported; the rest is extracted.
        r.assert_clean_failure();
        for name in ["../evil", "link/file", "up/escaped"] {
            assert!(
                r.stderr.contains(name),
                "refusal of {name} not reported: {}",
                r.report()
            );
        }
        assert!(
            names(&outside_target).is_empty(),
            "wrote through the symlink: {:?}",
            names(&outside_target)
        );
        assert_eq!(
            names(&dest_parent),
            ["dest".to_string()].into(),
            "wrote beside the destination"
        );
        assert!(!tmp.path().join("evil").exists() && !tmp.path().join("evil2").exists());
        assert_eq!(fs::read(dest.join("abs")).unwrap(), b"absolute");
        assert_eq!(
            fs::read(dest.join("etc/passwd")).unwrap(),
            b"not the host's"
        );
        assert_eq!(fs::read(dest.join("ok/fine")).unwrap(), b"fine");
        assert_eq!(fs::read_link(dest.join("link")).unwrap(), Path::new(target));
        assert!(
            fs::symlink_metadata(dest.join("up"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(i == 1, dest.join("early").exists());
        fs::remove_dir_all(&dest).unwrap();
    }
}

/// A symlink already in the destination (not from the archive) is not followed either.
#[test]
fn existing_symlinks_in_the_destination_are_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("etc")).unwrap();
    std::os::unix::fs::symlink(outside.join("target"), dest.join("file")).unwrap();
    let img = tmp.path().join("x.img");
    fs::write(
        &img,
        archive(&[
            ("etc/motd", 0o100644, b"hi"),
            ("file", 0o100644, b"replaced"),
        ]),
    )
    .unwrap();
    let r = kiln_untrusted(&[
        "initrd".as_ref(),
        "extract".as_ref(),
        img.as_os_str(),
        dest.as_os_str(),
    ]);
    r.assert_clean_failure();
    assert!(names(&outside).is_empty());
    // A file entry replaces the symlink at its own name instead of writing through it.
    assert_eq!(fs::read(dest.join("file")).unwrap(), b"replaced");
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, 3).unwrap()
}
