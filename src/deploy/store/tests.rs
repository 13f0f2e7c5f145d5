use super::*;
use serde_json::json;

fn new_node(name: &str, mac: &str) -> NewNode {
    NewNode {
        name: name.to_string(),
        driver: Driver::Ipmi,
        driver_info: DriverInfo {
            pm_addr: Some("192.0.2.10".to_string()),
            pm_user: Some("admin".to_string()),
            pm_password: Some("secret".to_string()),
            ..DriverInfo::default()
        },
        properties: Properties {
            memory_mb: Some(8192),
            ..Properties::default()
        },
        macs: vec![mac.to_string()],
    }
}

fn memory_store() -> Store {
    Store::open(":memory:").unwrap()
}

#[test]
fn created_nodes_are_found_by_name_uuid_and_mac() {
    let store = memory_store();
    let created = store
        .create_nodes(&[
            new_node("compute-0", "52:54:00:00:00:02"),
            new_node("control-0", "52:54:00:00:00:01"),
        ])
        .unwrap();
    assert_eq!(created.len(), 2);
    assert_eq!(created[0].provision_state, ProvisionState::Enroll);
    assert_eq!(created[0].target_provision_state, None);
    let by_uuid = store.node(&created[1].uuid.to_string()).unwrap();
    assert_eq!(by_uuid.name, "control-0");
    assert_eq!(store.node("control-0").unwrap(), by_uuid);
    assert_eq!(
        store.node_by_mac("52-54-00-00-00-01").unwrap().name,
        "control-0"
    );
    assert_eq!(
        store.node_by_mac("52:54:00:00:00:02").unwrap().name,
        "compute-0"
    );
    assert!(matches!(
        store.node_by_mac("52:54:00:00:00:09"),
        Err(StoreError::MacNotFound(_))
    ));
    assert!(matches!(
        store.node("nope"),
        Err(StoreError::NodeNotFound(_))
    ));
    let names: Vec<String> = store.nodes().unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(names, ["compute-0", "control-0"]);
    assert_eq!(by_uuid.properties.memory_mb, Some(8192));
    assert_eq!(by_uuid.macs, ["52:54:00:00:00:01"]);
    assert_eq!(
        by_uuid.redacted().driver_info.pm_password.as_deref(),
        Some("******")
    );
}

#[test]
fn a_failing_batch_inserts_nothing() {
    let store = memory_store();
    store
        .create_nodes(&[new_node("control-0", "52:54:00:00:00:01")])
        .unwrap();
    // The second node reuses control-0's MAC: the whole batch must be refused.
    let err = store
        .create_nodes(&[
            new_node("compute-0", "52:54:00:00:00:02"),
            new_node("compute-1", "52:54:00:00:00:01"),
        ])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("52:54:00:00:00:01 (node control-0)"),
        "{err}"
    );
    assert_eq!(store.nodes().unwrap().len(), 1);
    assert!(store.node_by_mac("52:54:00:00:00:02").is_err());

    let err = store
        .create_nodes(&[
            new_node("compute-0", "52:54:00:00:00:03"),
            new_node("compute-0", "52:54:00:00:00:04"),
        ])
        .unwrap_err();
    assert_eq!(err.to_string(), "node name(s) already in use: compute-0");
    assert_eq!(store.nodes().unwrap().len(), 1);
}

