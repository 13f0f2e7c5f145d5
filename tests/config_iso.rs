//! ISO9660 config drives (as Nova builds them with genisoimage, and as
//! xorriso builds them) read by kiln's own reader: every file byte for byte,
//! the label, `kiln config apply` rendering from the drive, and corrupt or
//! truncated images failing cleanly.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::format::iso9660::{IsoVolume, Naming};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const LATEST: &str = "openstack/latest";
const LONG_NAME: &str =
    "a rather long file name, longer than sixty-four characters, with spaces.json";

/// A config drive tree: the OpenStack files, kiln's role metadata (several
/// blocks long), a long name and a nested folder.
fn drive_tree(root: &Path) {
    let latest = root.join(LATEST);
    std::fs::create_dir_all(latest.join("nested folder/deeper")).unwrap();
    std::fs::write(
        latest.join("meta_data.json"),
        r#"{"hostname": "node-iso", "uuid": "u-9"}"#,
    )
    .unwrap();
    std::fs::write(latest.join("network_data.json"), r#"{"links": []}"#).unwrap();
    std::fs::write(latest.join("user_data"), "#cloud-config\n").unwrap();
    let padding = "q".repeat(7000);
    std::fs::write(
        latest.join("kiln_config.json"),
        format!(r#"{{"role": "iso", "padding": "{padding}"}}"#),
    )
    .unwrap();
    let binary: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(latest.join(LONG_NAME), &binary).unwrap();
    std::fs::write(latest.join("nested folder/deeper/empty"), b"").unwrap();
    std::fs::write(root.join("openstack/content.multi.dot.txt"), b"dots\n").unwrap();
}

fn ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Nova's command line (nova/virt/configdrive.py).
fn genisoimage(tree: &Path, image: &Path, naming: &[&str]) {
    ok(Command::new("genisoimage")
        .arg("-o")
        .arg(image)
        .args(["-ldots", "-allow-lowercase", "-allow-multidot", "-l"])
        .args(["-publisher", "kiln test", "-quiet"])
        .args(naming)
        .args(["-V", "config-2"])
        .arg(tree));
}

fn xorriso(tree: &Path, image: &Path) {
    ok(Command::new("xorriso")
        .args([
            "-as", "mkisofs", "-quiet", "-J", "-r", "-V", "config-2", "-o",
        ])
        .arg(image)
        .arg(tree));
}

/// Every file below `root`, as paths relative to it.
fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn assert_reads_tree(image: &Path, tree: &Path, naming: Naming, only: Option<&[&str]>) {
    let bytes = std::fs::read(image).unwrap();
    let volume = IsoVolume::open(&bytes).unwrap();
    assert_eq!(volume.label(), "config-2", "{}", image.display());
    assert_eq!(volume.naming(), naming, "{}", image.display());
    let mut checked = 0;
    for rel in files(tree) {
        let rel = rel.to_str().unwrap();
        if only.is_some_and(|names| !names.iter().any(|n| rel.ends_with(n))) {
            continue;
        }
        let got = volume.read_file(rel).unwrap();
        assert_eq!(
            got,
            Some(std::fs::read(tree.join(rel)).unwrap()),
            "{}: {rel}",
            image.display()
        );
        checked += 1;
    }
    assert!(checked >= 4, "{}: only {checked} files", image.display());
    assert_eq!(
        volume.read_file(&format!("{LATEST}/missing")).unwrap(),
        None
    );
    assert_eq!(
        volume.read_file(LATEST).unwrap(),
        None,
        "a folder is no file"
    );
    assert_eq!(
        kiln::config::drive::probe_label(image).as_deref(),
        Some("config-2")
    );
}

#[test]
fn iso_config_drives_are_read_byte_identically() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    drive_tree(&tree);
    let image = |name: &str| dir.path().join(name);

    genisoimage(&tree, &image("nova.iso"), &["-J", "-r"]);
    assert_reads_tree(
        &image("nova.iso"),
        &tree,
        Naming::RockRidge { skip: 0 },
        None,
    );

    xorriso(&tree, &image("xorriso.iso"));
    assert_reads_tree(
        &image("xorriso.iso"),
        &tree,
        Naming::RockRidge { skip: 0 },
        None,
    );

    // Joliet alone keeps names up to 64 characters.
    genisoimage(&tree, &image("joliet.iso"), &["-J"]);
    let short = [
        "meta_data.json",
        "user_data",
        "kiln_config.json",
        "empty",
        ".txt",
    ];
    assert_reads_tree(&image("joliet.iso"), &tree, Naming::Joliet, Some(&short));

    // Plain ISO names (up to 31 characters with -l, no spaces) carry ";1"
    // and, without an extension, a trailing dot.
    genisoimage(&tree, &image("plain.iso"), &[]);
    let plain = ["meta_data.json", "user_data", "kiln_config.json", ".txt"];
    assert_reads_tree(&image("plain.iso"), &tree, Naming::Plain, Some(&plain));
}

#[test]
fn apply_renders_from_an_iso_config_drive() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    drive_tree(&tree);
    let templates = dir.path().join("templates/etc");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(
        templates.join("host.conf"),
        "{{meta_data.hostname}} {{role}} {{user_data}}{{network_data.links}} {{padding}}\n",
    )
    .unwrap();
    for (name, build) in [
        ("nova.iso", genisoimage as fn(&Path, &Path, &[&str])),
        ("xorriso.iso", |t: &Path, i: &Path, _: &[&str]| {
            xorriso(t, i)
        }),
    ] {
        let image = dir.path().join(name);
        build(&tree, &image, &["-J", "-r"]);
        let node = dir.path().join(format!("node-{name}"));
        let out = Command::new(KILN)
            .args(["config", "apply", "--one-time", "--config-drive"])
            .arg(&image)
            .arg("--cache-dir")
            .arg(node.join("cache"))
            .arg("--templates")
            .arg(dir.path().join("templates"))
            .arg("--output")
            .arg(node.join("root"))
            .arg("--refresh-dir")
            .arg(node.join("refresh"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(node.join("root/etc/host.conf")).unwrap(),
            format!("node-iso iso #cloud-config\n[] {}\n", "q".repeat(7000)),
            "{name}"
        );
    }
}

/// Reads everything a config drive collector would.
fn read_all(bytes: &Vec<u8>) -> Result<usize, String> {
    let volume = IsoVolume::open(bytes).map_err(|e| e.to_string())?;
    let mut total = volume.label().len();
    for name in ["meta_data.json", "user_data", "kiln_config.json", LONG_NAME] {
        let file = volume
            .read_file(&format!("{LATEST}/{name}"))
            .map_err(|e| e.to_string())?;
        total += file.map_or(0, |f| f.len());
    }
    Ok(total)
}

#[test]
fn corrupt_and_truncated_isos_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    drive_tree(&tree);
    let image = dir.path().join("nova.iso");
    genisoimage(&tree, &image, &["-J", "-r"]);
    let pristine = std::fs::read(&image).unwrap();
    assert!(read_all(&pristine).is_ok());

    // Flip bytes in the descriptors, path tables and directories (the
    // sectors before the first file's data); no input may panic.
    let metadata_end = (40 * 2048).min(pristine.len());
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut failures = 0;
    for _ in 0..3000 {
        let mut bytes = pristine.clone();
        for _ in 0..1 + next() % 4 {
            let at = 16 * 2048 + (next() as usize) % (metadata_end - 16 * 2048);
            bytes[at] = next() as u8;
        }
        failures += usize::from(read_all(&bytes).is_err());
    }
    assert!(failures > 0, "no mutation was noticed");

    // Truncated images (descriptors, directories, the role metadata's data
    // cut short): an error naming the device, never a panic.
    let padding_at = pristine
        .windows(100)
        .position(|w| w.iter().all(|&b| b == b'q'))
        .unwrap();
    for len in [100, 16 * 2048 + 10, 18 * 2048, 24 * 2048, padding_at + 50] {
        let cut = dir.path().join(format!("cut-{len}.iso"));
        std::fs::write(&cut, &pristine[..len]).unwrap();
        let err = kiln::config::drive::read_device(&cut)
            .err()
            .unwrap_or_else(|| panic!("{len}-byte image was accepted"))
            .to_string();
        assert!(err.contains(cut.to_str().unwrap()), "{err}");
    }
}
