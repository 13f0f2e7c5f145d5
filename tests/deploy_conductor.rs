//! The conductor and simulated agents as real processes on loopback: import,
//! inspect (rules set profiles), provide, deploy a qcow2 made by qemu-img onto
//! two simulated disks (checked with `qemu-img compare`), refused agent tokens,
//! a wrong checksum, a conductor killed mid-deploy, and refused requests that
//! change nothing.

#[path = "common/conductor.rs"]
mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// The test image: a 16 MiB GPT disk as qcow2 (common::make_image).
fn make_test_image(dir: &std::path::Path) -> std::path::PathBuf {
    make_image(dir, "overcloud-full", 16 << 20)
}

const PLAN: &str = r#"
name: overcloud
images: {overcloud-full: overcloud-full.qcow2}
roles:
  - {name: Controller, count: 1, profile: control, image: overcloud-full,
     hostname_format: "overcloud-controller-%index%", config: {ntp: {servers: [10.0.0.1]}}}
  - {name: Compute, count: 1, profile: compute, image: overcloud-full}
"#;

#[test]
fn inspect_provide_and_deploy_two_roles_onto_simulated_disks() {
    let dir = tempfile::tempdir().unwrap();
    let image = make_test_image(dir.path());
    let conductor = Conductor::start(dir.path(), "127.0.0.1:0", &[]);
    let url = conductor.url.clone();
    import(
        &conductor,
        json!({"nodes": [
            manual_node("node-a", "52:54:00:00:00:0a", None),
            manual_node("node-b", "52:54:00:00:00:0b", None),
        ]}),
    );
    let rules = r#"
- description: big nodes control
  conditions: [{op: ge, field: memory_mb, value: 8192}]
  actions: [{action: set-capability, name: profile, value: control}]
- description: small nodes compute
  conditions: [{op: lt, field: memory_mb, value: 8192}]
  actions: [{action: set-capability, name: profile, value: compute}]
"#;
    let (status, body) = call("PUT", &format!("{url}/v1/rules"), Some(rules), None);
    assert_eq!(status, 200, "{body}");

    // A verb the state does not allow: 409 naming the allowed verbs, no change.
    let (status, body) = verb(&conductor, "node-a", "provide");
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["allowed"], json!(["manage"]), "{body}");
    assert_eq!(state(&conductor, "node-a"), "enroll");

    for name in ["node-a", "node-b"] {
        assert_eq!(verb(&conductor, name, "manage").0, 202);
        assert_eq!(verb(&conductor, name, "inspect").0, 202);
        assert_eq!(state(&conductor, name), "inspecting");
    }
    let disk_a = dir.path().join("a.img");
    let disk_b = dir.path().join("b.img");
    {
        let _a = Agent::start(&url, "52:54:00:00:00:0a", &disk_a, 16384);
        let _b = Agent::start(&url, "52:54:00:00:00:0b", &disk_b, 4096);
        let a = wait_for(&conductor, "node-a", "manageable");
        let b = wait_for(&conductor, "node-b", "manageable");
        assert_eq!(a["properties"]["capabilities"]["profile"], "control", "{a}");
        assert_eq!(b["properties"]["capabilities"]["profile"], "compute", "{b}");
        assert_eq!(a["properties"]["memory_mb"], 16384);
    }
    let (status, inventory) = call(
        "GET",
        &format!("{url}/v1/nodes/node-b/inventory"),
        None,
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        inventory["inventory"]["interfaces"][0]["mac_address"],
        "52:54:00:00:00:0b"
    );

    for name in ["node-a", "node-b"] {
        assert_eq!(verb(&conductor, name, "provide").0, 202);
        wait_for(&conductor, name, "available");
    }

    // Not enough nodes: 409 before anything is touched.
    let greedy = PLAN.replace("count: 1, profile: compute", "count: 3, profile: compute");
    let (status, body) = call(
        "POST",
        &format!("{url}/v1/deployments"),
        Some(&greedy),
        None,
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not enough nodes"),
        "{body}"
    );
    for name in ["node-a", "node-b"] {
        assert_eq!(state(&conductor, name), "available");
    }

    let (status, body) = call("POST", &format!("{url}/v1/deployments"), Some(PLAN), None);
    assert_eq!(status, 202, "{body}");
    for name in ["node-a", "node-b"] {
        assert_eq!(state(&conductor, name), "wait call-back");
    }
    let _a = Agent::start(&url, "52:54:00:00:00:0a", &disk_a, 16384);
    let b_agent = Agent::start(&url, "52:54:00:00:00:0b", &disk_b, 4096);
    // Once node-b's agent holds the token, a second lookup and token-less or
    // wrong-token heartbeats are refused and change nothing.
    let started = Instant::now();
    while !node(&conductor, "node-b")["has_agent_token"]
        .as_bool()
        .unwrap()
    {
        assert!(started.elapsed() < WAIT);
        std::thread::sleep(Duration::from_millis(100));
    }
    let uuid = node(&conductor, "node-b")["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let before = node(&conductor, "node-b")["provision_state"].clone();
    let heartbeat = format!("{url}/v1/agent/{uuid}/heartbeat");
    let failed = json!({"command": {"id": "write_image", "status": "failed", "error": "forged"}})
        .to_string();
    let (status, body) = call("POST", &heartbeat, Some(&failed), None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = call("POST", &heartbeat, Some(&failed), Some("0123"));
    assert_eq!(status, 401, "{body}");
    let lookup = json!({"macs": ["52:54:00:00:00:0b"], "inventory": {}}).to_string();
    let (status, body) = call(
        "POST",
        &format!("{url}/v1/agent/lookup"),
        Some(&lookup),
        None,
    );
    assert_eq!(status, 409, "{body}");
    let after = node(&conductor, "node-b");
    assert!(after["last_error"].is_null(), "{after}");
    assert!(
        before == after["provision_state"] || after["provision_state"] == "active",
        "{after}"
    );

    let a = wait_for(&conductor, "node-a", "active");
    let b = wait_for(&conductor, "node-b", "active");
    drop(b_agent);
    assert_eq!(a["instance_info"]["hostname"], "overcloud-controller-0");
    assert_eq!(a["instance_info"]["role"], "Controller");
    assert_eq!(b["instance_info"]["role"], "Compute");
    assert_deployed(&image, &disk_a);
    assert_deployed(&image, &disk_b);
    let (status, status_body) = call(
        "GET",
        &format!("{url}/v1/deployments/overcloud"),
        None,
        None,
    );
    assert_eq!(status, 200);
    let nodes = status_body["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    for entry in nodes {
        assert_eq!(entry["state"], "active", "{entry}");
        let progress = &entry["progress"];
        assert_eq!(progress["done"], progress["total"], "{entry}");
    }

    // Undeploy: back to available, instance data gone.
    let (status, body) = call(
        "DELETE",
        &format!("{url}/v1/deployments/overcloud"),
        None,
        None,
    );
    assert_eq!(status, 202, "{body}");
    for name in ["node-a", "node-b"] {
        let node = wait_for(&conductor, name, "available");
        assert!(node["instance_info"].get("image").is_none(), "{node}");
    }
}

/// Two available nodes with profiles from the import file.
fn available_pair(conductor: &Conductor) {
    import(
        conductor,
        json!([
            manual_node("ctl", "52:54:00:00:01:01", Some("control")),
            manual_node("cmp", "52:54:00:00:01:02", Some("compute")),
        ]),
    );
    for name in ["ctl", "cmp"] {
        assert_eq!(verb(conductor, name, "manage").0, 202);
        assert_eq!(verb(conductor, name, "provide").0, 202);
        assert_eq!(state(conductor, name), "available");
    }
}

#[test]
fn an_image_replaced_after_the_deploy_started_fails_the_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let image = make_test_image(dir.path());
    let conductor = Conductor::start(dir.path(), "127.0.0.1:0", &[]);
    available_pair(&conductor);
    let (status, body) = call(
        "POST",
        &format!("{}/v1/deployments", conductor.url),
        Some(PLAN),
        None,
    );
    assert_eq!(status, 202, "{body}");
    // Same size, one byte different: the checksum recorded at POST no longer holds.
    let mut bytes = std::fs::read(&image).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&image, &bytes).unwrap();
    let disk = dir.path().join("ctl.img");
    let _agent = Agent::start(&conductor.url, "52:54:00:00:01:01", &disk, 4096);
    let node = wait_for(&conductor, "ctl", "deploy failed");
    let error = node["last_error"].as_str().unwrap();
    assert!(error.contains("checksum mismatch"), "{error}");
    // The held-back first MiB was never written: nothing bootable on the disk.
    let head = std::fs::read(&disk).unwrap();
    assert!(head[..1 << 20].iter().all(|&b| b == 0));
}

