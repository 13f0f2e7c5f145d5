use super::*;
use crate::deploy::import::import_file;
use serde_json::json;

fn fixture_path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/deploy")
        .join(name)
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_path(name)).unwrap()).unwrap()
}

/// One condition evaluated against a node JSON with properties and an inventory.
fn check(condition_yaml: &str) -> bool {
    let text = format!(
        "- conditions: [{condition_yaml}]\n  actions: [{{action: set-capability, name: x, value: y}}]\n"
    );
    let rules = parse_rules(&text, "t.yaml").unwrap();
    let node = json!({"name": "n1", "properties": {"memory_mb": 4096, "cpu_arch": "x86_64"}});
    let data = json!({"inventory": {
        "cpu": {"model_name": "Intel(R) Xeon(R) Gold 6130"},
        "disks": [{"size": 100, "rotational": true}, {"size": 300, "rotational": false}]
    }});
    rules[0].conditions[0].holds(&node, &data)
}

#[test]
fn each_operator_compares_as_documented() {
    let cases = [
        ("{op: eq, field: memory_mb, value: 4096}", true),
        ("{op: eq, field: memory_mb, value: '4096'}", true),
        ("{op: eq, field: memory_mb, value: 4095}", false),
        ("{op: ne, field: memory_mb, value: 4095}", true),
        ("{op: ne, field: cpu_arch, value: x86_64}", false),
        ("{op: eq, field: cpu_arch, value: x86_64}", true),
        ("{op: lt, field: memory_mb, value: 4097}", true),
        ("{op: lt, field: memory_mb, value: 4096}", false),
        ("{op: le, field: memory_mb, value: 4096}", true),
        ("{op: le, field: memory_mb, value: 4095}", false),
        ("{op: gt, field: memory_mb, value: 4095}", true),
        ("{op: gt, field: memory_mb, value: 4096}", false),
        ("{op: ge, field: memory_mb, value: 4096}", true),
        ("{op: ge, field: memory_mb, value: 4097}", false),
        (
            "{op: contains, field: inventory.cpu.model_name, value: Xeon}",
            true,
        ),
        (
            "{op: contains, field: inventory.cpu.model_name, value: EPYC}",
            false,
        ),
        (
            "{op: matches, field: inventory.cpu.model_name, value: Xeon}",
            false,
        ),
        (
            "{op: matches, field: inventory.cpu.model_name, value: 'Intel.*6130'}",
            true,
        ),
        (
            "{op: matches, field: cpu_arch, value: 'x86_64|aarch64'}",
            true,
        ),
        // invert flips a result but a missing field stays false.
        (
            "{op: ge, field: memory_mb, value: 4097, invert: true}",
            true,
        ),
        ("{op: eq, field: local_gb, value: 1}", false),
        ("{op: eq, field: local_gb, value: 1, invert: true}", false),
        // Lists: any (default), all, first.
        (
            "{op: gt, field: 'inventory.disks[*].size', value: 200}",
            true,
        ),
        (
            "{op: gt, field: 'inventory.disks[*].size', value: 200, multiple: all}",
            false,
        ),
        (
            "{op: gt, field: 'inventory.disks[*].size', value: 50, multiple: all}",
            true,
        ),
        (
            "{op: gt, field: 'inventory.disks[*].size', value: 200, multiple: first}",
            false,
        ),
        (
            "{op: eq, field: 'inventory.disks[1].rotational', value: false}",
            true,
        ),
        (
            "{op: eq, field: 'data://inventory.disks[0].rotational', value: true}",
            true,
        ),
        ("{op: eq, field: 'node://name', value: n1}", true),
    ];
    for (condition, want) in cases {
        assert_eq!(check(condition), want, "{condition}");
    }
}

#[test]
fn invalid_rules_name_the_rule_and_field() {
    let cases = [
        (
            "- {description: big, conditions: [{op: gte, field: memory_mb, value: 1}], actions: [{action: fail, message: x}]}",
            "t.yaml: rules[0] (big): conditions[0].op: unknown variant `gte`",
        ),
        (
            "- {conditions: [{op: ge, field: memory_mb, value: lots}], actions: [{action: fail, message: x}]}",
            "t.yaml: rules[0]: conditions[0].value: expected a number, got \"lots\"",
        ),
        (
            "- {conditions: [{op: matches, field: cpu_arch, value: '('}], actions: [{action: fail, message: x}]}",
            "t.yaml: rules[0]: conditions[0].value: regex parse error",
        ),
        (
            "- {actions: [{action: set-attribute, path: /driver_info/pm_password, value: x}]}",
            "t.yaml: rules[0]: actions[0].path: \"/driver_info/pm_password\": only /properties/... can be set",
        ),
        (
            "- {actions: [{action: reboot}]}",
            "t.yaml: rules[0]: actions[0].action: unknown variant `reboot`, expected one of `set-capability`",
        ),
        (
            "- {actions: []}\n",
            "t.yaml: rules[0]: actions: a rule needs at least one action",
        ),
        (
            "- {conditions: [{op: eq, field: 'inventory.disks[', value: 1}], actions: [{action: fail, message: x}]}",
            "t.yaml: rules[0]: conditions[0].field: \"inventory.disks[\" has an unclosed or stray '['",
        ),
        (
            "- {condition: [], actions: [{action: fail, message: x}]}",
            "t.yaml: rules[0]: condition: unknown field `condition`",
        ),
    ];
    for (text, want) in cases {
        let err = parse_rules(text, "t.yaml").unwrap_err().to_string();
        assert!(err.starts_with(want), "got: {err}\nwant: {want}");
    }
}

