//! Calls into pieces other branches deliver (plan parsing and matching). Each function is the one place the
//! conductor reaches them, so swapping in the real module is a local change.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::deploy::store::Node;

/// A deployment plan (the YAML format).
#[derive(Debug, Clone, Deserialize)]
pub struct Plan {
    pub name: String,
    /// Image name -> file in the image directory, or {file, checksum}.
    pub images: BTreeMap<String, PlanImage>,
    pub roles: Vec<PlanRole>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PlanImage {
    File(String),
    Detailed {
        file: String,
        #[serde(default)]
        checksum: Option<String>,
    },
}

impl PlanImage {
    pub fn file(&self) -> &str {
        match self {
            PlanImage::File(file) | PlanImage::Detailed { file, .. } => file,
        }
    }
    pub fn checksum(&self) -> Option<&str> {
        match self {
            PlanImage::File(_) => None,
            PlanImage::Detailed { checksum, .. } => checksum.as_deref(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PlanRole {
    pub name: String,
    pub count: u32,
    #[serde(default)]
    pub profile: Option<String>,
    pub image: String,
    #[serde(default)]
    pub hostname_format: Option<String>,
    #[serde(default)]
    pub root_device: Map<String, Value>,
    #[serde(default)]
    pub config: Value,
}

/// One node chosen for one role slot.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub node: String,
    pub role: String,
    pub index: u32,
    pub hostname: String,
    pub image: String,
    pub hints: Map<String, Value>,
    pub config: Value,
}

/// Parses a plan (YAML or JSON) and checks its image references.
// seam: dcore's plan.rs parses and validates plans; replace this when it lands.
pub fn parse_plan(text: &str) -> Result<Plan, String> {
    let plan: Plan = serde_yaml_ng::from_str(text).map_err(|err| format!("plan: {err}"))?;
    for (index, role) in plan.roles.iter().enumerate() {
        if !plan.images.contains_key(&role.image) {
            return Err(format!(
                "plan: roles[{index}] ({}): image: \"{}\" is not in images",
                role.name, role.image
            ));
        }
    }
    Ok(plan)
}

/// Picks available nodes (by name order) whose profile equals each role's.
// seam: dcore's plan.rs `match_nodes`; replace this when it lands.
pub fn match_nodes(plan: &Plan, nodes: &[Node]) -> Result<Vec<Assignment>, String> {
    let mut candidates: Vec<&Node> = nodes.iter().collect();
    candidates.sort_by(|a, b| a.name.cmp(&b.name));
    let mut taken = std::collections::BTreeSet::new();
    let mut assignments = Vec::new();
    for role in &plan.roles {
        let matching: Vec<&Node> = candidates
            .iter()
            .copied()
            .filter(|node| {
                node.provision_state == crate::deploy::state::ProvisionState::Available
                    && !taken.contains(&node.uuid)
                    && node.properties.profile() == role.profile.as_deref()
            })
            .collect();
        if matching.len() < role.count as usize {
            return Err(format!(
                "not enough nodes for role {}: {} needed, {} available with profile {}",
                role.name,
                role.count,
                matching.len(),
                role.profile.as_deref().unwrap_or("(none)")
            ));
        }
        for (index, node) in matching.into_iter().take(role.count as usize).enumerate() {
            taken.insert(node.uuid);
            let format = role
                .hostname_format
                .clone()
                .unwrap_or_else(|| format!("{}-{}-%index%", plan.name, role.name.to_lowercase()));
            assignments.push(Assignment {
                node: node.name.clone(),
                role: role.name.clone(),
                index: index as u32,
                hostname: format
                    .replace("%index%", &index.to_string())
                    .replace("%stackname%", &plan.name),
                image: role.image.clone(),
                hints: role.root_device.clone(),
                config: role.config.clone(),
            });
        }
    }
    Ok(assignments)
}
