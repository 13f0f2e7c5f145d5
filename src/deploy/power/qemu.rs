//! The `qemu` power driver: virtual nodes for development and tests.
//!
//! Powering on starts `qemu-system-x86_64 -accel tcg` detached (`-daemonize`:
//! its own session, so it outlives the conductor as a BMC would). Everything
//! about a node lives in its state directory: `NAME.pid`, the QMP socket
//! `NAME.qmp`, the serial console `NAME.console.log` (appended across boots),
//! the boot device `NAME.boot` and, under UEFI, its own `NAME.OVMF_VARS.fd`.
//! A new driver over the same directory finds a running node again by its pid
//! file and QMP `query-status`.
//!
//! The node's network is qemu's user network with `restrict=on`: DHCP from
//! qemu, nothing outside reachable except http://10.0.2.100, which qemu relays
//! to the conductor's port on 127.0.0.1 (`guestfwd`, one relay process per
//! connection). While the node runs the deploy ramdisk, a free port on
//! 127.0.0.1 is forwarded to the guest's iSCSI port 3260 (`hostfwd`), so the
//! conductor's initiator reaches a disk the agent exports; the port is kept in
//! `NAME.iscsi-port` next to the pid file, for a restarted conductor.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{BootDevice, PowerDriver, PowerError, PowerState, Result};

const DRIVER: &str = "qemu";
/// The address the node reaches the conductor at.
pub const CONDUCTOR_GUEST_ADDR: &str = "10.0.2.100";
/// The port an agent's iSCSI target listens on inside the node (RFC 7143's).
pub const ISCSI_GUEST_PORT: u16 = 3260;
/// Starts tried when the free port picked for the iSCSI forward is taken by
/// someone else before qemu binds it.
const FORWARD_ATTEMPTS: u32 = 3;
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// sockaddr_un's path field, NUL included.
const UNIX_PATH_MAX: usize = 108;

/// Firmware of a virtual node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    /// OVMF from `ovmf_dir`, with a per-node copy of its variable store.
    Uefi,
    /// SeaBIOS, qemu's default.
    Bios,
}

/// A virtual node: what `kiln node import` reads for `pm_type: qemu`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuNode {
    /// File-name safe: letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// The node's disk: a file (created by the caller).
    pub disk: PathBuf,
    /// `raw` or `qcow2`.
    #[serde(default = "default_disk_format")]
    pub disk_format: String,
    /// The NIC's MAC address, aa:bb:cc:dd:ee:ff.
    pub mac: String,
    pub memory_mb: u32,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    pub firmware: Firmware,
    /// Where the pid file, QMP socket, console log and boot device live.
    pub state_dir: PathBuf,
    pub deploy_kernel: PathBuf,
    pub deploy_initramfs: PathBuf,
    /// Kernel command line of a network boot (console=ttyS0,
    /// ipa-api-url=http://10.0.2.100, ...).
    pub kernel_append: String,
    /// The conductor's port on 127.0.0.1, reached from the node at
    /// http://10.0.2.100 (port 80).
    pub conductor_port: u16,
    #[serde(default = "default_qemu")]
    pub qemu_binary: PathBuf,
    #[serde(default = "default_ovmf_dir")]
    pub ovmf_dir: PathBuf,
    /// The program qemu runs per guest connection to reach the conductor,
    /// given `127.0.0.1 PORT` (default: busybox's nc).
    #[serde(default)]
    pub relay: Option<String>,
}

fn default_disk_format() -> String {
    "raw".into()
}
fn default_cpus() -> u32 {
    1
}
fn default_qemu() -> PathBuf {
    "qemu-system-x86_64".into()
}
fn default_ovmf_dir() -> PathBuf {
    "/usr/share/OVMF".into()
}

/// The boot device record, `NAME.boot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct BootRecord {
    persistent: BootDevice,
    #[serde(default)]
    once: Option<BootDevice>,
}

impl Default for BootRecord {
    fn default() -> Self {
        // A new node has nothing on its disk yet: it boots the deploy ramdisk.
        BootRecord {
            persistent: BootDevice::Network,
            once: None,
        }
    }
}

/// Power control of one [`QemuNode`].
#[derive(Debug)]
pub struct QemuDriver {
    node: QemuNode,
    relay: String,
    // One operation at a time per node: power on racing power off would
    // leave a pid file that names the wrong process.
    lock: Mutex<()>,
}

