//! Faults during deploys, with a real conductor and simulated agents on
//! loopback: a connection cut mid-image (resumed with Range), a conductor
//! SIGKILLed while an agent writes (the agent carries on with its token), an
//! agent that dies mid-write (callback timeout), malformed plans (400 naming the
//! field, nothing changed) and another node's agent token (401).
//!
//! Images are qcow2 files made by qemu-img; written disks are checked with
//! `qemu-img compare` and sgdisk. A throttling TCP proxy between agent and
//! conductor makes "mid-write" a certainty instead of a race.

#[path = "common/conductor.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

/// A TCP proxy in front of the conductor. Image responses are paced to
/// `rate` bytes a second; the first connection whose image responses pass
/// `cut_after` bytes is shut down in both directions.
struct Proxy {
    url: String,
    shared: Arc<ProxyState>,
}

struct ProxyState {
    upstream: SocketAddr,
    rate: u64,
    cut_after: Option<u64>,
    cut: AtomicBool,
    /// The largest `Range: bytes=N-` start an image GET asked for after the cut.
    resumed_from: AtomicU64,
}

impl Proxy {
    fn start(conductor_url: &str, rate: u64, cut_after: Option<u64>) -> Proxy {
        let upstream: SocketAddr = conductor_url.trim_start_matches("http://").parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(ProxyState {
            upstream,
            rate,
            cut_after,
            cut: AtomicBool::new(false),
            resumed_from: AtomicU64::new(0),
        });
        let state = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let state = Arc::clone(&state);
                std::thread::spawn(move || state.relay(client));
            }
        });
        Proxy { url, shared }
    }

    fn was_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    fn resumed_from(&self) -> u64 {
        self.shared.resumed_from.load(Ordering::SeqCst)
    }
}

impl ProxyState {
    fn relay(self: Arc<Self>, client: TcpStream) {
        // The conductor may be down (restarting): the agent sees a refused
        // connection as it would without the proxy.
        let Ok(upstream) = TcpStream::connect(self.upstream) else {
            return;
        };
        let image_get = Arc::new(AtomicBool::new(false));
        let requests = {
            let (mut from, mut to) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            let (state, image_get) = (Arc::clone(&self), Arc::clone(&image_get));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    state.inspect_request(&buf[..n], &image_get);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(Shutdown::Write);
            })
        };
        let (mut from, mut to) = (upstream, client);
        let mut buf = vec![0u8; 64 << 10];
        let mut image_bytes = 0u64;
        let started = Instant::now();
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            if image_get.load(Ordering::SeqCst) {
                image_bytes += n as u64;
                // Pace: never ahead of `rate` since this connection opened.
                let due = Duration::from_secs_f64(image_bytes as f64 / self.rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
                if self.cut_after.is_some_and(|limit| image_bytes >= limit)
                    && !self.cut.swap(true, Ordering::SeqCst)
                {
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    break;
                }
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
        let _ = requests.join();
    }

    /// Notes whether the connection now carries an image GET, and any resume.
    fn inspect_request(&self, bytes: &[u8], image_get: &AtomicBool) {
        let text = String::from_utf8_lossy(bytes).to_ascii_lowercase();
        if text.starts_with("get /v1/images/") {
            image_get.store(true, Ordering::SeqCst);
            if self.cut.load(Ordering::SeqCst)
                && let Some(rest) = text.split("range: bytes=").nth(1)
            {
                let start: u64 = rest
                    .split('-')
                    .next()
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0);
                self.resumed_from.fetch_max(start, Ordering::SeqCst);
            }
        } else if text.starts_with("post ") || text.starts_with("head ") {
            image_get.store(false, Ordering::SeqCst);
        }
    }
}

fn bytes_written(node: &Value) -> u64 {
    node["progress"]["bytes_written"].as_u64().unwrap_or(0)
}

/// Waits until the node's agent has reported more than `at_least` bytes written.
fn wait_mid_write(conductor: &Conductor, name: &str, at_least: u64) -> Value {
    let node = wait_until(conductor, name, "write progress", |node| {
        assert!(
            node["provision_state"] != "deploy failed",
            "{name} failed: {node}"
        );
        bytes_written(node) > at_least
    });
    let total = node["progress"]["bytes_total"].as_u64().unwrap();
    assert!(
        bytes_written(&node) < total,
        "the write finished before the fault: {node}"
    );
    node
}

