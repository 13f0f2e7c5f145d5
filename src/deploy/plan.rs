//! Deployment plans: which images go onto how many nodes of which role.
//!
//! ```yaml
//! name: overcloud
//! images: {overcloud-full: overcloud-full.qcow2}
//! roles:
//!   - {name: Controller, count: 1, profile: control, image: overcloud-full,
//!      hostname_format: "overcloud-controller-%index%", root_device: {size: ">= 4"},
//!      config: {ntp: {servers: [10.0.0.1]}}}
//!   - {name: Compute, count: 2, profile: compute, image: overcloud-full,
//!      nodes: [{index: 1, name: compute-7, hostname: compute-special}]}
//! ```
//!
//! Parsing checks everything that can be checked without nodes (image names, hint
//! syntax, hostnames unique); `match_nodes` then picks nodes or explains why not.

mod hints;
mod matching;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use hints::check_root_device_hints;
pub use matching::{Assignment, Exclusion, Shortfall, assign, match_nodes};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read plan {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}: not valid YAML: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {field}: {message}")]
    Invalid {
        file: String,
        field: String,
        message: String,
    },
    #[error("not enough nodes for plan {plan}:\n{}", shortfalls(.missing))]
    NotEnoughNodes {
        plan: String,
        missing: Vec<Shortfall>,
    },
    #[error("plan {plan}: role {role} index {index} pins node {node}: {reason}")]
    Pinned {
        plan: String,
        role: String,
        index: u32,
        node: String,
        reason: String,
    },
}

fn shortfalls(missing: &[Shortfall]) -> String {
    let lines: Vec<String> = missing.iter().map(|s| format!("  {s}")).collect();
    lines.join("\n")
}

/// How the image reaches the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployInterface {
    /// The agent streams the image over HTTP (default).
    #[default]
    Direct,
    /// The agent exports its disk over iSCSI and the conductor writes it.
    Iscsi,
}

impl DeployInterface {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Iscsi => "iscsi",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub name: String,
    /// Image name -> file inside the conductor's image directory.
    pub images: BTreeMap<String, String>,
    pub roles: Vec<Role>,
    /// Plan-wide config, under every role's config.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub config: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub name: String,
    pub count: u32,
    /// Nodes must carry this profile capability; none = nodes without a profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Image name; may be left out when the plan has exactly one image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `%index%` and `%stackname%` are replaced; default "%stackname%-<role>-%index%".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname_format: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub root_device: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub config: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_interface: Option<DeployInterface>,
    /// Per-node overrides by role index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeOverride>,
}

/// Settings for one instance of a role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeOverride {
    /// Which instance (0-based); defaults to the override's position in the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Pin this node (by name) to the instance, whatever its profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Deep-merged over the role's config.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub config: Value,
    /// Replaces the role's hints for this instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_interface: Option<DeployInterface>,
}

impl Role {
    /// The override for instance `index`, if any.
    pub fn override_for(&self, index: u32) -> Option<&NodeOverride> {
        self.nodes
            .iter()
            .enumerate()
            .find(|(position, item)| item.index.unwrap_or(*position as u32) == index)
            .map(|(_, item)| item)
    }

    /// The image name this role deploys (validated to exist by `parse_plan`).
    pub fn image_name<'a>(&'a self, plan: &'a Plan) -> Option<&'a str> {
        match &self.image {
            Some(name) => Some(name),
            None if plan.images.len() == 1 => plan.images.keys().next().map(String::as_str),
            None => None,
        }
    }

    /// The hostname of instance `index`.
    pub fn hostname(&self, plan: &Plan, index: u32) -> String {
        if let Some(hostname) = self.override_for(index).and_then(|o| o.hostname.clone()) {
            return hostname;
        }
        let format = self
            .hostname_format
            .clone()
            .unwrap_or_else(|| format!("%stackname%-{}-%index%", self.name.to_lowercase()));
        format
            .replace("%stackname%", &plan.name)
            .replace("%index%", &index.to_string())
    }
}

/// Reads and validates a plan file.
pub fn load_plan(path: &Path) -> Result<Plan, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_plan(&text, &path.display().to_string())
}

/// Parses and validates plan YAML; `file` names it in errors.
pub fn parse_plan(text: &str, file: &str) -> Result<Plan, PlanError> {
    let document: Value = serde_yaml_ng::from_str(text).map_err(|err| PlanError::Syntax {
        file: file.to_string(),
        message: err.to_string(),
    })?;
    let plan: Plan = serde_path_to_error::deserialize(&document).map_err(|err| {
        let path = err.path().to_string();
        PlanError::Invalid {
            file: file.to_string(),
            field: label_path(&document, &path),
            message: err.into_inner().to_string(),
        }
    })?;
    validate(&plan).map_err(|(field, message)| PlanError::Invalid {
        file: file.to_string(),
        field,
        message,
    })?;
    Ok(plan)
}

/// "roles[1].count" -> "roles[1] (Compute).count", so errors name the role.
fn label_path(document: &Value, path: &str) -> String {
    if path == "." {
        return "(plan)".to_string();
    }
    let Some(rest) = path.strip_prefix("roles[") else {
        return path.to_string();
    };
    let Some((index, tail)) = rest.split_once(']') else {
        return path.to_string();
    };
    let name = index
        .parse::<usize>()
        .ok()
        .and_then(|i| document.get("roles")?.get(i)?.get("name")?.as_str());
    match name {
        Some(name) => format!("roles[{index}] ({name}){tail}"),
        None => path.to_string(),
    }
}

