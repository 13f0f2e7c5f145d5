//! Calls into pieces other branches deliver (introspection rules, plan parsing and
//! matching, power drivers for real hardware). Each function is the one place the
//! conductor reaches them, so swapping in the real module is a local change.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::deploy::store::{Node, Properties};

/// Node properties derived from an inventory the way Ironic inspector does:
/// cpus, memory_mb (physical), cpu_arch, local_gb of the smallest disk >= 4 GiB.
// seam: dcore's rules.rs derives properties; replace this when it lands.
pub fn derive_properties(current: &Properties, inventory: &Value) -> Properties {
    let mut properties = current.clone();
    if let Some(count) = inventory.pointer("/cpu/count").and_then(Value::as_u64) {
        properties.cpus = Some(count);
    }
    if let Some(arch) = inventory
        .pointer("/cpu/architecture")
        .and_then(Value::as_str)
    {
        properties.cpu_arch = Some(arch.to_string());
    }
    if let Some(mb) = inventory
        .pointer("/memory/physical_mb")
        .and_then(Value::as_u64)
    {
        properties.memory_mb = Some(mb);
    }
    let root = inventory
        .pointer("/disks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|disk| disk.get("size").and_then(Value::as_u64))
        .filter(|&size| size >= 4 << 30)
        .min();
    if let Some(size) = root {
        // Ironic leaves a GiB of slack for partitioning.
        properties.local_gb = Some((size >> 30).saturating_sub(1));
    }
    properties
}

/// One introspection rule (Ironic inspector style, a subset).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    conditions: Vec<Condition>,
    #[serde(default)]
    actions: Vec<Action>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Condition {
    op: String,
    field: String,
    value: Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
enum Action {
    SetCapability { name: String, value: String },
    Fail { message: String },
}

/// Checks that `rules` is a list of rules this conductor can run; the error names
/// the rule index.
// seam: dcore's rules.rs parses and validates rules; replace this when it lands.
pub fn validate_rules(rules: &Value) -> Result<(), String> {
    let list = rules
        .as_array()
        .ok_or_else(|| "rules: expected a list of rules".to_string())?;
    for (index, rule) in list.iter().enumerate() {
        serde_json::from_value::<Rule>(rule.clone())
            .map_err(|err| format!("rules[{index}]: {err}"))?;
    }
    Ok(())
}

/// Runs the rules against the node's properties and inventory: the capabilities
/// to set, or the message of the first `fail` action that applies.
// seam: dcore's rules.rs evaluates rules; replace this when it lands.
pub fn run_rules(
    rules: &Value,
    properties: &Properties,
    inventory: &Value,
) -> Result<BTreeMap<String, String>, String> {
    validate_rules(rules)?;
    let list: Vec<Rule> =
        serde_json::from_value(rules.clone()).map_err(|err| format!("rules: {err}"))?;
    let facts = serde_json::json!({
        "properties": properties,
        "inventory": inventory,
        "memory_mb": properties.memory_mb,
        "cpus": properties.cpus,
        "local_gb": properties.local_gb,
        "cpu_arch": properties.cpu_arch,
    });
    let mut capabilities = BTreeMap::new();
    for rule in &list {
        if !rule.conditions.iter().all(|c| holds(c, &facts)) {
            continue;
        }
        for action in &rule.actions {
            match action {
                Action::SetCapability { name, value } => {
                    capabilities.insert(name.clone(), value.clone());
                }
                Action::Fail { message } => {
                    let what = rule.description.as_deref().unwrap_or("introspection rule");
                    return Err(format!("{what}: {message}"));
                }
            }
        }
    }
    Ok(capabilities)
}

fn holds(condition: &Condition, facts: &Value) -> bool {
    let pointer = format!("/{}", condition.field.replace('.', "/"));
    let Some(actual) = facts.pointer(&pointer) else {
        return false;
    };
    let ordering = match (actual.as_f64(), condition.value.as_f64()) {
        (Some(a), Some(b)) => a.partial_cmp(&b),
        _ => None,
    };
    use std::cmp::Ordering::*;
    match condition.op.as_str() {
        "eq" => actual == &condition.value || ordering == Some(Equal),
        "ne" => actual != &condition.value && ordering != Some(Equal),
        "lt" => ordering == Some(Less),
        "le" => matches!(ordering, Some(Less | Equal)),
        "gt" => ordering == Some(Greater),
        "ge" => matches!(ordering, Some(Greater | Equal)),
        "contains" => match (actual.as_str(), condition.value.as_str()) {
            (Some(a), Some(b)) => a.contains(b),
            _ => false,
        },
        _ => false,
    }
}

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