#[test]
fn transitions_are_persisted_with_a_timeline_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let path = path.to_str().unwrap();
    {
        let store = Store::open(path).unwrap();
        store
            .create_nodes(&[new_node("control-0", "52:54:00:00:00:01")])
            .unwrap();
        store.transition("control-0", Event::Manage, None).unwrap();
        let node = store
            .transition("control-0", Event::Inspect, Some("operator asked"))
            .unwrap();
        assert_eq!(node.provision_state, ProvisionState::Inspecting);
        assert_eq!(
            node.target_provision_state,
            Some(ProvisionState::Manageable)
        );
    }
    let store = Store::open(path).unwrap();
    let node = store.node("control-0").unwrap();
    assert_eq!(node.provision_state, ProvisionState::Inspecting);
    let timeline = store.timeline("control-0").unwrap();
    let steps: Vec<(ProvisionState, Event, ProvisionState)> = timeline
        .iter()
        .map(|e| (e.from_state, e.event, e.to_state))
        .collect();
    assert_eq!(
        steps,
        [
            (
                ProvisionState::Enroll,
                Event::Manage,
                ProvisionState::Manageable
            ),
            (
                ProvisionState::Manageable,
                Event::Inspect,
                ProvisionState::Inspecting
            ),
        ]
    );
    assert_eq!(timeline[1].message.as_deref(), Some("operator asked"));

    // An independent reader (the sqlite3 library directly) sees the same row and WAL mode.
    let raw = rusqlite::Connection::open(path).unwrap();
    let (state, mode): (String, String) = raw
        .query_row(
            "SELECT provision_state, (SELECT journal_mode FROM pragma_journal_mode) FROM nodes",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!((state.as_str(), mode.as_str()), ("inspecting", "wal"));
}

#[test]
fn a_refused_transition_changes_nothing_and_names_the_node() {
    let store = memory_store();
    store
        .create_nodes(&[new_node("control-0", "52:54:00:00:00:01")])
        .unwrap();
    let err = store
        .transition("control-0", Event::Deploy, None)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "node control-0: cannot deploy a node in state \"enroll\"; allowed verbs: manage"
    );
    assert_eq!(
        store.node("control-0").unwrap().provision_state,
        ProvisionState::Enroll
    );
    assert!(store.timeline("control-0").unwrap().is_empty());
}

#[test]
fn failures_set_last_error_and_the_next_verb_clears_it() {
    let store = memory_store();
    store
        .create_nodes(&[new_node("n", "52:54:00:00:00:01")])
        .unwrap();
    for event in [Event::Manage, Event::Inspect] {
        store.transition("n", event, None).unwrap();
    }
    let node = store
        .transition("n", Event::Fail, Some("no disks found"))
        .unwrap();
    assert_eq!(node.provision_state, ProvisionState::InspectFailed);
    assert_eq!(node.last_error.as_deref(), Some("no disks found"));
    let node = store.transition("n", Event::Inspect, None).unwrap();
    assert_eq!(node.last_error, None);
    let node = store.transition("n", Event::Timeout, None).unwrap();
    assert_eq!(node.last_error.as_deref(), Some("timeout while inspecting"));
}

#[test]
fn agent_token_is_stored_as_sha256_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let path = path.to_str().unwrap();
    let store = Store::open(path).unwrap();
    store
        .create_nodes(&[new_node("n", "52:54:00:00:00:01")])
        .unwrap();
    assert!(!store.verify_agent_token("n", "anything").unwrap());
    let token = new_agent_token().unwrap();
    assert_eq!(token.len(), 64);
    assert_ne!(token, new_agent_token().unwrap());
    assert!(store.set_agent_token("n", &token).unwrap().has_agent_token);
    assert!(store.verify_agent_token("n", &token).unwrap());
    assert!(!store.verify_agent_token("n", "wrong").unwrap());
    assert!(!store.verify_agent_token("n", "").unwrap());

    // The column holds sha256(token) as computed by coreutils, never the token.
    let raw = rusqlite::Connection::open(path).unwrap();
    let stored: Vec<u8> = raw
        .query_row("SELECT agent_token_hash FROM nodes", [], |row| row.get(0))
        .unwrap();
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let hex: String = stored.iter().map(|b| format!("{b:02x}")).collect();
    assert!(String::from_utf8(output.stdout).unwrap().starts_with(&hex));
    assert!(!stored.windows(8).any(|w| token.as_bytes().starts_with(w)));

    assert!(!store.clear_agent_token("n").unwrap().has_agent_token);
    assert!(!store.verify_agent_token("n", &token).unwrap());
}

