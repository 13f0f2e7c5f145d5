//! The real kernel is the oracle: an initramfs that kiln packs (busybox-static and an
//! /init script) boots Debian's kernel under `qemu-system-x86_64 -accel tcg`, and a
//! module injected with `kiln initrd add --module` loads with modprobe inside it, and a
//! dynamically linked program added with `--binary` runs there.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{kiln, require, run};

const BOOT_MARKER: &str = "KILN-BOOT-MARKER";
const MODPROBE_MARKER: &str = "KILN-MODPROBE-OK";
const BINARY_MARKER: &str = "KILN-BINARY-OK";
/// A dynamically linked host program added with `--binary`: it only runs in the VM
/// if its interpreter and every library came along.
const HOST_PROGRAM: &str = "/usr/bin/ls";
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// A kernel version with both a bootable image in /boot and its modules.
fn installed_kernel() -> (String, PathBuf) {
    let mut found: Vec<(String, PathBuf)> = fs::read_dir("/boot")
        .expect("/boot: install linux-image-amd64")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            Path::new("/lib/modules")
                .join(&version)
                .join("modules.dep")
                .exists()
                .then(|| (version, PathBuf::from("/boot").join(&name)))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("no /boot/vmlinuz-* with modules in /lib/modules: install linux-image-amd64")
}

/// A minimal root: static busybox, and an /init that prints a marker, tries to
/// load the `dummy` network module and powers off.
fn busybox_root(root: &Path) {
    for dir in ["bin", "proc", "sys", "dev"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("install busybox-static");
    for applet in ["sh", "mount", "modprobe", "poweroff", "echo"] {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let init = root.join("init");
    fs::write(
        &init,
        format!(
            "#!/bin/busybox sh\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sys /sys\n\
             echo {BOOT_MARKER}\n\
             modprobe dummy && [ -d /sys/module/dummy ] && echo {MODPROBE_MARKER}\n\
             {HOST_PROGRAM} /proc/self >/dev/null && echo {BINARY_MARKER}\n\
             poweroff -f\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Boot `kernel` with `initrd` and return what the serial console printed.
fn boot(kernel: &Path, initrd: &Path) -> String {
    let out = run(
        Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-m",
                "512",
                "-nodefaults",
                "-nographic",
                "-no-reboot",
                "-serial",
                "stdio",
                "-append",
                "console=ttyS0 panic=-1 quiet",
            ])
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd),
        BOOT_TIMEOUT,
    );
    out.stdout_str()
}

#[test]
fn packed_initrd_boots_and_added_module_loads() {
    require("qemu-system-x86_64");
    let (version, kernel) = installed_kernel();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    busybox_root(&root);
    let base = dir.path().join("base.img");
    let added = dir.path().join("added.img");
    kiln(&[
        "initrd".as_ref(),
        "pack".as_ref(),
        root.as_os_str(),
        "-o".as_ref(),
        base.as_os_str(),
        "--compression".as_ref(),
        "gzip".as_ref(),
    ])
    .assert_ok();
    kiln(&[
        "initrd".as_ref(),
        "add".as_ref(),
        base.as_os_str(),
        "-o".as_ref(),
        added.as_os_str(),
        "--module".as_ref(),
        "dummy".as_ref(),
        "--kernel-version".as_ref(),
        version.as_ref(),
        "--binary".as_ref(),
        HOST_PROGRAM.as_ref(),
    ])
    .assert_ok();

    // Without the additions the init runs but modprobe and the program fail: the
    // control case.
    let console = boot(&kernel, &base);
    assert!(console.contains(BOOT_MARKER), "no boot marker:\n{console}");
    assert!(
        !console.contains(MODPROBE_MARKER),
        "dummy loaded without being added:\n{console}"
    );
    assert!(
        !console.contains(BINARY_MARKER),
        "{HOST_PROGRAM} ran without being added:\n{console}"
    );

    let console = boot(&kernel, &added);
    assert!(console.contains(BOOT_MARKER), "no boot marker:\n{console}");
    assert!(
        console.contains(MODPROBE_MARKER),
        "modprobe dummy failed in the VM:\n{console}"
    );
    assert!(
        console.contains(BINARY_MARKER),
        "{HOST_PROGRAM} added with --binary did not run in the VM:\n{console}"
    );
}
