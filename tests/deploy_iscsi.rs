//! The iSCSI deploy interface (issue 8) with a real conductor on loopback.
//!
//! Simulated agents (`kiln agent --simulate`) export their disk files with
//! kiln's target; the conductor's initiator writes them. A node deployed over
//! iSCSI must end up like one deployed over HTTP: `qemu-img compare` against
//! the image, sgdisk, and the config drive's files copied out with mtools.
//!
//! The failure tests play the agent by hand over the agent API and export
//! with tgtd (an independent target, package tgt): a CHAP secret other than
//! the conductor's, a portal nobody listens on, and a connection cut mid-image
//! by a proxy. A conductor SIGKILLed mid-write (the proxy paces the data so
//! "mid-write" is a certainty) stops the old export and writes again.

#[path = "common/conductor.rs"]
mod common;
#[path = "common/tgtd.rs"]
mod tgtd;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tgtd::Tgtd;

const MIB: u64 = 1 << 20;
const IQN_PREFIX: &str = "iqn.2026-11.org.kiln:";

/// A plan with a direct role and an iSCSI role deploying the same image.
fn mixed_plan(name: &str, image: &str, direct: usize, iscsi: usize) -> String {
    format!(
        "name: {name}\nimages: {{img: {image}}}\nroles:\n  \
         - {{name: Compute, count: {direct}, profile: compute, image: img}}\n  \
         - {{name: Storage, count: {iscsi}, profile: storage, image: img, \
         deploy_interface: iscsi}}\n"
    )
}

fn run(command: &mut Command) -> std::process::Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(out.status.success(), "{command:?}: {out:?}");
    out
}