impl QemuDriver {
    /// Check `node` and prepare its state directory (paths become absolute:
    /// qemu runs from `/` once detached).
    pub fn new(node: QemuNode) -> Result<Self> {
        let mut node = node;
        let name = node.name.clone();
        let fail = |message: String| PowerError::Failed {
            node: name.clone(),
            driver: DRIVER,
            message,
        };
        if node.name.is_empty()
            || !node
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            || node.name.starts_with('.')
        {
            return Err(fail(format!(
                "name {:?}: use letters, digits, '.', '_' and '-' (it names files)",
                node.name
            )));
        }
        if !valid_mac(&node.mac) {
            return Err(fail(format!(
                "mac {:?}: expected six hex pairs such as 52:54:00:12:34:56",
                node.mac
            )));
        }
        if !matches!(node.disk_format.as_str(), "raw" | "qcow2") {
            return Err(fail(format!(
                "disk_format {:?}: expected raw or qcow2",
                node.disk_format
            )));
        }
        if node.memory_mb < 64 || node.cpus == 0 {
            return Err(fail(format!(
                "memory_mb {} / cpus {}: need at least 64 MiB and 1 cpu",
                node.memory_mb, node.cpus
            )));
        }
        if node.kernel_append.contains('\n') {
            return Err(fail("kernel_append holds a newline".into()));
        }
        for path in [
            &mut node.disk,
            &mut node.state_dir,
            &mut node.deploy_kernel,
            &mut node.deploy_initramfs,
            &mut node.ovmf_dir,
        ] {
            *path = std::path::absolute(&*path).map_err(|source| PowerError::Io {
                node: name.clone(),
                driver: DRIVER,
                what: format!("making {} absolute", path.display()),
                source,
            })?;
            // qemu's option syntax splits on commas.
            if path.to_string_lossy().contains(',') {
                return Err(fail(format!("{} contains a comma", path.display())));
            }
        }
        fs::create_dir_all(&node.state_dir).map_err(|source| PowerError::Io {
            node: name.clone(),
            driver: DRIVER,
            what: format!("creating {}", node.state_dir.display()),
            source,
        })?;
        let driver = QemuDriver {
            relay: String::new(),
            node,
            lock: Mutex::new(()),
        };
        let qmp = driver.qmp_path();
        if qmp.as_os_str().len() >= UNIX_PATH_MAX {
            return Err(driver.fail(format!(
                "QMP socket path {} is longer than a unix socket allows; use a shorter state_dir",
                qmp.display()
            )));
        }
        let relay = match &driver.node.relay {
            Some(r) => r.clone(),
            None => default_relay().ok_or_else(|| {
                driver.fail(
                    "no busybox to relay the node's connections to the conductor (apt-get install busybox-static)"
                        .into(),
                )
            })?,
        };
        if relay.contains(',') {
            return Err(driver.fail(format!("relay {relay:?} contains a comma")));
        }
        Ok(QemuDriver { relay, ..driver })
    }

    pub fn node(&self) -> &QemuNode {
        &self.node
    }

    /// The serial console log (all boots, appended).
    pub fn console_log(&self) -> PathBuf {
        self.file("console.log")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.file("pid")
    }

    pub fn qmp_path(&self) -> PathBuf {
        self.file("qmp")
    }

    /// Where the host port forwarded to the guest's iSCSI port is recorded.
    pub fn iscsi_port_file(&self) -> PathBuf {
        self.file("iscsi-port")
    }

    /// The 127.0.0.1 port forwarded to the guest's port 3260, while the node
    /// runs the deploy ramdisk.
    pub fn iscsi_forward_port(&self) -> Option<u16> {
        let text = fs::read_to_string(self.iscsi_port_file()).ok()?;
        text.trim().parse().ok().filter(|&port: &u16| port != 0)
    }

    /// The device the next power on boots from.
    pub fn next_boot_device(&self) -> Result<BootDevice> {
        let record = self.boot_record()?;
        Ok(record.once.unwrap_or(record.persistent))
    }

    /// The pid of the node's running qemu, if it runs.
    pub fn running_pid(&self) -> Option<i32> {
        let pid = self.pid_from_file()?;
        self.is_our_qemu(pid).then_some(pid)
    }

    fn file(&self, suffix: &str) -> PathBuf {
        self.node
            .state_dir
            .join(format!("{}.{suffix}", self.node.name))
    }

