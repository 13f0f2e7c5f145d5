//! `kiln image customize / sysprep / inspect / cat` on an image kiln built
//! (busybox VM, qcow2), judged from outside: qemu-img check after every change,
//! the guest's files read back with debugfs from a qemu-img conversion, the
//! password hash checked with python3's crypt, the firstboot command seen on the
//! serial console of the booted image, and a failing or dry run leaving the
//! image byte-identical.

#[allow(dead_code)]
#[path = "common/vm.rs"]
mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use vm::{Firmware, boot_until};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

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

fn kiln(args: &[&str]) -> Output {
    Command::new(KILN).args(args).output().expect("run kiln")
}

/// The busybox VM, built once per test run; each test works on its own copy.
fn built_image() -> &'static Path {
    static IMAGE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = IMAGE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new(KILN)
            .args(["image", "build"])
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("recipes/busybox-vm.yaml"))
            .arg("-o")
            .arg(dir.path()));
        let path = dir.path().join("busybox-vm.qcow2");
        (dir, path)
    });
    path
}

fn copy_of_image(dir: &Path) -> PathBuf {
    let copy = dir.join("guest.qcow2");
    std::fs::copy(built_image(), &copy).unwrap();
    copy
}

fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

fn assert_qemu_img_check_clean(image: &Path) {
    let out = run(Command::new("qemu-img").arg("check").arg(image));
    assert!(String::from_utf8_lossy(&out.stdout).contains("No errors were found"));
}