/// The config drive's `meta_data.json`: the config-2 partition found by
/// sfdisk, copied out and read with mtools.
fn config_drive_meta(dir: &Path, disk: &Path) -> Value {
    let out = run(Command::new("sfdisk").arg("--json").arg(disk));
    let table: Value = serde_json::from_slice(&out.stdout).unwrap();
    let part = table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "config-2")
        .unwrap_or_else(|| panic!("no config-2 partition on {}: {table}", disk.display()))
        .clone();
    let (start, size) = (
        part["start"].as_u64().unwrap(),
        part["size"].as_u64().unwrap(),
    );
    let mut fs = vec![0u8; (size * SECTOR) as usize];
    std::fs::File::open(disk)
        .unwrap()
        .read_exact_at(&mut fs, start * SECTOR)
        .unwrap();
    let image = dir.join(format!(
        "{}.config-2",
        disk.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&image, fs).unwrap();
    let out = run(Command::new("mcopy")
        .arg("-i")
        .arg(&image)
        .args(["::openstack/latest/meta_data.json", "-"]));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The two disks hold the same bytes over the image's area (GPT headers at
/// both ends left out: each node's config drive entry differs).
fn assert_same_image_area(image: &Path, a: &Path, b: &Path) {
    let size = virtual_size(image);
    let (start, len) = (34 * SECTOR, size - 34 * SECTOR - 33 * SECTOR);
    let opts = |disk: &Path| {
        format!(
            "driver=raw,offset={start},size={len},file.filename={}",
            disk.display()
        )
    };
    let out = qemu_img(&["compare", "--image-opts", &opts(a), &opts(b)]);
    assert!(
        out.status.success(),
        "{} and {} differ: {}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

fn assert_meta(dir: &Path, disk: &Path, node: &Value) {
    let meta = config_drive_meta(dir, disk);
    assert_eq!(meta["uuid"], node["uuid"], "{meta}");
    assert_eq!(
        meta["hostname"], node["instance_info"]["hostname"],
        "{meta}"
    );
    assert_eq!(
        meta["meta"]["role"], node["instance_info"]["role"],
        "{meta}"
    );
}

fn timeline(conductor: &Conductor, name: &str) -> String {
    let (status, body) = call(
        "GET",
        &format!("{}/v1/nodes/{name}/timeline", conductor.url),
        None,
        None,
    );
    assert_eq!(status, 200, "{body}");
    body.to_string()
}

#[test]
fn a_direct_and_an_iscsi_node_deploy_the_same_image_alike() {
    let dir = tempfile::tempdir().unwrap();
    let image = make_image(dir.path(), "mixed", 48 * MIB);
    let conductor = Conductor::start(dir.path(), "127.0.0.1:0", &[]);
    available_nodes(
        &conductor,
        &[
            ("direct-1", "52:54:00:00:81:01", "compute"),
            ("iscsi-1", "52:54:00:00:81:02", "storage"),
        ],
    );
    deploy(&conductor, &mixed_plan("mixed", "mixed.qcow2", 1, 1));
    let iscsi_node = node(&conductor, "iscsi-1");
    assert_eq!(iscsi_node["instance_info"]["deploy_interface"], "iscsi");
    assert_eq!(
        node(&conductor, "direct-1")["instance_info"]["deploy_interface"],
        "direct"
    );
    let direct_disk = dir.path().join("direct-1.img");
    let iscsi_disk = dir.path().join("iscsi-1.img");
    let _a = Agent::start(&conductor.url, "52:54:00:00:81:01", &direct_disk, 4096);
    let _b = Agent::start(&conductor.url, "52:54:00:00:81:02", &iscsi_disk, 4096);
    let direct = wait_for(&conductor, "direct-1", "active");
    let iscsi = wait_for(&conductor, "iscsi-1", "active");
    assert_deployed(&image, &direct_disk);
    assert_deployed(&image, &iscsi_disk);
    assert_same_image_area(&image, &direct_disk, &iscsi_disk);
    assert_meta(dir.path(), &direct_disk, &direct);
    assert_meta(dir.path(), &iscsi_disk, &iscsi);
    // Progress as write_image's: all the image's data bytes.
    let progress = &iscsi["progress"];
    assert!(progress["bytes_written"].as_u64().unwrap() > 0, "{iscsi}");
    assert_eq!(
        progress["bytes_written"], progress["bytes_total"],
        "{iscsi}"
    );
    let steps = timeline(&conductor, "iscsi-1");
    assert!(steps.contains("over iSCSI"), "{steps}");
    assert!(!timeline(&conductor, "direct-1").contains("iSCSI"));
    // `kiln node show` shows how the node was deployed.
    let out = run(Command::new(KILN)
        .args(["node", "show", "iscsi-1", "--url", &conductor.url])
        .env_remove("KILN_CONDUCTOR_URL"));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains("\"deploy_interface\":\"iscsi\""), "{page}");
}

#[test]
fn several_iscsi_nodes_deploy_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let image = make_image(dir.path(), "many", 32 * MIB);
    let conductor = Conductor::start(dir.path(), "127.0.0.1:0", &[]);
    let nodes = [
        ("store-1", "52:54:00:00:82:01", "storage"),
        ("store-2", "52:54:00:00:82:02", "storage"),
        ("store-3", "52:54:00:00:82:03", "storage"),
    ];
    available_nodes(&conductor, &nodes);
    // Per node this time: each instance's override picks iSCSI.
    let plan = "name: many\nimages: {img: many.qcow2}\nroles:\n  \
                - {name: Storage, count: 3, profile: storage, image: img, nodes: [\
                {deploy_interface: iscsi}, {deploy_interface: iscsi}, \
                {name: store-3, deploy_interface: iscsi}]}\n";
    deploy(&conductor, plan);
    for (name, _, _) in &nodes {
        let node = node(&conductor, name);
        assert_eq!(node["instance_info"]["deploy_interface"], "iscsi", "{node}");
    }
    let agents: Vec<(Agent, PathBuf)> = nodes
        .iter()
        .map(|(name, mac, _)| {
            let disk = dir.path().join(format!("{name}.img"));
            (Agent::start(&conductor.url, mac, &disk, 4096), disk)
        })
        .collect();
    for ((name, _, _), (_, disk)) in nodes.iter().zip(&agents) {
        let node = wait_for(&conductor, name, "active");
        assert_deployed(&image, disk);
        assert_meta(dir.path(), disk, &node);
    }
}

// ---- a hand-played agent exporting through tgtd -------------------------

/// (Re-)exports `file` through `tgtd` as target 1 named `iqn`, for an
/// initiator that proves `chap` and wants the target to prove `mutual`.
fn export(tgtd: &Tgtd, iqn: &str, file: &Path, chap: &Value, mutual: &Value) {
    tgtd.try_adm(&[
        "--mode", "target", "--op", "delete", "--force", "--tid", "1",
    ]);
    for user in ["kiln-conductor", "kiln-agent"] {
        tgtd.try_adm(&["--mode", "account", "--op", "delete", "--user", user]);
    }
    let [user, mutual_user] = [chap, mutual].map(|account| account["user"].as_str().unwrap());
    for (account, user) in [(chap, user), (mutual, mutual_user)] {
        tgtd.add_account(user, account["secret"].as_str().unwrap());
    }
    tgtd.add_target(1, iqn, file, user, Some(mutual_user));
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An agent played over the agent API.
struct HandAgent {
    heartbeat_url: String,
    token: String,
}

impl HandAgent {
    fn lookup(conductor: &Conductor, mac: &str) -> HandAgent {
        let (status, session) = call(
            "POST",
            &format!("{}/v1/agent/lookup", conductor.url),
            Some(&json!({"macs": [mac], "inventory": null}).to_string()),
            None,
        );
        assert_eq!(status, 200, "{session}");
        HandAgent {
            heartbeat_url: format!(
                "{}/v1/agent/{}/heartbeat",
                conductor.url,
                session["node"].as_str().unwrap()
            ),
            token: session["token"].as_str().unwrap().to_string(),
        }
    }

    /// One heartbeat carrying `report`; the command answered (or Null).
    fn heartbeat(&self, report: Value) -> Value {
        let body = json!({ "command": report }).to_string();
        let (status, response) = call("POST", &self.heartbeat_url, Some(&body), Some(&self.token));
        assert_eq!(status, 200, "{response}");
        response["command"].clone()
    }
}

fn exporting(portal: &str, iqn: &str, file: &Path, size: u64) -> Value {
    json!({"id": "export_disk", "status": "running", "result": {
        "portal": portal, "target_iqn": iqn, "disk": file, "size": size}})
}

/// One iSCSI node, deployed, with a hand-played agent that received its
/// export_disk command.
struct HandDeploy {
    conductor: Conductor,
    agent: HandAgent,
    /// export_disk's params.
    params: Value,
    uuid: String,
    image: PathBuf,
}

fn hand_deploy(dir: &Path, name: &str, mac: &str, image_mib: u64) -> HandDeploy {
    let image = make_image(dir, name, image_mib * MIB);
    let conductor = Conductor::start(dir, "127.0.0.1:0", &[]);
    available_nodes(&conductor, &[(name, mac, "storage")]);
    deploy(
        &conductor,
        &mixed_plan(name, &format!("{name}.qcow2"), 0, 1),
    );
    let agent = HandAgent::lookup(&conductor, mac);
    let command = agent.heartbeat(Value::Null);
    assert_eq!(command["name"], "export_disk", "{command}");
    let params = command["params"].clone();
    let uuid = node(&conductor, name)["uuid"].as_str().unwrap().to_string();
    HandDeploy {
        conductor,
        agent,
        params,
        uuid,
        image,
    }
}

/// Heartbeats `report` until the node is in `want`; returns the node.
fn heartbeat_until(deploy: &HandDeploy, name: &str, report: &Value, want: &str) -> Value {
    let started = Instant::now();
    loop {
        let node = node(&deploy.conductor, name);
        if node["provision_state"] == want {
            return node;
        }
        assert!(started.elapsed() < WAIT, "{name} never {want}: {node}");
        deploy.agent.heartbeat(report.clone());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn head_is_zero(disk: &Path) -> bool {
    let mut head = vec![0u8; MIB as usize];
    std::fs::File::open(disk)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    head.iter().all(|&b| b == 0)
}

fn target_disk(dir: &Path, name: &str) -> PathBuf {
    let disk = dir.join(format!("{name}.target"));
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(5 << 30)
        .unwrap();
    disk
}

#[test]
fn export_disk_carries_a_fresh_secret_that_no_api_or_state_file_shows() {
    let dir = tempfile::tempdir().unwrap();
    let deploy = hand_deploy(dir.path(), "secret", "52:54:00:00:83:01", 8);
    let params = &deploy.params;
    assert_eq!(params["target_iqn"], format!("{IQN_PREFIX}{}", deploy.uuid));
    // A manual node's agent (a simulated one) picks its own port.
    assert_eq!(params["port"], 0, "{params}");
    let secret = params["chap"]["secret"].as_str().unwrap().to_string();
    let mutual = params["mutual_chap"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(secret.len() >= 16 && mutual.len() >= 16, "{params}");
    assert_ne!(secret, mutual);
    // The target is not up yet: the conductor waits (no new secret).
    let starting = json!({"id": "export_disk", "status": "running"});
    assert_eq!(deploy.agent.heartbeat(starting), Value::Null);
    // The export ended without a write (the agent restarted its target):
    // the next export gets new secrets.
    let ended = json!({"id": "export_disk", "status": "succeeded"});
    let again = deploy.agent.heartbeat(ended);
    assert_eq!(again["name"], "export_disk", "{again}");
    assert_ne!(again["params"]["chap"]["secret"].as_str().unwrap(), secret);
    let mut shown = String::new();
    for path in ["/v1/nodes/secret", "/v1/nodes", "/v1/deployments/secret"] {
        shown.push_str(
            &call(
                "GET",
                &format!("{}{path}", deploy.conductor.url),
                None,
                None,
            )
            .1
            .to_string(),
        );
    }
    shown.push_str(&timeline(&deploy.conductor, "secret"));
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().contains("state.db") {
            stored.extend(std::fs::read(&path).unwrap());
        }
    }
    for secret in [&secret, &mutual] {
        assert!(
            !shown.contains(secret.as_str()),
            "the API shows a CHAP secret"
        );
        let found = stored
            .windows(secret.len())
            .any(|window| window == secret.as_bytes());
        assert!(!found, "the state file holds a CHAP secret");
    }
}

#[test]
fn a_target_refusing_the_chap_secret_fails_the_deploy_naming_node_and_portal() {
    let dir = tempfile::tempdir().unwrap();
    let deploy = hand_deploy(dir.path(), "chap", "52:54:00:00:84:01", 8);
    let tgtd = Tgtd::start();
    let file = target_disk(dir.path(), "chap");
    let iqn = deploy.params["target_iqn"].as_str().unwrap();
    let wrong = json!({"user": "kiln-conductor", "secret": "NotTheSecret1234"});
    export(&tgtd, iqn, &file, &wrong, &deploy.params["mutual_chap"]);
    let portal = tgtd.portal.to_string();
    let report = exporting(&portal, iqn, &file, 5 << 30);
    let node = heartbeat_until(&deploy, "chap", &report, "deploy failed");
    let error = node["last_error"].as_str().unwrap();
    assert!(error.contains("chap") && error.contains(&portal), "{error}");
    assert!(error.to_lowercase().contains("authentication"), "{error}");
    assert!(head_is_zero(&file), "the refused initiator wrote");
    // The agent is told to power off.
    assert_eq!(deploy.agent.heartbeat(report)["name"], "power_off");
}

#[test]
fn a_portal_nobody_listens_on_fails_the_deploy_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let deploy = hand_deploy(dir.path(), "noport", "52:54:00:00:85:01", 8);
    let portal = free_addr().to_string();
    let iqn = deploy.params["target_iqn"].as_str().unwrap().to_string();
    let report = exporting(&portal, &iqn, Path::new("/dev/sim0"), 5 << 30);
    let node = heartbeat_until(&deploy, "noport", &report, "deploy failed");
    let error = node["last_error"].as_str().unwrap();
    assert!(
        error.contains("noport") && error.contains(&portal),
        "{error}"
    );
}

/// A TCP relay to `upstream` pacing target-bound bytes to `rate` a second;
/// with `cut_after`, the first connection is cut once that many bytes went
/// through.
struct Relay {
    addr: SocketAddr,
    relayed: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
}

impl Relay {
    fn start(upstream: SocketAddr, rate: u64, cut_after: Option<u64>) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let relayed = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let (total, cut_flag) = (Arc::clone(&relayed), Arc::clone(&cut));
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(target) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (total, cut_flag) = (Arc::clone(&total), Arc::clone(&cut_flag));
                // Replies flow back unpaced.
                let (mut from, mut to) = (target.try_clone().unwrap(), client.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let (mut from, mut to) = (client, target);
                    let mut buf = vec![0u8; 64 << 10];
                    let started = Instant::now();
                    let mut sent = 0u64;
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n as u64;
                        total.fetch_add(n as u64, Ordering::SeqCst);
                        if cut_after.is_some_and(|limit| sent >= limit)
                            && !cut_flag.swap(true, Ordering::SeqCst)
                        {
                            break;
                        }
                        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                });
            }
        });
        Relay { addr, relayed, cut }
    }
}

