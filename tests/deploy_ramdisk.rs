//! The deploy ramdisk and the qemu power driver, judged from outside: the
//! recipe's initramfs holds kiln, the libraries `ldd` names and the drivers; a
//! virtual node powered on by the driver boots it from the network, gets an
//! address by DHCP, runs `kiln --version` and reaches a conductor stand-in on
//! 127.0.0.1 through qemu's forward; powered off it leaves no qemu; set to boot
//! from disk it boots the busybox VM image under OVMF; a new driver over the
//! same state directory finds the running node again.

#[allow(dead_code)] // this test boots kernels only
#[path = "common/vm.rs"]
mod vm;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln::deploy::power::qemu::{Firmware, QemuDriver, QemuNode};
use kiln::deploy::power::{BootDevice, PowerDriver, PowerState};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn build(recipe: &str, out: &Path) -> Output {
    Command::new(KILN)
        .args(["image", "build"])
        .arg(repo().join("recipes").join(recipe))
        .arg("-o")
        .arg(out)
        .env("DIB_KILN_BINARY", KILN)
        .output()
        .expect("run kiln")
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

/// Whether `pid` is a live process (zombies count as gone: nobody may reap
/// a detached qemu in a container).
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !matches!(
                s.rsplit(')').next().and_then(|r| r.trim().chars().next()),
                Some('Z') | Some('X')
            )
        })
        .unwrap_or(false)
}

/// Kills the node's qemu when the test ends, also on panic.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = fs::read_to_string(&self.0)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("qemu") {
                // SAFETY: plain syscall on the test's own VM.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Console text written after byte `from`.
fn console_since(path: &Path, from: usize) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(from..).unwrap_or_default()).into_owned()
}

