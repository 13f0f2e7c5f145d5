//! Role config of deployed nodes, conductor side: the config drive's
//! `kiln_config.json` (metadata, endpoints, a fresh config token), the
//! token-authenticated metadata and config-status endpoints, and plan updates
//! that change deployed nodes' metadata.

use serde_json::{Value, json};

use super::{Conductor, ConductorError, Result};
use crate::deploy::metadata::{self, ConfigEndpoints};
use crate::deploy::plan;
use crate::deploy::protocol::{
    ConfigResult, ConfigState, ConfigStatusRequest, DeploymentStatus, NodeConfigState,
};
use crate::deploy::store::{self, Node, Store};

/// The metadata as served: its bytes and their SHA-256 (the ETag).
pub struct ServedMetadata {
    pub body: Vec<u8>,
    pub sha256: String,
}

/// The node's last config report, with whether it is about its current metadata.
pub(super) fn config_state(store: &Store, node: &Node) -> store::Result<Option<NodeConfigState>> {
    let Some(report) = store.config_report(&node.uuid.to_string())? else {
        return Ok(None);
    };
    let current = metadata::node_metadata(node)
        .is_some_and(|metadata| metadata::metadata_sha256(&metadata) == report.metadata_sha256);
    Ok(Some(NodeConfigState {
        state: report.state,
        script: report.script,
        message: report.message,
        metadata_sha256: report.metadata_sha256,
        current,
        time: report.time,
    }))
}

impl Conductor {
    /// `kiln_config.json` for the node's config drive: its metadata and, when
    /// the conductor has a public URL, the endpoints with a new config token
    /// (stored hashed; any earlier token stops working). None when the node is
    /// not part of a deployment.
    pub(super) fn drive_kiln_config(&self, store: &Store, node: &Node) -> Result<Option<Value>> {
        let Some(metadata) = metadata::node_metadata(node) else {
            return Ok(None);
        };
        let Some(public_url) = &self.config.public_url else {
            return Ok(Some(metadata));
        };
        let token = store::new_agent_token()?;
        store.set_config_token(&node.uuid.to_string(), &token)?;
        Ok(Some(metadata::drive_config(
            node,
            &metadata,
            &ConfigEndpoints {
                public_url,
                config_token: &token,
            },
        )))
    }

    /// GET /v1/nodes/{id}: the node with its config state under `config`.
    pub fn node_view(&self, id: &str) -> Result<Value> {
        let store = self.store();
        let node = store.node(id)?.redacted();
        let config = config_state(&store, &node)?;
        let mut view = serde_json::to_value(&node)
            .map_err(|err| ConductorError::BadRequest(format!("cannot encode node: {err}")))?;
        if let Some(object) = view.as_object_mut() {
            object.insert("config".to_string(), json!(config));
        }
        Ok(view)
    }

    /// The node addressed by UUID whose config token is `token`, or 404 / 401.
    fn config_caller(&self, store: &Store, uuid: &str, token: Option<&str>) -> Result<Node> {
        let node = store.node(uuid)?;
        if node.uuid.to_string() != uuid {
            return Err(ConductorError::NotFound(format!(
                "no node with UUID {uuid}"
            )));
        }
        let valid = match token {
            Some(token) => store.verify_config_token(uuid, token)?,
            None => false,
        };
        if !valid {
            let why = if token.is_some() {
                "wrong config token"
            } else {
                "no config token"
            };
            eprintln!(
                "kiln conductor: node {}: config call refused: {why}",
                node.name
            );
            return Err(ConductorError::Unauthorized(format!(
                "node {}: {why} (X-Config-Token)",
                node.name
            )));
        }
        Ok(node)
    }

    /// GET /v1/nodes/{uuid}/metadata (X-Config-Token).
    pub fn node_metadata(&self, uuid: &str, token: Option<&str>) -> Result<ServedMetadata> {
        let store = self.store();
        let node = self.config_caller(&store, uuid, token)?;
        let metadata = metadata::node_metadata(&node).ok_or_else(|| {
            ConductorError::NotFound(format!("node {} is not part of a deployment", node.name))
        })?;
        Ok(ServedMetadata {
            body: metadata::metadata_bytes(&metadata),
            sha256: metadata::metadata_sha256(&metadata),
        })
    }

    /// POST /v1/nodes/{uuid}/config-status (X-Config-Token).
    pub fn config_status(
        &self,
        uuid: &str,
        token: Option<&str>,
        request: &ConfigStatusRequest,
    ) -> Result<NodeConfigState> {
        let store = self.store();
        let node = self.config_caller(&store, uuid, token)?;
        let state = match request.status {
            ConfigResult::Succeeded => ConfigState::Configured,
            ConfigResult::Failed => ConfigState::ConfigFailed,
        };
        let sha = request.metadata_sha256.trim().to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ConductorError::BadRequest(format!(
                "metadata_sha256 \"{}\" is not a SHA-256 in hex",
                request.metadata_sha256
            )));
        }
        store.record_config_report(
            uuid,
            state,
            request.script.as_deref(),
            request.message.as_deref(),
            &sha,
        )?;
        match state {
            ConfigState::Configured => {
                eprintln!("kiln conductor: node {}: configured", node.name)
            }
            ConfigState::ConfigFailed => eprintln!(
                "kiln conductor: node {}: config failed in {}",
                node.name,
                request.script.as_deref().unwrap_or("(no script)")
            ),
        }
        config_state(&store, &node)?
            .ok_or_else(|| ConductorError::NotFound(format!("node {}: no report", node.name)))
    }

    /// PUT /v1/deployments/{name}: a changed plan for an existing deployment.
    /// Only config and hostnames may change on its deployed nodes (anything
    /// else is a 409 saying what); the new metadata is stored and nodes pick it
    /// up on their next poll.
    pub fn update_deployment(&self, name: &str, body: &str) -> Result<DeploymentStatus> {
        let plan = plan::parse_plan(body, "plan")
            .map_err(|err| ConductorError::BadRequest(err.to_string()))?;
        if plan.name != name {
            return Err(ConductorError::BadRequest(format!(
                "plan is named {} but was sent to deployment {name}",
                plan.name
            )));
        }
        let store = self.store();
        let Some(stored) = store.deployment(name)? else {
            return Err(ConductorError::NotFound(format!(
                "no deployment named {name}"
            )));
        };
        let nodes = self.deployment_nodes(&store, name)?;
        let updated = metadata::updated_instance_infos(&plan, &nodes).map_err(|err| {
            ConductorError::Conflict {
                message: err.to_string(),
                allowed: None,
            }
        })?;
        let plan_value = serde_json::to_value(&plan)
            .map_err(|err| ConductorError::BadRequest(format!("plan: {err}")))?;
        let mut record = stored.plan;
        match record.as_object_mut() {
            Some(object) => {
                object.insert("plan".to_string(), plan_value);
            }
            None => record = json!({ "plan": plan_value }),
        }
        store.save_deployment(name, &record)?;
        for (node, info) in updated {
            store.set_instance_info(&node.uuid.to_string(), &info)?;
        }
        self.deployment_status(&store, name)
    }
}