/// A guest file read with debugfs from a raw conversion (independent of kiln).
fn debugfs_cat(image: &Path, path: &str) -> String {
    let raw = image.with_extension("check.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(image)
        .arg(&raw));
    // The root filesystem is partition 3 of block-device-efi.
    let out = run(Command::new("sfdisk").args(["-J"]).arg(&raw));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let start = json["partitiontable"]["partitions"][2]["start"]
        .as_u64()
        .unwrap();
    let out = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(format!("{}?offset={}", raw.display(), start * 512)));
    std::fs::remove_file(&raw).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn customize_changes_the_qcow2_in_place_and_firstboot_runs_at_boot() {
    let dir = tempfile::tempdir().unwrap();
    let image = copy_of_image(dir.path());
    let image_arg = image.to_str().unwrap();
    let out = kiln(&[
        "image",
        "customize",
        "-a",
        image_arg,
        "--root-password",
        "password:s3cret",
        "--hostname",
        "customized",
        "--write",
        "/etc/kiln-note:written by customize",
        "--mkdir",
        "/opt/kiln",
        "--run-command",
        "echo ran-in-chroot > /opt/kiln/ran",
        "--firstboot-command",
        "echo FIRSTBOOT-$((40 + 2)) > /dev/console",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_qemu_img_check_clean(&image);
    assert_eq!(debugfs_cat(&image, "/etc/hostname").trim(), "customized");
    assert_eq!(
        debugfs_cat(&image, "/etc/kiln-note"),
        "written by customize"
    );
    assert_eq!(debugfs_cat(&image, "/opt/kiln/ran").trim(), "ran-in-chroot");
    let shadow = debugfs_cat(&image, "/etc/shadow");
    let hash = shadow
        .lines()
        .find_map(|l| l.strip_prefix("root:"))
        .and_then(|rest| rest.split(':').next())
        .unwrap()
        .to_string();
    let check = run(Command::new("python3")
        .arg("-W")
        .arg("ignore")
        .arg("-c")
        .arg(format!(
            "import crypt,sys; sys.exit(0 if crypt.crypt('s3cret', '{hash}') == '{hash}' else 1)"
        )));
    assert!(check.status.success());

    let console = boot_until(
        &image,
        "qcow2",
        Firmware::SeaBios,
        Duration::from_secs(240),
        &["FIRSTBOOT-42"],
    );
    assert!(
        console.contains("FIRSTBOOT-42"),
        "firstboot did not run:\n{console}"
    );
}

#[test]
fn failing_operations_and_dry_runs_leave_the_image_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let image = copy_of_image(dir.path());
    let image_arg = image.to_str().unwrap();
    let before = sha256(&image);
    let out = kiln(&[
        "image",
        "customize",
        "-a",
        image_arg,
        "--write",
        "/etc/never:written",
        "--run-command",
        "echo about to fail; exit 7",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("exit 7") && stderr.contains("about to fail"),
        "{stderr}"
    );
    assert!(stderr.contains("unchanged"), "{stderr}");
    assert_eq!(sha256(&image), before);

    let out = kiln(&[
        "image",
        "customize",
        "-a",
        image_arg,
        "-n",
        "--write",
        "/etc/dry:run",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&image), before);
    let out = kiln(&["image", "sysprep", "-a", image_arg, "--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&image), before);
    // Nothing mounted or bound is left behind.
    let losetup = run(Command::new("losetup").arg("-a"));
    assert!(!String::from_utf8_lossy(&losetup.stdout).contains("kiln"));
}

#[test]
fn inspect_ls_cat_and_sysprep_agree_with_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = copy_of_image(dir.path());
    let image_arg = image.to_str().unwrap();
    let out = kiln(&["image", "inspect", "--json", image_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["product_name"], "kiln busybox-minimal");
    assert_eq!(info["hostname"], "busybox");
    assert_eq!(info["arch"], "x86_64");
    let fstypes: Vec<&str> = info["filesystems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["fstype"].as_str())
        .collect();
    assert!(
        fstypes.contains(&"ext4") && fstypes.contains(&"vfat"),
        "{fstypes:?}"
    );

    let out = kiln(&["image", "cat", image_arg, "/etc/inittab"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ttyS0::respawn"));
    let out = kiln(&["image", "ls", image_arg, "/boot"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.lines().any(|l| l.starts_with("vmlinuz-")),
        "{listing}"
    );

    // tmp-files is a default operation of sysprep.
    let out = kiln(&[
        "image",
        "customize",
        "-a",
        image_arg,
        "--write",
        "/tmp/junk:x",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kiln(&["image", "sysprep", "-a", image_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_qemu_img_check_clean(&image);
    let out = kiln(&["image", "ls", image_arg, "/tmp"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("junk"));

    let dest = dir.path().join("out");
    std::fs::create_dir(&dest).unwrap();
    let out = kiln(&[
        "image",
        "copy-out",
        image_arg,
        "/etc",
        dest.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("etc/hostname"))
            .unwrap()
            .trim(),
        "busybox"
    );
}

#[test]
fn tar_in_unpacks_gnu_tar_archives_confined_to_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let image = copy_of_image(dir.path());
    let image_arg = image.to_str().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("etc/kiln.d")).unwrap();
    std::fs::write(src.join("etc/kiln.d/conf"), "from a tarball\n").unwrap();
    std::os::unix::fs::symlink("conf", src.join("etc/kiln.d/link")).unwrap();
    let tarball = dir.path().join("in.tar.xz");
    run(Command::new("tar")
        .args(["-cJf"])
        .arg(&tarball)
        .args(["--owner=1234", "--group=99", "--mode=u=rw,g=r,o=", "-C"])
        .arg(&src)
        .arg("."));
    let out = kiln(&[
        "image",
        "customize",
        "-a",
        image_arg,
        "--tar-in",
        &format!("{}:/", tarball.display()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_qemu_img_check_clean(&image);
    assert_eq!(debugfs_cat(&image, "/etc/kiln.d/conf"), "from a tarball\n");
    let out = kiln(&["image", "ls", image_arg, "/etc/kiln.d"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "conf\nlink\n");

    // A member that climbs out of the target is refused; nothing is written.
    let before = sha256(&image);
    let evil = dir.path().join("evil.tar");
    run(Command::new("tar")
        .args(["-cf"])
        .arg(&evil)
        .args(["-C"])
        .arg(&src)
        .args(["--transform", "s,^\\./etc,../../escape,", "./etc"]));
    let out = kiln(&[
        "image",
        "customize",
        "-a",
        image_arg,
        "--tar-in",
        &format!("{}:/tmp", evil.display()),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("leaves the target"),
        "{stderr}"
    );
    assert_eq!(sha256(&image), before);
}
