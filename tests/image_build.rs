//! `kiln image build`, judged from outside: the busybox VM recipe becomes a qcow2
//! that boots under qemu (TCG) with SeaBIOS and with OVMF and runs what a chroot
//! phase put into it; two builds with the same SOURCE_DATE_EPOCH give the same
//! raw bytes; a failing script names itself and leaves no mount, output or
//! build directory behind.

#[path = "common/vm.rs"]
mod vm;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use vm::{Firmware, boot_kernel_until, boot_until};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const MARKER: &str = "KILN-IMAGE-BOOTED";
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn test_elements() -> PathBuf {
    repo().join("tests/image_build/elements")
}

/// A recipe of the busybox VM with extra elements.
fn recipe(dir: &Path, name: &str, extra: &[&str], types: &str) -> PathBuf {
    let mut elements = vec!["vm", "block-device-efi", "busybox-minimal"];
    elements.extend_from_slice(extra);
    write_recipe(
        dir,
        name,
        &format!(
            "  elements: [{}]\n  types: [{types}]\n  kernel-cmdline: \"console=tty0 console=ttyS0,115200\"\n",
            elements.join(", ")
        ),
    )
}

fn write_recipe(dir: &Path, name: &str, body: &str) -> PathBuf {
    let text = format!("- imagename: {name}\n{body}");
    let path = dir.join(format!("{name}.yaml"));
    fs::write(&path, text).unwrap();
    path
}

fn kiln_build(recipe: &Path, out: &Path, envs: &[(&str, &str)]) -> Output {
    Command::new(KILN)
        .args(["image", "build"])
        .arg(recipe)
        .arg("-o")
        .arg(out)
        .arg("--elements-path")
        .arg(test_elements())
        .envs(envs.iter().copied())
        .output()
        .expect("run kiln")
}

#[track_caller]
fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "kiln image build failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mount_points() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect()
}

#[test]
fn busybox_vm_boots_with_seabios_and_ovmf() {
    let dir = tempfile::tempdir().unwrap();
    let path = recipe(dir.path(), "busybox-vm", &["kiln-test-marker"], "qcow2");
    let out = kiln_build(&path, dir.path(), &[]);
    assert_success(&out);
    let image = dir.path().join("busybox-vm.qcow2");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        image.display().to_string()
    );
    let check = Command::new("qemu-img")
        .arg("check")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let boots: Vec<_> = [Firmware::SeaBios, Firmware::Ovmf]
        .into_iter()
        .map(|firmware| {
            let image = image.clone();
            std::thread::spawn(move || {
                let console = boot_until(&image, "qcow2", firmware, BOOT_TIMEOUT, &[MARKER]);
                (firmware, console)
            })
        })
        .collect();
    for handle in boots {
        let (firmware, console) = handle.join().unwrap();
        let line = console
            .lines()
            .find(|l| l.contains(MARKER))
            .unwrap_or_else(|| panic!("{firmware:?}: no marker on the console:\n{console}"));
        // The chroot phase ran with the build's variables and a mounted /proc.
        assert!(line.contains("chroot ARCH=amd64"), "{firmware:?}: {line}");
        let procs: u32 = line
            .rsplit("procs=")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(procs > 0, "{firmware:?}: no /proc in the chroot: {line}");
    }
}

#[test]
fn two_builds_with_one_source_date_epoch_are_identical() {
    let dir = tempfile::tempdir().unwrap();
    let path = recipe(dir.path(), "repro", &[], "raw");
    let env = [("SOURCE_DATE_EPOCH", "1700000000")];
    let first = dir.path().join("one");
    let second = dir.path().join("two");
    assert_success(&kiln_build(&path, &first, &env));
    // Later mtimes and a different second: nothing of that may show.
    std::thread::sleep(Duration::from_millis(1100));
    assert_success(&kiln_build(&path, &second, &env));
    let a = fs::read(first.join("repro.raw")).unwrap();
    let b = fs::read(second.join("repro.raw")).unwrap();
    assert_eq!(a.len(), b.len());
    let differing = a
        .chunks(4096)
        .zip(b.chunks(4096))
        .filter(|(x, y)| x != y)
        .count();
    assert_eq!(differing, 0, "{differing} blocks of 4 KiB differ");
    // The disk is a valid GPT with the planned partitions.
    let sgdisk = Command::new("sgdisk")
        .arg("-v")
        .arg(first.join("repro.raw"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&sgdisk.stdout);
    assert!(text.contains("No problems found"), "{text}");
}

#[test]
fn failing_script_is_named_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = recipe(dir.path(), "fails", &["kiln-test-fails"], "qcow2,raw");
    let out_dir = dir.path().join("out");
    let before = mount_points();
    let out = kiln_build(&path, &out_dir, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the build must fail:\n{stderr}");
    for needle in [
        "kiln-test-fails",
        "install.d/60-kiln-test-fails",
        "exit status 3",
        "the last words of 60-kiln-test-fails",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
    }
    assert_eq!(mount_points(), before, "mounts changed");
    let leftovers: Vec<_> = fs::read_dir(&out_dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "outputs left: {leftovers:?}");
    // The build directory is a tmpfs of the dead namespace: on the host the
    // fixed mount point stays empty.
    let base = Path::new("/var/tmp/kiln-build");
    let inside: Vec<_> = fs::read_dir(base)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(inside.is_empty(), "left in {}: {inside:?}", base.display());
}

/// Two builds at once (each on its own tmpfs at the same mount point, in its
/// own namespace) must not see or disturb each other.
#[test]
fn image_create_takes_disk_image_create_flags_and_builds_run_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let runs: Vec<_> = ["made-a", "made-b"]
        .into_iter()
        .map(|name| {
            Command::new(KILN)
                .current_dir(dir.path())
                .args([
                    "image",
                    "create",
                    "-o",
                    name,
                    "-t",
                    "tar",
                    "busybox-minimal",
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (run, name) in runs.into_iter().zip(["made-a", "made-b"]) {
        assert_success(&run.wait_with_output().unwrap());
        let listing = Command::new("tar")
            .arg("-tvf")
            .arg(dir.path().join(format!("{name}.tar")))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&listing.stdout);
        assert!(text.contains("bin/busybox"), "{name}: {text}");
        assert!(text.contains("etc/inittab"), "{name}: {text}");
    }
}

#[test]
fn ramdisk_recipe_makes_a_kernel_and_initramfs_that_boot() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(
        dir.path(),
        "ramdisk",
        "  elements: [busybox-minimal, kiln-test-marker]\n  ramdisk: true\n",
    );
    let out = kiln_build(&path, dir.path(), &[]);
    assert_success(&out);
    let kernel = dir.path().join("ramdisk.kernel");
    let initramfs = dir.path().join("ramdisk.initramfs");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("ramdisk.initramfs"), "{printed}");
    assert!(!dir.path().join("ramdisk.qcow2").exists());
    // GNU cpio reads it (after gzip -d) and finds the init and no kernel.
    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!("zcat {} | cpio -t --quiet", initramfs.display()))
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(names.lines().any(|l| l == "init"), "{names}");
    assert!(names.lines().any(|l| l == "bin/busybox"), "{names}");
    assert!(!names.contains("vmlinuz"), "kernel inside the ramdisk");
    let console = boot_kernel_until(
        &kernel,
        &initramfs,
        "console=ttyS0,115200",
        BOOT_TIMEOUT,
        &[MARKER],
    );
    assert!(
        console.contains(MARKER),
        "no marker on the console:\n{console}"
    );
}
