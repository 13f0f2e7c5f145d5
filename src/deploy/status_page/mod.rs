//! The operators' live view: one snapshot of every node and deployment
//! ([`StatusView`]), gathered from the conductor and served both as the HTML
//! status page (GET / and /status) and as JSON (GET /v1/status), so the page
//! and the JSON always show the same data. `kiln deploy status --watch` draws
//! the same snapshot on a terminal.

pub mod html;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::deploy::client::TimelineEntry;
use crate::deploy::conductor::{Conductor, ConductorError};
use crate::deploy::protocol::{CommandProgress, DeploymentNode};
use crate::deploy::state::ProvisionState;
use crate::deploy::store::{self, Node, PowerState};

/// Everything the status page shows, as of `generated_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// Unix seconds (UTC) when the snapshot was taken; ages are relative to it.
    pub generated_at: i64,
    pub nodes: Vec<NodeStatus>,
    pub deployments: Vec<DeploymentView>,
}

/// One row of the node table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub uuid: Uuid,
    pub power_state: Option<PowerState>,
    pub provision_state: ProvisionState,
    #[serde(default)]
    pub target_provision_state: Option<ProvisionState>,
    #[serde(default)]
    pub deployment: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub deploy_step: Option<String>,
    /// Image bytes written of the total, once the agent reported a total.
    #[serde(default)]
    pub progress: Option<CommandProgress>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Unix seconds (UTC) of the agent's last heartbeat or lookup.
    #[serde(default)]
    pub last_heartbeat: Option<i64>,
    /// Unix seconds (UTC) when the node entered its provision state.
    pub state_entered_at: i64,
}

impl NodeStatus {
    /// The operator-visible part of a stored node.
    pub fn from_node(node: &Node) -> NodeStatus {
        let info = &node.instance_info;
        NodeStatus {
            name: node.name.clone(),
            uuid: node.uuid,
            power_state: node.power_state,
            provision_state: node.provision_state,
            target_provision_state: node.target_provision_state,
            deployment: info.deployment.clone(),
            role: info.role.clone(),
            hostname: info.hostname.clone(),
            profile: node.properties.profile().map(str::to_string),
            image: info.image.clone(),
            deploy_step: node.progress.deploy_step.clone(),
            progress: node.progress.bytes_total.map(|total| CommandProgress {
                done: node.progress.bytes_written,
                total,
            }),
            last_error: node.last_error.clone(),
            last_heartbeat: node.last_heartbeat,
            state_entered_at: node.state_entered_at,
        }
    }
}

/// A deployment with its nodes (as GET /v1/deployments/{name} reports them)
/// and each node's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentView {
    pub name: String,
    pub nodes: Vec<DeploymentNode>,
    /// Per node, in the order of `nodes`: its state changes, oldest first.
    pub timelines: Vec<NodeTimeline>,
}

/// The newest events of a node's timeline (a long-lived node collects many;
/// GET /v1/nodes/{id}/timeline has them all).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeTimeline {
    pub node: String,
    pub events: Vec<TimelineEntry>,
    /// How many older events were left out.
    #[serde(default)]
    pub earlier_events: usize,
}

/// Events per node the view keeps.
pub const TIMELINE_EVENTS: usize = 40;

/// Takes a snapshot of the conductor's nodes and deployments.
pub fn gather(conductor: &Conductor) -> Result<StatusView, ConductorError> {
    let generated_at = store::now();
    let nodes: Vec<NodeStatus> = conductor
        .nodes()?
        .iter()
        .map(NodeStatus::from_node)
        .collect();
    let mut deployments = Vec::new();
    for name in conductor.deployment_names()? {
        let status = match conductor.deployment(&name) {
            Ok(status) => status,
            // Deleted between listing and reading: not part of this snapshot.
            Err(ConductorError::NotFound(_)) => continue,
            Err(err) => return Err(err),
        };
        let mut timelines = Vec::with_capacity(status.nodes.len());
        for node in &status.nodes {
            let mut events = timeline(conductor, &node.uuid.to_string())?;
            let earlier_events = events.len().saturating_sub(TIMELINE_EVENTS);
            events.drain(..earlier_events);
            timelines.push(NodeTimeline {
                node: node.node.clone(),
                events,
                earlier_events,
            });
        }
        deployments.push(DeploymentView {
            name: status.name,
            nodes: status.nodes,
            timelines,
        });
    }
    Ok(StatusView {
        generated_at,
        nodes,
        deployments,
    })
}

/// A node's timeline in the shape GET /v1/nodes/{id}/timeline answers with.
fn timeline(conductor: &Conductor, uuid: &str) -> Result<Vec<TimelineEntry>, ConductorError> {
    let events: Value = conductor.timeline(uuid)?;
    serde_json::from_value(events).map_err(|err| {
        ConductorError::BadRequest(format!("timeline of node {uuid} does not decode: {err}"))
    })
}

impl StatusView {
    /// The part of the view about one deployment: its section and its nodes'
    /// rows; None when there is no such deployment.
    pub fn only_deployment(&self, name: &str) -> Option<StatusView> {
        let deployment = self.deployments.iter().find(|d| d.name == name)?;
        Some(StatusView {
            generated_at: self.generated_at,
            nodes: self
                .nodes
                .iter()
                .filter(|node| node.deployment.as_deref() == Some(name))
                .cloned()
                .collect(),
            deployments: vec![deployment.clone()],
        })
    }

    /// Whether no node of the view has work going on.
    pub fn is_settled(&self) -> bool {
        self.nodes
            .iter()
            .all(|node| !node.provision_state.is_in_flight())
    }
}

/// Percent of `done` out of `total`, rounded down and capped at 100 (a total
/// of zero counts as complete).
pub fn percent(progress: CommandProgress) -> u64 {
    if progress.total == 0 {
        return 100;
    }
    let done = u128::from(progress.done.min(progress.total));
    (done * 100 / u128::from(progress.total)) as u64
}

/// How long ago `then` was, as of `now`: "4 s ago", "3 min ago", "2 h ago",
/// "5 d ago"; a time in the future (clock skew) reads "just now".
pub fn age(now: i64, then: i64) -> String {
    let seconds = now.saturating_sub(then);
    match seconds {
        i64::MIN..=0 => "just now".to_string(),
        1..=119 => format!("{seconds} s ago"),
        120..=7199 => format!("{} min ago", seconds / 60),
        7200..=172_799 => format!("{} h ago", seconds / 3600),
        _ => format!("{} d ago", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests;
