//! `--wait`: poll nodes or a deployment until every node rests in a stable state.
//! A node that settles in a failed state ends the wait with its last error.

use std::time::{Duration, Instant};

use crate::deploy::protocol::{DeploymentNode, DeploymentStatus};
use crate::deploy::state::ProvisionState;

use super::{Client, ClientError, NodeRecord, Result};

/// How often the conductor is asked again.
const POLL: Duration = Duration::from_secs(1);

/// How long to wait, and what to call with every snapshot (to draw progress).
pub struct WaitOptions<'a, T> {
    pub timeout: Option<Duration>,
    /// A failed state is where the verb leads (`abort`): resting there is success.
    pub accept_failed: bool,
    pub on_update: &'a mut dyn FnMut(&T),
}

pub(super) fn is_failed(state: ProvisionState) -> bool {
    matches!(
        state,
        ProvisionState::InspectFailed
            | ProvisionState::DeployFailed
            | ProvisionState::CleanFailed
            | ProvisionState::Error
    )
}

/// Whether a node in `state` still has work going on.
fn is_moving(state: ProvisionState) -> bool {
    state.is_in_flight()
}

impl Client {
    /// Polls the nodes until none is in flight; a node resting in a failed state
    /// is an error naming it, its state and its last error.
    pub fn wait_nodes(
        &self,
        nodes: &[String],
        wait: WaitOptions<'_, Vec<NodeRecord>>,
    ) -> Result<Vec<NodeRecord>> {
        let started = Instant::now();
        loop {
            let records = nodes
                .iter()
                .map(|node| self.node(node))
                .collect::<Result<Vec<_>>>()?;
            (wait.on_update)(&records);
            let moving: Vec<&NodeRecord> = records
                .iter()
                .filter(|record| is_moving(record.provision_state))
                .collect();
            if moving.is_empty() {
                let failures: Vec<String> = records
                    .iter()
                    .filter(|record| is_failed(record.provision_state))
                    .map(|record| {
                        failure_line(
                            &record.name,
                            record.provision_state.as_str(),
                            record.last_error.as_deref(),
                        )
                    })
                    .collect();
                if failures.is_empty() || wait.accept_failed {
                    return Ok(records);
                }
                return Err(ClientError::Failed {
                    what: plural("node", nodes),
                    message: failures.join("; "),
                });
            }
            check_deadline(started, wait.timeout, &plural("node", nodes), || {
                moving
                    .iter()
                    .map(|record| format!("{} {}", record.name, record.provision_state))
                    .collect::<Vec<_>>()
                    .join(", ")
            })?;
            std::thread::sleep(POLL);
        }
    }

    /// Polls a deployment until none of its nodes is in flight (a deployment
    /// that no longer exists, after undeploy, is done too).
    pub fn wait_deployment(
        &self,
        name: &str,
        wait: WaitOptions<'_, DeploymentStatus>,
    ) -> Result<DeploymentStatus> {
        let started = Instant::now();
        let what = format!("deployment {name}");
        loop {
            let status = match self.deployment(name) {
                Ok(status) => status,
                Err(ClientError::Refused { status: 404, .. }) => {
                    return Ok(DeploymentStatus {
                        name: name.to_string(),
                        nodes: Vec::new(),
                    });
                }
                Err(err) => return Err(err),
            };
            (wait.on_update)(&status);
            let state = |node: &DeploymentNode| node.state.parse::<ProvisionState>().ok();
            let moving: Vec<&DeploymentNode> = status
                .nodes
                .iter()
                // A state this client does not know is treated as still moving.
                .filter(|node| state(node).is_none_or(is_moving))
                .collect();
            if moving.is_empty() {
                let failures: Vec<String> = status
                    .nodes
                    .iter()
                    .filter(|node| state(node).is_some_and(is_failed))
                    .map(|node| failure_line(&node.node, &node.state, node.last_error.as_deref()))
                    .collect();
                if failures.is_empty() || wait.accept_failed {
                    return Ok(status);
                }
                return Err(ClientError::Failed {
                    what,
                    message: failures.join("; "),
                });
            }
            check_deadline(started, wait.timeout, &what, || {
                moving
                    .iter()
                    .map(|node| format!("{} {}", node.node, node.state))
                    .collect::<Vec<_>>()
                    .join(", ")
            })?;
            std::thread::sleep(POLL);
        }
    }
}

fn failure_line(node: &str, state: &str, last_error: Option<&str>) -> String {
    match last_error {
        Some(error) => format!("node {node} is {state}: {error}"),
        None => format!("node {node} is {state}"),
    }
}

fn plural(noun: &str, items: &[String]) -> String {
    format!("{noun} {}", items.join(", "))
}

fn check_deadline(
    started: Instant,
    timeout: Option<Duration>,
    what: &str,
    state: impl FnOnce() -> String,
) -> Result<()> {
    match timeout {
        Some(limit) if started.elapsed() >= limit => Err(ClientError::WaitTimeout {
            what: what.to_string(),
            seconds: limit.as_secs(),
            state: state(),
        }),
        _ => Ok(()),
    }
}