#[test]
fn a_connection_cut_mid_image_fails_the_deploy_and_leaves_the_first_mib_zero() {
    let dir = tempfile::tempdir().unwrap();
    let deploy = hand_deploy(dir.path(), "cut", "52:54:00:00:86:01", 48);
    let tgtd = Tgtd::start();
    let file = target_disk(dir.path(), "cut");
    let iqn = deploy.params["target_iqn"].as_str().unwrap();
    export(
        &tgtd,
        iqn,
        &file,
        &deploy.params["chap"],
        &deploy.params["mutual_chap"],
    );
    let relay = Relay::start(tgtd.portal, 32 * MIB, Some(12 * MIB));
    let portal = relay.addr.to_string();
    let report = exporting(&portal, iqn, &file, 5 << 30);
    let node = heartbeat_until(&deploy, "cut", &report, "deploy failed");
    assert!(relay.cut.load(Ordering::SeqCst), "the relay never cut");
    let error = node["last_error"].as_str().unwrap();
    assert!(error.contains("cut") && error.contains(&portal), "{error}");
    assert!(head_is_zero(&file), "a cut write left a partition table");
}

/// A write through tgtd behind a relay paced at 16 MiB/s (a 96 MiB image takes
/// about 6 s), heartbeated until 8 MiB went through: certainly under way.
struct PacedWrite {
    _tgtd: Tgtd,
    relay: Relay,
    file: PathBuf,
    iqn: String,
    /// export_disk's running report naming the relay as the portal.
    report: Value,
}

