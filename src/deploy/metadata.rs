//! A deployed node's role metadata, built from its deployment plan: what
//! `kiln config` on the node renders its templates with.
//!
//! The metadata is the node's config (plan-wide `config:`, the role's and the
//! per-node override, deep-merged) with the node's identity under `kiln`:
//!
//! ```json
//! {"ntp": {"servers": ["10.0.0.1"]},
//!  "kiln": {"deployment": "overcloud", "role": "Controller", "index": 0,
//!           "hostname": "overcloud-controller-0",
//!           "node": {"uuid": "…", "name": "node-a"}}}
//! ```
//!
//! The conductor serves exactly these bytes at GET /v1/nodes/{uuid}/metadata
//! (ETag: their SHA-256). The config drive's `kiln_config.json` holds the same
//! metadata plus, under `kiln`, how to reach the conductor: `metadata_url`,
//! `status_url`, `config_token` and `metadata_sha256`.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::deploy::plan::{self, Plan};
use crate::deploy::store::{InstanceInfo, Node};

/// The key identity and conductor endpoints live under, in metadata and drive.
pub const KILN_KEY: &str = "kiln";

/// The node's metadata; None when the node is not part of a deployment.
pub fn node_metadata(node: &Node) -> Option<Value> {
    let info = &node.instance_info;
    let deployment = info.deployment.as_ref()?;
    let identity = json!({
        KILN_KEY: {
            "deployment": deployment,
            "role": info.role,
            "index": info.index,
            "hostname": info.hostname.clone().unwrap_or_else(|| node.name.clone()),
            "node": {"uuid": node.uuid, "name": node.name},
        }
    });
    let config = match &info.config {
        Value::Object(_) => info.config.clone(),
        _ => Value::Object(Map::new()),
    };
    // Identity wins over a config key of the same name: it is the conductor's.
    Some(plan::deep_merge(&config, &identity))
}

/// The bytes the metadata is served as (serde_json orders keys, so equal
/// metadata gives equal bytes and equal ETags).
pub fn metadata_bytes(metadata: &Value) -> Vec<u8> {
    serde_json::to_vec(metadata).unwrap_or_default()
}

/// SHA-256 (hex) of [`metadata_bytes`]: the ETag and what nodes report back.
pub fn metadata_sha256(metadata: &Value) -> String {
    Sha256::digest(metadata_bytes(metadata))
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Where a node reaches the conductor's config endpoints.
pub struct ConfigEndpoints<'a> {
    /// The conductor's URL as the node sees it (--public-url), no trailing `/`.
    pub public_url: &'a str,
    pub config_token: &'a str,
}

/// `kiln_config.json` for the node's config drive: the metadata plus the
/// conductor's endpoints and the node's config token under `kiln`.
pub fn drive_config(node: &Node, metadata: &Value, endpoints: &ConfigEndpoints) -> Value {
    let base = endpoints.public_url.trim_end_matches('/');
    let access = json!({
        KILN_KEY: {
            "metadata_url": format!("{base}/v1/nodes/{}/metadata", node.uuid),
            "status_url": format!("{base}/v1/nodes/{}/config-status", node.uuid),
            "config_token": endpoints.config_token,
            "metadata_sha256": metadata_sha256(metadata),
        }
    });
    plan::deep_merge(metadata, &access)
}

/// Why an updated plan cannot be applied to a deployed node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateRefused {
    #[error("plan {plan}: role {role} is gone but node {node} is deployed as its instance {index}")]
    RoleRemoved {
        plan: String,
        role: String,
        index: u32,
        node: String,
    },
    #[error(
        "plan {plan}: role {role} count {count} would drop node {node} (instance {index}); \
         undeploy to remove nodes"
    )]
    CountReduced {
        plan: String,
        role: String,
        count: u32,
        index: u32,
        node: String,
    },
    #[error(
        "plan {plan}: role {role} count {count} would add nodes ({deployed} deployed); \
         update changes config only"
    )]
    CountIncreased {
        plan: String,
        role: String,
        count: u32,
        deployed: u32,
    },
    #[error(
        "node {node} ({role} {index}): {field} changes from {old} to {new}; \
         only config and hostname can change on deployed nodes (redeploy for this)"
    )]
    Changed {
        node: String,
        role: String,
        index: u32,
        field: &'static str,
        old: String,
        new: String,
    },
    #[error("plan {plan}: node {node} has no role and index recorded")]
    Unassigned { plan: String, node: String },
}

/// The instance info each of `nodes` (the deployment's nodes) gets under the
/// updated `plan`, or why the update would need a redeploy: only `config` and
/// `hostname` may change; roles may not lose or gain instances.
pub fn updated_instance_infos(
    plan: &Plan,
    nodes: &[Node],
) -> Result<Vec<(Node, InstanceInfo)>, UpdateRefused> {
    let mut updated = Vec::new();
    for node in nodes {
        let old = &node.instance_info;
        let (Some(role_name), Some(index)) = (&old.role, old.index) else {
            return Err(UpdateRefused::Unassigned {
                plan: plan.name.clone(),
                node: node.name.clone(),
            });
        };
        let Some(role) = plan.roles.iter().find(|role| &role.name == role_name) else {
            return Err(UpdateRefused::RoleRemoved {
                plan: plan.name.clone(),
                role: role_name.clone(),
                index,
                node: node.name.clone(),
            });
        };
        if index >= role.count {
            return Err(UpdateRefused::CountReduced {
                plan: plan.name.clone(),
                role: role.name.clone(),
                count: role.count,
                index,
                node: node.name.clone(),
            });
        }
        let new = plan::assign(plan, role, index, node).instance_info(&plan.name);
        let changed = |field: &'static str, old: String, new: String| UpdateRefused::Changed {
            node: node.name.clone(),
            role: role.name.clone(),
            index,
            field,
            old,
            new,
        };
        let text = |value: &Option<String>| value.clone().unwrap_or_else(|| "(none)".into());
        if new.image != old.image {
            return Err(changed("image", text(&old.image), text(&new.image)));
        }
        if new.root_device != old.root_device {
            return Err(changed(
                "root_device",
                json!(old.root_device).to_string(),
                json!(new.root_device).to_string(),
            ));
        }
        if new.deploy_interface != old.deploy_interface {
            return Err(changed(
                "deploy_interface",
                text(&old.deploy_interface),
                text(&new.deploy_interface),
            ));
        }
        updated.push((node.clone(), new));
    }
    for role in &plan.roles {
        let deployed = nodes
            .iter()
            .filter(|node| node.instance_info.role.as_deref() == Some(role.name.as_str()))
            .count() as u32;
        if role.count > deployed {
            return Err(UpdateRefused::CountIncreased {
                plan: plan.name.clone(),
                role: role.name.clone(),
                count: role.count,
                deployed,
            });
        }
    }
    Ok(updated)
}

#[cfg(test)]
mod tests;
