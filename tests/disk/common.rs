use std::ffi::OsStr;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::disk::{DiskPlan, Layout, PlanOptions};

pub const MIB: u64 = 1 << 20;
pub const EPOCH: i64 = 1_700_000_000;

/// Run a tool, panicking with its output when it fails; returns stdout.
pub fn run(program: &str, args: &[&OsStr]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed: {text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// A root tree with files, directories, a symlink, a hard link, a device node, a
/// FIFO, a file with an xattr, a sticky directory and a boot/efi subtree.
pub fn build_tree(root: &Path) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    w("etc/hostname", b"kiln-test\n");
    w(
        "usr/bin/tool",
        &(0..200_000u32)
            .flat_map(|i| i.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    std::fs::set_permissions(
        root.join("usr/bin/tool"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-link")).unwrap();
    symlink("../usr/bin/tool", root.join("etc/tool-symlink")).unwrap();
    w("etc/secret", b"owned by 1000\n");
    std::os::unix::fs::chown(root.join("etc/secret"), Some(1000), Some(1001)).unwrap();
    std::fs::set_permissions(
        root.join("etc/secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    w("etc/with-xattr", b"labelled\n");
    kiln::fs::xattr::set(&root.join("etc/with-xattr"), os("user.kiln"), b"hello").unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    mknod(
        &root.join("dev/null"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    );
    mknod(&root.join("dev/fifo"), libc::S_IFIFO | 0o644, 0);
    // mknod obeys the umask.
    std::fs::set_permissions(
        root.join("dev/null"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::create_dir_all(root.join("proc/1")).unwrap();
    w("proc/1/status", b"left out of tar and squashfs\n");
    w("boot/efi/EFI/BOOT/BOOTX64.EFI", b"not really a loader");
    w("boot/efi/loader/loader.conf", b"timeout 0\n");
    w("boot/vmlinuz", b"kernel");
    for dir in ["etc", "usr", "usr/bin", "boot"] {
        set_mtime(&root.join(dir), EPOCH - 100);
    }
    set_mtime(&root.join("etc/hostname"), EPOCH + 1000);
}

pub fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mknod(c.as_ptr(), mode, dev) },
        0,
        "mknod {}",
        path.display()
    );
}

pub fn set_mtime(path: &Path, secs: i64) {
    let f = std::fs::File::open(path).unwrap();
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    f.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

pub fn plan(layout: &Layout, size: u64, seed: &str) -> DiskPlan {
    DiskPlan::new(
        layout,
        &PlanOptions {
            image_size: Some(size),
            tree_usage: None,
            extra_size: None,
            seed: seed.into(),
            timestamp: EPOCH,
        },
    )
    .unwrap()
}

/// Copy bytes `[offset, offset+len)` of `disk` into a new sparse file.
pub fn extract(disk: &Path, offset: u64, len: u64, dest: &Path) -> PathBuf {
    run(
        "dd",
        &[
            os(&format!("if={}", disk.display())),
            os(&format!("of={}", dest.display())),
            os("bs=1M"),
            os(&format!("skip={}", offset / MIB)),
            os(&format!("count={}", len / MIB)),
            os("conv=sparse"),
            os("status=none"),
        ],
    );
    dest.to_path_buf()
}