#[test]
fn in_flight_nodes_carry_deadlines_from_state_entry() {
    let store = memory_store();
    store
        .create_nodes(&[
            new_node("a", "52:54:00:00:00:01"),
            new_node("b", "52:54:00:00:00:02"),
        ])
        .unwrap();
    store.transition("a", Event::Manage, None).unwrap();
    let a = store.transition("a", Event::Inspect, None).unwrap();
    let flying = store.in_flight_nodes().unwrap();
    assert_eq!(flying.len(), 1);
    assert_eq!(flying[0].node.name, "a");
    assert_eq!(flying[0].deadline, a.state_entered_at + 1800);
    assert!(!flying[0].is_timed_out(a.state_entered_at));
    assert!(flying[0].is_timed_out(a.state_entered_at + 1800));
}

#[test]
fn node_fields_round_trip() {
    let store = memory_store();
    store
        .create_nodes(&[new_node("n", "52:54:00:00:00:01")])
        .unwrap();
    store.set_capability("n", "boot_option", "local").unwrap();
    let node = store.set_capability("n", "profile", "control").unwrap();
    assert_eq!(node.properties.profile(), Some("control"));
    assert_eq!(node.properties.capabilities.len(), 2);
    assert_eq!(node.properties.memory_mb, Some(8192));

    let node = store.set_power_state("n", Some(PowerState::On)).unwrap();
    assert_eq!(node.power_state, Some(PowerState::On));
    let node = store.set_progress("n", 1 << 20, Some(4 << 20)).unwrap();
    assert_eq!(
        (node.progress.bytes_written, node.progress.bytes_total),
        (1 << 20, Some(4 << 20))
    );
    let node = store.record_heartbeat("n").unwrap();
    assert!(node.last_heartbeat.is_some());
    let info = InstanceInfo {
        role: Some("Controller".to_string()),
        index: Some(0),
        hostname: Some("overcloud-controller-0".to_string()),
        config: json!({"ntp": {"servers": ["10.0.0.1"]}}),
        ..InstanceInfo::default()
    };
    assert_eq!(
        store.set_instance_info("n", &info).unwrap().instance_info,
        info
    );

    assert_eq!(store.inventory("n").unwrap(), None);
    let inventory = json!({"memory": {"physical_mb": 4096}});
    store.save_inventory("n", &inventory).unwrap();
    store.save_inventory("n", &inventory).unwrap();
    assert_eq!(store.inventory("n").unwrap().unwrap().inventory, inventory);

    store
        .save_deployment("overcloud", &json!({"name": "overcloud"}))
        .unwrap();
    assert_eq!(store.deployment_names().unwrap(), ["overcloud"]);
    assert_eq!(
        store.deployment("overcloud").unwrap().unwrap().plan["name"],
        "overcloud"
    );
}

#[test]
fn a_database_from_a_newer_kiln_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let path = path.to_str().unwrap();
    drop(Store::open(path).unwrap());
    let raw = rusqlite::Connection::open(path).unwrap();
    raw.execute("UPDATE schema_version SET version = 99", [])
        .unwrap();
    drop(raw);
    let err = Store::open(path).err().unwrap();
    assert!(err.to_string().contains("schema version 99"), "{err}");
    // Reopening a current database is a no-op.
    let raw = rusqlite::Connection::open(path).unwrap();
    raw.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])
        .unwrap();
    drop(raw);
    Store::open(path).unwrap();
}

#[test]
fn guarded_transition_refuses_a_node_that_moved_on() {
    let store = memory_store();
    store
        .create_nodes(&[new_node("n", "52:54:00:00:00:01")])
        .unwrap();
    store.transition("n", Event::Manage, None).unwrap();
    let inspecting = store.transition("n", Event::Inspect, None).unwrap();
    // The agent reported first; the timeout computed earlier must not apply.
    store.transition("n", Event::Done, None).unwrap();
    let err = store
        .transition_if("n", ProvisionState::Inspecting, None, Event::Timeout, None)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "node n is now manageable, no longer inspecting"
    );
    // Same state, but entered again since: refused too.
    store.transition("n", Event::Inspect, None).unwrap();
    let stale = inspecting.state_entered_at - 1;
    assert!(matches!(
        store.transition_if(
            "n",
            ProvisionState::Inspecting,
            Some(stale),
            Event::Timeout,
            None
        ),
        Err(StoreError::StateChanged { .. })
    ));
    let current = store.node("n").unwrap().state_entered_at;
    let node = store
        .transition_if(
            "n",
            ProvisionState::Inspecting,
            Some(current),
            Event::Timeout,
            None,
        )
        .unwrap();
    assert_eq!(node.provision_state, ProvisionState::InspectFailed);
}

