//! The conductor's HTTP API types, shared by the conductor, the agent and the
//! operator client: JSON bodies under the `/v1` prefix.
//!
//! Operator calls manage nodes, rules and deployments; agent calls are made by
//! the node (it pulls: lookup, then heartbeats that carry the result of the
//! current command and receive the next one), so no connection into the node is
//! ever needed.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The conductor's default listen address (Ironic's port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6385";
/// The header every agent call after lookup carries.
pub const AGENT_TOKEN_HEADER: &str = "X-Agent-Token";

/// Every error response: `{"error": {"code": 409, "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: u16,
    pub message: String,
    /// On a refused state change: the verbs the node's state allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
}

/// PUT /v1/nodes/{id}/states/provision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionRequest {
    /// manage | inspect | provide | deploy | undeploy | rebuild | abort
    pub target: String,
}

/// PUT /v1/nodes/{id}/states/power.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerRequest {
    /// "power on" | "power off" | "reboot"
    pub target: String,
}

/// POST /v1/agent/lookup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LookupRequest {
    pub macs: Vec<String>,
    /// IPA-style inventory (cpu, memory, disks, interfaces, system_vendor, boot).
    #[serde(default)]
    pub inventory: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LookupResponse {
    pub node: Uuid,
    /// Handed out once; every later call carries it in `X-Agent-Token`.
    pub token: String,
    /// Seconds between heartbeats.
    pub heartbeat_interval: u64,
}

/// Where a command stands, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    Running,
    Succeeded,
    Failed,
}

/// Bytes done of a total (the image file, for write_image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandProgress {
    pub done: u64,
    pub total: u64,
}

/// The agent's report on the command it was last given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandReport {
    pub id: String,
    pub status: CommandStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<CommandProgress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub result: Value,
}

/// POST /v1/agent/{uuid}/heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    #[serde(default)]
    pub command: Option<CommandReport>,
}

/// The heartbeat's answer: the next command, or null to keep going.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    #[serde(default)]
    pub command: Option<Command>,
}

/// A command the conductor hands out. `id` is echoed back in reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: String,
    #[serde(flatten)]
    pub kind: CommandKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", content = "params", rename_all = "snake_case")]
pub enum CommandKind {
    /// Collect the inventory again (result: the inventory).
    Inventory,
    /// Stream an image onto the root disk chosen by `hints`.
    WriteImage(WriteImageParams),
    /// Add the config drive partition at the end of the root disk.
    WriteConfigdrive(ConfigdriveParams),
    /// Cleaning: wipe partition tables and filesystem signatures.
    EraseMetadata(EraseParams),
    /// iSCSI deploy: export the root disk as an iSCSI target on the deploy
    /// network address. The report stays `running` with an [`ExportedDisk`]
    /// result while the target serves; the conductor's initiator writes the
    /// image and config drive, then sends `stop_export`.
    ExportDisk(ExportDiskParams),
    /// Stop the iSCSI target started by export_disk (after its last session
    /// logged out) and report export_disk succeeded.
    StopExport,
    /// The conductor is done with this agent: power off (a simulated agent exits).
    PowerOff,
    /// Nothing to do now; heartbeat again.
    Idle,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteImageParams {
    /// Absolute URL, or a path (`/v1/images/NAME`) relative to the agent's API URL.
    pub url: String,
    /// `sha256:HEX` or `sha512:HEX` of the image file.
    pub checksum: String,
    /// "qcow2" or "raw" as the conductor believes; the agent detects it anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Ironic root device hints.
    #[serde(default)]
    pub hints: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigdriveParams {
    pub meta_data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(default)]
    pub network_data: Value,
    #[serde(default)]
    pub kiln_config: Value,
    /// The same hints as write_image, so the agent finds the same disk.
    #[serde(default)]
    pub hints: serde_json::Map<String, Value>,
}

/// CHAP credentials: a user name and its secret (12 to 16 bytes, RFC 7143).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChapSecret {
    pub user: String,
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportDiskParams {
    /// The target's name, e.g. `iqn.2026-11.org.kiln:NODE-UUID`.
    pub target_iqn: String,
    /// What the initiator must prove (required: a per-deploy secret).
    pub chap: ChapSecret,
    /// What the target proves to the initiator when mutual CHAP is wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_chap: Option<ChapSecret>,
    /// TCP port to listen on (3260 when absent; 0 picks a free port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The same hints as write_image.
    #[serde(default)]
    pub hints: serde_json::Map<String, Value>,
}

/// export_disk's `result` while the target serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedDisk {
    /// `ADDRESS:PORT` the target listens on (the deploy network address).
    pub portal: String,
    pub target_iqn: String,
    /// The exported block device (or file, for a simulated node).
    pub disk: String,
    /// The disk's size in bytes.
    pub size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EraseParams {
    #[serde(default)]
    pub hints: serde_json::Map<String, Value>,
}

/// GET /v1/deployments/{name}: one node of a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentNode {
    pub node: String,
    pub uuid: Uuid,
    pub role: Option<String>,
    pub hostname: Option<String>,
    pub state: String,
    pub progress: Option<CommandProgress>,
    pub deploy_step: Option<String>,
    pub last_error: Option<String>,
    /// What the node last reported about applying its role config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<NodeConfigState>,
}