/// Every node's row in the state file: its state agrees with the API's answer
/// and with the last event of its timeline (both written in one transaction).
fn assert_store_consistent(dir: &Path, conductor: &Conductor) {
    let db = rusqlite::Connection::open(dir.join("state.db")).unwrap();
    for api in nodes(conductor) {
        let uuid = api["uuid"].as_str().unwrap();
        let row: String = db
            .query_row(
                "SELECT provision_state FROM nodes WHERE uuid = ?1",
                [uuid],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(api["provision_state"], row.as_str(), "{api}");
        let last: Option<String> = db
            .query_row(
                "SELECT to_state FROM events WHERE node_uuid = ?1 ORDER BY id DESC LIMIT 1",
                [uuid],
                |row| row.get(0),
            )
            .ok();
        if let Some(last) = last {
            assert_eq!(
                last, row,
                "timeline of {} disagrees with its row",
                api["name"]
            );
        }
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

#[test]
fn a_connection_cut_mid_image_resumes_with_range_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let image = make_image(dir.path(), "cut", 48 * MIB);
    let conductor = Conductor::start(dir.path(), "127.0.0.1:0", &[]);
    available_nodes(&conductor, &[("n1", "52:54:00:00:02:01", "compute")]);
    let proxy = Proxy::start(&conductor.url, 64 * MIB, Some(8 * MIB));
    deploy(&conductor, &compute_plan("cut", "cut.qcow2", 1));
    let disk = dir.path().join("n1.img");
    let _agent = Agent::start(&proxy.url, "52:54:00:00:02:01", &disk, 4096);
    let node = wait_for(&conductor, "n1", "active");
    assert!(proxy.was_cut(), "the proxy never cut an image download");
    // The cut came after 8 MiB of the body; the agent asked for the rest.
    assert!(
        proxy.resumed_from() >= 4 * MIB,
        "no resume with Range after the cut (largest start {})",
        proxy.resumed_from()
    );
    assert_eq!(
        node["progress"]["bytes_written"],
        node["progress"]["bytes_total"]
    );
    assert!(node["last_error"].is_null(), "{node}");
    assert_deployed(&image, &disk);
}

#[test]
fn a_conductor_killed_while_an_agent_writes_restarts_and_the_agent_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let image = make_image(dir.path(), "big", 256 * MIB);
    let first = Conductor::start(dir.path(), "127.0.0.1:0", &[]);
    available_nodes(
        &first,
        &[
            ("w1", "52:54:00:00:03:01", "compute"),
            ("w2", "52:54:00:00:03:02", "compute"),
        ],
    );
    let port = first.port();
    // The proxy's pace keeps the write going for several seconds.
    let proxy = Proxy::start(&first.url, 48 * MIB, None);
    deploy(&first, &compute_plan("kill", "big.qcow2", 2));
    let disk = dir.path().join("w1.img");
    let log = dir.path().join("agent.log");
    let _agent = Agent::start_logged(&proxy.url, "52:54:00:00:03:01", &disk, 4096, Some(&log));
    wait_mid_write(&first, "w1", 16 * MIB);
    // SIGKILL: nothing beyond what was committed survives.
    drop(first);
    {
        let db = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
        let rows: Vec<(String, String, Option<String>, i64)> = db
            .prepare(
                "SELECT name, provision_state, deploy_step, bytes_written FROM nodes ORDER BY name",
            )
            .unwrap()
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows[0].0, "w1");
        assert_eq!(rows[0].1, "deploying", "{rows:?}");
        assert_eq!(rows[0].2.as_deref(), Some("write_image"), "{rows:?}");
        assert!(rows[0].3 > 0, "{rows:?}");
        assert_eq!(rows[1].1, "wait call-back", "{rows:?}");
    }
    // Down long enough that at least one heartbeat (every second) fails; the
    // image download retries for longer than this.
    std::thread::sleep(Duration::from_millis(1500));
    let second = Conductor::start(dir.path(), &format!("127.0.0.1:{port}"), &[]);
    assert_store_consistent(dir.path(), &second);
    assert_eq!(state(&second, "w1"), "deploying");
    let node = wait_for(&second, "w1", "active");
    assert!(node["last_error"].is_null(), "{node}");
    // The node without an agent still waits: neither redone nor lost.
    assert_eq!(state(&second, "w2"), "wait call-back");
    assert_store_consistent(dir.path(), &second);
    assert_deployed(&image, &disk);
    // One lookup, one token: heartbeats failed while the conductor was down and
    // then went on with the same token (a refused token ends the agent with an
    // error instead of reaching active).
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("looked up").count(), 1, "{text}");
    assert!(text.contains("kiln agent: heartbeat:"), "{text}");
    assert!(!text.contains("refused this agent's token"), "{text}");
}

