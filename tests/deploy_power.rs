//! The ipmi and redfish power drivers against real BMC emulators on loopback.
//!
//! ipmi: OpenIPMI's `ipmi_sim` with a chassis control script that, the way
//! virtualbmc fronts a VM, starts and stops a qemu (TCG, no disk) standing in
//! for the node and records the boot device the BMC was given. The checks
//! look at the qemu process and the recorded device, not at what the driver
//! says.
//!
//! redfish: sushy-tools' emulator (fake systems driver) behind TLS with a CA
//! made here by openssl, with its basic auth, plus a small wrapper adding a
//! SessionService, ETags and a log of the requests it received. The checks
//! read the system back with curl.
//!
//! The emulators' setup is tests/common/bmc.rs (shared with deploy_e2e).

#[path = "common/bmc.rs"]
mod bmc;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use bmc::*;
use kiln::deploy::power::qemu::{Firmware, QemuNode};
use kiln::deploy::power::redfish::{RedfishAuth, RedfishDriver, VerifyCa};
use kiln::deploy::power::vnode;
use kiln::deploy::power::{BootDevice, PowerDriver, PowerState};
use serde_json::{Value, json};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

// ---------------------------------------------------------------- ipmi

/// The chassis control program ipmi_sim runs: `SCRIPT <mc> get|set <parm> [<value>]...`.
/// Power on starts the node's qemu (its boot order from the recorded boot
/// device), power off kills it, reset restarts it; boot records the device.
const CHASSIS_CONTROL: &str = r#"#!/bin/sh
dir=$(dirname "$0")
shift
op=$1
shift
running() { [ -s "$dir/node.pid" ] && kill -0 "$(cat "$dir/node.pid")" 2>/dev/null; }
# ipmi_sim waits for this script and answers nothing meanwhile, so qemu is
# started in the background and killed without waiting for it to go.
start() {
    case $(cat "$dir/bootdev" 2>/dev/null) in pxe) order=n ;; *) order=c ;; esac
    qemu-system-x86_64 -accel tcg -m 64 -display none -nodefaults -boot "order=$order" \
        -serial "file:$dir/console.log" </dev/null >>"$dir/qemu.log" 2>&1 &
    echo $! > "$dir/node.pid"
    echo "boot order=$order" >> "$dir/boots.log"
}
stop() {
    if running; then kill "$(cat "$dir/node.pid")"; fi
    rm -f "$dir/node.pid"
}
case $op in
get)
    for parm in "$@"; do
        case $parm in
        power) if running; then echo "power:1"; else echo "power:0"; fi ;;
        boot) echo "boot:$(cat "$dir/bootdev" 2>/dev/null || echo default)" ;;
        *) echo "Invalid parameter: $parm"; exit 1 ;;
        esac
    done ;;
set)
    while [ $# -ge 2 ]; do
        parm=$1 value=$2
        shift 2
        case $parm in
        power) if [ "$value" = 1 ]; then running || start; else stop; fi ;;
        reset) stop; start ;;
        boot) echo "$value" > "$dir/bootdev" ;;
        identify) shift ;;
        *) echo "Invalid parameter: $parm"; exit 1 ;;
        esac
    done ;;
*) echo "Unknown operation: $op"; exit 1 ;;
esac
"#;

/// A running ipmi_sim whose BMC fronts a qemu node kept in `dir`.

#[test]
fn ipmi_driver_starts_stops_and_reboots_the_node_behind_ipmi_sim() {
    let tmp = tempfile::tempdir().unwrap();
    let bmc = IpmiBmc::start(tmp.path(), CHASSIS_CONTROL);
    let driver = bmc.driver(IPMI_PASSWORD);

    assert_eq!(driver.power_state().unwrap(), PowerState::Off);
    assert!(!alive(&bmc.node_pid()));

    driver.set_boot_device(BootDevice::Network, true).unwrap();
    assert_eq!(bmc.bootdev(), "pxe");

    driver.power_on().unwrap();
    let first = bmc.wait_node_running();
    assert!(
        cmdline(&first).contains("qemu-system-x86_64"),
        "{}",
        cmdline(&first)
    );
    assert!(cmdline(&first).contains("order=n"), "{}", cmdline(&first));
    assert_eq!(driver.power_state().unwrap(), PowerState::On);
    // Already on: nothing happens, the same qemu keeps running.
    driver.power_on().unwrap();
    assert_eq!(bmc.node_pid(), first);

    driver.set_boot_device(BootDevice::Disk, false).unwrap();
    assert_eq!(bmc.bootdev(), "default");

    driver.reboot().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let pid = bmc.node_pid();
        if pid != first && alive(&pid) {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not come back after reboot"
        );
        thread::sleep(Duration::from_millis(100));
    };
    wait_dead(&first, "the old qemu survived the reboot");
    assert!(cmdline(&second).contains("order=c"), "{}", cmdline(&second));

    driver.power_off().unwrap();
    wait_dead(&second, "qemu still runs after power off");
    assert_eq!(driver.power_state().unwrap(), PowerState::Off);
    let boots = read(&tmp.path().join("boots.log"));
    assert_eq!(
        boots.lines().collect::<Vec<_>>(),
        ["boot order=n", "boot order=c"]
    );
}