#[test]
fn two_connections_to_one_file_see_each_others_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let path = path.to_str().unwrap();
    let writer = Store::open(path).unwrap();
    let reader = Store::open(path).unwrap();
    writer
        .create_nodes(&[new_node("n", "52:54:00:00:00:01")])
        .unwrap();
    writer.transition("n", Event::Manage, None).unwrap();
    assert_eq!(
        reader.node("n").unwrap().provision_state,
        ProvisionState::Manageable
    );
    reader.transition("n", Event::Inspect, None).unwrap();
    assert_eq!(writer.timeline("n").unwrap().len(), 2);
}

#[test]
fn expired_in_flight_nodes_time_out_and_others_stay() {
    let store = memory_store();
    store
        .create_nodes(&[
            new_node("deleting", "52:54:00:00:00:01"),
            new_node("inspecting", "52:54:00:00:00:02"),
        ])
        .unwrap();
    for event in [Event::Manage, Event::Inspect] {
        store.transition("inspecting", event, None).unwrap();
    }
    for event in [
        Event::Manage,
        Event::Provide,
        Event::Done,
        Event::Deploy,
        Event::Done,
        Event::Undeploy,
    ] {
        store.transition("deleting", event, None).unwrap();
    }
    let deleting = store.node("deleting").unwrap();
    assert_eq!(deleting.provision_state, ProvisionState::Deleting);
    // Deleting times out after 600 s, inspecting after 1800 s.
    let now = deleting.state_entered_at + 600;
    let expired = store.time_out_expired(now).unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].name, "deleting");
    assert_eq!(expired[0].provision_state, ProvisionState::Error);
    assert_eq!(
        expired[0].last_error.as_deref(),
        Some("timed out in state \"deleting\" after 600 s")
    );
    assert_eq!(
        store.node("inspecting").unwrap().provision_state,
        ProvisionState::Inspecting
    );
    let later = store.node("inspecting").unwrap().state_entered_at + 1800;
    let expired = store.time_out_expired(later).unwrap();
    assert_eq!(expired[0].provision_state, ProvisionState::InspectFailed);
    assert!(store.in_flight_nodes().unwrap().is_empty());
}

#[test]
fn deleting_a_node_removes_its_ports_and_only_in_idle_states() {
    let store = memory_store();
    store
        .create_nodes(&[
            new_node("n1", "52:54:00:00:00:01"),
            new_node("n2", "52:54:00:00:00:02"),
        ])
        .unwrap();
    store.transition("n2", Event::Manage, None).unwrap();
    store.transition("n2", Event::Inspect, None).unwrap();
    let err = store.delete_node("n2").unwrap_err();
    assert!(err.to_string().contains("n2 is inspecting"), "{err}");
    assert!(store.node("n2").is_ok());

    store.delete_node("n1").unwrap();
    assert!(matches!(store.node("n1"), Err(StoreError::NodeNotFound(_))));
    assert!(matches!(
        store.node_by_mac("52:54:00:00:00:01"),
        Err(StoreError::MacNotFound(_))
    ));
    // The MAC is free again.
    store
        .create_nodes(&[new_node("n3", "52:54:00:00:00:01")])
        .unwrap();
}

#[test]
fn introspection_rules_persist_in_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let path = path.to_str().unwrap();
    let store = Store::open(path).unwrap();
    assert_eq!(store.introspection_rules().unwrap(), json!([]));
    let rules = json!([{"description": "big", "conditions": [], "actions": []}]);
    store.set_introspection_rules(&rules).unwrap();
    drop(store);
    assert_eq!(
        Store::open(path).unwrap().introspection_rules().unwrap(),
        rules
    );
}
