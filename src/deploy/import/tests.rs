use super::*;
use crate::deploy::store::{QemuFirmware, Store};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/deploy")
        .join(name)
}

fn problems_of(err: ImportError) -> Vec<String> {
    match err {
        ImportError::Invalid { problems, .. } => problems.iter().map(|p| p.to_string()).collect(),
        other => panic!("expected Invalid, got {other}"),
    }
}

#[test]
fn instackenv_fixture_imports_all_three_drivers() {
    let nodes = import_file(&fixture("instackenv.json")).unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["control-0", "compute-0", "spare-0"]);

    let control = &nodes[0];
    assert_eq!(
        control.driver,
        Driver::Ipmi,
        "pxe_ipmitool is the ipmi driver"
    );
    assert_eq!(control.driver_info.pm_port, Some(6230));
    assert_eq!(control.driver_info.pm_password.as_deref(), Some("p@ssw0rd"));
    assert_eq!(control.macs, ["52:54:00:aa:00:01"]);
    assert_eq!(control.properties.cpus, Some(4));
    assert_eq!(control.properties.memory_mb, Some(8192));
    assert_eq!(control.properties.local_gb, Some(40));
    assert_eq!(control.properties.profile(), Some("control"));
    assert_eq!(control.properties.capabilities["boot_option"], "local");

    let compute = &nodes[1];
    assert_eq!(compute.driver, Driver::Redfish);
    assert_eq!(
        compute.driver_info.pm_system_id.as_deref(),
        Some("/redfish/v1/Systems/compute-0")
    );
    assert_eq!(compute.properties.capabilities["boot_mode"], "uefi");

    let spare = &nodes[2];
    assert_eq!(spare.driver, Driver::Manual);
    assert_eq!(spare.macs, ["52:54:00:aa:00:03"]);
}

#[test]
fn nodes_yaml_fixture_imports_qemu_nodes() {
    let nodes = import_file(&fixture("nodes.yaml")).unwrap();
    assert_eq!(nodes.len(), 2);
    let big = &nodes[0];
    assert_eq!(big.driver, Driver::Qemu);
    assert_eq!(
        big.driver_info.qemu_disk.as_deref(),
        Some("/var/lib/kiln/vm-big.raw")
    );
    assert_eq!(big.driver_info.qemu_memory_mb, Some(4096));
    assert_eq!(big.driver_info.qemu_cpus, Some(2));
    assert_eq!(big.properties.memory_mb, Some(4096));
    let small = &nodes[1];
    assert_eq!(
        small.driver_info.qemu_memory_mb,
        Some(2048),
        "memory stands in"
    );
    assert_eq!(small.driver_info.qemu_firmware, Some(QemuFirmware::Bios));
    assert_eq!(small.macs, ["52:54:00:12:00:02"]);
}

#[test]
fn a_plain_yaml_list_is_accepted() {
    let text = "- {name: a, pm_type: manual, mac: ['52:54:00:00:00:01']}\n";
    let nodes = parse_nodes(text, "list.yaml").unwrap();
    assert_eq!(nodes[0].name, "a");
}

#[test]
fn bad_fixture_reports_every_problem_with_index_name_and_field() {
    let err = import_file(&fixture("bad-instackenv.json")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("bad-instackenv.json: 8 problem(s), nothing imported"),
        "{text}"
    );
    assert_eq!(
        problems_of(err),
        [
            "nodes[1] (compute-0): mac[0]: \"52:54:00:aa:00:0g\" is not a MAC address (six hex pairs like 52:54:00:12:34:56)",
            "nodes[1] (compute-0): memory: expected a number, got \"lots\"",
            "nodes[1] (compute-0): pm_password: required for pm_type ipmi",
            "nodes[2] (control-0): pm_system_id: required for pm_type redfish",
            "nodes[2] (control-0): name: \"control-0\" is also the name of nodes[0]",
            "nodes[2] (control-0): ports: 52:54:00:aa:00:01 is also a MAC of nodes[0]",
            "nodes[3] (odd-0): capabilites: unknown field",
            "nodes[3] (odd-0): pm_type: unknown power driver \"wol\" (expected ipmi, redfish, manual or qemu)",
        ]
    );
}

#[test]
fn a_bad_file_leaves_the_store_untouched() {
    let store = Store::open(":memory:").unwrap();
    assert!(import_file(&fixture("bad-instackenv.json")).is_err());
    assert!(store.nodes().unwrap().is_empty());
    let nodes = import_file(&fixture("instackenv.json")).unwrap();
    store.create_nodes(&nodes).unwrap();
    assert_eq!(store.nodes().unwrap().len(), 3);
    // Importing the same file again is refused as a whole.
    assert!(store.create_nodes(&nodes).is_err());
    assert_eq!(store.nodes().unwrap().len(), 3);
}