fn paced_write_under_way(dir: &Path, deploy: &HandDeploy, name: &str) -> PacedWrite {
    let tgtd = Tgtd::start();
    let file = target_disk(dir, name);
    let iqn = deploy.params["target_iqn"].as_str().unwrap().to_string();
    export(
        &tgtd,
        &iqn,
        &file,
        &deploy.params["chap"],
        &deploy.params["mutual_chap"],
    );
    let relay = Relay::start(tgtd.portal, 16 * MIB, None);
    let report = exporting(&relay.addr.to_string(), &iqn, &file, 5 << 30);
    let started = Instant::now();
    while relay.relayed.load(Ordering::SeqCst) < 8 * MIB {
        assert!(started.elapsed() < WAIT, "the write never started");
        assert_eq!(deploy.agent.heartbeat(report.clone()), Value::Null);
        std::thread::sleep(Duration::from_millis(100));
    }
    PacedWrite {
        _tgtd: tgtd,
        relay,
        file,
        iqn,
        report,
    }
}

#[test]
fn a_conductor_killed_mid_write_stops_the_export_and_writes_again() {
    let dir = tempfile::tempdir().unwrap();
    let deploy = hand_deploy(dir.path(), "restart", "52:54:00:00:87:01", 96);
    let PacedWrite {
        _tgtd: tgtd,
        file,
        iqn,
        report,
        ..
    } = paced_write_under_way(dir.path(), &deploy, "restart");
    let HandDeploy {
        conductor,
        agent,
        image,
        ..
    } = deploy;
    let port = conductor.port();
    drop(conductor);
    let conductor = Conductor::start(dir.path(), &format!("127.0.0.1:{port}"), &[]);
    // The restarted conductor does not know the secrets: stop, then export anew.
    let command = agent.heartbeat(report.clone());
    assert_eq!(command["name"], "stop_export", "{command}");
    let stopped = json!({"id": "export_disk", "status": "succeeded"});
    let command = agent.heartbeat(stopped);
    assert_eq!(command["name"], "export_disk", "{command}");
    let params = &command["params"];
    export(&tgtd, &iqn, &file, &params["chap"], &params["mutual_chap"]);
    let started = Instant::now();
    let mut report = report;
    loop {
        let command = agent.heartbeat(report.clone());
        if command["name"] == "stop_export" {
            report = json!({"id": "export_disk", "status": "succeeded"});
        }
        let node = node(&conductor, "restart");
        if node["provision_state"] == "active" {
            assert!(node["last_error"].is_null(), "{node}");
            break;
        }
        assert_ne!(node["provision_state"], "deploy failed", "{node}");
        assert!(started.elapsed() < WAIT, "never active: {node}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_deployed(&image, &file);
}

#[test]
fn a_deploy_failed_during_the_iscsi_write_stops_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let deploy = hand_deploy(dir.path(), "gone", "52:54:00:00:88:01", 96);
    let write = paced_write_under_way(dir.path(), &deploy, "gone");
    // The agent loses its disk: its export fails and so does the deploy.
    let failed = json!({"id": "export_disk", "status": "failed", "error": "disk vanished"});
    let node = heartbeat_until(&deploy, "gone", &failed, "deploy failed");
    assert!(
        node["last_error"]
            .as_str()
            .unwrap()
            .contains("disk vanished"),
        "{node}"
    );
    // Longer than the rest of the image needs at the relay's pace: a writer
    // that ignored the failure would have pushed it all through by then.
    std::thread::sleep(Duration::from_secs(10));
    let relayed = write.relay.relayed.load(Ordering::SeqCst);
    assert!(
        relayed < 64 * MIB,
        "{relayed} bytes reached the target after the deploy failed"
    );
    assert!(
        head_is_zero(&write.file),
        "a failed write left a partition table"
    );
}
