//! Guest sessions on images made at test time (GPT + ext4, LVM, raw and
//! qcow2), read back with independent tools: debugfs and e2fsck on the
//! committed image, sha256 for discarded sessions, losetup/mountinfo for
//! leftovers. Needs root, /dev/fuse and loop devices.
//!
//! The tests share loop devices and check `losetup -a` for leftovers, so they
//! run one at a time (a lock), each in a private mount namespace of its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use kiln::build::sandbox::enter_private_mount_namespace;
use kiln::format::ImageFormat;
use kiln::guest::{GuestError, GuestSession};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(script: &str) -> String {
    run(Command::new("sh").args(["-euc", script]))
}

fn sha256(path: &Path) -> String {
    sh(&format!("sha256sum < '{}'", path.display()))
}

/// Nothing of a session is left: no loop device on a kiln FUSE file, no FUSE
/// mount (host or this namespace), no work directory.
fn assert_nothing_left() {
    let loops = run(Command::new("losetup").arg("-a"));
    assert!(!loops.contains("kiln-"), "loop devices left: {loops}");
    for table in ["/proc/self/mountinfo", "/proc/thread-self/mountinfo"] {
        let text = std::fs::read_to_string(table).unwrap();
        assert!(
            !text
                .lines()
                .any(|l| l.contains(" fuse ") || l.contains("kiln-guest-")),
            "mounts left in {table}: {text}"
        );
    }
    let tmp = std::env::temp_dir();
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("kiln-guest-"))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "work directories left: {left:?}");
}

/// Byte offset of partition `n` as sgdisk reports it.
fn partition_offset(image: &Path, n: u32) -> u64 {
    let info = run(Command::new("sgdisk").arg(format!("-i{n}")).arg(image));
    let line = info
        .lines()
        .find(|l| l.starts_with("First sector:"))
        .unwrap();
    let sector: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    sector * 512
}

/// A filesystem image of `size_mib` made with mke2fs -d from `tree`.
fn ext4_file(dir: &Path, name: &str, tree: &Path, label: &str, size_mib: u64) -> PathBuf {
    let file = dir.join(name);
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", label, "-d"])
        .arg(tree)
        .arg(&file)
        .arg(format!("{size_mib}M")));
    file
}

