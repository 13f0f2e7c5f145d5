//! Nodes as the API returns them. The fields commands show are typed; everything
//! else is kept as is so `--json` prints the conductor's whole record.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::deploy::state::ProvisionState;
use crate::deploy::store::PowerState;

/// One node from GET /v1/nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub uuid: Uuid,
    pub name: String,
    pub provision_state: ProvisionState,
    #[serde(default)]
    pub target_provision_state: Option<ProvisionState>,
    #[serde(default)]
    pub power_state: Option<PowerState>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub properties: Value,
    #[serde(default)]
    pub progress: Value,
    /// Every other field of the conductor's record.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl NodeRecord {
    /// The profile capability introspection rules or the import file set.
    pub fn profile(&self) -> Option<&str> {
        self.properties
            .get("capabilities")
            .and_then(|caps| caps.get("profile"))
            .and_then(Value::as_str)
    }

    /// Bytes written of the image and its total, while deploying.
    pub fn progress_bytes(&self) -> Option<(u64, Option<u64>)> {
        let written = self.progress.get("bytes_written")?.as_u64()?;
        let total = self.progress.get("bytes_total").and_then(Value::as_u64);
        Some((written, total))
    }
}

/// One line of a node's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Unix seconds (UTC).
    pub time: i64,
    pub from: String,
    pub to: String,
    pub event: String,
    #[serde(default)]
    pub message: Option<String>,
}

/// `kiln node show`: the node with its inventory and timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeDetails {
    pub node: NodeRecord,
    /// The IPA-style inventory from inspection, if the node was inspected.
    pub inventory: Option<Value>,
    pub timeline: Vec<TimelineEntry>,
}
