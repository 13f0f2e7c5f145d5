use super::*;
use crate::deploy::plan::{match_nodes, parse_plan};
use crate::deploy::state::Event;
use crate::deploy::store::{Driver, NewNode, Properties, Store};

const PLAN: &str = r#"
name: oc
images: {full: full.qcow2, other: other.qcow2}
config: {ntp: {servers: [10.0.0.1]}, dns: 10.0.0.53}
roles:
  - name: Controller
    count: 1
    image: full
    config: {ntp: {prefer: true}}
    nodes: [{config: {dns: 10.0.0.54}}]
  - {name: Compute, count: 1, image: full}
"#;

/// The deployment's nodes as the store has them after the plan's assignments.
fn deployed(plan_text: &str) -> Vec<Node> {
    let store = Store::open(":memory:").unwrap();
    let new: Vec<NewNode> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, name)| NewNode {
            name: name.to_string(),
            driver: Driver::Manual,
            driver_info: Default::default(),
            properties: Properties::default(),
            macs: vec![format!("52:54:00:00:00:{i:02x}")],
        })
        .collect();
    store.create_nodes(&new).unwrap();
    for name in ["a", "b"] {
        for event in [Event::Manage, Event::Provide, Event::Done] {
            store.transition(name, event, None).unwrap();
        }
    }
    let plan = parse_plan(plan_text, "p.yaml").unwrap();
    for assignment in match_nodes(&plan, &store.nodes().unwrap()).unwrap() {
        store
            .set_instance_info(
                &assignment.node_uuid.to_string(),
                &assignment.instance_info(&plan.name),
            )
            .unwrap();
    }
    store.nodes().unwrap()
}

#[test]
fn metadata_merges_plan_role_and_node_config_under_the_identity() {
    let nodes = deployed(PLAN);
    let a = &nodes[0];
    let metadata = node_metadata(a).unwrap();
    assert_eq!(
        metadata["ntp"],
        json!({"servers": ["10.0.0.1"], "prefer": true})
    );
    assert_eq!(metadata["dns"], "10.0.0.54", "the per-node override wins");
    assert_eq!(metadata["kiln"]["role"], "Controller");
    assert_eq!(metadata["kiln"]["index"], 0);
    assert_eq!(metadata["kiln"]["hostname"], "oc-controller-0");
    assert_eq!(metadata["kiln"]["deployment"], "oc");
    assert_eq!(metadata["kiln"]["node"]["name"], "a");
    assert_eq!(metadata["kiln"]["node"]["uuid"], json!(a.uuid));
    let b = node_metadata(&nodes[1]).unwrap();
    assert_eq!(b["dns"], "10.0.0.53");
    assert_eq!(b["ntp"], json!({"servers": ["10.0.0.1"]}));
}

#[test]
fn drive_config_adds_endpoints_and_the_served_bytes_hash() {
    let nodes = deployed(PLAN);
    let metadata = node_metadata(&nodes[0]).unwrap();
    let drive = drive_config(
        &nodes[0],
        &metadata,
        &ConfigEndpoints {
            public_url: "http://10.0.2.100:6385/",
            config_token: "tok",
        },
    );
    let uuid = nodes[0].uuid;
    assert_eq!(
        drive["kiln"]["metadata_url"],
        format!("http://10.0.2.100:6385/v1/nodes/{uuid}/metadata")
    );
    assert_eq!(
        drive["kiln"]["status_url"],
        format!("http://10.0.2.100:6385/v1/nodes/{uuid}/config-status")
    );
    assert_eq!(drive["kiln"]["config_token"], "tok");
    // The hash is of the bytes served, checked with sha256sum's algorithm via sha2
    // over the served text (keys sorted, compact).
    let served = String::from_utf8(metadata_bytes(&metadata)).unwrap();
    assert!(
        served.starts_with(r#"{"dns":"10.0.0.54","kiln":{"deployment":"oc""#),
        "{served}"
    );
    let expected: String = Sha256::digest(served.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(drive["kiln"]["metadata_sha256"], expected);
    assert_eq!(drive["ntp"], metadata["ntp"]);
}

#[test]
fn update_allows_config_and_hostname_changes() {
    let nodes = deployed(PLAN);
    let changed = PLAN.replace("10.0.0.1]", "10.9.9.9]").replace(
        "count: 1, image: full}",
        "count: 1, image: full, hostname_format: \"cpu-%index%\"}",
    );
    let plan = parse_plan(&changed, "p.yaml").unwrap();
    let updated = updated_instance_infos(&plan, &nodes).unwrap();
    assert_eq!(updated.len(), 2);
    let (_, a) = &updated[0];
    assert_eq!(a.config["ntp"]["servers"], json!(["10.9.9.9"]));
    assert_eq!(a.config["dns"], "10.0.0.54");
    let (_, b) = &updated[1];
    assert_eq!(b.hostname.as_deref(), Some("cpu-0"));
}

#[test]
fn update_refuses_image_count_and_role_changes() {
    let nodes = deployed(PLAN);
    let refuse = |text: String| {
        let plan = parse_plan(&text, "p.yaml").unwrap();
        updated_instance_infos(&plan, &nodes).unwrap_err()
    };
    let image = refuse(PLAN.replace("count: 1, image: full}", "count: 1, image: other}"));
    assert!(
        matches!(&image, UpdateRefused::Changed { field: "image", node, .. } if node == "b"),
        "{image}"
    );
    assert!(
        image.to_string().contains("full.qcow2 to other.qcow2"),
        "{image}"
    );
    let grow = refuse(PLAN.replace("count: 1, image: full}", "count: 2, image: full}"));
    assert!(
        matches!(grow, UpdateRefused::CountIncreased { deployed: 1, .. }),
        "{grow}"
    );
    let shrink = refuse(PLAN.replace("count: 1, image: full}", "count: 0, image: full}"));
    assert!(
        matches!(shrink, UpdateRefused::CountReduced { .. }),
        "{shrink}"
    );
    let renamed = refuse(PLAN.replace("name: Compute", "name: Worker"));
    assert!(
        matches!(renamed, UpdateRefused::RoleRemoved { .. }),
        "{renamed}"
    );
    let hints = refuse(PLAN.replace(
        "count: 1, image: full}",
        "count: 1, image: full, root_device: {name: /dev/vdb}}",
    ));
    assert!(
        matches!(
            hints,
            UpdateRefused::Changed {
                field: "root_device",
                ..
            }
        ),
        "{hints}"
    );
}
