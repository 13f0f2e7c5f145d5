//! Matching a plan's roles to available nodes.
//!
//! Deterministic: nodes are considered in name order, roles in plan order, pinned
//! nodes (per-node overrides with a `name`) are reserved first, and a node is never
//! used twice. When a role cannot be filled the error says, per role, how many
//! nodes it needed, how many matched and why every other node was left out.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::hints::{size_accepts, size_text};
use super::{DeployInterface, Plan, PlanError, Role, deep_merge};
use crate::deploy::state::ProvisionState;
use crate::deploy::store::{InstanceInfo, Node};

/// One role instance and the node that will carry it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assignment {
    pub role: String,
    pub index: u32,
    pub node_uuid: Uuid,
    pub node_name: String,
    pub hostname: String,
    /// Image name in the plan.
    pub image: String,
    /// Image file inside the conductor's image directory.
    pub image_file: String,
    pub root_device: BTreeMap<String, Value>,
    /// Plan config, role config and the per-node override, deep-merged.
    pub config: Value,
    pub deploy_interface: DeployInterface,
}

impl Assignment {
    /// What the store keeps on the node for this assignment.
    pub fn instance_info(&self, deployment: &str) -> InstanceInfo {
        InstanceInfo {
            deployment: Some(deployment.to_string()),
            role: Some(self.role.clone()),
            index: Some(self.index),
            hostname: Some(self.hostname.clone()),
            image: Some(self.image_file.clone()),
            root_device: self.root_device.clone(),
            config: self.config.clone(),
            deploy_interface: Some(self.deploy_interface.as_str().to_string()),
        }
    }
}

/// Why a node was not chosen for a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    NotAvailable(ProvisionState),
    TakenBy(String),
    WrongProfile(Option<String>),
    TooSmall { local_gb: u64, hint: String },
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAvailable(state) => write!(f, "{state}, not available"),
            Self::TakenBy(role) => write!(f, "already assigned to {role}"),
            Self::WrongProfile(Some(profile)) => write!(f, "profile {profile}"),
            Self::WrongProfile(None) => write!(f, "no profile"),
            Self::TooSmall { local_gb, hint } => {
                write!(f, "root disk {local_gb} GiB, size hint {hint}")
            }
        }
    }
}

/// A role that could not be filled.
#[derive(Debug, Clone, PartialEq)]
pub struct Shortfall {
    pub role: String,
    pub profile: Option<String>,
    pub needed: u32,
    pub matched: u32,
    /// Every node not chosen, by name, with the reason.
    pub excluded: Vec<(String, Exclusion)>,
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let profile = match &self.profile {
            Some(profile) => format!("profile {profile}"),
            None => "no profile".to_string(),
        };
        write!(
            f,
            "role {} needs {} node(s) with {profile}, {} matched",
            self.role, self.needed, self.matched
        )?;
        if self.excluded.is_empty() {
            return write!(f, "; no other nodes exist");
        }
        let reasons: Vec<String> = self
            .excluded
            .iter()
            .map(|(name, why)| format!("{name} ({why})"))
            .collect();
        write!(f, "; excluded: {}", reasons.join(", "))
    }
}

/// Picks nodes for every role instance of `plan` among `nodes` (any states; only
/// `available` ones are used). Nothing is changed: the caller stores the result.
pub fn match_nodes(plan: &Plan, nodes: &[Node]) -> Result<Vec<Assignment>, PlanError> {
    let mut sorted: Vec<&Node> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    // Node name -> role that took it.
    let mut used: HashMap<&str, &str> = HashMap::new();
    let pins = reserve_pinned(plan, &sorted, &mut used)?;

    let mut assignments = Vec::new();
    let mut missing = Vec::new();
    for role in &plan.roles {
        let mut matched = 0;
        let mut short = false;
        for index in 0..role.count {
            let hints = slot_hints(role, index);
            let chosen = match pins.get(&(role.name.as_str(), index)) {
                Some(node) => Some(*node),
                None => sorted
                    .iter()
                    .copied()
                    .find(|node| exclusion(role, hints, node, &used).is_none()),
            };
            match chosen {
                Some(node) => {
                    used.insert(&node.name, &role.name);
                    matched += 1;
                    assignments.push(assign(plan, role, index, node));
                }
                None => short = true,
            }
        }
        if short {
            let excluded = sorted
                .iter()
                .filter(|node| used.get(node.name.as_str()) != Some(&role.name.as_str()))
                .filter_map(|node| {
                    exclusion(role, &role.root_device, node, &used)
                        .map(|why| (node.name.clone(), why))
                })
                .collect();
            missing.push(Shortfall {
                role: role.name.clone(),
                profile: role.profile.clone(),
                needed: role.count,
                matched,
                excluded,
            });
        }
    }
    if !missing.is_empty() {
        return Err(PlanError::NotEnoughNodes {
            plan: plan.name.clone(),
            missing,
        });
    }
    Ok(assignments)
}