#[test]
fn per_driver_requirements_and_field_types() {
    let cases: &[(&str, &str)] = &[
        (
            r#"[{"name": "q", "pm_type": "qemu", "mac": ["52:54:00:00:00:01"], "memory": 2048}]"#,
            "nodes[0] (q): qemu_disk: required for pm_type qemu",
        ),
        (
            r#"[{"name": "q", "pm_type": "qemu", "qemu_disk": "/d", "mac": ["52:54:00:00:00:01"], "qemu_firmware": "coreboot", "memory": 1}]"#,
            "nodes[0] (q): qemu_firmware: expected uefi or bios, got \"coreboot\"",
        ),
        (
            r#"[{"name": "m", "pm_type": "manual"}]"#,
            "nodes[0] (m): ports: at least one port MAC address is required (the agent finds its node by MAC)",
        ),
        (
            r#"[{"name": "m", "pm_type": "manual", "mac": ["52:54:00:00:00:01"], "pm_port": 70000}]"#,
            "nodes[0] (m): pm_port: expected a port number 1-65535",
        ),
        (
            r#"[{"name": "bad name", "pm_type": "manual", "mac": ["52:54:00:00:00:01"]}]"#,
            "nodes[0] (bad name): name: \"bad name\" contains ' '; use letters, digits, '-', '_', '.', '~'",
        ),
        (
            r#"[{"name": "m", "pm_type": "manual", "mac": ["52:54:00:00:00:01"], "capabilities": "profile"}]"#,
            "nodes[0] (m): capabilities: \"profile\" is not KEY:VALUE",
        ),
        (
            r#"[{"pm_type": "manual", "mac": ["52:54:00:00:00:01"], "cpu": -2}]"#,
            "nodes[0]: cpu: expected a number, got -2",
        ),
        (
            r#"["oops"]"#,
            "nodes[0]: (node): expected a mapping, got a string",
        ),
    ];
    let missing_all = r#"[{"name": "q", "pm_type": "qemu", "mac": ["52:54:00:00:00:01"]}]"#;
    assert_eq!(
        problems_of(parse_nodes(missing_all, "t.json").unwrap_err()),
        [
            "nodes[0] (q): qemu_disk: required for pm_type qemu",
            "nodes[0] (q): qemu_memory_mb: required for pm_type qemu (or give memory)",
        ]
    );
    for (text, want) in cases {
        let problems = problems_of(parse_nodes(text, "t.json").unwrap_err());
        assert_eq!(problems, [want.to_string()], "input {text}");
    }
}

#[test]
fn a_missing_name_is_derived_from_the_first_mac() {
    let nodes = parse_nodes(
        r#"{"nodes": [{"pm_type": "manual", "ports": [{"address": "52:54:00:AB:CD:EF"}]}]}"#,
        "t.json",
    )
    .unwrap();
    assert_eq!(nodes[0].name, "node-525400abcdef");
}

#[test]
fn malformed_documents_name_the_file() {
    let err = parse_nodes("{\"nodes\": [", "broken.json").unwrap_err();
    assert!(
        err.to_string().starts_with("broken.json: not valid JSON"),
        "{err}"
    );
    let err = parse_nodes("nodes: 3\n", "n.yaml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "n.yaml: expected a list of nodes or a mapping with a \"nodes\" list, found a number"
    );
}

#[test]
fn redfish_tls_and_auth_fields_are_read_and_checked() {
    let text = r#"{"nodes": [
      {"name": "rf-0", "pm_type": "redfish", "pm_addr": "bmc0", "pm_user": "u",
       "pm_password": "p", "pm_system_id": "1", "mac": ["52:54:00:cc:00:01"],
       "redfish_verify_ca": false, "redfish_auth_type": "Session"},
      {"name": "rf-1", "pm_type": "redfish", "pm_addr": "bmc1", "pm_user": "u",
       "pm_password": "p", "pm_system_id": "1", "mac": ["52:54:00:cc:00:02"],
       "redfish_verify_ca": "/etc/kiln/bmc-ca.pem"}]}"#;
    let nodes = parse_nodes(text, "nodes.json").unwrap();
    assert_eq!(
        nodes[0].driver_info.redfish_verify_ca.as_deref(),
        Some("false")
    );
    assert_eq!(
        nodes[0].driver_info.redfish_auth_type.as_deref(),
        Some("session")
    );
    assert_eq!(
        nodes[1].driver_info.redfish_verify_ca.as_deref(),
        Some("/etc/kiln/bmc-ca.pem")
    );
    assert_eq!(nodes[1].driver_info.redfish_auth_type, None);

    let bad = text.replace("\"Session\"", "\"kerberos\"");
    let problems = problems_of(parse_nodes(&bad, "nodes.json").unwrap_err());
    assert!(
        problems
            .iter()
            .any(|p| p.contains("redfish_auth_type") && p.contains("kerberos")),
        "{problems:?}"
    );
}
