//! BMC emulators on loopback for the power driver tests: OpenIPMI's
//! `ipmi_sim` (one BMC per instance, its chassis control script given by the
//! test) and sushy-tools' Redfish emulator behind TLS with a CA made here by
//! openssl. Either can front a `kiln vnode` (the VM the qemu power driver
//! starts), the way virtualbmc fronts a libvirt domain: [`vnode_chassis_control`]
//! for ipmi_sim, [`RedfishVnode`] systems for the emulator.
//!
//! Needs: ipmi_sim (openipmi), ipmitool, qemu-system-x86_64, openssl, curl,
//! and sushy-tools in a Python venv (KILN_SUSHY_VENV, default /tmp/kiln-sushy-venv;
//! created with `python3 -m venv` + `pip install sushy-tools` when missing).
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use kiln::deploy::power::PowerDriver;
use kiln::deploy::power::ipmi::{IpmiDriver, IpmiSettings};
use kiln::deploy::power::redfish::{RedfishAuth, RedfishDriver, RedfishSettings, VerifyCa};
use serde_json::{Value, json};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// Kills a child process (and waits for it) when the test ends, however it ends.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn require(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "{program} is missing: apt-get install {package}");
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub fn alive(pid: &str) -> bool {
    !pid.is_empty() && Path::new(&format!("/proc/{pid}")).exists() && {
        // A zombie is dead for our purposes.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        !stat.contains(") Z ")
    }
}

/// Waits for a killed process to go (a TCG qemu takes a moment to exit).
pub fn wait_dead(pid: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        assert!(Instant::now() < deadline, "{what} (pid {pid})");
        thread::sleep(Duration::from_millis(100));
    }
}

pub fn cmdline(pid: &str) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

pub struct IpmiBmc {
    pub dir: PathBuf,
    pub port: u16,
    _sim: Reaped,
}

pub const IPMI_USER: &str = "admin";
pub const IPMI_PASSWORD: &str = "kiln-ipmi-pw";

