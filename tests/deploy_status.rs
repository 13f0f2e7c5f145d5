//! The operators' live view against a real `kiln conductor` and simulated
//! agents: the status page (checked in headless Chromium and as served HTML),
//! its JSON twin GET /v1/status, and `kiln deploy status --watch` without a
//! terminal, through a whole deploy.

#[path = "common/conductor.rs"]
mod common;
#[path = "common/status_page.rs"]
mod status_page;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use common::{Agent, Conductor, KILN};
use serde_json::Value;

const NODES: [(&str, &str, &str); 2] = [
    ("node-a", "52:54:00:00:05:0a", "compute"),
    ("node-b", "52:54:00:00:05:0b", "compute"),
];

/// GET `url`: (status, Content-Type, body).
fn get(url: &str) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(url).call().expect("GET the status page");
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    (status, kind, body)
}

/// The state text of `node`'s row in served status page HTML.
fn row_state(html: &str, node: &str) -> Option<String> {
    let marker = format!("<tr class=\"node\" data-node=\"{node}\" data-state=\"");
    let rest = &html[html.find(&marker)? + marker.len()..];
    Some(rest[..rest.find('"')?].to_string())
}

/// A `kiln deploy status --watch` child; its stdout lines arrive on a channel
/// as it prints them.
struct Watch {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watch {
    fn start(url: &str, extra: &[&str]) -> Watch {
        let mut child = Command::new(KILN)
            .args([
                "deploy",
                "status",
                "overcloud",
                "--watch",
                "--interval",
                "1",
            ])
            .args(extra)
            .args(["--url", url])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kiln deploy status --watch");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Watch {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Blocks until the watch has printed `count` lines in all.
    fn wait_lines(&mut self, count: usize) {
        while self.seen.len() < count {
            let line = self
                .lines
                .recv_timeout(common::WAIT)
                .unwrap_or_else(|err| panic!("watch printed {:?}, then {err}", self.seen));
            self.seen.push(line);
        }
    }

    /// Waits for it to exit by itself: (exit code, everything it printed).
    fn finish(mut self) -> (i32, String) {
        while let Ok(line) = self.lines.recv_timeout(common::WAIT) {
            self.seen.push(line);
        }
        let status = self.child.wait().unwrap();
        (status.code().unwrap_or(-1), self.seen.join("\n"))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_status_page_and_watch_follow_a_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path(), "127.0.0.1:0", &[]);
    let url = conductor.url.clone();
    let artifacts = status_page::artifact_dir("deploy_status");
    common::make_image(dir.path(), "overcloud-full", 64 << 20);
    common::available_nodes(&conductor, &NODES);

    // Before any deployment: the nodes rest available on the page.
    let (status, kind, html) = get(&format!("{url}/status"));
    assert_eq!(status, 200, "{html}");
    assert_eq!(kind, "text/html; charset=utf-8");
    for (name, _, _) in NODES {
        assert_eq!(
            row_state(&html, name).as_deref(),
            Some("available"),
            "{html}"
        );
    }
    status_page::assert_html5_parses(&html);
    let (status, _, root) = get(&format!("{url}/"));
    assert_eq!(status, 200);
    assert!(root.contains("data-node=\"node-a\""), "{root}");

    // Deployed without agents yet, the nodes wait for their call-back.
    common::deploy(
        &conductor,
        &common::compute_plan("overcloud", "overcloud-full.qcow2", 2),
    );
    let waiting: &[&str] = &["wait call-back"];
    let shown = status_page::check_status_page(
        &format!("{url}/status"),
        &[("node-a", waiting), ("node-b", waiting)],
        &artifacts,
    );
    assert_eq!(shown.len(), 2, "{shown:?}");

    // The JSON twin says the same as the conductor's own node records.
    let (status, view) = common::call("GET", &format!("{url}/v1/status"), None, None);
    assert_eq!(status, 200, "{view}");
    for (name, _, profile) in NODES {
        let row = view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|node| node["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {view}"));
        let record = common::node(&conductor, name);
        assert_eq!(row["provision_state"], record["provision_state"], "{row}");
        assert_eq!(row["power_state"], record["power_state"], "{row}");
        assert_eq!(row["uuid"], record["uuid"]);
        assert_eq!(row["profile"], profile);
        assert_eq!(row["deployment"], "overcloud");
        assert_eq!(row["role"], "Compute");
        assert_eq!(row["image"], "overcloud-full.qcow2");
    }
    let deployment = &view["deployments"][0];
    assert_eq!(deployment["name"], "overcloud", "{view}");
    assert_eq!(deployment["nodes"].as_array().unwrap().len(), 2);