fn slot_hints(role: &Role, index: u32) -> &BTreeMap<String, Value> {
    role.override_for(index)
        .and_then(|item| item.root_device.as_ref())
        .unwrap_or(&role.root_device)
}

/// Why `node` cannot take a slot of `role`, or `None` if it can.
fn exclusion(
    role: &Role,
    hints: &BTreeMap<String, Value>,
    node: &Node,
    used: &HashMap<&str, &str>,
) -> Option<Exclusion> {
    if node.provision_state != ProvisionState::Available {
        return Some(Exclusion::NotAvailable(node.provision_state));
    }
    if let Some(role) = used.get(node.name.as_str()) {
        return Some(Exclusion::TakenBy(role.to_string()));
    }
    if node.properties.profile() != role.profile.as_deref() {
        return Some(Exclusion::WrongProfile(
            node.properties.profile().map(str::to_string),
        ));
    }
    too_small(hints, node)
}

/// A node whose root disk size is unknown is not excluded: the agent checks hints
/// against the real disks.
fn too_small(hints: &BTreeMap<String, Value>, node: &Node) -> Option<Exclusion> {
    let local_gb = node.properties.local_gb?;
    let accepted = size_accepts(hints, local_gb)?;
    (!accepted).then(|| Exclusion::TooSmall {
        local_gb,
        hint: size_text(hints),
    })
}

/// Reserves the nodes named in per-node overrides for their (role, index).
fn reserve_pinned<'n>(
    plan: &'n Plan,
    sorted: &[&'n Node],
    used: &mut HashMap<&'n str, &'n str>,
) -> Result<HashMap<(&'n str, u32), &'n Node>, PlanError> {
    let mut pins = HashMap::new();
    for role in &plan.roles {
        for (position, item) in role.nodes.iter().enumerate() {
            let Some(name) = &item.name else { continue };
            let index = item.index.unwrap_or(position as u32);
            let refuse = |reason: String| PlanError::Pinned {
                plan: plan.name.clone(),
                role: role.name.clone(),
                index,
                node: name.clone(),
                reason,
            };
            let node = sorted
                .iter()
                .copied()
                .find(|node| &node.name == name)
                .ok_or_else(|| refuse("no such node".to_string()))?;
            if let Some(other) = used.get(node.name.as_str()) {
                return Err(refuse(format!("also pinned by role {other}")));
            }
            if node.provision_state != ProvisionState::Available {
                return Err(refuse(format!(
                    "it is {}, not available",
                    node.provision_state
                )));
            }
            if let Some(why) = too_small(slot_hints(role, index), node) {
                return Err(refuse(why.to_string()));
            }
            used.insert(&node.name, &role.name);
            pins.insert((role.name.as_str(), index), node);
        }
    }
    Ok(pins)
}

/// The assignment of `node` to instance `index` of `role` (no availability checks).
pub fn assign(plan: &Plan, role: &Role, index: u32, node: &Node) -> Assignment {
    let item = role.override_for(index);
    let image = role.image_name(plan).unwrap_or_default().to_string();
    let mut config = deep_merge(&plan.config, &role.config);
    if let Some(item) = item {
        config = deep_merge(&config, &item.config);
    }
    Assignment {
        role: role.name.clone(),
        index,
        node_uuid: node.uuid,
        node_name: node.name.clone(),
        hostname: role.hostname(plan, index),
        image_file: plan.images.get(&image).cloned().unwrap_or_default(),
        image,
        root_device: slot_hints(role, index).clone(),
        config,
        deploy_interface: item
            .and_then(|item| item.deploy_interface)
            .or(role.deploy_interface)
            .unwrap_or_default(),
    }
}
