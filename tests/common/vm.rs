//! Booting a disk under `qemu-system-x86_64 -accel tcg` and reading its serial
//! console: shared by the tests that judge bootability.

use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    SeaBios,
    Ovmf,
}

/// Console text after which nothing will boot any more: stop the VM there.
pub const DEAD_ENDS: &[&str] = &[
    "grub rescue>",
    "grub>",
    "No bootable device",
    "No bootable option or device was found",
    "Shell>",
    "Kernel panic",
];

/// Boot `disk` (`format` raw or qcow2; never modified: qemu's snapshot mode) and
/// return the serial console text. The VM ends when it powers off, when the
/// console shows one of `stop_at` or a dead end, or after `limit`; it is killed
/// in every case.
pub fn boot_until(
    disk: &Path,
    format: &str,
    firmware: Firmware,
    limit: Duration,
    stop_at: &[&str],
) -> String {
    let drive = format!("file={},format={format},if=virtio", disk.display());
    run_vm(&["-drive", &drive], firmware, limit, stop_at)
}

/// Boot `kernel` with `initrd` directly (qemu loads them; no disk) with the
/// kernel command line `append`; otherwise as [`boot_until`].
pub fn boot_kernel_until(
    kernel: &Path,
    initrd: &Path,
    append: &str,
    limit: Duration,
    stop_at: &[&str],
) -> String {
    let kernel = kernel.display().to_string();
    let initrd = initrd.display().to_string();
    run_vm(
        &["-kernel", &kernel, "-initrd", &initrd, "-append", append],
        Firmware::SeaBios,
        limit,
        stop_at,
    )
}

fn run_vm(args: &[&str], firmware: Firmware, limit: Duration, stop_at: &[&str]) -> String {
    let work = tempfile::Builder::new()
        .prefix("kiln-boot-vm-")
        .tempdir()
        .unwrap();
    let serial = work.path().join("serial.log");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-m", "512", "-nodefaults", "-nographic"])
        .args(["-no-reboot", "-snapshot"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args(args);
    if firmware == Firmware::Ovmf {
        let vars = work.path().join("OVMF_VARS_4M.fd");
        fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).expect("install ovmf");
        cmd.arg("-drive")
            .arg("if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().expect("install qemu-system-x86");
    let deadline = Instant::now() + limit;
    let console = |path: &Path| {
        fs::read(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let text = console(&serial);
        if stop_at.iter().chain(DEAD_ENDS).any(|m| text.contains(m)) {
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: plain syscall on the VM's own process group.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let mut text = console(&serial);
    if !stderr.is_empty() {
        text.push_str("\n--- qemu stderr:\n");
        text.push_str(&stderr);
    }
    text
}