    // Watchers show the waiting nodes before any agent runs, then the deploy.
    let mut lines = Watch::start(&url, &[]);
    let mut json_lines = Watch::start(&url, &["--json"]);
    lines.wait_lines(NODES.len());
    json_lines.wait_lines(1);

    // A reader fetches the page all through the deploy; every page lists both
    // nodes in a state a deploy passes through.
    let done = Arc::new(AtomicBool::new(false));
    let (first_page, first_read) = mpsc::channel();
    let reader = {
        let done = Arc::clone(&done);
        let url = url.clone();
        std::thread::spawn(move || {
            let mut pages = 0;
            let mut states = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let (status, _, html) = get(&format!("{url}/status"));
                assert_eq!(status, 200, "{html}");
                for (name, _, _) in NODES {
                    let state = row_state(&html, name)
                        .unwrap_or_else(|| panic!("page lacks {name}:\n{html}"));
                    assert!(
                        ["wait call-back", "deploying", "active"].contains(&state.as_str()),
                        "{name} is {state}"
                    );
                    states.push(state);
                }
                if pages == 0 {
                    let _ = first_page.send(states.clone());
                }
                pages += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            (pages, states)
        })
    };

    let first = first_read.recv().expect("the reader's first page");
    assert_eq!(first, ["wait call-back", "wait call-back"]);

    let disks: Vec<_> = NODES
        .iter()
        .map(|(name, _, _)| dir.path().join(format!("{name}.img")))
        .collect();
    {
        let _agents: Vec<Agent> = NODES
            .iter()
            .zip(&disks)
            .map(|((_, mac, _), disk)| Agent::start(&url, mac, disk, 4096))
            .collect();
        for (name, _, _) in NODES {
            common::wait_for(&conductor, name, "active");
        }
    }
    done.store(true, Ordering::SeqCst);
    let (pages, states) = reader.join().expect("the page reader");
    assert!(pages >= 1 && states.len() == pages * NODES.len());

    // Both watchers end by themselves once every node rests.
    let (code, out) = lines.finish();
    assert_eq!(code, 0, "{out}");
    for (name, _, _) in NODES {
        let mine: Vec<&str> = out
            .lines()
            .filter(|line| line.contains(&format!(" {name}: ")))
            .collect();
        assert!(
            mine.first()
                .is_some_and(|line| line.contains(": wait call-back")),
            "{name} first: {out}"
        );
        assert!(
            mine.last().is_some_and(|line| line.contains(": active")),
            "{name} last: {out}"
        );
    }
    assert!(
        !out.contains('\x1b'),
        "no terminal control without a terminal"
    );

    let (code, out) = json_lines.finish();
    assert_eq!(code, 0, "{out}");
    let documents: Vec<Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let first = documents.first().expect("at least one JSON document");
    let last = documents.last().unwrap();
    for node in first["nodes"].as_array().unwrap() {
        assert_eq!(node["provision_state"], "wait call-back", "{first}");
    }
    assert_eq!(last["nodes"].as_array().unwrap().len(), 2, "{last}");
    for node in last["nodes"].as_array().unwrap() {
        assert_eq!(node["provision_state"], "active", "{last}");
    }

    // The finished deploy on the page, timelines included.
    let active: &[&str] = &["active"];
    status_page::check_status_page(
        &format!("{url}/status"),
        &[("node-a", active), ("node-b", active)],
        &artifacts,
    );
    let (_, _, html) = get(&format!("{url}/status"));
    let (_, events) = common::call(
        "GET",
        &format!("{url}/v1/nodes/node-a/timeline"),
        None,
        None,
    );
    let count = events["events"].as_array().map_or(0, Vec::len);
    assert!(
        html.contains(&format!("Timeline of node-a ({count} events)")),
        "{count} events: {html}"
    );
    assert!(html.contains("deploying &rarr; active"), "{html}");
    status_page::assert_html5_parses(&html);

    // A watch of a deployment at rest prints once and ends; an unknown one fails.
    let (code, out) = Watch::start(&url, &[]).finish();
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    let output = Command::new(KILN)
        .args(["deploy", "status", "nosuch", "--watch", "--url", &url])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no deployment named nosuch"),
        "{output:?}"
    );
}
