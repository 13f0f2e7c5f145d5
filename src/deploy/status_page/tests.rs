use uuid::Uuid;

use super::html::{escape, page};
use super::*;
use crate::deploy::protocol::DeploymentNode;

const NOW: i64 = 1_700_000_000;

fn node(name: &str, state: ProvisionState) -> NodeStatus {
    NodeStatus {
        name: name.to_string(),
        uuid: Uuid::parse_str("6f1c2d3e-4b5a-4c6d-8e7f-901234567890").unwrap(),
        power_state: Some(PowerState::On),
        provision_state: state,
        target_provision_state: None,
        deployment: Some("overcloud".to_string()),
        role: Some("Compute".to_string()),
        hostname: Some("overcloud-novacompute-0".to_string()),
        profile: Some("compute".to_string()),
        image: Some("overcloud-full.qcow2".to_string()),
        deploy_step: Some("write_image".to_string()),
        progress: Some(CommandProgress {
            done: 3 << 20,
            total: 4 << 20,
        }),
        last_error: None,
        last_heartbeat: Some(NOW - 4),
        state_entered_at: NOW - 60,
    }
}

fn view(nodes: Vec<NodeStatus>) -> StatusView {
    StatusView {
        generated_at: NOW,
        nodes,
        deployments: Vec::new(),
    }
}

#[test]
fn percent_is_rounded_down_capped_and_safe_for_zero_and_huge_totals() {
    let p = |done, total| percent(CommandProgress { done, total });
    assert_eq!(p(0, 10), 0);
    assert_eq!(p(1, 3), 33);
    assert_eq!(p(2, 3), 66);
    assert_eq!(p(3, 3), 100);
    assert_eq!(p(7, 3), 100, "an agent overshooting its total stays at 100");
    assert_eq!(p(0, 0), 100);
    assert_eq!(p(u64::MAX / 2, u64::MAX), 49, "no overflow on huge totals");
}

#[test]
fn ages_read_in_the_largest_fitting_unit() {
    assert_eq!(age(NOW, NOW - 4), "4 s ago");
    assert_eq!(age(NOW, NOW - 119), "119 s ago");
    assert_eq!(age(NOW, NOW - 120), "2 min ago");
    assert_eq!(age(NOW, NOW - 7199), "119 min ago");
    assert_eq!(age(NOW, NOW - 7200), "2 h ago");
    assert_eq!(age(NOW, NOW - 3 * 86_400), "3 d ago");
    assert_eq!(age(NOW, NOW), "just now");
    assert_eq!(age(NOW, NOW + 30), "just now", "clock skew is not negative");
    assert_eq!(
        age(i64::MAX, i64::MIN),
        format!("{} d ago", i64::MAX / 86_400)
    );
}

#[test]
fn operator_text_is_escaped_everywhere_it_appears() {
    let mut evil = node("<script>alert(1)</script>", ProvisionState::DeployFailed);
    evil.last_error = Some("disk \"sda\" & 'sdb' <gone>".to_string());
    evil.hostname = Some("h<b>".to_string());
    let mut view = view(vec![evil.clone()]);
    view.deployments.push(DeploymentView {
        name: "over<cloud>".to_string(),
        nodes: vec![DeploymentNode {
            node: evil.name.clone(),
            uuid: evil.uuid,
            role: Some("R\"ole".to_string()),
            hostname: evil.hostname.clone(),
            state: "deploy failed".to_string(),
            progress: None,
            deploy_step: None,
            last_error: evil.last_error.clone(),
            config: None,
        }],
        timelines: vec![NodeTimeline {
            node: evil.name.clone(),
            events: vec![TimelineEntry {
                time: NOW - 10,
                from: "deploying".to_string(),
                to: "deploy failed".to_string(),
                event: "fail".to_string(),
                message: Some("<img src=x onerror=alert(2)>".to_string()),
            }],
            earlier_events: 3,
        }],
    });
    let html = page(&view);
    for raw in ["<script", "<img", "<b>", "<gone>", "<cloud>", "R\"ole"] {
        assert!(!html.contains(raw), "{raw} left unescaped in:\n{html}");
    }
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(html.contains("disk &quot;sda&quot; &amp; &#39;sdb&#39; &lt;gone&gt;"));
    assert!(html.contains("&lt;img src=x onerror=alert(2)&gt;"));
    assert!(html.contains("data-node=\"&lt;script&gt;alert(1)&lt;/script&gt;\""));
    assert_eq!(escape("a\u{7}b"), "a\u{FFFD}b");
    assert!(html.contains("(4 events)"), "{html}");
    assert!(html.contains("3 earlier events not shown."), "{html}");
}

#[test]
fn a_row_shows_state_progress_heartbeat_and_placement() {
    let html = page(&view(vec![node("node-b", ProvisionState::Deploying)]));
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(html.contains("<meta http-equiv=\"refresh\""));
    assert!(!html.contains("<script"), "no scripts on the page");
    assert!(!html.contains("src="), "no external assets");
    assert!(html.contains("<tr class=\"node\" data-node=\"node-b\" data-state=\"deploying\">"));
    assert!(html.contains("class=\"state busy\">deploying<"), "{html}");
    assert!(html.contains("<progress max=\"100\" value=\"75\">75%</progress>"));
    assert!(html.contains("3.0 MiB / 4.0 MiB (75%)"), "{html}");
    assert!(html.contains("4 s ago"));
    assert!(html.contains("2023-11-14 22:13:16 UTC"), "{html}");
    assert!(html.contains("overcloud / Compute / overcloud-novacompute-0"));
    assert!(html.contains(">6f1c2d3e<"), "short uuid: {html}");
    assert!(html.contains("power on"));
}

#[test]
fn an_empty_conductor_says_so() {
    let html = page(&view(Vec::new()));
    assert!(html.contains("No nodes are enrolled."), "{html}");
    assert!(html.contains("0 nodes, 0 deployments"), "{html}");
}

#[test]
fn a_view_narrowed_to_a_deployment_keeps_only_its_nodes() {
    let mut other = node("spare", ProvisionState::Available);
    other.deployment = None;
    let mut all = view(vec![node("node-b", ProvisionState::Active), other]);
    all.deployments.push(DeploymentView {
        name: "overcloud".to_string(),
        nodes: Vec::new(),
        timelines: Vec::new(),
    });
    let only = all.only_deployment("overcloud").unwrap();
    assert_eq!(only.nodes.len(), 1);
    assert_eq!(only.nodes[0].name, "node-b");
    assert!(only.is_settled());
    assert!(all.only_deployment("nope").is_none());
    let mut busy = only.clone();
    busy.nodes[0].provision_state = ProvisionState::WaitCallBack;
    assert!(!busy.is_settled());
}

#[test]
fn the_json_form_round_trips() {
    let view = view(vec![node("node-b", ProvisionState::Deploying)]);
    let text = serde_json::to_string(&view).unwrap();
    let back: StatusView = serde_json::from_str(&text).unwrap();
    assert_eq!(back, view);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["nodes"][0]["provision_state"], "deploying");
    assert_eq!(value["nodes"][0]["power_state"], "power on");
    assert_eq!(value["nodes"][0]["progress"]["done"], 3 << 20);
}