#[test]
fn a_conductor_killed_mid_deploy_resumes_from_its_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let image = make_test_image(dir.path());
    let first = Conductor::start(dir.path(), "127.0.0.1:0", &[]);
    available_pair(&first);
    let (status, body) = call(
        "POST",
        &format!("{}/v1/deployments", first.url),
        Some(PLAN),
        None,
    );
    assert_eq!(status, 202, "{body}");
    let url = first.url.clone();
    let port = first.port();
    // SIGKILL: no chance to save anything beyond what was committed.
    drop(first);
    let disk = dir.path().join("cmp.img");
    let _agent = Agent::start(&url, "52:54:00:00:01:02", &disk, 4096);
    let second = Conductor::start(dir.path(), &format!("127.0.0.1:{port}"), &[]);
    assert_eq!(state(&second, "ctl"), "wait call-back");
    wait_for(&second, "cmp", "active");
    assert_deployed(&image, &disk);
    // The node without an agent is still waiting, not redone or lost.
    assert_eq!(state(&second, "ctl"), "wait call-back");
    let (status, body) = verb(&second, "ctl", "abort");
    assert_eq!(status, 202, "{body}");
    assert_eq!(state(&second, "ctl"), "deploy failed");
}

#[test]
fn a_silent_node_times_out_and_a_malformed_import_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    make_test_image(dir.path());
    let conductor = Conductor::start(dir.path(), "127.0.0.1:0", &["--callback-timeout", "2"]);
    available_pair(&conductor);
    let bad = json!([manual_node("x", "not-a-mac", None)]).to_string();
    let (status, body) = call(
        "POST",
        &format!("{}/v1/nodes", conductor.url),
        Some(&bad),
        None,
    );
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("nodes[0]"), "{message}");
    let (_, list) = call("GET", &format!("{}/v1/nodes", conductor.url), None, None);
    assert_eq!(list["nodes"].as_array().unwrap().len(), 2);
    let (status, _) = call(
        "POST",
        &format!("{}/v1/deployments", conductor.url),
        Some(PLAN),
        None,
    );
    assert_eq!(status, 202);
    let node = wait_for(&conductor, "ctl", "deploy failed");
    assert!(
        node["last_error"].as_str().unwrap().contains("call-back"),
        "{node}"
    );
}