fn write_tree(root: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// Copy `fs` into `image` at `offset`.
fn place(image: &Path, fs: &Path, offset: u64) {
    run(Command::new("dd")
        .arg(format!("if={}", fs.display()))
        .arg(format!("of={}", image.display()))
        .args(["bs=64K", "conv=notrunc,sparse", "status=none"])
        .arg(format!("seek={offset}"))
        .arg("oflag=seek_bytes"));
}

/// Copy `len` bytes at `offset` of `image` into a new file.
fn extract(image: &Path, offset: u64, len: u64, out: &Path) {
    run(Command::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", out.display()))
        .args(["bs=64K", "status=none", "iflag=skip_bytes,count_bytes"])
        .arg(format!("skip={offset}"))
        .arg(format!("count={len}")));
}

fn debugfs_cat(fs: &Path, path: &str) -> String {
    run(Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(fs))
}

/// A GPT disk of `size_mib`: partition 1 /boot (ext4, 16 MiB), partition 2
/// root (ext4, rest) with an fstab that mounts /boot by UUID.
fn gpt_ext4_image(dir: &Path, size_mib: u64) -> PathBuf {
    let boot_tree = dir.join("boot-tree");
    write_tree(&boot_tree, &[("grub/grub.cfg", "set timeout=1\n")]);
    let boot = ext4_file(dir, "boot.ext4", &boot_tree, "boot", 16);
    let boot_uuid = sh(&format!("blkid -s UUID -o value '{}'", boot.display()));
    let root_tree = dir.join("root-tree");
    write_tree(
        &root_tree,
        &[
            ("etc/os-release", "ID=kilntest\nVERSION_ID=1\n"),
            (
                "etc/fstab",
                &format!(
                    "# test\nLABEL=root / ext4 defaults 0 1\nUUID={} /boot ext4 defaults 0 2\n",
                    boot_uuid.trim()
                ),
            ),
        ],
    );
    std::fs::create_dir_all(root_tree.join("boot")).unwrap();
    let root_mib = size_mib - 16 - 2;
    let root = ext4_file(dir, "root.ext4", &root_tree, "root", root_mib);
    let image = dir.join("disk.raw");
    run(Command::new("truncate")
        .arg(format!("-s{size_mib}M"))
        .arg(&image));
    run(Command::new("sgdisk")
        .args(["-n1:2048:+16M", "-n2:0:0"])
        .arg(&image));
    place(&image, &boot, partition_offset(&image, 1));
    place(&image, &root, partition_offset(&image, 2));
    image
}

fn to_qcow2(raw: &Path) -> PathBuf {
    let q = raw.with_extension("qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(&q));
    q
}

fn enter() -> std::sync::MutexGuard<'static, ()> {
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    enter_private_mount_namespace().unwrap();
    guard
}

#[test]
fn raw_session_reads_writes_and_commits_into_the_image() {
    let _one = enter();
    let dir = tempfile::tempdir().unwrap();
    let image = gpt_ext4_image(dir.path(), 64);
    let session = GuestSession::open(&image, Some(ImageFormat::Raw), true).unwrap();
    let root = session.root().to_path_buf();
    assert_eq!(
        std::fs::read_to_string(root.join("etc/os-release")).unwrap(),
        "ID=kilntest\nVERSION_ID=1\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("boot/grub/grub.cfg")).unwrap(),
        "set timeout=1\n"
    );
    let fs = session.filesystems();
    let boot = fs
        .iter()
        .find(|f| f.label.as_deref() == Some("boot"))
        .unwrap();
    assert_eq!(boot.mountpoint.as_deref(), Some(Path::new("/boot")));
    assert_eq!(boot.fstype.as_deref(), Some("ext4"));
    std::fs::write(root.join("etc/kiln-written"), "from the session\n").unwrap();
    std::fs::write(root.join("boot/new.cfg"), vec![b'x'; 300_000]).unwrap();
    assert!(!session.overlay().changed_ranges().is_empty());
    session.commit().unwrap();
    assert_nothing_left();

    let root_fs = dir.path().join("root.out");
    let boot_fs = dir.path().join("boot.out");
    let root_off = partition_offset(&image, 2);
    extract(
        &image,
        root_off,
        64 * 1024 * 1024 - root_off - 34 * 512,
        &root_fs,
    );
    extract(&image, partition_offset(&image, 1), 16 << 20, &boot_fs);
    assert_eq!(
        debugfs_cat(&root_fs, "/etc/kiln-written"),
        "from the session\n"
    );
    assert_eq!(debugfs_cat(&boot_fs, "/new.cfg").len(), 300_000);
    run(Command::new("e2fsck").arg("-fn").arg(&root_fs));
    run(Command::new("e2fsck").arg("-fn").arg(&boot_fs));
    run(Command::new("sgdisk").arg("-v").arg(&image));
}

#[test]
fn discarded_and_failed_sessions_leave_images_byte_identical() {
    let _one = enter();
    let dir = tempfile::tempdir().unwrap();
    let raw = gpt_ext4_image(dir.path(), 64);
    let qcow = to_qcow2(&raw);
    for (image, format) in [(&raw, ImageFormat::Raw), (&qcow, ImageFormat::Qcow2)] {
        let before = sha256(image);
        let session = GuestSession::open(image, None, true).unwrap();
        assert_eq!(session.format(), format);
        std::fs::write(session.root().join("etc/gone"), "never committed").unwrap();
        std::fs::remove_file(session.root().join("etc/os-release")).unwrap();
        session.discard().unwrap();
        assert_nothing_left();
        assert_eq!(sha256(image), before, "{}", image.display());
        // Dropping without commit (the panic and error path) discards too.
        {
            let session = GuestSession::open(image, None, true).unwrap();
            std::fs::write(session.root().join("etc/gone"), "dropped").unwrap();
        }
        assert_nothing_left();
        assert_eq!(sha256(image), before, "{}", image.display());
    }
}

#[test]
fn qcow2_commit_writes_only_changed_clusters_in_place() {
    let _one = enter();
    let dir = tempfile::tempdir().unwrap();
    let raw = gpt_ext4_image(dir.path(), 64);
    let qcow = to_qcow2(&raw);
    let session = GuestSession::open(&qcow, None, true).unwrap();
    std::fs::write(session.root().join("etc/x"), "into the qcow2\n").unwrap();
    let changed: u64 = session
        .overlay()
        .changed_ranges()
        .iter()
        .map(|r| r.range.end - r.range.start)
        .sum();
    session.commit().unwrap();
    assert_nothing_left();
    run(Command::new("qemu-img").arg("check").arg(&qcow));
    // Read back with qemu-img and debugfs, independently of kiln.
    let back = dir.path().join("back.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&qcow)
        .arg(&back));
    let root_fs = dir.path().join("root.out");
    let root_off = partition_offset(&back, 2);
    extract(
        &back,
        root_off,
        64 * 1024 * 1024 - root_off - 34 * 512,
        &root_fs,
    );
    assert_eq!(debugfs_cat(&root_fs, "/etc/x"), "into the qcow2\n");
    run(Command::new("e2fsck").arg("-fn").arg(&root_fs));
    // In place: the file grew by about what changed, not by the disk.
    let size = std::fs::metadata(&qcow).unwrap().len();
    let fresh = std::fs::metadata(to_qcow2(&back)).unwrap().len();
    assert!(
        size <= fresh + changed + (1 << 20),
        "{size} bytes after commit, a fresh convert is {fresh}, {changed} bytes changed"
    );
}

#[test]
fn read_only_qcow2_session_sees_the_guest() {
    let _one = enter();
    let dir = tempfile::tempdir().unwrap();
    let qcow = to_qcow2(&gpt_ext4_image(dir.path(), 64));
    let before = sha256(&qcow);
    let session = GuestSession::open(&qcow, Some(ImageFormat::Qcow2), false).unwrap();
    assert_eq!(
        std::fs::read_to_string(session.root().join("boot/grub/grub.cfg")).unwrap(),
        "set timeout=1\n"
    );
    let err = std::fs::write(session.root().join("etc/x"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert!(matches!(session.commit(), Err(GuestError::ReadOnly { .. })));
    assert_nothing_left();
    assert_eq!(sha256(&qcow), before);
}

#[test]
fn lvm_root_volume_is_found_mounted_and_committed() {
    let _one = enter();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("lvm.raw");
    run(Command::new("truncate").arg("-s64M").arg(&image));
    run(Command::new("sgdisk")
        .args(["-n1:2048:+8M", "-n2:0:0", "-t2:8e00"])
        .arg(&image));
    let pv_off = partition_offset(&image, 2);
    let vg = format!("kilntest{}", std::process::id());
    // The PV is made on a loop device of the test file (partition 2 only).
    let conf = "global { activation = 0 } devices { use_devicesfile = 0 } backup { backup = 0 archive = 0 }";
    let lvm_out = sh(&format!(
        "export LVM_SUPPRESS_FD_WARNINGS=1
         dev=$(losetup -f --show -o {pv_off} '{img}')
         trap 'losetup -d $dev' EXIT
         pvcreate -q --config '{conf}' --devices $dev $dev >&2
         vgcreate -q --config '{conf}' --devices $dev {vg} $dev >&2
         lvcreate -q --config '{conf}' --devices $dev -an -Zn -L 20M -n root {vg} >&2
         pvs --config '{conf}' --devices $dev --noheadings --units b --nosuffix -o pe_start
         lvs --config '{conf}' --devices $dev --noheadings --segments -o seg_pe_ranges,vg_extent_size --units b --nosuffix",
        img = image.display()
    ));
    let nums: Vec<String> = lvm_out.split_whitespace().map(String::from).collect();
    let pe_start: u64 = nums[0].parse().unwrap();
    let first_pe: u64 = nums[1]
        .rsplit(':')
        .next()
        .unwrap()
        .split('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let extent: u64 = nums[2].parse().unwrap();
    let lv_off = pv_off + pe_start + first_pe * extent;
    let tree = dir.path().join("tree");
    write_tree(
        &tree,
        &[
            ("etc/os-release", "ID=lvmtest\n"),
            (
                "etc/fstab",
                &format!("/dev/mapper/{vg}-root / ext4 defaults 0 1\n"),
            ),
        ],
    );
    let fs = ext4_file(dir.path(), "lv.ext4", &tree, "lvroot", 20);
    place(&image, &fs, lv_off);

    let session = GuestSession::open(&image, None, true).unwrap();
    let lv = session
        .filesystems()
        .iter()
        .find(|f| f.name == format!("{vg}/root"))
        .unwrap();
    assert_eq!(lv.mountpoint.as_deref(), Some(Path::new("/")));
    assert_eq!(
        std::fs::read_to_string(session.root().join("etc/os-release")).unwrap(),
        "ID=lvmtest\n"
    );
    std::fs::write(session.root().join("etc/lvm-written"), "on the LV\n").unwrap();
    session.commit().unwrap();
    assert_nothing_left();
    let out = dir.path().join("lv.out");
    extract(&image, lv_off, 20 << 20, &out);
    assert_eq!(debugfs_cat(&out, "/etc/lvm-written"), "on the LV\n");
    run(Command::new("e2fsck").arg("-fn").arg(&out));
    // No VG of the test is known to the host (nothing was activated).
    let vgs = run(Command::new("vgs").env("LVM_SUPPRESS_FD_WARNINGS", "1"));
    assert!(!vgs.contains(&vg), "{vgs}");
}

#[test]
fn a_gibibyte_image_opens_and_closes() {
    let _one = enter();
    let dir = tempfile::tempdir().unwrap();
    let image = gpt_ext4_image(dir.path(), 1024);
    let before = sha256(&image);
    let start = Instant::now();
    let session = GuestSession::open(&image, None, false).unwrap();
    let opened = start.elapsed();
    assert!(session.root().join("etc/os-release").exists());
    session.discard().unwrap();
    // Reported, not asserted: timings belong in benches.
    eprintln!(
        "1 GiB raw image: open+mount {:?}, total with unmount {:?}",
        opened,
        start.elapsed()
    );
    assert_nothing_left();
    assert_eq!(sha256(&image), before);
}
