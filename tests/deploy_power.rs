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
//! Needs: ipmi_sim (openipmi), ipmitool, qemu-system-x86_64, openssl, curl,
//! and sushy-tools in a Python venv (KILN_SUSHY_VENV, default /tmp/kiln-sushy-venv;
//! created with `python3 -m venv` + `pip install sushy-tools` when missing).

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use kiln::deploy::power::ipmi::{IpmiDriver, IpmiSettings};
use kiln::deploy::power::redfish::{RedfishAuth, RedfishDriver, RedfishSettings, VerifyCa};
use kiln::deploy::power::{BootDevice, PowerDriver, PowerState};
use serde_json::Value;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// Kills a child process (and waits for it) when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "{program} is missing: apt-get install {package}");
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn alive(pid: &str) -> bool {
    !pid.is_empty() && Path::new(&format!("/proc/{pid}")).exists() && {
        // A zombie is dead for our purposes.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        !stat.contains(") Z ")
    }
}

/// Waits for a killed process to go (a TCG qemu takes a moment to exit).
fn wait_dead(pid: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        assert!(Instant::now() < deadline, "{what} (pid {pid})");
        thread::sleep(Duration::from_millis(100));
    }
}

fn cmdline(pid: &str) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

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
struct IpmiBmc {
    dir: PathBuf,
    port: u16,
    _sim: Reaped,
}

const IPMI_USER: &str = "admin";
const IPMI_PASSWORD: &str = "kiln-ipmi-pw";

impl IpmiBmc {
    fn start(dir: &Path) -> IpmiBmc {
        require("ipmi_sim", "openipmi");
        require("ipmitool", "ipmitool");
        require("qemu-system-x86_64", "qemu-system-x86");
        let script = dir.join("chassis-control");
        std::fs::write(&script, CHASSIS_CONTROL).unwrap();
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

    fn settings(&self, password: &str) -> IpmiSettings {
        let mut settings = IpmiSettings::new("127.0.0.1", IPMI_USER, password);
        settings.port = self.port;
        settings.min_interval = Duration::from_millis(300);
        settings.command_timeout = Duration::from_secs(20);
        settings.attempts = 2;
        settings
    }

    fn driver(&self, password: &str) -> IpmiDriver {
        IpmiDriver::new("ipmi-node", self.settings(password))
    }

    fn node_pid(&self) -> String {
        read(&self.dir.join("node.pid"))
    }

    fn bootdev(&self) -> String {
        read(&self.dir.join("bootdev"))
    }

    /// The node's qemu has the pid the script recorded, and is running.
    fn wait_node_running(&self) -> String {
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

#[test]
fn ipmi_driver_starts_stops_and_reboots_the_node_behind_ipmi_sim() {
    let tmp = tempfile::tempdir().unwrap();
    let bmc = IpmiBmc::start(tmp.path());
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
    let bmc = IpmiBmc::start(tmp.path());
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
    let bmc = IpmiBmc::start(&bmc_dir);
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

const REDFISH_USER: &str = "admin";
const REDFISH_PASSWORD: &str = "kiln-redfish-pw";
const SYSTEM: &str = "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094";

fn sushy_venv() -> PathBuf {
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

fn run_ok(command: &mut Command) {
    let out = command.output().expect("run a helper program");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
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

struct RedfishBmc {
    dir: PathBuf,
    port: u16,
    ca: PathBuf,
    _emulator: Reaped,
}

impl RedfishBmc {
    fn start(dir: &Path) -> RedfishBmc {
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
                "SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_AUTH_FILE = {:?}\n",
                auth_file.display().to_string()
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

    fn settings(&self, verify: VerifyCa, auth: RedfishAuth, password: &str) -> RedfishSettings {
        let mut settings =
            RedfishSettings::new("127.0.0.1", Some(self.port), REDFISH_USER, password);
        settings.verify = verify;
        settings.auth = auth;
        // The fake driver applies a power change 1 to 11 s after accepting it.
        settings.power_timeout = Duration::from_secs(60);
        settings.poll_interval = Duration::from_millis(500);
        settings
    }

    fn driver(&self, auth: RedfishAuth) -> RedfishDriver {
        let settings = self.settings(VerifyCa::CaFile(self.ca.clone()), auth, REDFISH_PASSWORD);
        RedfishDriver::new("redfish-node", settings).unwrap()
    }

    /// The system as the emulator serves it, read with curl.
    fn system(&self) -> Value {
        let out = Command::new("curl")
            .args(["-sf", "--cacert"])
            .arg(&self.ca)
            .args(["-u", &format!("{REDFISH_USER}:{REDFISH_PASSWORD}")])
            .arg(format!("https://127.0.0.1:{}{SYSTEM}", self.port))
            .output()
            .expect("run curl");
        assert!(out.status.success(), "curl failed: {out:?}");
        serde_json::from_slice(&out.stdout).expect("the system is JSON")
    }

    /// The requests the emulator received, oldest first.
    fn requests(&self) -> Vec<Value> {
        read(&self.dir.join("requests.log"))
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

#[test]
fn redfish_refuses_an_untrusted_certificate_and_wrong_password() {
    let tmp = tempfile::tempdir().unwrap();
    let bmc = RedfishBmc::start(tmp.path());

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
    let bmc = RedfishBmc::start(tmp.path());
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