#[test]
fn a_silent_agent_fails_its_deploy_and_abort_in_wait_call_back_fails_the_other() {
    let dir = tempfile::tempdir().unwrap();
    make_image(dir.path(), "quiet", 64 * MIB);
    let conductor = Conductor::start(dir.path(), "127.0.0.1:0", &["--callback-timeout", "3"]);
    available_nodes(
        &conductor,
        &[
            ("s1", "52:54:00:00:04:01", "compute"),
            ("s2", "52:54:00:00:04:02", "compute"),
        ],
    );
    let proxy = Proxy::start(&conductor.url, 4 * MIB, None);
    deploy(&conductor, &compute_plan("quiet", "quiet.qcow2", 2));
    // Abort while waiting for the call-back: deploy failed at once.
    let (status, body) = verb(&conductor, "s2", "abort");
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["provision_state"], "deploy failed", "{body}");
    let disk = dir.path().join("s1.img");
    let agent = Agent::start(&proxy.url, "52:54:00:00:04:01", &disk, 4096);
    wait_mid_write(&conductor, "s1", MIB);
    drop(agent);
    let node = wait_for(&conductor, "s1", "deploy failed");
    let error = node["last_error"].as_str().unwrap();
    assert!(error.contains("stopped heartbeating"), "{error}");
    // The first MiB is written last: the half-written disk holds nothing bootable.
    assert!(
        head_is_zero(&disk),
        "{} has a partition table",
        disk.display()
    );
    assert_eq!(state(&conductor, "s2"), "deploy failed");
    assert_store_consistent(dir.path(), &conductor);
}

#[test]
fn malformed_plans_are_refused_naming_the_field_and_tokens_are_per_node() {
    let dir = tempfile::tempdir().unwrap();
    make_image(dir.path(), "small", 8 * MIB);
    let conductor = Conductor::start(dir.path(), "127.0.0.1:0", &[]);
    let macs = ["52:54:00:00:05:01", "52:54:00:00:05:02"];
    available_nodes(
        &conductor,
        &[("p1", macs[0], "compute"), ("p2", macs[1], "compute")],
    );
    let good = compute_plan("ok", "small.qcow2", 2);
    let cases = [
        (
            compute_plan("ok", "missing.qcow2", 2),
            "images: img: ",
            "an image file the conductor does not have",
        ),
        (
            good.replace("image: img", "image: other"),
            "roles[0] (Compute).image: unknown image \"other\"",
            "a role naming an image the plan does not list",
        ),
        (
            good.replace("image: img}", "image: img, root_device: {size: huge}}"),
            "roles[0] (Compute).root_device: ",
            "a size hint that is no size",
        ),
        (
            good.replace("image: img}", "image: img, root_device: {colour: red}}"),
            "roles[0] (Compute).root_device: unknown root device hint \"colour\"",
            "an unknown hint",
        ),
        (
            "name: [ok\nroles: {".to_string(),
            "not valid YAML",
            "text that is not YAML",
        ),
    ];
    for (plan, field, what) in &cases {
        let (status, body) = call(
            "POST",
            &format!("{}/v1/deployments", conductor.url),
            Some(plan),
            None,
        );
        assert_eq!(status, 400, "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{what}: {message}");
        if *field == "images: img: " {
            assert!(message.contains("missing.qcow2"), "{message}");
        }
        for name in ["p1", "p2"] {
            let node = node(&conductor, name);
            assert_eq!(node["provision_state"], "available", "{what}: {node}");
            assert!(node["instance_info"].get("image").is_none(), "{what}");
        }
    }
    let (_, list) = call(
        "GET",
        &format!("{}/v1/deployments", conductor.url),
        None,
        None,
    );
    assert_eq!(list["deployments"], json!([]), "{list}");

    // Both nodes wait for agents; each lookup hands out that node's token.
    deploy(&conductor, &good);
    let lookup = |mac: &str| {
        let body = json!({"macs": [mac], "inventory": null}).to_string();
        let (status, session) = call(
            "POST",
            &format!("{}/v1/agent/lookup", conductor.url),
            Some(&body),
            None,
        );
        assert_eq!(status, 200, "{session}");
        (
            session["node"].as_str().unwrap().to_string(),
            session["token"].as_str().unwrap().to_string(),
        )
    };
    let (_, token1) = lookup(macs[0]);
    let (uuid2, token2) = lookup(macs[1]);
    let heartbeat = format!("{}/v1/agent/{uuid2}/heartbeat", conductor.url);
    let forged = json!({"command": {"id": "write_image", "status": "failed", "error": "forged"}})
        .to_string();
    let before = node(&conductor, "p2");
    let (status, body) = call("POST", &heartbeat, Some(&forged), Some(&token1));
    assert_eq!(status, 401, "{body}");
    let after = node(&conductor, "p2");
    assert_eq!(before["provision_state"], after["provision_state"]);
    assert!(after["last_error"].is_null(), "{after}");
    // The node's own token works: the answer is its write_image command.
    let (status, body) = call("POST", &heartbeat, Some("{}"), Some(&token2));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["command"]["id"], "write_image", "{body}");
}