/// Wait until `done` holds for the console text after `from` (or time out);
/// returns that text.
fn wait_console(path: &Path, from: usize, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let text = console_since(path, from);
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        if ["Kernel panic", "grub rescue>", "No bootable"]
            .iter()
            .any(|m| text.contains(m))
        {
            return text;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A conductor stand-in: answers every HTTP request with 200 and reports its
/// request line.
fn http_server() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            // Headers up to the blank line.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = conn.write_all(
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n",
            );
            if tx.send(request.trim().to_string()).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

#[test]
fn deploy_ramdisk_boots_through_the_qemu_power_driver() {
    let dir = tempfile::tempdir().unwrap();
    let ramdisk_out = dir.path().join("ramdisk");
    let vm_out = dir.path().join("vm");
    let vm_build = {
        let vm_out = vm_out.clone();
        std::thread::spawn(move || build("busybox-vm.yaml", &vm_out))
    };
    assert_success(
        "deploy ramdisk build",
        &build("deploy-ramdisk.yaml", &ramdisk_out),
    );
    let kernel = ramdisk_out.join("deploy.kernel");
    let initramfs = ramdisk_out.join("deploy.initramfs");
    eprintln!(
        "deploy.initramfs: {} bytes",
        fs::metadata(&initramfs).unwrap().len()
    );

    // The initramfs holds kiln and every library ldd (the oracle) names.
    let ls = Command::new(KILN)
        .args(["initrd", "ls"])
        .arg(&initramfs)
        .output()
        .unwrap();
    assert_success("kiln initrd ls", &ls);
    let listing = String::from_utf8_lossy(&ls.stdout);
    let has = |path: &str| {
        listing
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some(path.trim_start_matches('/')))
    };
    let ldd = Command::new("ldd").arg(KILN).output().unwrap();
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    let libs: Vec<&str> = ldd
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .collect();
    assert!(!libs.is_empty(), "ldd names no library:\n{ldd}");
    for path in ["/usr/bin/kiln", "/etc/rc.d/S40kiln-agent", "/bin/busybox"]
        .into_iter()
        .chain(libs.iter().copied())
    {
        assert!(has(path), "{path} not in the initramfs:\n{listing}");
    }
    for module in ["virtio_net.ko", "virtio_blk.ko", "e1000.ko", "nvme.ko"] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!("/{module}"))),
            "{module} not in the initramfs"
        );
    }

    // Without a conductor URL the ramdisk says so and stays up for a login.
    let no_url = {
        let (kernel, initramfs) = (kernel.clone(), initramfs.clone());
        std::thread::spawn(move || {
            vm::boot_kernel_until(
                &kernel,
                &initramfs,
                "console=ttyS0,115200",
                BOOT_TIMEOUT,
                &["kiln-deploy login:"],
            )
        })
    };

    let vm_built = vm_build.join().unwrap();
    assert_success("busybox-vm build", &vm_built);
    let (port, requests) = http_server();
    let node = QemuNode {
        name: "node-0".into(),
        disk: vm_out.join("busybox-vm.qcow2"),
        disk_format: "qcow2".into(),
        mac: "52:54:00:6b:69:01".into(),
        memory_mb: 512,
        cpus: 1,
        firmware: Firmware::Uefi,
        state_dir: dir.path().join("state"),
        deploy_kernel: kernel.clone(),
        deploy_initramfs: initramfs.clone(),
        kernel_append: "console=ttyS0,115200 ipa-api-url=http://10.0.2.100".into(),
        conductor_port: port,
        qemu_binary: "qemu-system-x86_64".into(),
        ovmf_dir: "/usr/share/OVMF".into(),
        relay: None,
    };
    let driver = QemuDriver::new(node.clone()).unwrap();
    let _kill = KillOnDrop(driver.pid_file());
    let console = driver.console_log();
    assert_eq!(driver.power_state().unwrap(), PowerState::Off);
    assert_eq!(driver.next_boot_device().unwrap(), BootDevice::Network);

    // Network boot: the deploy ramdisk.
    driver.power_on().unwrap();
    assert_eq!(driver.power_state().unwrap(), PowerState::On);
    let version =
        String::from_utf8(Command::new(KILN).arg("--version").output().unwrap().stdout).unwrap();
    let text = wait_console(&console, 0, |t| {
        t.contains("DHCP configured") && t.contains(version.trim()) && t.contains("reachable")
    });
    assert!(
        text.contains("kiln-agent: DHCP configured eth0 10.0.2.15"),
        "no DHCP lease on the console:\n{text}"
    );
    assert!(
        text.contains(&format!("kiln-agent: {}", version.trim())),
        "kiln --version did not run inside:\n{text}"
    );
    let request = requests
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the node never reached the test server:\n{text}"));
    assert!(request.starts_with("GET / HTTP/"), "{request}");
    assert!(text.contains("reachable: HTTP/1.0 200 OK"), "{text}");
    // The agent loop runs (whatever `kiln agent` itself does in this build).
    let text = wait_console(&console, 0, |t| {
        t.contains("kiln-agent: starting kiln agent --api-url http://10.0.2.100")
    });
    assert!(
        text.contains("kiln-agent: starting kiln agent --api-url http://10.0.2.100"),
        "the agent loop did not start:\n{text}"
    );

    // A conductor restart: a new driver over the same state directory.
    let pid = driver.running_pid().expect("qemu runs");
    drop(driver);
    let driver = QemuDriver::new(node.clone()).unwrap();
    assert_eq!(driver.power_state().unwrap(), PowerState::On);
    assert_eq!(driver.running_pid(), Some(pid));

    driver.power_off().unwrap();
    assert_eq!(driver.power_state().unwrap(), PowerState::Off);
    assert!(!alive(pid), "qemu pid {pid} still runs after power off");
    assert!(!driver.pid_file().exists());

    // Disk boot under OVMF: the busybox VM image.
    driver.set_boot_device(BootDevice::Disk, true).unwrap();
    let from = fs::metadata(&console).unwrap().len() as usize;
    driver.power_on().unwrap();
    let text = wait_console(&console, from, |t| {
        t.contains("kiln busybox-minimal: up") && t.contains("login:")
    });
    assert!(
        text.contains("kiln busybox-minimal: up") && text.contains("busybox login:"),
        "the disk did not boot:\n{text}"
    );
    assert!(
        !text.contains("kiln-agent:"),
        "booted the deploy ramdisk, not the disk:\n{text}"
    );
    let pid = driver.running_pid().expect("qemu runs");
    driver.power_off().unwrap();
    assert!(!alive(pid), "qemu pid {pid} still runs after power off");

    let text = no_url.join().unwrap();
    assert!(
        text.contains("kiln-agent: no conductor URL on the kernel command line")
            && text.contains("kiln-deploy login:"),
        "no message or no login without a URL:\n{text}"
    );
    assert!(!text.contains("starting kiln agent"), "{text}");
}