impl IpmiBmc {
    /// Starts ipmi_sim in `dir` with `chassis_control` (a shell script) as
    /// its chassis control program: `SCRIPT <mc> get|set <parm> [<value>]...`.
    pub fn start(dir: &Path, chassis_control: &str) -> IpmiBmc {
        std::fs::create_dir_all(dir).unwrap();
        require("ipmi_sim", "openipmi");
        require("ipmitool", "ipmitool");
        require("qemu-system-x86_64", "qemu-system-x86");
        let script = dir.join("chassis-control");
        std::fs::write(&script, chassis_control).unwrap();
        Command::new("chmod")
            .arg("755")
            .arg(&script)
            .status()
            .unwrap();
        let port = free_udp_port();
        let config = format!(
            "name \"kiln-power-test\"\n\
             set_working_mc 0x20\n\
             startlan 1\n\
             addr 127.0.0.1 {port}\n\
             priv_limit admin\n\
             allowed_auths_callback md5\n\
             allowed_auths_user md5\n\
             allowed_auths_operator md5\n\
             allowed_auths_admin md5\n\
             guid a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5\n\
             endlan\n\
             chassis_control \"{} 0x20\"\n\
             user 2 true \"{IPMI_USER}\" \"{IPMI_PASSWORD}\" admin 10 md5\n",
            script.display()
        );
        std::fs::write(dir.join("lan.conf"), config).unwrap();
        std::fs::write(
            dir.join("bmc.emu"),
            "mc_setbmc 0x20\n\
             mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n\
             mc_enable 0x20\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("sim-state")).unwrap();
        let sim = Command::new("ipmi_sim")
            .arg("-c")
            .arg(dir.join("lan.conf"))
            .arg("-f")
            .arg(dir.join("bmc.emu"))
            .arg("-s")
            .arg(dir.join("sim-state"))
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start ipmi_sim");
        let bmc = IpmiBmc {
            dir: dir.to_path_buf(),
            port,
            _sim: Reaped(sim),
        };
        // The simulator answers once its LAN channel is up.
        let deadline = Instant::now() + Duration::from_secs(30);
        let probe = bmc.driver(IPMI_PASSWORD);
        while probe.power_state().is_err() {
            assert!(Instant::now() < deadline, "ipmi_sim did not answer");
            thread::sleep(Duration::from_millis(200));
        }
        bmc
    }

    pub fn settings(&self, password: &str) -> IpmiSettings {
        let mut settings = IpmiSettings::new("127.0.0.1", IPMI_USER, password);
        settings.port = self.port;
        settings.min_interval = Duration::from_millis(300);
        settings.command_timeout = Duration::from_secs(20);
        settings.attempts = 2;
        settings
    }

    pub fn driver(&self, password: &str) -> IpmiDriver {
        IpmiDriver::new("ipmi-node", self.settings(password))
    }

    pub fn node_pid(&self) -> String {
        read(&self.dir.join("node.pid"))
    }

    pub fn bootdev(&self) -> String {
        read(&self.dir.join("bootdev"))
    }

    /// The node's qemu has the pid the script recorded, and is running.
    pub fn wait_node_running(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pid = self.node_pid();
            if alive(&pid) {
                return pid;
            }
            assert!(Instant::now() < deadline, "the node's qemu is not running");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for IpmiBmc {
    fn drop(&mut self) {
        // The qemu outlives ipmi_sim (it daemonized); stop it by its own pid.
        let pid = self.node_pid();
        if alive(&pid) {
            let _ = Command::new("kill").arg(&pid).status();
        }
    }
}

// ---------------------------------------------------------------- redfish

/// Runs sushy-tools' emulator app with a SessionService, ETags on systems
/// and a request log added around it (sushy-tools 2.x has neither).
const REDFISH_WRAPPER: &str = r#"
import hashlib, json, secrets, sys
import bcrypt
from sushy_tools.emulator import main as emulator

config_file, log_file, auth_file = sys.argv[1], sys.argv[2], sys.argv[3]
app = emulator.app
app.configure(config_file=config_file)

import subprocess, threading
from sushy_tools import error
from sushy_tools.emulator.resources.systems import fakedriver

# The Boot object of the PATCH being served: sushy-tools hands the systems
# driver only the target, a vnode also needs Once/Continuous and the mode.
patching = threading.local()

class VnodeDriver(fakedriver.FakeDriver):
    """The fake driver's systems, each fronting a `kiln vnode` VM (the system's
    "vnode" is its definition): resets and boot overrides reach the VM, and
    PowerState is the VM's."""
    RESETS = {"On": "power-on", "ForceOn": "power-on", "ForceOff": "power-off",
              "GracefulShutdown": "power-off", "ForceRestart": "reset",
              "GracefulRestart": "reset", "PowerCycle": "reset"}
    DEVICES = {"Pxe": "pxe", "Hdd": "disk"}

    def vnode(self, identity, *args):
        command = [app.config["KILN_VNODE_BINARY"], "vnode", "--node",
                   self._get(identity)["vnode"], *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise error.FishyError("kiln vnode %s: %s" % (" ".join(args), done.stderr.strip()))
        return done.stdout.strip()

    def get_power_state(self, identity):
        return "On" if self.vnode(identity, "status") == "on" else "Off"

    def set_power_state(self, identity, state):
        if state not in self.RESETS:
            raise error.NotSupportedError("ResetType %s: a vnode cannot do that" % state)
        self.vnode(identity, self.RESETS[state])

    def set_boot_device(self, identity, boot_source):
        if boot_source not in self.DEVICES:
            raise error.BadRequest("boot source %s: a vnode boots Pxe or Hdd" % boot_source)
        boot = getattr(patching, "boot", None) or {}
        args = ["boot-device", self.DEVICES[boot_source]]
        if boot.get("BootSourceOverrideEnabled") == "Continuous":
            args.append("--persistent")
        if boot.get("BootSourceOverrideMode"):
            args += ["--mode", boot["BootSourceOverrideMode"].lower()]
        self.vnode(identity, *args)
        super().set_boot_device(identity, boot_source)

if app.config.get("KILN_VNODE_BINARY"):
    # The emulator makes its systems driver on first use, from this name.
    fakedriver.FakeDriver = VnodeDriver
inner = app.wsgi_app
tokens = {}
versions = {}
SESSIONS = "/redfish/v1/SessionService/Sessions"

def log(entry):
    with open(log_file, "a") as f:
        f.write(json.dumps(entry) + "\n")

def valid(user, password):
    with open(auth_file) as f:
        for line in f:
            name, _, hashed = line.strip().partition(":")
            if name == user and bcrypt.checkpw(password.encode(), hashed.encode()):
                return True
    return False

def answer(start_response, status, body=b"", headers=()):
    start_response(status, [("Content-Length", str(len(body)))] + list(headers))
    return [body]

def outer(env, start_response):
    method, path = env["REQUEST_METHOD"], env["PATH_INFO"].rstrip("/")
    size = int(env.get("CONTENT_LENGTH") or 0)
    raw = env["wsgi.input"].read(size) if size else b""
    import io
    env["wsgi.input"] = io.BytesIO(raw)
    token = env.get("HTTP_X_AUTH_TOKEN")
    body = json.loads(raw) if raw else None
    if isinstance(body, dict) and "Password" in body:
        body = dict(body, Password="***")
    log({"method": method, "path": path, "body": body,
         "if_match": env.get("HTTP_IF_MATCH"),
         "auth": "session" if token else ("basic" if env.get("HTTP_AUTHORIZATION") else None)})
    if method == "POST" and path == SESSIONS:
        creds = json.loads(raw or b"{}")
        if not valid(creds.get("UserName", ""), creds.get("Password", "")):
            return answer(start_response, "401 Unauthorized")
        token, sid = secrets.token_hex(16), secrets.token_hex(4)
        tokens[token] = (sid, creds["UserName"], creds["Password"])
        body = json.dumps({"@odata.id": SESSIONS + "/" + sid, "Id": sid}).encode()
        return answer(start_response, "201 Created", body,
                      [("X-Auth-Token", token), ("Location", SESSIONS + "/" + sid),
                       ("Content-Type", "application/json")])
    if token is not None:
        if token not in tokens:
            return answer(start_response, "401 Unauthorized")
        sid, user, password = tokens[token]
        if method == "DELETE" and path == SESSIONS + "/" + sid:
            del tokens[token]
            return answer(start_response, "204 No Content")
        import base64
        env["HTTP_AUTHORIZATION"] = "Basic " + base64.b64encode(
            (user + ":" + password).encode()).decode()
    system = path.startswith("/redfish/v1/Systems/") and path.count("/") == 4
    patching.boot = body.get("Boot") if system and isinstance(body, dict) else None
    if system and method == "PATCH":
        wanted = env.get("HTTP_IF_MATCH")
        current = '"v%d"' % versions.get(path, 0)
        if wanted is not None and wanted != current:
            return answer(start_response, "412 Precondition Failed")
    def start(status, headers, exc_info=None):
        if system and method == "GET" and status.startswith("200"):
            headers = headers + [("ETag", '"v%d"' % versions.get(path, 0))]
        if system and method == "PATCH" and status.startswith("2"):
            versions[path] = versions.get(path, 0) + 1
        return start_response(status, headers, exc_info)
    return inner(env, start)

app.wsgi_app = outer
port, cert, key = int(sys.argv[4]), sys.argv[5], sys.argv[6]
app.run(host="127.0.0.1", port=port, ssl_context=(cert, key))
"#;

pub const REDFISH_USER: &str = "admin";
pub const REDFISH_PASSWORD: &str = "kiln-redfish-pw";
pub const SYSTEM: &str = "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094";

pub fn sushy_venv() -> PathBuf {
    let venv = std::env::var_os("KILN_SUSHY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/kiln-sushy-venv"));
    if !venv.join("bin/sushy-emulator").exists() {
        let made = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "sushy-tools"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            made,
            "cannot make a venv with sushy-tools at {}",
            venv.display()
        );
    }
    venv
}

pub fn run_ok(command: &mut Command) {
    let out = command.output().expect("run a helper program");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
pub fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    require("openssl", "openssl");
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("bmc.key");
    let csr = dir.join("bmc.csr");
    let cert = dir.join("bmc.pem");
    let ext = dir.join("bmc.ext");
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=kiln test BMC CA", "-keyout"])
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
    );
    run_ok(
        Command::new("openssl")
            .args(["req", "-new", "-newkey", "rsa:2048", "-nodes"])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    );
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert),
    );
    (ca, cert, key)
}

