//! Debian images from `kiln image build` (mmdebstrap from Debian's archive; a
//! few minutes): the shipped Debian VM recipe boots to a login prompt under
//! qemu, and elements taken unmodified from diskimage-builder's PyPI package
//! build into a Debian image.

#[allow(dead_code)]
#[path = "common/vm.rs"]
mod vm;

#[path = "common/debian.rs"]
mod debian;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use vm::{Firmware, boot_until};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
/// diskimage-builder release whose elements are used unmodified.
const DIB_VERSION: &str = "3.43.0";
/// The DIB elements under test, with the script of each that must have run.
const DIB_ELEMENTS: &[(&str, &str)] = &[
    ("install-static", "install-static/10-install-static-files"),
    ("enable-serial-console", "enable-serial-console/20-stty"),
    ("devuser", "devuser/50-devuser"),
    ("modprobe", "modprobe/80-modprobe-blacklist"),
    (
        "cloud-init-datasources",
        "cloud-init-datasources/05-set-cloud-init-sources",
    ),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[track_caller]
fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shared fixture builds the recipe whenever kiln, the recipe or an element
/// changed, so this still judges the build of every change.
#[test]
fn debian_vm_recipe_boots_to_a_login_prompt() {
    let image = debian::debian_vm_image();
    let console = boot_until(
        &image,
        "qcow2",
        Firmware::Ovmf,
        Duration::from_secs(420),
        &["login:"],
    );
    assert!(
        console.contains("debian login:"),
        "no login prompt on the serial console:\n{console}"
    );
}

/// diskimage-builder's elements folder from its wheel on PyPI, installed into a
/// virtualenv under `dir`.
fn dib_elements(dir: &Path) -> PathBuf {
    let venv = dir.join("venv");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .unwrap();
    assert_success("python3 -m venv", &made);
    let pip = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--no-deps"])
        .arg(format!("diskimage-builder=={DIB_VERSION}"))
        .output()
        .unwrap();
    assert_success("pip install diskimage-builder", &pip);
    let lib = venv.join("lib");
    let python = fs::read_dir(&lib)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .expect("a python3.X folder in the venv")
        .path();
    let elements = python.join("site-packages/diskimage_builder/elements");
    assert!(elements.join("devuser/element-deps").is_file());
    elements
}

fn tar_file(tar: &Path, member: &str) -> String {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(tar)
        .arg(member)
        .output()
        .unwrap();
    assert_success(&format!("tar -xOf {member}"), &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn unmodified_diskimage_builder_elements_build_into_the_debian_image() {
    let dir = tempfile::tempdir().unwrap();
    // Only the elements under test come from DIB (copied unmodified); what they
    // depend on (package-installs, ...) is kiln's, as in any kiln build.
    let dib = dib_elements(dir.path());
    let elements = dir.path().join("dib-elements");
    fs::create_dir(&elements).unwrap();
    for (name, _) in DIB_ELEMENTS {
        let copied = Command::new("cp")
            .arg("-a")
            .arg(dib.join(name))
            .arg(elements.join(name))
            .output()
            .unwrap();
        assert_success("cp -a", &copied);
    }
    let mut names: Vec<&str> = vec!["debian-minimal", "kiln-test-dib-checks"];
    names.extend(DIB_ELEMENTS.iter().map(|(e, _)| *e));
    let recipe = dir.path().join("dib.yaml");
    fs::write(
        &recipe,
        format!(
            "- imagename: dib-elements\n  elements: [{}]\n  types: [tar]\n  environment:\n    DIB_RELEASE: bookworm\n    DIB_DEV_USER_USERNAME: stack\n    DIB_DEV_USER_AUTHORIZED_KEYS: /dev/null\n    DIB_MODPROBE_BLACKLIST: floppy pcspkr\n    DIB_CLOUD_INIT_DATASOURCES: \"ConfigDrive, NoCloud\"\n",
            names.join(", ")
        ),
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    // DIB's folder comes first: its elements win over kiln's of the same name.
    let out = Command::new(KILN)
        .args(["image", "build"])
        .arg(&recipe)
        .arg("-o")
        .arg(&out_dir)
        .arg("--elements-path")
        .arg(&elements)
        .arg("--elements-path")
        .arg(repo().join("tests/image_build/elements"))
        .output()
        .unwrap();
    assert_success("kiln image build with DIB's elements", &out);
    let log = String::from_utf8_lossy(&out.stderr);
    for (element, script) in DIB_ELEMENTS {
        assert!(
            log.contains(script),
            "{element}: {script} did not run:\n{log}"
        );
    }
    let tar = out_dir.join("dib-elements.tar");
    assert_eq!(
        tar_file(&tar, "etc/kiln-static-marker").trim(),
        "installed by DIB's install-static"
    );
    assert!(
        tar_file(&tar, "etc/passwd")
            .lines()
            .any(|l| l.starts_with("stack:"))
    );
    let blacklist = tar_file(&tar, "etc/modprobe.d/blacklist.conf");
    assert!(blacklist.contains("blacklist floppy") && blacklist.contains("blacklist pcspkr"));
    assert!(
        tar_file(
            &tar,
            "etc/cloud/cloud.cfg.d/91-dib-cloud-init-datasources.cfg"
        )
        .contains("ConfigDrive, NoCloud")
    );
    assert!(tar_file(&tar, "etc/udev/rules.d/99-serial-console.rules").contains("getty@"));
}