/// Header carrying a deployed node's config token (metadata and config status).
pub const CONFIG_TOKEN_HEADER: &str = "X-Config-Token";

/// How a node's config apply went, as the node reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigResult {
    Succeeded,
    Failed,
}

/// POST /v1/nodes/{uuid}/config-status (X-Config-Token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigStatusRequest {
    pub status: ConfigResult,
    /// The refresh script that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// SHA-256 (hex) of the conductor metadata the node applied (its ETag).
    pub metadata_sha256: String,
}

/// A node's config state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigState {
    #[serde(rename = "configured")]
    Configured,
    #[serde(rename = "config failed")]
    ConfigFailed,
}

impl ConfigState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Configured => "configured",
            Self::ConfigFailed => "config failed",
        }
    }
}

/// The last config report of a node (GET /v1/nodes/{id} `config`, deployment status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfigState {
    pub state: ConfigState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub metadata_sha256: String,
    /// Whether the reported metadata is the node's current metadata (false: an
    /// update has not been applied yet).
    pub current: bool,
    /// Unix seconds (UTC) of the report.
    pub time: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentStatus {
    pub name: String,
    pub nodes: Vec<DeploymentNode>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_travel_as_id_name_params() {
        let command = Command {
            id: "write_image".into(),
            kind: CommandKind::WriteImage(WriteImageParams {
                url: "/v1/images/a.qcow2".into(),
                checksum: "sha256:00".into(),
                format: None,
                hints: serde_json::Map::new(),
            }),
        };
        let wire = serde_json::to_value(&command).unwrap();
        assert_eq!(wire["id"], "write_image");
        assert_eq!(wire["name"], "write_image");
        assert_eq!(wire["params"]["url"], "/v1/images/a.qcow2");
        assert_eq!(serde_json::from_value::<Command>(wire).unwrap(), command);
        let export: Command = serde_json::from_value(json!({
            "id": "export_disk", "name": "export_disk",
            "params": {"target_iqn": "iqn.2026-11.org.kiln:n1",
                       "chap": {"user": "kiln", "secret": "0123456789abcdef"}}
        }))
        .unwrap();
        let CommandKind::ExportDisk(params) = export.kind else {
            panic!("export_disk parsed as {:?}", export.kind)
        };
        assert_eq!(params.chap.user, "kiln");
        assert_eq!((params.port, params.mutual_chap), (None, None));
        let power_off: Command =
            serde_json::from_value(json!({"id": "power_off", "name": "power_off"})).unwrap();
        assert_eq!(power_off.kind, CommandKind::PowerOff);
    }

    #[test]
    fn heartbeat_reports_parse_with_and_without_a_command() {
        let idle: HeartbeatRequest = serde_json::from_value(json!({"command": null})).unwrap();
        assert_eq!(idle.command, None);
        let running: HeartbeatRequest = serde_json::from_value(json!({"command": {
            "id": "write_image", "status": "running", "progress": {"done": 5, "total": 10}
        }}))
        .unwrap();
        let report = running.command.unwrap();
        assert_eq!(report.status, CommandStatus::Running);
        assert_eq!(
            report.progress,
            Some(CommandProgress { done: 5, total: 10 })
        );
        let bad = serde_json::from_value::<HeartbeatRequest>(
            json!({"command": {"id": "x", "status": "sleeping"}}),
        );
        assert!(bad.is_err());
    }
}