#[test]
fn ipmi_wrong_password_is_a_clear_error_naming_node_and_bmc() {
    let tmp = tempfile::tempdir().unwrap();
    let bmc = IpmiBmc::start(tmp.path(), CHASSIS_CONTROL);
    let err = bmc
        .driver("not-the-password")
        .power_on()
        .unwrap_err()
        .to_string();
    eprintln!("wrong password: {err}");
    assert!(err.contains("ipmi-node"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{}", bmc.port)), "{err}");
    assert!(
        err.contains("RMCP+"),
        "ipmitool's stderr is in the error: {err}"
    );
    assert!(
        !err.contains("not-the-password"),
        "the password leaked: {err}"
    );
    assert!(!alive(&bmc.node_pid()), "the node was powered on");
}

/// A conductor started by the test, on a free loopback port.
struct Conductor {
    child: Reaped,
    url: String,
}

impl Conductor {
    fn start(dir: &Path) -> Conductor {
        std::fs::create_dir_all(dir.join("images")).unwrap();
        let mut child = Command::new(KILN)
            .args(["conductor", "--listen", "127.0.0.1:0"])
            .arg("--state")
            .arg(dir.join("state.db"))
            .arg("--images")
            .arg(dir.join("images"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kiln conductor");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let child = Reaped(child);
        assert!(line.starts_with("http://"), "conductor printed {line:?}");
        Conductor {
            child,
            url: line.trim().to_string(),
        }
    }

    fn kiln(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(KILN)
            .args(args)
            .args(["--url", &self.url])
            .env_remove("KILN_CONDUCTOR_URL")
            .output()
            .expect("run kiln");
        let _ = &self.child;
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[test]
fn kiln_node_power_drives_an_imported_ipmi_node() {
    let tmp = tempfile::tempdir().unwrap();
    let bmc_dir = tmp.path().join("bmc");
    std::fs::create_dir_all(&bmc_dir).unwrap();
    let bmc = IpmiBmc::start(&bmc_dir, CHASSIS_CONTROL);
    let conductor = Conductor::start(&tmp.path().join("conductor"));
    let nodes = tmp.path().join("nodes.json");
    std::fs::write(
        &nodes,
        format!(
            r#"{{"nodes": [{{"name": "bmc-0", "pm_type": "ipmi", "pm_addr": "127.0.0.1",
                "pm_port": {}, "pm_user": "{IPMI_USER}", "pm_password": "{IPMI_PASSWORD}",
                "mac": ["52:54:00:aa:00:01"], "cpu": 1, "memory": 64, "disk": 1,
                "arch": "x86_64"}}]}}"#,
            bmc.port
        ),
    )
    .unwrap();
    let (code, _, err) = conductor.kiln(&["node", "import", nodes.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = conductor.kiln(&["node", "power", "on", "bmc-0"]);
    assert_eq!(code, 0, "{out}{err}");
    let pid = bmc.wait_node_running();

    let (code, out, err) = conductor.kiln(&["node", "power", "off", "bmc-0"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_dead(&pid, "qemu still runs after kiln node power off");
}

#[test]
fn redfish_refuses_an_untrusted_certificate_and_wrong_password() {
    let tmp = tempfile::tempdir().unwrap();
    let bmc = RedfishBmc::start(tmp.path(), &[]);

    let settings = bmc.settings(VerifyCa::WebRoots, RedfishAuth::Basic, REDFISH_PASSWORD);
    let err = RedfishDriver::new("redfish-node", settings)
        .unwrap()
        .power_state()
        .unwrap_err()
        .to_string();
    eprintln!("untrusted certificate: {err}");
    assert!(err.contains("redfish-node"), "{err}");
    assert!(
        err.contains(&format!("https://127.0.0.1:{}", bmc.port)),
        "{err}"
    );
    assert!(
        err.contains("TLS") && err.contains("redfish_verify_ca"),
        "{err}"
    );
    // Nothing reached the emulator's application.
    assert!(bmc.requests().is_empty(), "{:?}", bmc.requests());

    let settings = bmc.settings(
        VerifyCa::CaFile(bmc.ca.clone()),
        RedfishAuth::Basic,
        "not-the-password",
    );
    let err = RedfishDriver::new("redfish-node", settings)
        .unwrap()
        .power_state()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HTTP 401") && err.contains("pm_password"),
        "{err}"
    );
    assert!(!err.contains("not-the-password"), "{err}");
}

#[test]
fn redfish_power_and_boot_override_with_basic_and_session_auth() {
    let tmp = tempfile::tempdir().unwrap();
    let bmc = RedfishBmc::start(tmp.path(), &[]);
    let driver = bmc.driver(RedfishAuth::Basic);

    assert_eq!(bmc.system()["PowerState"], "Off");
    assert_eq!(driver.power_state().unwrap(), PowerState::Off);
    driver.power_on().unwrap();
    assert_eq!(bmc.system()["PowerState"], "On");

    driver.set_boot_device(BootDevice::Network, false).unwrap();
    let boot = &bmc.system()["Boot"];
    assert_eq!(boot["BootSourceOverrideTarget"], "Pxe");
    assert_eq!(boot["BootSourceOverrideMode"], "UEFI");

    driver.reboot().unwrap();
    assert_eq!(bmc.system()["PowerState"], "On");
    let resets: Vec<String> = bmc
        .requests()
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .unwrap()
                .ends_with("ComputerSystem.Reset")
        })
        .map(|r| r["body"]["ResetType"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(resets, ["On", "ForceRestart"]);

    // Session auth: log in, every request carries the token, log out at the end.
    let session = bmc.driver(RedfishAuth::Session);
    session.set_boot_device(BootDevice::Disk, true).unwrap();
    assert_eq!(bmc.system()["Boot"]["BootSourceOverrideTarget"], "Hdd");
    session.power_off().unwrap();
    assert_eq!(bmc.system()["PowerState"], "Off");
    drop(session);

    let requests = bmc.requests();
    let patches: Vec<&Value> = requests.iter().filter(|r| r["method"] == "PATCH").collect();
    assert_eq!(patches.len(), 2, "{patches:?}");
    let enabled: Vec<&Value> = patches
        .iter()
        .map(|p| &p["body"]["Boot"]["BootSourceOverrideEnabled"])
        .collect();
    assert_eq!(enabled, ["Once", "Continuous"]);
    // Each PATCH carried the ETag the system had (the emulator's wrapper bumps it per PATCH).
    let matches: Vec<&Value> = patches.iter().map(|p| &p["if_match"]).collect();
    assert_eq!(matches, ["\"v0\"", "\"v1\""]);
    let logins = requests
        .iter()
        .filter(|r| r["method"] == "POST" && r["path"] == "/redfish/v1/SessionService/Sessions")
        .count();
    assert_eq!(logins, 1);
    let last_patch = patches[1];
    assert_eq!(last_patch["auth"], "session");
    let last = requests.last().unwrap();
    assert_eq!(last["method"], "DELETE", "the session is ended: {last}");
}

/// A UEFI vnode with an empty disk: its network boot is a real kernel with a
/// junk initramfs (it panics, the VM keeps running), its disk boot ends in
/// OVMF's shell. Either way a qemu runs, which is all the checks look at.
fn small_vnode(dir: &Path) -> PathBuf {
    let kernel = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().contains("vmlinuz-"))
        .expect("no /boot/vmlinuz-*: apt-get install linux-image-amd64");
    let disk = dir.join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let initramfs = dir.join("junk.initramfs");
    std::fs::write(&initramfs, b"not a cpio archive").unwrap();
    let node = QemuNode {
        name: "vn".into(),
        disk,
        disk_format: "raw".into(),
        mac: "52:54:00:6b:00:09".into(),
        memory_mb: 256,
        cpus: 1,
        firmware: Firmware::Uefi,
        state_dir: dir.join("vm"),
        deploy_kernel: kernel,
        deploy_initramfs: initramfs,
        kernel_append: "console=ttyS0 panic=0".into(),
        conductor_port: free_tcp_port(),
        qemu_binary: "qemu-system-x86_64".into(),
        ovmf_dir: "/usr/share/OVMF".into(),
        relay: None,
    };
    let path = dir.join("vn.json");
    std::fs::write(&path, serde_json::to_vec(&node).unwrap()).unwrap();
    path
}

/// The running VM's pid and whether it boots the deploy kernel (network boot).
fn vnode_vm(definition: &Path) -> Option<(String, bool)> {
    let vm = vnode::load(definition).unwrap();
    let pid = vm.running_pid()?.to_string();
    let network = cmdline(&pid).contains(" -kernel ");
    Some((pid, network))
}

#[test]
fn redfish_resets_and_boot_overrides_reach_a_vnode_behind_sushy_emulator() {
    require("qemu-system-x86_64", "qemu-system-x86");
    let tmp = tempfile::tempdir().unwrap();
    let definition = small_vnode(tmp.path());
    let uuid = "6b6b0000-0000-4000-8000-0000000000aa";
    let system = format!("/redfish/v1/Systems/{uuid}");
    let vnodes = [RedfishVnode {
        uuid: uuid.into(),
        name: "vn".into(),
        mac: "52:54:00:6b:00:09".into(),
        definition: definition.clone(),
    }];
    let bmc = RedfishBmc::start(&tmp.path().join("bmc"), &vnodes);
    // Stops the VM however the test ends.
    struct PowerOff<'a>(&'a Path);
    impl Drop for PowerOff<'_> {
        fn drop(&mut self) {
            let _ = vnode::run(self.0, vnode::VnodeAction::PowerOff);
        }
    }
    let _off = PowerOff(&definition);
    let mut settings = bmc.settings(
        VerifyCa::CaFile(bmc.ca.clone()),
        RedfishAuth::Basic,
        REDFISH_PASSWORD,
    );
    settings.system_id = Some(uuid.into());
    let driver = RedfishDriver::new("vn", settings).unwrap();
    let next_boot = || {
        vnode::load(&definition)
            .unwrap()
            .next_boot_device()
            .unwrap()
    };

    assert_eq!(bmc.get(&system)["PowerState"], "Off");
    // Continuous disk, then network once: the once wins for one power on.
    driver.set_boot_device(BootDevice::Disk, true).unwrap();
    assert_eq!(next_boot(), BootDevice::Disk);
    driver.set_boot_device(BootDevice::Network, false).unwrap();
    assert_eq!(next_boot(), BootDevice::Network);
    driver.power_on().unwrap();
    let (first, network) = vnode_vm(&definition).expect("the VM runs after On");
    assert!(network, "{}", cmdline(&first));
    assert_eq!(next_boot(), BootDevice::Disk, "the once override was used");
    assert_eq!(bmc.get(&system)["PowerState"], "On");

    // Reset types the kiln driver does not send, through curl.
    let reset = |kind: &str| {
        bmc.curl(
            "POST",
            &format!("{system}/Actions/ComputerSystem.Reset"),
            Some(&json!({ "ResetType": kind })),
        )
    };
    let (status, body) = reset("GracefulRestart");
    assert!(status < 300, "{status} {body}");
    let (second, network) = vnode_vm(&definition).expect("the VM runs after a restart");
    assert_ne!(second, first);
    wait_dead(&first, "the VM from before the restart");
    assert!(!network, "{}", cmdline(&second));
    let (status, body) = reset("GracefulShutdown");
    assert!(status < 300, "{status} {body}");
    wait_dead(&second, "the VM after GracefulShutdown");
    assert_eq!(bmc.get(&system)["PowerState"], "Off");
    let (status, _) = reset("Nmi");
    assert!(status >= 400, "a vnode has no NMI: {status}");

    // Legacy boot on a UEFI VM is refused and changes nothing.
    let (status, body) = bmc.curl(
        "PATCH",
        &system,
        Some(&json!({"Boot": {"BootSourceOverrideTarget": "Pxe",
            "BootSourceOverrideEnabled": "Continuous", "BootSourceOverrideMode": "Legacy"}})),
    );
    assert!(status >= 400, "{status} {body}");
    assert_eq!(next_boot(), BootDevice::Disk);

    driver.reboot().unwrap();
    let (third, network) = vnode_vm(&definition).expect("the VM runs after reboot");
    assert!(!network, "{}", cmdline(&third));
    driver.power_off().unwrap();
    assert!(vnode_vm(&definition).is_none());
}