fn role_label(index: usize, role: &Role) -> String {
    format!("roles[{index}] ({})", role.name)
}

fn check_name(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("must not be empty".to_string());
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!("\"{text}\" contains {bad:?}"));
    }
    Ok(())
}

/// A host name: dot-separated labels of letters, digits and inner hyphens.
fn check_hostname(hostname: &str) -> Result<(), String> {
    let valid = hostname.len() <= 253
        && hostname.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if valid {
        Ok(())
    } else {
        Err(format!("\"{hostname}\" is not a valid host name"))
    }
}

/// An image file must stay inside the image directory.
fn check_image_file(file: &str) -> Result<(), String> {
    let path = Path::new(file);
    let escapes = path.is_absolute()
        || path
            .components()
            .any(|part| !matches!(part, std::path::Component::Normal(_)));
    if file.is_empty() || escapes {
        return Err(format!(
            "\"{file}\" must be a relative path inside the image directory"
        ));
    }
    Ok(())
}

type Problem = (String, String);

fn validate(plan: &Plan) -> Result<(), Problem> {
    check_name(&plan.name).map_err(|message| ("name".to_string(), message))?;
    if plan.images.is_empty() {
        return Err((
            "images".to_string(),
            "at least one image is needed".to_string(),
        ));
    }
    for (name, file) in &plan.images {
        check_image_file(file).map_err(|message| (format!("images.{name}"), message))?;
    }
    if plan.roles.is_empty() {
        return Err((
            "roles".to_string(),
            "at least one role is needed".to_string(),
        ));
    }
    let mut role_names = BTreeSet::new();
    let mut hostnames: BTreeMap<String, String> = BTreeMap::new();
    for (index, role) in plan.roles.iter().enumerate() {
        let label = role_label(index, role);
        check_name(&role.name).map_err(|message| (format!("roles[{index}].name"), message))?;
        if !role_names.insert(role.name.as_str()) {
            return Err((
                format!("{label}.name"),
                format!("role {} is defined twice", role.name),
            ));
        }
        validate_image(plan, role).map_err(|message| (format!("{label}.image"), message))?;
        check_root_device_hints(&role.root_device)
            .map_err(|message| (format!("{label}.root_device"), message))?;
        validate_overrides(role, &label)?;
        for i in 0..role.count {
            let hostname = role.hostname(plan, i);
            let field = match role.override_for(i).and_then(|o| o.hostname.as_ref()) {
                Some(_) => format!("{label}.nodes (index {i}).hostname"),
                None => format!("{label}.hostname_format"),
            };
            check_hostname(&hostname).map_err(|message| (field.clone(), message))?;
            let owner = format!("{} index {i}", role.name);
            if let Some(first) = hostnames.insert(hostname.clone(), owner) {
                return Err((
                    field,
                    format!("host name \"{hostname}\" is also used by {first}"),
                ));
            }
        }
    }
    Ok(())
}

fn validate_image(plan: &Plan, role: &Role) -> Result<(), String> {
    let known = || plan.images.keys().cloned().collect::<Vec<_>>().join(", ");
    match &role.image {
        Some(name) if !plan.images.contains_key(name) => {
            Err(format!("unknown image \"{name}\" (images: {})", known()))
        }
        Some(_) => Ok(()),
        None if plan.images.len() == 1 => Ok(()),
        None => Err(format!(
            "required when the plan has several images ({})",
            known()
        )),
    }
}

fn validate_overrides(role: &Role, label: &str) -> Result<(), Problem> {
    let mut indexes = BTreeSet::new();
    let mut pinned = BTreeSet::new();
    for (position, item) in role.nodes.iter().enumerate() {
        let field = format!("{label}.nodes[{position}]");
        let index = item.index.unwrap_or(position as u32);
        if index >= role.count {
            return Err((
                format!("{field}.index"),
                format!(
                    "{index} is out of range: role {} has count {}",
                    role.name, role.count
                ),
            ));
        }
        if !indexes.insert(index) {
            return Err((
                format!("{field}.index"),
                format!("index {index} has another override"),
            ));
        }
        if let Some(name) = &item.name
            && !pinned.insert(name.as_str())
        {
            return Err((
                format!("{field}.name"),
                format!("node {name} is pinned twice"),
            ));
        }
        if let Some(hints) = &item.root_device {
            check_root_device_hints(hints)
                .map_err(|message| (format!("{field}.root_device"), message))?;
        }
    }
    Ok(())
}

/// `overlay` merged into `base`: mappings merge key by key, anything else replaces.
pub fn deep_merge(base: &Value, overlay: &Value) -> Value {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            let mut merged = base.clone();
            for (key, value) in overlay {
                let combined = match merged.get(key) {
                    Some(existing) => deep_merge(existing, value),
                    None => value.clone(),
                };
                merged.insert(key.clone(), combined);
            }
            Value::Object(merged)
        }
        (base, Value::Null) => base.clone(),
        (_, overlay) => overlay.clone(),
    }
}

#[cfg(test)]
mod tests;
