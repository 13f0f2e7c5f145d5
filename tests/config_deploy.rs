//! Role config from the conductor to a node, on loopback: a plan with config is
//! deployed to a simulated node; the config drive read back from its disk (found
//! with sgdisk, read with mtools as the oracle) holds the metadata, the
//! conductor's endpoints and a config token; `kiln config apply` on the host
//! renders a template from it and the conductor shows the node configured; a
//! plan update reaches the next apply over HTTP; a failing refresh script is
//! reported by name; wrong tokens get 401.

#[path = "common/conductor.rs"]
mod common;
#[allow(dead_code)]
#[path = "elements_shipped/common.rs"]
mod shipped;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
/// Generous: the flows wait on each other, never on a clock for a verdict.
const WAIT: Duration = Duration::from_secs(180);

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kiln conductor` on a free loopback port; its URL.
fn start_conductor(dir: &Path, extra: &[&str]) -> (common::Conductor, String) {
    let conductor = common::Conductor::start(dir, "127.0.0.1:0", extra);
    let url = conductor.url.clone();
    (conductor, url)
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// (status, ETag, body text)
fn call_raw(
    method: &str,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, String) {
    let agent = http();
    let response = match method {
        "DELETE" => agent.delete(url).call(),
        "GET" => {
            let mut request = agent.get(url);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.call()
        }
        "POST" | "PUT" => {
            let mut request = if method == "POST" {
                agent.post(url)
            } else {
                agent.put(url)
            };
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.send(body.unwrap_or(""))
        }
        _ => unreachable!(),
    };
    let mut response = response.expect("HTTP call");
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, etag, text)
}

fn call(method: &str, url: &str, body: Option<&str>, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, _, text) = call_raw(method, url, body, headers);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn node(url: &str, name: &str) -> Value {
    let (status, node) = call("GET", &format!("{url}/v1/nodes/{name}"), None, &[]);
    assert_eq!(status, 200, "{node}");
    node
}

fn wait_for(url: &str, name: &str, want: &str) -> Value {
    let started = Instant::now();
    loop {
        let node = node(url, name);
        let now = node["provision_state"].as_str().unwrap();
        if now == want {
            return node;
        }
        assert!(
            !now.ends_with("failed"),
            "{name} is {now}: {}",
            node["last_error"]
        );
        assert!(
            started.elapsed() < WAIT,
            "{name} still {now}, wanted {want}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run(command: &mut Command) -> std::process::Output {
    let out = command.output().expect("run command");
    assert!(out.status.success(), "{command:?}: {out:?}");
    out
}

/// A 16 MiB GPT disk image with one partition, as qcow2, in `dir/images`.
fn make_image(dir: &Path) {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let raw = dir.join("image.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:+12M", "-c", "1:root"])
        .arg(&raw));
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(images.join("full.qcow2")));
}

/// Copies the partition named config-2 (located by `sgdisk -p`) out of `disk`.
fn extract_config_drive(disk: &Path, out: &Path) {
    let table = run(Command::new("sgdisk").arg("-p").arg(disk));
    let text = String::from_utf8_lossy(&table.stdout);
    let line = text
        .lines()
        .find(|line| line.trim_end().ends_with("config-2"))
        .unwrap_or_else(|| panic!("no config-2 partition:\n{text}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    let first: u64 = fields[1].parse().unwrap();
    let last: u64 = fields[2].parse().unwrap();
    let mut file = std::fs::File::open(disk).unwrap();
    file.seek(SeekFrom::Start(first * 512)).unwrap();
    let mut bytes = vec![0u8; ((last - first + 1) * 512) as usize];
    file.read_exact(&mut bytes).unwrap();
    std::fs::write(out, bytes).unwrap();
}

const PLAN: &str = r#"
name: oc
images: {full: full.qcow2}
config: {motd: {greeting: hello}}
roles:
  - name: Controller
    count: 1
    profile: control
    hostname_format: "ctl-%index%"
    config: {motd: {text: VALUE}}
"#;

fn plan(value: &str) -> String {
    PLAN.replace("VALUE", value)
}

fn script(dir: &Path, name: &str, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

struct Node {
    templates: PathBuf,
    root: PathBuf,
    refresh: PathBuf,
    cache: PathBuf,
    drive: PathBuf,
}

impl Node {
    /// `kiln config apply --one-time` as the node's service runs it.
    fn apply(&self) -> std::process::Output {
        Command::new(KILN)
            .args(["config", "apply", "--one-time"])
            .arg("--config-drive")
            .arg(&self.drive)
            .arg("-t")
            .arg(&self.templates)
            .arg("-o")
            .arg(&self.root)
            .arg("--refresh-dir")
            .arg(&self.refresh)
            .arg("--cache-dir")
            .arg(&self.cache)
            .output()
            .expect("run kiln config apply")
    }

    fn motd(&self) -> String {
        std::fs::read_to_string(self.root.join("etc/motd")).unwrap()
    }
}

/// A conductor (with `extra` options) that deployed `plan("one")` onto one
/// simulated node "ctl"; the node's disk file.
fn deploy_one(dir: &Path, extra: &[&str]) -> (common::Conductor, String, PathBuf) {
    make_image(dir);
    let (conductor, url) = start_conductor(dir, extra);
    let import = json!([{"name": "ctl", "pm_type": "manual",
                         "ports": [{"address": "52:54:00:00:02:01"}],
                         "capabilities": "profile:control"}]);
    let (status, body) = call(
        "POST",
        &format!("{url}/v1/nodes"),
        Some(&import.to_string()),
        &[],
    );
    assert_eq!(status, 201, "{body}");
    for target in ["manage", "provide"] {
        let body = json!({ "target": target }).to_string();
        let (status, _) = call(
            "PUT",
            &format!("{url}/v1/nodes/ctl/states/provision"),
            Some(&body),
            &[],
        );
        assert_eq!(status, 202);
    }
    wait_for(&url, "ctl", "available");
    let (status, body) = call(
        "POST",
        &format!("{url}/v1/deployments"),
        Some(&plan("one")),
        &[],
    );
    assert_eq!(status, 202, "{body}");
    let disk = dir.join("ctl.img");
    {
        let _agent = Running(
            Command::new(KILN)
                .args([
                    "agent",
                    "--simulate",
                    "--api-url",
                    &url,
                    "--mac",
                    "52:54:00:00:02:01",
                ])
                .arg("--disk")
                .arg(format!("{}:5G", disk.display()))
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start kiln agent"),
        );
        wait_for(&url, "ctl", "active");
    }
    (conductor, url, disk)
}

#[test]
fn role_config_reaches_the_node_and_its_reports_reach_the_conductor() {
    let dir = tempfile::tempdir().unwrap();
    let (_conductor, url, disk) = deploy_one(dir.path(), &[]);
    let uuid = node(&url, "ctl")["uuid"].as_str().unwrap().to_string();
    assert!(node(&url, "ctl")["config"].is_null(), "no report yet");

    // The config drive, read by mtools: metadata, endpoints and token.
    let drive = dir.path().join("config-2.img");
    extract_config_drive(&disk, &drive);
    let out = run(Command::new("mtype")
        .arg("-i")
        .arg(&drive)
        .arg("::openstack/latest/kiln_config.json"));
    let kiln_config: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        kiln_config["motd"],
        json!({"greeting": "hello", "text": "one"})
    );
    let kiln = &kiln_config["kiln"];
    assert_eq!(kiln["role"], "Controller");
    assert_eq!(kiln["hostname"], "ctl-0");
    assert_eq!(
        kiln["metadata_url"],
        format!("{url}/v1/nodes/{uuid}/metadata")
    );
    assert_eq!(
        kiln["status_url"],
        format!("{url}/v1/nodes/{uuid}/config-status")
    );
    let token = kiln["config_token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 64);

    // The metadata endpoint: token required; ETag is the body's SHA-256.
    let metadata_url = format!("{url}/v1/nodes/{uuid}/metadata");
    let (status, _, _) = call_raw("GET", &metadata_url, None, &[]);
    assert_eq!(status, 401);
    let (status, _, body) = call_raw("GET", &metadata_url, None, &[("X-Config-Token", "0000")]);
    assert_eq!(status, 401, "{body}");
    let (status, etag, body) = call_raw("GET", &metadata_url, None, &[("X-Config-Token", &token)]);
    assert_eq!(status, 200, "{body}");
    let served: Value = serde_json::from_str(&body).unwrap();
    assert!(served["kiln"].get("config_token").is_none(), "{served}");
    let sha = {
        let path = dir.path().join("served.json");
        std::fs::write(&path, &body).unwrap();
        let out = run(Command::new("sha256sum").arg(&path));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(etag.as_deref(), Some(format!("\"{sha}\"").as_str()));
    assert_eq!(kiln["metadata_sha256"], sha);
    let tag = format!("\"{sha}\"");
    let (status, _, body) = call_raw(
        "GET",
        &metadata_url,
        None,
        &[("X-Config-Token", &token), ("If-None-Match", &tag)],
    );
    assert_eq!((status, body.as_str()), (304, ""));

    // First apply: the file renders from the drive and the conductor hears of it.
    let node_dir = dir.path().join("node");
    let host = Node {
        templates: node_dir.join("templates"),
        root: node_dir.join("root"),
        refresh: node_dir.join("refresh"),
        cache: node_dir.join("cache"),
        drive,
    };
    std::fs::create_dir_all(host.templates.join("etc")).unwrap();
    std::fs::write(
        host.templates.join("etc/motd"),
        "{{motd.greeting}}: {{motd.text}} on {{kiln.hostname}}\n",
    )
    .unwrap();
    script(&host.refresh.join("configure.d"), "10-ok", "exit 0");
    let out = host.apply();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(host.motd(), "hello: one on ctl-0\n");
    let config = &node(&url, "ctl")["config"];
    assert_eq!(config["state"], "configured", "{config}");
    assert_eq!(config["metadata_sha256"], sha, "{config}");
    assert_eq!(config["current"], true, "{config}");
    let (_, status) = call("GET", &format!("{url}/v1/deployments/oc"), None, &[]);
    assert_eq!(
        status["nodes"][0]["config"]["state"], "configured",
        "{status}"
    );

    // Updates that need a redeploy are refused and change nothing.
    let deployments = format!("{url}/v1/deployments/oc");
    let (status, body) = call(
        "PUT",
        &deployments,
        Some(&plan("two").replace("count: 1", "count: 2")),
        &[],
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("count 2"),
        "{body}"
    );
    let other = plan("two").replace("full.qcow2", "other.qcow2");
    let (status, body) = call("PUT", &deployments, Some(&other), &[]);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("image"),
        "{body}"
    );
    let renamed = plan("two").replace("name: oc", "name: other");
    let (status, _) = call("PUT", &deployments, Some(&renamed), &[]);
    assert_eq!(status, 400);
    assert_eq!(node(&url, "ctl")["config"]["current"], true);

    // A config change: stored, the node's report is now stale, the next apply
    // fetches it over HTTP and renders the new value.
    // (through the operator's command, as `kiln deploy update PLAN.yaml`).
    let plan_file = dir.path().join("plan-two.yaml");
    std::fs::write(&plan_file, plan("two")).unwrap();
    let out = Command::new(KILN)
        .args(["deploy", "--url", &url, "update"])
        .arg(&plan_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("configured, update pending"), "{table}");
    assert_eq!(node(&url, "ctl")["config"]["current"], false);
    let out = host.apply();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(host.motd(), "hello: two on ctl-0\n");
    let config = &node(&url, "ctl")["config"];
    assert_eq!(
        (config["state"].as_str(), config["current"].as_bool()),
        (Some("configured"), Some(true)),
        "{config}"
    );
    assert_ne!(config["metadata_sha256"], sha);
    let out = host.apply();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no changes"),
        "{out:?}"
    );

    // A failing configure.d script: apply fails, the conductor names the script.
    script(&host.refresh.join("configure.d"), "20-fail", "exit 3");
    let (status, _) = call("PUT", &deployments, Some(&plan("three")), &[]);
    assert_eq!(status, 200);
    let out = host.apply();
    assert!(!out.status.success(), "{out:?}");
    let config = &node(&url, "ctl")["config"];
    assert_eq!(config["state"], "config failed", "{config}");
    assert_eq!(config["script"], "configure.d/20-fail", "{config}");
    assert_eq!(config["current"], true, "{config}");
    let (_, status) = call("GET", &format!("{url}/v1/deployments/oc"), None, &[]);
    assert_eq!(
        status["nodes"][0]["config"]["state"], "config failed",
        "{status}"
    );

    // A report with a wrong token is refused and changes nothing.
    let forged = json!({"status": "succeeded", "metadata_sha256": sha}).to_string();
    let status_url = format!("{url}/v1/nodes/{uuid}/config-status");
    let (status, _) = call(
        "POST",
        &status_url,
        Some(&forged),
        &[("X-Config-Token", "1234")],
    );
    assert_eq!(status, 401);
    let (status, _) = call("POST", &status_url, Some(&forged), &[]);
    assert_eq!(status, 401);
    assert_eq!(node(&url, "ctl")["config"]["state"], "config failed");

    // Undeploy: the node's token and config state are forgotten.
    let (status, body) = call("DELETE", &deployments, None, &[]);
    assert_eq!(status, 202, "{body}");
    let gone = wait_for(&url, "ctl", "available");
    assert!(gone["config"].is_null(), "{gone}");
    let (status, _, _) = call_raw("GET", &metadata_url, None, &[("X-Config-Token", &token)]);
    assert_eq!(status, 401);
}

#[test]
fn the_config_drive_points_nodes_at_the_public_url() {
    let dir = tempfile::tempdir().unwrap();
    let (_conductor, url, disk) = deploy_one(dir.path(), &["--public-url", "http://10.0.2.100/"]);
    let uuid = node(&url, "ctl")["uuid"].as_str().unwrap().to_string();
    let drive = dir.path().join("config-2.img");
    extract_config_drive(&disk, &drive);
    let out = run(Command::new("mtype")
        .arg("-i")
        .arg(&drive)
        .arg("::openstack/latest/kiln_config.json"));
    let kiln_config: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        kiln_config["kiln"]["metadata_url"],
        format!("http://10.0.2.100/v1/nodes/{uuid}/metadata")
    );
    assert_eq!(
        kiln_config["kiln"]["status_url"],
        format!("http://10.0.2.100/v1/nodes/{uuid}/config-status")
    );
}

// ---- the role-config element ----------------------------------------------

/// The hooks folder of a build of `elements` (dib-helpers comes with every build).
fn hooks(scratch: &Path, elements: &[&str]) -> PathBuf {
    shipped::assemble_hooks(scratch, None, elements)
}

/// Runs a host-phase hook the way a build does: bash, TARGET_ROOT, the hooks'
/// bin/ on PATH only through the script itself.
fn run_root_d(
    hooks: &Path,
    script: &str,
    root: &Path,
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut command = Command::new("bash");
    command
        .arg(hooks.join("root.d").join(script))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("TARGET_ROOT", root)
        .env("KILN", KILN)
        .env("DIB_KILN_STRIP", "0");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

/// A root with only busybox-static as /bin/sh and an rc.d folder: no C library.
fn bare_busybox_root(root: &Path) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc/rc.d")).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static installed");
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
}

fn version_in(root: &Path) -> String {
    let out = run(Command::new("chroot")
        .arg(root)
        .args(["/usr/bin/kiln", "--version"]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn role_config_on_busybox_init_runs_kiln_with_its_own_libraries() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = hooks(dir.path(), &["busybox-minimal", "role-config"]);
    let root = dir.path().join("root");
    bare_busybox_root(&root);
    let out = run_root_d(&hooks, "60-role-config", &root, &[]);
    assert!(out.status.success(), "{out:?}");
    let want = String::from_utf8(run(Command::new(KILN).arg("--version")).stdout).unwrap();
    // No C library in the root: kiln runs through its bundled loader.
    assert!(!root.join("lib/x86_64-linux-gnu/libc.so.6").exists());
    assert_eq!(version_in(&root), want.trim());
    let hook = std::fs::read_to_string(root.join("etc/rc.d/S90kiln-config")).unwrap();
    assert!(
        hook.contains("kiln config apply --polling-interval 30"),
        "{hook}"
    );
    let mode = std::fs::metadata(root.join("etc/rc.d/S90kiln-config"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let cache = std::fs::metadata(root.join("var/lib/kiln-config"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(cache & 0o777, 0o700);
    assert!(
        root.join("usr/libexec/os-refresh-config/configure.d")
            .is_dir()
    );
    assert!(root.join("usr/libexec/os-apply-config/templates").is_dir());
    // The hook runs `kiln config apply` in the background and returns.
    let out =
        run(Command::new("chroot")
            .arg(&root)
            .args(["/bin/sh", "-n", "/etc/rc.d/S90kiln-config"]));
    assert!(out.status.success());
}

#[test]
fn role_config_on_systemd_enables_the_unit_and_checks_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = hooks(dir.path(), &["busybox-minimal", "role-config"]);
    let root = dir.path().join("root");
    bare_busybox_root(&root);
    std::fs::create_dir_all(root.join("lib/systemd")).unwrap();
    std::fs::write(root.join("lib/systemd/systemd"), "").unwrap();
    let out = run_root_d(
        &hooks,
        "60-role-config",
        &root,
        &[("DIB_KILN_CONFIG_POLLING_INTERVAL", "45")],
    );
    assert!(out.status.success(), "{out:?}");
    let unit =
        std::fs::read_to_string(root.join("etc/systemd/system/kiln-config.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/kiln config apply --polling-interval 45"),
        "{unit}"
    );
    assert!(unit.contains("After=network-online.target"), "{unit}");
    let link = std::fs::read_link(
        root.join("etc/systemd/system/multi-user.target.wants/kiln-config.service"),
    )
    .unwrap();
    assert_eq!(link, Path::new("/etc/systemd/system/kiln-config.service"));
    assert!(!root.join("etc/rc.d/S90kiln-config").exists());
    let out = run_root_d(
        &hooks,
        "60-role-config",
        &root,
        &[("DIB_KILN_CONFIG_POLLING_INTERVAL", "soon")],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DIB_KILN_CONFIG_POLLING_INTERVAL='soon'"),
        "{out:?}"
    );
}

#[test]
fn kiln_agent_still_installs_kiln_at_the_hosts_library_paths() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = hooks(dir.path(), &["kiln-agent"]);
    let root = dir.path().join("root");
    bare_busybox_root(&root);
    let out = run_root_d(
        &hooks,
        "50-kiln-agent",
        &root,
        &[("DIB_KILN_AGENT_MODULES", "virtio_blk")],
    );
    assert!(out.status.success(), "{out:?}");
    let ldd = String::from_utf8(run(Command::new("ldd").arg(KILN)).stdout).unwrap();
    let libc = ldd
        .lines()
        .find_map(|line| {
            line.split_whitespace()
                .nth(2)
                .filter(|p| p.contains("libc.so"))
        })
        .unwrap()
        .to_string();
    assert!(root.join(libc.trim_start_matches('/')).is_file(), "{libc}");
    assert!(!root.join("usr/lib/kiln").exists());
    let want = String::from_utf8(run(Command::new(KILN).arg("--version")).stdout).unwrap();
    assert_eq!(version_in(&root), want.trim());
}
