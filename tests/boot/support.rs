//! Test helpers: the kernel and busybox initrd tree, disk assembly with
//! independent tools, and qemu runs that stop on what the console shows.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kiln::format::fat::{FatOptions, write_fat};
use kiln::format::initrd::Compression;
use kiln::initrd::{PackOptions, pack_dir};
use uuid::Uuid;

/// What the initrd's /init prints (split so the echo command line itself, which
/// the kernel may log, never contains it).
pub const MARKER: &str = "KILN-BOOT-OK";
/// TCG is slow; a normal boot takes 10-20 s.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a disk that must not boot is watched. SeaBIOS running an empty MBR
/// hangs silently, so there is no console event to stop at; this is several times
/// what a successful boot of the same disk with a loader takes.
pub const NO_BOOT_WATCH: Duration = Duration::from_secs(60);

const MIB: u64 = 1 << 20;
const DISK_SIZE: u64 = 128 * MIB;
/// GPT: BIOS boot 1 MiB at 1 MiB, ESP 32 MiB at 2 MiB, root 80 MiB at 34 MiB.
const ESP_START: u64 = 2 * MIB;
const ESP_SIZE: u64 = 32 * MIB;
const GPT_ROOT_START: u64 = 34 * MIB;
/// MBR: root at 1 MiB.
const MBR_ROOT_START: u64 = MIB;
const ROOT_SIZE: u64 = 80 * MIB;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Gpt,
    Mbr,
}

pub use crate::vm::{Firmware, boot_until};

/// A scratch folder for one test.
pub struct Work {
    pub name: String,
    pub dir: tempfile::TempDir,
}

impl Work {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            dir: tempfile::Builder::new()
                .prefix(&format!("kiln-boot-{name}-"))
                .tempdir()
                .unwrap(),
        }
    }

    /// A fresh image tree: /boot/vmlinuz (Debian's kernel), /boot/initrd.img.
    pub fn tree(&self) -> PathBuf {
        let tree = self.dir.path().join(format!("tree-{}", unique()));
        fs::create_dir_all(tree.join("boot")).unwrap();
        fs::copy(kernel(), tree.join("boot/vmlinuz")).unwrap();
        let initrd_root = self.dir.path().join(format!("initrd-{}", unique()));
        busybox_root(&initrd_root);
        pack_dir(
            &initrd_root,
            &tree.join("boot/initrd.img"),
            &PackOptions {
                compression: Compression::Gzip,
                early: None,
                mtime_clamp: None,
                progress: false,
            },
        )
        .unwrap();
        tree
    }

    /// Partition a sparse disk file, make the ESP from TREE/boot/efi with kiln's FAT
    /// writer (GPT) and the root from the rest of TREE with `mke2fs -d`.
    pub fn assemble(&self, tree: &Path, layout: Layout, root_uuid: Uuid) -> PathBuf {
        let disk = self.dir.path().join(format!("disk-{}.img", unique()));
        let d = disk.display();
        let root_start = match layout {
            Layout::Gpt => {
                sh(&format!(
                    "truncate -s {DISK_SIZE} {d} && sgdisk -n 1:2048:+1M -t 1:EF02 \
                     -n 2:0:+{}M -t 2:EF00 -n 3:0:+{}M -t 3:8300 {d} >/dev/null",
                    ESP_SIZE / MIB,
                    ROOT_SIZE / MIB
                ));
                GPT_ROOT_START
            }
            Layout::Mbr => {
                sh(&format!(
                    "truncate -s {DISK_SIZE} {d} && printf 'label: dos\\nlabel-id: 0x6b696c6e\\n\
                     start=2048, size={}, type=83, bootable\\n' | sfdisk -q {d}",
                    ROOT_SIZE / 512
                ));
                MBR_ROOT_START
            }
        };
        // The ESP's contents leave the root tree (the mount point stays).
        let esp_src = tree.join("boot/efi");
        let esp = self.dir.path().join(format!("esp-{}", unique()));
        if esp_src.exists() {
            fs::rename(&esp_src, &esp).unwrap();
        } else {
            fs::create_dir(&esp).unwrap();
        }
        fs::create_dir_all(&esp_src).unwrap();
        if layout == Layout::Gpt {
            let file = OpenOptions::new().write(true).open(&disk).unwrap();
            write_fat(
                &file,
                ESP_START,
                &esp,
                &FatOptions {
                    size: ESP_SIZE,
                    label: Some("ESP".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        sh(&format!(
            "mke2fs -q -F -t ext4 -U {root_uuid} -d {} -E offset={root_start} {d} {}k",
            tree.display(),
            ROOT_SIZE / 1024
        ));
        disk
    }
}

fn unique() -> String {
    Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// Debian's newest installed kernel.
fn kernel() -> PathBuf {
    let mut found: Vec<PathBuf> = fs::read_dir("/boot")
        .expect("/boot: install linux-image-amd64")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("no /boot/vmlinuz-*: install linux-image-amd64")
}

/// Static busybox and an /init that prints the marker and powers off.
fn busybox_root(root: &Path) {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("install busybox-static");
    for applet in ["sh", "echo", "poweroff"] {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let (a, b) = MARKER.split_at(5);
    let init = root.join("init");
    fs::write(
        &init,
        format!("#!/bin/busybox sh\necho \"{a}\"\"{b}\" >/dev/console\npoweroff -f\n"),
    )
    .unwrap();
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Run a bash script, panicking with its output when it fails; returns stdout.
#[track_caller]
pub fn sh(script: &str) -> String {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Boot the raw `disk` and return the serial console text (see
/// [`boot_until`]), stopping at the marker.
pub fn boot(disk: &Path, firmware: Firmware) -> String {
    boot_for(disk, firmware, BOOT_TIMEOUT)
}

/// [`boot`] with a deadline of `limit`.
pub fn boot_for(disk: &Path, firmware: Firmware, limit: Duration) -> String {
    boot_until(disk, "raw", firmware, limit, &[MARKER])
}