/// A Redfish system that fronts a `kiln vnode`.
pub struct RedfishVnode {
    pub uuid: String,
    pub name: String,
    pub mac: String,
    /// The vnode's definition (`kiln vnode --node`).
    pub definition: PathBuf,
}

/// The emulator's config lines (Python) for vnode systems; JSON strings and
/// lists are Python literals too.
fn vnode_config(vnodes: &[RedfishVnode]) -> String {
    if vnodes.is_empty() {
        return String::new();
    }
    let systems: Vec<Value> = vnodes
        .iter()
        .map(|v| {
            json!({"uuid": v.uuid, "name": v.name, "power_state": "Off",
                   "nics": [{"mac": v.mac}], "vnode": v.definition})
        })
        .collect();
    format!(
        "SUSHY_EMULATOR_FAKE_SYSTEMS = {}\nKILN_VNODE_BINARY = {}\n",
        Value::from(systems),
        json!(KILN)
    )
}

/// The chassis control script that makes ipmi_sim the BMC of a `kiln vnode`.
/// ipmi_sim keeps the boot device until it is set again and tells the script
/// no more than the device, so the vnode gets it as persistent.
pub fn vnode_chassis_control(definition: &Path) -> String {
    format!(
        r#"#!/bin/sh
dir=$(dirname "$0")
vnode() {{ "{KILN}" vnode --node "{}" "$@" 2>>"$dir/vnode.log"; }}
shift
op=$1
shift
case $op in
get)
    for parm in "$@"; do
        case $parm in
        power) state=$(vnode status) || exit 1
            if [ "$state" = on ]; then echo "power:1"; else echo "power:0"; fi ;;
        boot) echo "boot:$(cat "$dir/bootdev" 2>/dev/null || echo default)" ;;
        *) echo "Invalid parameter: $parm"; exit 1 ;;
        esac
    done ;;
