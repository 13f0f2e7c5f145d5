use super::*;
use crate::deploy::state::Event;
use crate::deploy::store::{NewNode, Node, Properties, Store};
use serde_json::json;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/deploy")
        .join(name)
}

/// Nodes in a store: (name, profile, local_gb, available?).
fn nodes(specs: &[(&str, Option<&str>, Option<u64>, bool)]) -> Vec<Node> {
    let store = Store::open(":memory:").unwrap();
    let new: Vec<NewNode> = specs
        .iter()
        .enumerate()
        .map(|(i, (name, profile, local_gb, _))| {
            let mut properties = Properties {
                local_gb: *local_gb,
                ..Properties::default()
            };
            if let Some(profile) = profile {
                properties
                    .capabilities
                    .insert("profile".to_string(), profile.to_string());
            }
            NewNode {
                name: name.to_string(),
                driver: crate::deploy::store::Driver::Manual,
                driver_info: Default::default(),
                properties,
                macs: vec![format!("52:54:00:00:00:{i:02x}")],
            }
        })
        .collect();
    store.create_nodes(&new).unwrap();
    for (name, _, _, available) in specs {
        store.transition(name, Event::Manage, None).unwrap();
        if *available {
            store.transition(name, Event::Provide, None).unwrap();
            store.transition(name, Event::Done, None).unwrap();
        }
    }
    store.nodes().unwrap()
}