#[test]
fn derived_properties_follow_the_inventory() {
    let big = derive_properties(&fixture_json("inventory-big.json"));
    assert_eq!(big.cpus, Some(4));
    assert_eq!(big.memory_mb, Some(8192));
    assert_eq!(big.cpu_arch.as_deref(), Some("x86_64"));
    // 1 GiB disk is too small; the 40 GiB one is the smallest of at least 4 GiB.
    assert_eq!(big.local_gb, Some(40));
    assert_eq!(big.capabilities["boot_mode"], "uefi");
    let small = derive_properties(&fixture_json("inventory-small.json"));
    assert_eq!(
        small.memory_mb,
        Some(2048),
        "from memory.total when physical_mb is absent"
    );
    assert_eq!(small.local_gb, Some(8));
    assert_eq!(derive_properties(&json!({})), Properties::default());
}

fn store_with_fixture_nodes() -> Store {
    let store = Store::open(":memory:").unwrap();
    store
        .create_nodes(&import_file(&fixture_path("nodes.yaml")).unwrap())
        .unwrap();
    store
}

#[test]
fn fixture_rules_assign_profiles_by_memory_and_are_visible_on_the_node() {
    let store = store_with_fixture_nodes();
    let rules = load_rules(&fixture_path("rules.yaml")).unwrap();
    assert_eq!(rules.len(), 4);

    let big = process_inventory(
        &store,
        "vm-big",
        &fixture_json("inventory-big.json"),
        &rules,
    )
    .unwrap();
    assert_eq!(big.failure, None);
    assert_eq!(
        big.matched,
        [
            "big memory nodes are controllers",
            "nodes with a spinning disk are marked"
        ]
    );
    let stored = store.node("vm-big").unwrap();
    assert_eq!(stored.properties.profile(), Some("control"));
    assert_eq!(stored.properties.extra["has_hdd"], json!(true));
    assert_eq!(stored.properties.memory_mb, Some(8192));
    assert_eq!(stored.properties.local_gb, Some(40));

    process_inventory(
        &store,
        "vm-small",
        &fixture_json("inventory-small.json"),
        &rules,
    )
    .unwrap();
    let small = store.node("vm-small").unwrap();
    assert_eq!(small.properties.profile(), Some("compute"));
    assert_eq!(small.properties.capabilities["boot_mode"], "bios");
    assert!(store.inventory("vm-small").unwrap().is_some());
}

#[test]
fn a_fail_action_reports_and_changes_no_property() {
    let store = store_with_fixture_nodes();
    let before = store.node("vm-small").unwrap().properties;
    let rules = load_rules(&fixture_path("rules.yaml")).unwrap();
    let tiny = json!({"memory": {"physical_mb": 512}, "disks": [{"name": "/dev/vda", "size": 1073741824}]});
    let outcome = process_inventory(&store, "vm-small", &tiny, &rules).unwrap();
    assert_eq!(
        outcome.failure.as_deref(),
        Some("no disk of at least 4 GiB (rule \"refuse nodes without enough disk\")")
    );
    assert_eq!(store.node("vm-small").unwrap().properties, before);
    assert_eq!(
        store.inventory("vm-small").unwrap().unwrap().inventory,
        tiny
    );
}

#[test]
fn set_attribute_keeps_property_types() {
    let rules = parse_rules(
        "- actions: [{action: set-attribute, path: /properties/cpus, value: many}]",
        "t.yaml",
    )
    .unwrap();
    let matched: Vec<&Rule> = rules.iter().collect();
    let mut properties = Properties::default();
    let err = apply_actions(&matched, &mut properties).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("rule \"rules[0]\": set-attribute /properties/cpus:"),
        "{err}"
    );

    let rules = parse_rules(
        "- actions: [{action: set-attribute, path: /properties/cpus, value: 8}, {action: set-attribute, path: /properties/root_device/serial, value: abc}]",
        "t.yaml",
    )
    .unwrap();
    let matched: Vec<&Rule> = rules.iter().collect();
    apply_actions(&matched, &mut properties).unwrap();
    assert_eq!(properties.cpus, Some(8));
    assert_eq!(properties.extra["root_device"], json!({"serial": "abc"}));
}