set)
    while [ $# -ge 2 ]; do
        parm=$1 value=$2
        shift 2
        case $parm in
        power) if [ "$value" = 1 ]; then vnode power-on; else vnode power-off; fi || exit 1 ;;
        reset) vnode reset || exit 1 ;;
        boot)
            case $value in
            pxe) vnode boot-device pxe --persistent || exit 1 ;;
            default|none) vnode boot-device disk --persistent || exit 1 ;;
            *) echo "Invalid boot device: $value"; exit 1 ;;
            esac
            echo "$value" > "$dir/bootdev" ;;
        identify) shift ;;
        *) echo "Invalid parameter: $parm"; exit 1 ;;
        esac
    done ;;
*) echo "Unknown operation: $op"; exit 1 ;;
esac
"#,
        definition.display()
    )
}

pub struct RedfishBmc {
    pub dir: PathBuf,
    pub port: u16,
    pub ca: PathBuf,
    _emulator: Reaped,
}

impl RedfishBmc {
    /// Starts the emulator in `dir`: its one fake system when `vnodes` is
    /// empty, else one system per vnode, driven through `kiln vnode`.
    pub fn start(dir: &Path, vnodes: &[RedfishVnode]) -> RedfishBmc {
        std::fs::create_dir_all(dir).unwrap();
        require("curl", "curl");
        let venv = sushy_venv();
        let (ca, cert, key) = make_certificates(dir);
        let python = venv.join("bin/python3");
        let hashed = Command::new(&python)
            .args([
                "-c",
                "import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt()).decode())",
                REDFISH_PASSWORD,
            ])
            .output()
            .expect("hash the password with bcrypt");
        let auth_file = dir.join("htpasswd");
        std::fs::write(
            &auth_file,
            format!(
                "{REDFISH_USER}:{}\n",
                String::from_utf8_lossy(&hashed.stdout).trim()
            ),
        )
        .unwrap();
        let config = dir.join("emulator.conf");
        std::fs::write(
            &config,
            format!(
                "SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_AUTH_FILE = {:?}\n\
                 SUSHY_EMULATOR_STATE_DIR = {:?}\n{}",
                auth_file.display().to_string(),
                // The fake driver keeps its systems in an SQLite file, by
                // default one in /tmp shared by every emulator run.
                dir.join("sushy-state").display().to_string(),
                vnode_config(vnodes)
            ),
        )
        .unwrap();
        let wrapper = dir.join("emulator.py");
        std::fs::write(&wrapper, REDFISH_WRAPPER).unwrap();
        let port = free_tcp_port();
        let emulator = Command::new(&python)
            .arg(&wrapper)
            .arg(&config)
            .arg(dir.join("requests.log"))
            .arg(&auth_file)
            .arg(port.to_string())
            .arg(&cert)
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("emulator.err")).unwrap())
            .spawn()
            .expect("start the sushy emulator");
        let emulator = Reaped(emulator);
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sushy emulator did not listen: {}",
                read(&dir.join("emulator.err"))
            );
            thread::sleep(Duration::from_millis(200));
        }
        RedfishBmc {
            dir: dir.to_path_buf(),
            port,
            ca,
            _emulator: emulator,
        }
    }

    pub fn settings(&self, verify: VerifyCa, auth: RedfishAuth, password: &str) -> RedfishSettings {
        let mut settings =
            RedfishSettings::new("127.0.0.1", Some(self.port), REDFISH_USER, password);
        settings.verify = verify;
        settings.auth = auth;
        // The fake driver applies a power change 1 to 11 s after accepting it.
        settings.power_timeout = Duration::from_secs(60);
        settings.poll_interval = Duration::from_millis(500);
        settings
    }

    pub fn driver(&self, auth: RedfishAuth) -> RedfishDriver {
        let settings = self.settings(VerifyCa::CaFile(self.ca.clone()), auth, REDFISH_PASSWORD);
        RedfishDriver::new("redfish-node", settings).unwrap()
    }

    /// The system as the emulator serves it, read with curl.
    pub fn system(&self) -> Value {
        self.get(SYSTEM)
    }

    /// A resource as the emulator serves it, read with curl.
    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self.curl("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("the resource is JSON")
    }

    /// Sends a request with curl; returns the HTTP status and the body.
    pub fn curl(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        let mut command = Command::new("curl");
        command
            .args(["-s", "-X", method, "--cacert"])
            .arg(&self.ca)
            .args(["-u", &format!("{REDFISH_USER}:{REDFISH_PASSWORD}")])
            .args(["-w", "\n%{http_code}"]);
        if let Some(body) = body {
            command
                .args(["-H", "Content-Type: application/json", "-d"])
                .arg(body.to_string());
        }
        let out = command
            .arg(format!("https://127.0.0.1:{}{path}", self.port))
            .output()
            .expect("run curl");
        assert!(out.status.success(), "curl {method} {path}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (status.trim().parse().unwrap_or(0), body.to_string())
    }

    /// The requests the emulator received, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        read(&self.dir.join("requests.log"))
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}