    fn fail(&self, message: String) -> PowerError {
        PowerError::Failed {
            node: self.node.name.clone(),
            driver: DRIVER,
            message,
        }
    }

    fn io(&self, what: String) -> impl FnOnce(std::io::Error) -> PowerError + '_ {
        move |source| PowerError::Io {
            node: self.node.name.clone(),
            driver: DRIVER,
            what,
            source,
        }
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn boot_record(&self) -> Result<BootRecord> {
        let path = self.file("boot");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| self.fail(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BootRecord::default()),
            Err(e) => Err(self.io(format!("reading {}", path.display()))(e)),
        }
    }

    fn write_boot_record(&self, record: &BootRecord) -> Result<()> {
        let path = self.file("boot");
        let tmp = self.file("boot.tmp");
        let text = serde_json::to_vec(record).expect("plain struct serializes");
        fs::write(&tmp, text).map_err(self.io(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(self.io(format!("renaming to {}", path.display())))
    }

    fn pid_from_file(&self) -> Option<i32> {
        let text = fs::read_to_string(self.pid_file()).ok()?;
        text.trim().parse().ok().filter(|&p: &i32| p > 0)
    }

    /// Whether `pid` is a live (not zombie) qemu started for this node: its
    /// command line names this node's pid file, so a recycled pid is not
    /// mistaken for the node.
    fn is_our_qemu(&self, pid: i32) -> bool {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // The state follows the parenthesised command name.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.trim().chars().next());
        if matches!(state, Some('Z') | Some('X') | None) {
            return false;
        }
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let pid_file = self.pid_file();
        let want = pid_file.as_os_str().as_encoded_bytes();
        cmdline.split(|&b| b == 0).any(|arg| arg == want)
    }

    fn remove_stale_files(&self) {
        let _ = fs::remove_file(self.pid_file());
        let _ = fs::remove_file(self.qmp_path());
        let _ = fs::remove_file(self.iscsi_port_file());
    }

    fn write_iscsi_port(&self, port: u16) -> Result<()> {
        let path = self.iscsi_port_file();
        let tmp = self.file("iscsi-port.tmp");
        fs::write(&tmp, port.to_string()).map_err(self.io(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(self.io(format!("renaming to {}", path.display())))
    }

    fn ovmf_vars(&self) -> Result<PathBuf> {
        let vars = self.file("OVMF_VARS.fd");
        if !vars.exists() {
            let template = self.node.ovmf_dir.join("OVMF_VARS_4M.fd");
            let tmp = self.file("OVMF_VARS.fd.tmp");
            fs::copy(&template, &tmp).map_err(self.io(format!(
                "copying {} (apt-get install ovmf)",
                template.display()
            )))?;
            fs::rename(&tmp, &vars).map_err(self.io(format!("renaming to {}", vars.display())))?;
        }
        Ok(vars)
    }

    /// The qemu command line; `iscsi_forward` is the host port forwarded to
    /// the guest's iSCSI port (deploy ramdisk boots only).
    fn qemu_command(&self, boot: BootDevice, iscsi_forward: Option<u16>) -> Result<Command> {
        let n = &self.node;
        let hostfwd = iscsi_forward
            .map(|port| format!(",hostfwd=tcp:127.0.0.1:{port}-:{ISCSI_GUEST_PORT}"))
            .unwrap_or_default();
        let mut cmd = Command::new(&n.qemu_binary);
        cmd.arg("-name")
            .arg(format!("kiln-node-{}", n.name))
            .args(["-accel", "tcg", "-nodefaults", "-display", "none"])
            .arg("-m")
            .arg(n.memory_mb.to_string())
            .arg("-smp")
            .arg(n.cpus.to_string())
            .arg("-drive")
            .arg(format!(
                "if=none,id=disk0,file={},format={}",
                n.disk.display(),
                n.disk_format
            ))
            .arg("-device")
            .arg("virtio-blk-pci,drive=disk0,bootindex=1")
            .arg("-netdev")
            .arg(format!(
                "user,id=net0,restrict=on{hostfwd},guestfwd=tcp:{CONDUCTOR_GUEST_ADDR}:80-cmd:{} 127.0.0.1 {}",
                self.relay, n.conductor_port
            ))
            // No option ROM: "network boot" is qemu loading the deploy
            // kernel, never the firmware trying PXE before the disk.
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=net0,mac={},romfile=", n.mac))
            .arg("-chardev")
            .arg(format!(
                "file,id=console,path={},append=on",
                self.console_log().display()
            ))
            .args(["-serial", "chardev:console"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", self.qmp_path().display()))
            .arg("-pidfile")
            .arg(self.pid_file())
            .arg("-daemonize");
        if n.firmware == Firmware::Uefi {
            let code = n.ovmf_dir.join("OVMF_CODE_4M.fd");
            if !code.is_file() {
                return Err(self.fail(format!(
                    "{} is missing (apt-get install ovmf)",
                    code.display()
                )));
            }
            cmd.arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,readonly=on,file={}",
                    code.display()
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,file={}",
                    self.ovmf_vars()?.display()
                ));
        }
        if boot == BootDevice::Network {
            cmd.arg("-kernel")
                .arg(&n.deploy_kernel)
                .arg("-initrd")
                .arg(&n.deploy_initramfs)
                .arg("-append")
                .arg(&n.kernel_append);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(cmd)
    }

    fn start(&self) -> Result<()> {
        if self.running_pid().is_some() {
            return Ok(());
        }
        self.remove_stale_files();
        let record = self.boot_record()?;
        let boot = record.once.unwrap_or(record.persistent);
        let mut attempt = 1;
        loop {
            let forward = match boot {
                BootDevice::Network => {
                    let port = free_local_port().map_err(
                        self.io("finding a free 127.0.0.1 port for the iSCSI forward".to_string()),
                    )?;
                    self.write_iscsi_port(port)?;
                    Some(port)
                }
                BootDevice::Disk => None,
            };
            let mut cmd = self.qemu_command(boot, forward)?;
            // With -daemonize the first process waits until the VM is set up and
            // reports any start-up failure (bad disk, kernel, option) on stderr.
            let out = cmd.output().map_err(self.io(format!(
                "running {} (apt-get install qemu-system-x86)",
                self.node.qemu_binary.display()
            )))?;
            if out.status.success() {
                break;
            }
            self.remove_stale_files();
            let stderr = String::from_utf8_lossy(&out.stderr);
            // The port was free when picked; another process may have bound it since.
            if forward.is_some() && stderr.contains("hostfwd") && attempt < FORWARD_ATTEMPTS {
                attempt += 1;
                continue;
            }
            return Err(self.fail(format!(
                "qemu failed to start ({}): {}",
                out.status,
                stderr.trim()
            )));
        }
        let Some(pid) = self.pid_from_file() else {
            return Err(self.fail(format!(
                "qemu started but wrote no pid to {}",
                self.pid_file().display()
            )));
        };
        if !self.is_our_qemu(pid) {
            self.remove_stale_files();
            return Err(self.fail(format!(
                "qemu (pid {pid}) died right after starting; see {}",
                self.console_log().display()
            )));
        }
        if record.once.is_some() {
            self.write_boot_record(&BootRecord {
                persistent: record.persistent,
                once: None,
            })?;
        }
        Ok(())
    }

    fn stop(&self) -> Result<()> {
        let Some(pid) = self.running_pid() else {
            self.remove_stale_files();
            return Ok(());
        };
        // `quit` is pulling the plug: qemu exits at once, the guest is not asked.
        if let Err(e) = self.qmp(&json!({"execute": "quit"})) {
            eprintln!(
                "node {}: qemu power: QMP quit failed ({e}); killing pid {pid}",
                self.node.name
            );
        }
        if !self.wait_gone(pid, QUIT_TIMEOUT) {
            // SAFETY: plain syscall; the pid was checked to be this node's qemu.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            if !self.wait_gone(pid, KILL_TIMEOUT) {
                return Err(self.fail(format!("qemu pid {pid} survives SIGKILL")));
            }
        }
        self.remove_stale_files();
        Ok(())
    }

    fn wait_gone(&self, pid: i32, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.is_our_qemu(pid) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Run one QMP command and return its `return` value.
    fn qmp(&self, command: &Value) -> Result<Value> {
        let path = self.qmp_path();
        let what = format!("QMP {}", path.display());
        let stream = UnixStream::connect(&path).map_err(self.io(what.clone()))?;
        stream
            .set_read_timeout(Some(QMP_TIMEOUT))
            .and_then(|_| stream.set_write_timeout(Some(QMP_TIMEOUT)))
            .map_err(self.io(what.clone()))?;
        let mut reader = BufReader::new(stream.try_clone().map_err(self.io(what.clone()))?);
        let mut writer = stream;
        let greeting = self.qmp_read(&mut reader, &what)?;
        if greeting.get("QMP").is_none() {
            return Err(self.fail(format!("{what}: no QMP greeting: {greeting}")));
        }
        self.qmp_execute(
            &mut reader,
            &mut writer,
            &json!({"execute": "qmp_capabilities"}),
            &what,
        )?;
        self.qmp_execute(&mut reader, &mut writer, command, &what)
    }

    fn qmp_execute(
        &self,
        reader: &mut impl BufRead,
        writer: &mut impl Write,
        command: &Value,
        what: &str,
    ) -> Result<Value> {
        let mut line = serde_json::to_vec(command).expect("json value serializes");
        line.push(b'\n');
        writer.write_all(&line).map_err(self.io(what.to_string()))?;
        // Events may come first; the reply is the next return or error.
        loop {
            let msg = self.qmp_read(reader, what)?;
            if let Some(r) = msg.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = msg.get("error") {
                return Err(self.fail(format!("{what}: {command} failed: {e}")));
            }
        }
    }

    fn qmp_read(&self, reader: &mut impl BufRead, what: &str) -> Result<Value> {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .map_err(self.io(what.to_string()))?;
        if n == 0 {
            return Err(self.fail(format!("{what}: connection closed")));
        }
        serde_json::from_str(&line)
            .map_err(|e| self.fail(format!("{what}: bad reply {line:?}: {e}")))
    }
}

impl PowerDriver for QemuDriver {
    fn driver_name(&self) -> &'static str {
        DRIVER
    }

    fn power_state(&self) -> Result<PowerState> {
        let _g = self.guard();
        if self.running_pid().is_none() {
            return Ok(PowerState::Off);
        }
        // The process lives; its monitor confirms it is a working VM (any run
        // state, paused included, is "on" like a BMC would say).
        let status = self.qmp(&json!({"execute": "query-status"}))?;
        match status.get("status").and_then(Value::as_str) {
            Some(_) => Ok(PowerState::On),
            None => Err(self.fail(format!("QMP query-status: unexpected reply {status}"))),
        }
    }

    fn power_on(&self) -> Result<()> {
        let _g = self.guard();
        self.start()
    }

    fn power_off(&self) -> Result<()> {
        let _g = self.guard();
        self.stop()
    }

    fn reboot(&self) -> Result<()> {
        let _g = self.guard();
        // A fresh qemu, not a reset: the boot device may have changed.
        self.stop()?;
        self.start()
    }

    fn conductor_portal(&self, reported: &str) -> Result<String> {
        let port = reported
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .ok_or_else(|| {
                self.fail(format!("iSCSI portal {reported:?}: expected ADDRESS:PORT"))
            })?;
        if port != ISCSI_GUEST_PORT {
            return Err(self.fail(format!(
                "iSCSI portal {reported}: the node's user network forwards only guest port \
                 {ISCSI_GUEST_PORT}"
            )));
        }
        let forward = self.iscsi_forward_port().ok_or_else(|| {
            self.fail(format!(
                "iSCSI portal {reported}: no port forward recorded in {} (the node was not \
                 booted into the deploy ramdisk by this driver)",
                self.iscsi_port_file().display()
            ))
        })?;
        Ok(format!("127.0.0.1:{forward}"))
    }

    fn set_boot_device(&self, device: BootDevice, persistent: bool) -> Result<()> {
        let _g = self.guard();
        let current = self.boot_record()?;
        let record = if persistent {
            BootRecord {
                persistent: device,
                once: None,
            }
        } else {
            BootRecord {
                persistent: current.persistent,
                once: Some(device),
            }
        };
        self.write_boot_record(&record)
    }
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A port on 127.0.0.1 nobody listens on now (the kernel's choice).
fn free_local_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn default_relay() -> Option<String> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .map(|p| format!("{p} nc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dir: &Path) -> QemuNode {
        QemuNode {
            name: "node-1".into(),
            disk: dir.join("disk.raw"),
            disk_format: "raw".into(),
            mac: "52:54:00:12:34:56".into(),
            memory_mb: 256,
            cpus: 1,
            firmware: Firmware::Bios,
            state_dir: dir.join("state"),
            deploy_kernel: dir.join("k"),
            deploy_initramfs: dir.join("i"),
            kernel_append: "console=ttyS0".into(),
            conductor_port: 8080,
            qemu_binary: default_qemu(),
            ovmf_dir: default_ovmf_dir(),
            relay: Some("/bin/true".into()),
        }
    }

    #[test]
    fn bad_node_fields_are_named() {
        let dir = tempfile::tempdir().unwrap();
        type Breaker = fn(&mut QemuNode);
        let cases: [(Breaker, &str); 4] = [
            (|n| n.name = "../x".into(), "name"),
            (|n| n.mac = "52:54:00:12:34".into(), "mac"),
            (|n| n.disk_format = "vmdk".into(), "disk_format"),
            (|n| n.memory_mb = 0, "memory_mb"),
        ];
        for (break_it, field) in cases {
            let mut n = node(dir.path());
            break_it(&mut n);
            let err = QemuDriver::new(n).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
            assert!(err.contains("qemu power"), "{err}");
        }
    }

    #[test]
    fn boot_device_once_and_persistent_and_stale_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = QemuDriver::new(node(dir.path())).unwrap();
        assert_eq!(d.next_boot_device().unwrap(), BootDevice::Network);
        d.set_boot_device(BootDevice::Disk, true).unwrap();
        assert_eq!(d.next_boot_device().unwrap(), BootDevice::Disk);
        d.set_boot_device(BootDevice::Network, false).unwrap();
        assert_eq!(d.next_boot_device().unwrap(), BootDevice::Network);
        assert_eq!(d.boot_record().unwrap().persistent, BootDevice::Disk);
        // A pid file naming a process that is not this node's qemu (our own
        // test process) is stale: the node is off and power off cleans up.
        fs::write(d.pid_file(), std::process::id().to_string()).unwrap();
        assert_eq!(d.power_state().unwrap(), PowerState::Off);
        d.power_off().unwrap();
        assert!(!d.pid_file().exists());
    }

    #[test]
    fn deploy_boots_forward_a_host_port_to_the_guest_iscsi_port() {
        let dir = tempfile::tempdir().unwrap();
        let d = QemuDriver::new(node(dir.path())).unwrap();
        let args = |cmd: &Command| -> Vec<String> {
            cmd.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let deploy = args(&d.qemu_command(BootDevice::Network, Some(40123)).unwrap());
        let netdev = deploy.iter().find(|a| a.starts_with("user,")).unwrap();
        assert!(
            netdev.contains("restrict=on,hostfwd=tcp:127.0.0.1:40123-:3260,"),
            "{netdev}"
        );
        let disk = args(&d.qemu_command(BootDevice::Disk, None).unwrap());
        let netdev = disk.iter().find(|a| a.starts_with("user,")).unwrap();
        assert!(!netdev.contains("hostfwd"), "{netdev}");
    }

    #[test]
    fn reported_portals_map_to_the_recorded_forward() {
        let dir = tempfile::tempdir().unwrap();
        let d = QemuDriver::new(node(dir.path())).unwrap();
        // Not booted by this driver: no forward to map to.
        let err = d
            .conductor_portal("10.0.2.15:3260")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node-1") && err.contains("iscsi-port"),
            "{err}"
        );
        d.write_iscsi_port(40123).unwrap();
        // A new driver over the same state directory (a restarted conductor).
        let again = QemuDriver::new(node(dir.path())).unwrap();
        assert_eq!(
            again.conductor_portal("10.0.2.15:3260").unwrap(),
            "127.0.0.1:40123"
        );
        let err = again
            .conductor_portal("10.0.2.15:3261")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10.0.2.15:3261") && err.contains("3260"),
            "{err}"
        );
        let err = again.conductor_portal("nonsense").unwrap_err().to_string();
        assert!(err.contains("ADDRESS:PORT"), "{err}");
        // Powering off forgets the forward with the pid file.
        again.power_off().unwrap();
        assert_eq!(again.iscsi_forward_port(), None);
    }

    #[test]
    fn qemu_dying_at_start_reports_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        // The disk file does not exist: qemu refuses to start.
        let d = QemuDriver::new(node(dir.path())).unwrap();
        let err = d.power_on().unwrap_err().to_string();
        assert!(err.contains("node-1"), "{err}");
        assert!(err.contains("disk.raw"), "{err}");
        assert!(!d.pid_file().exists());
        assert_eq!(d.power_state().unwrap(), PowerState::Off);
    }
}