fn invalid(text: &str) -> String {
    match parse_plan(text, "p.yaml") {
        Err(err @ PlanError::Invalid { .. }) => err.to_string(),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn issue_plan_fixture_parses_with_defaults() {
    let plan = load_plan(&fixture("plan.yaml")).unwrap();
    assert_eq!(plan.name, "overcloud");
    assert_eq!(plan.images["overcloud-full"], "overcloud-full.qcow2");
    let controller = &plan.roles[0];
    assert_eq!(controller.profile.as_deref(), Some("control"));
    assert_eq!(controller.root_device["size"], json!(">= 4"));
    assert_eq!(controller.hostname(&plan, 0), "overcloud-controller-0");
    let compute = &plan.roles[1];
    assert_eq!(
        compute.hostname(&plan, 1),
        "overcloud-compute-1",
        "default format"
    );
    assert_eq!(compute.deploy_interface, None);
}

#[test]
fn matching_picks_available_nodes_by_profile_in_name_order() {
    let plan = load_plan(&fixture("plan.yaml")).unwrap();
    let nodes = nodes(&[
        ("compute-b", Some("compute"), Some(20), true),
        ("compute-a", Some("compute"), Some(20), true),
        ("compute-c", Some("compute"), Some(20), true),
        ("control-0", Some("control"), Some(40), true),
        ("control-1", Some("control"), Some(40), true),
    ]);
    let assignments = match_nodes(&plan, &nodes).unwrap();
    let picked: Vec<(&str, u32, &str, &str)> = assignments
        .iter()
        .map(|a| {
            (
                a.role.as_str(),
                a.index,
                a.node_name.as_str(),
                a.hostname.as_str(),
            )
        })
        .collect();
    assert_eq!(
        picked,
        [
            ("Controller", 0, "control-0", "overcloud-controller-0"),
            ("Compute", 0, "compute-a", "overcloud-compute-0"),
            ("Compute", 1, "compute-b", "overcloud-compute-1"),
        ]
    );
    let controller = &assignments[0];
    assert_eq!(controller.image_file, "overcloud-full.qcow2");
    assert_eq!(controller.config, json!({"ntp": {"servers": ["10.0.0.1"]}}));
    let info = controller.instance_info("overcloud");
    assert_eq!(info.hostname.as_deref(), Some("overcloud-controller-0"));
    assert_eq!(info.root_device["size"], json!(">= 4"));
    assert_eq!(info.deploy_interface.as_deref(), Some("direct"));
    // Same input, same answer.
    assert_eq!(match_nodes(&plan, &nodes).unwrap(), assignments);
}

#[test]
fn not_enough_nodes_names_role_counts_and_reasons() {
    let plan = load_plan(&fixture("plan.yaml")).unwrap();
    let nodes = nodes(&[
        ("compute-0", Some("compute"), Some(20), true),
        ("compute-1", Some("compute"), Some(20), false),
        ("control-0", Some("control"), Some(3), true),
        ("plain-0", None, Some(50), true),
    ]);
    let err = match_nodes(&plan, &nodes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "not enough nodes for plan overcloud:\n  \
         role Controller needs 1 node(s) with profile control, 0 matched; excluded: \
         compute-0 (profile compute), compute-1 (manageable, not available), \
         control-0 (root disk 3 GiB, size hint >= 4), plain-0 (no profile)\n  \
         role Compute needs 2 node(s) with profile compute, 1 matched; excluded: \
         compute-1 (manageable, not available), control-0 (profile control), \
         plain-0 (no profile)"
    );
    match err {
        PlanError::NotEnoughNodes { missing, .. } => {
            assert_eq!((missing[1].needed, missing[1].matched), (2, 1));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_role_without_profile_takes_only_nodes_without_one() {
    let plan = parse_plan(
        "name: s\nimages: {img: a.raw}\nroles: [{name: Any, count: 1}]\n",
        "p.yaml",
    )
    .unwrap();
    let nodes = nodes(&[
        ("a-tagged", Some("compute"), None, true),
        ("b-plain", None, None, true),
    ]);
    let assignments = match_nodes(&plan, &nodes).unwrap();
    assert_eq!(assignments[0].node_name, "b-plain");
    assert_eq!(assignments[0].image, "img", "the only image is the default");
    assert_eq!(assignments[0].hostname, "s-any-0");
}

#[test]
fn overrides_pin_nodes_and_merge_config() {
    let plan = load_plan(&fixture("plan-overrides.yaml")).unwrap();
    let nodes = nodes(&[
        ("control-0", Some("control"), None, true),
        ("control-1", Some("storage"), None, true),
        ("plain-0", None, None, true),
    ]);
    let assignments = match_nodes(&plan, &nodes).unwrap();
    let controller = &assignments[0];
    assert_eq!(
        controller.node_name, "control-1",
        "pinned despite its profile"
    );
    assert_eq!(controller.hostname, "ctl-special");
    assert_eq!(
        controller.config,
        json!({"dns": ["192.0.2.1"], "ntp": {"servers": ["10.0.0.1"], "iburst": true}, "pacemaker": true})
    );
    assert_eq!(controller.image_file, "images/overcloud-full.qcow2");
    let storage = &assignments[1];
    assert_eq!(storage.node_name, "plain-0");
    assert_eq!(storage.deploy_interface, DeployInterface::Iscsi);
    assert_eq!(storage.hostname, "lab-storage-0");

    let busy = self::nodes(&[("control-1", None, None, false)]);
    let err = match_nodes(&plan, &busy).unwrap_err();
    assert_eq!(
        err.to_string(),
        "plan lab: role Controller index 0 pins node control-1: it is manageable, not available"
    );
    let err = match_nodes(&plan, &[]).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("pins node control-1: no such node"),
        "{err}"
    );
}

#[test]
fn validation_errors_name_role_index_and_field() {
    let base = "name: oc\nimages: {full: full.qcow2}\n";
    let cases = [
        (
            "roles: [{name: Controller, count: 1, image: full}, {name: Compute, count: 1, image: fulll}]",
            "p.yaml: roles[1] (Compute).image: unknown image \"fulll\" (images: full)",
        ),
        (
            "roles: [{name: Compute, count: two}]",
            "p.yaml: roles[0] (Compute).count: invalid type: string \"two\", expected u32",
        ),
        (
            "roles: [{name: Compute, count: 1, profil: compute}]",
            "p.yaml: roles[0] (Compute).profil: unknown field `profil`",
        ),
        (
            "roles: [{name: Compute, count: 2, hostname_format: compute}]",
            "p.yaml: roles[0] (Compute).hostname_format: host name \"compute\" is also used by Compute index 0",
        ),
        (
            "roles: [{name: A, count: 1, hostname_format: x-%index%}, {name: B, count: 1, hostname_format: x-%index%}]",
            "p.yaml: roles[1] (B).hostname_format: host name \"x-0\" is also used by A index 0",
        ),
        (
            "roles: [{name: Compute, count: 1, root_device: {size: huge}}]",
            "p.yaml: roles[0] (Compute).root_device: root device hint \"size\": \"huge\" is not a whole number of GiB (value \"huge\")",
        ),
        (
            "roles: [{name: Compute, count: 1, root_device: {colour: red}}]",
            "p.yaml: roles[0] (Compute).root_device: unknown root device hint \"colour\"",
        ),
        (
            "roles: [{name: Compute, count: 1, nodes: [{index: 3, hostname: c3}]}]",
            "p.yaml: roles[0] (Compute).nodes[0].index: 3 is out of range: role Compute has count 1",
        ),
        (
            "roles: [{name: Compute, count: 1, hostname_format: 'compute_%index%'}]",
            "p.yaml: roles[0] (Compute).hostname_format: \"compute_0\" is not a valid host name",
        ),
        (
            "roles: [{name: Compute, count: 1, deploy_interface: pxe}]",
            "p.yaml: roles[0] (Compute).deploy_interface: unknown variant `pxe`",
        ),
        (
            "roles: [{name: A, count: 1}, {name: A, count: 1}]",
            "p.yaml: roles[1] (A).name: role A is defined twice",
        ),
        ("roles: []", "p.yaml: roles: at least one role is needed"),
    ];
    for (roles, want) in cases {
        let err = invalid(&format!("{base}{roles}\n"));
        assert!(err.starts_with(want), "got:  {err}\nwant: {want}");
    }
    let err = invalid("name: oc\nimages: {full: ../etc/passwd}\nroles: [{name: A, count: 1}]\n");
    assert_eq!(
        err,
        "p.yaml: images.full: \"../etc/passwd\" must be a relative path inside the image directory"
    );
    let err = invalid("name: oc\nimages: {a: a.raw, b: b.raw}\nroles: [{name: A, count: 1}]\n");
    assert_eq!(
        err,
        "p.yaml: roles[0] (A).image: required when the plan has several images (a, b)"
    );
    assert!(matches!(
        parse_plan("name: [", "p.yaml"),
        Err(PlanError::Syntax { .. })
    ));
}

#[test]
fn deep_merge_merges_mappings_and_replaces_the_rest() {
    let merged = deep_merge(
        &json!({"a": {"x": 1, "y": [1]}, "b": 1}),
        &json!({"a": {"y": [2], "z": 3}, "c": null}),
    );
    assert_eq!(
        merged,
        json!({"a": {"x": 1, "y": [2], "z": 3}, "b": 1, "c": null})
    );
    assert_eq!(deep_merge(&json!({"a": 1}), &Value::Null), json!({"a": 1}));
}

#[test]
fn nodes_taken_by_an_earlier_role_are_reported_as_such() {
    let plan = parse_plan(
        "name: s\nimages: {img: a.raw}\nroles: [{name: A, count: 1, profile: p}, {name: B, count: 1, profile: p}]\n",
        "p.yaml",
    )
    .unwrap();
    let nodes = nodes(&[("only", Some("p"), None, true)]);
    let err = match_nodes(&plan, &nodes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "not enough nodes for plan s:\n  role B needs 1 node(s) with profile p, 0 matched; \
         excluded: only (already assigned to A)"
    );
    let err = match_nodes(&plan, &[]).unwrap_err();
    assert!(
        err.to_string()
            .contains("role A needs 1 node(s) with profile p, 0 matched; no other nodes exist"),
        "{err}"
    );
}
