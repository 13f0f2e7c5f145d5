//! Reading node rows: the column list, the raw row and its decoding (JSON columns,
//! state names) into a `Node`.

use rusqlite::Row;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{Node, PowerState, Progress, Result, StoreError};
use crate::deploy::state::ProvisionState;

pub(super) const NODE_COLUMNS: &str = "uuid, name, driver, driver_info, properties, provision_state, \
     target_provision_state, power_state, last_error, instance_info, \
     agent_token_hash IS NOT NULL, last_heartbeat, state_entered_at, deploy_step, \
     bytes_written, bytes_total, created_at";

/// A node row before its JSON columns are decoded (decoding errors are ours, not
/// rusqlite's, so they happen outside the row callback).
pub(super) struct RawNode {
    pub(super) uuid: String,
    name: String,
    driver: String,
    driver_info: String,
    properties: String,
    provision_state: String,
    target_provision_state: Option<String>,
    power_state: Option<String>,
    last_error: Option<String>,
    instance_info: String,
    has_agent_token: bool,
    last_heartbeat: Option<i64>,
    state_entered_at: i64,
    deploy_step: Option<String>,
    bytes_written: i64,
    bytes_total: Option<i64>,
    created_at: i64,
}

pub(super) fn raw_node(row: &Row<'_>) -> rusqlite::Result<RawNode> {
    Ok(RawNode {
        uuid: row.get(0)?,
        name: row.get(1)?,
        driver: row.get(2)?,
        driver_info: row.get(3)?,
        properties: row.get(4)?,
        provision_state: row.get(5)?,
        target_provision_state: row.get(6)?,
        power_state: row.get(7)?,
        last_error: row.get(8)?,
        instance_info: row.get(9)?,
        has_agent_token: row.get(10)?,
        last_heartbeat: row.get(11)?,
        state_entered_at: row.get(12)?,
        deploy_step: row.get(13)?,
        bytes_written: row.get(14)?,
        bytes_total: row.get(15)?,
        created_at: row.get(16)?,
    })
}

impl RawNode {
    pub(super) fn decode(self, macs: Vec<String>) -> Result<Node> {
        let corrupt = |field: &'static str, message: String| StoreError::Corrupt {
            node: self.name.clone(),
            field,
            message,
        };
        let state = |field: &'static str, text: &str| {
            text.parse::<ProvisionState>()
                .map_err(|err| corrupt(field, err.to_string()))
        };
        Ok(Node {
            uuid: Uuid::parse_str(&self.uuid).map_err(|err| corrupt("uuid", err.to_string()))?,
            driver: self.driver.parse().map_err(|err| corrupt("driver", err))?,
            driver_info: from_json(&self.driver_info).map_err(|err| corrupt("driver_info", err))?,
            properties: from_json(&self.properties).map_err(|err| corrupt("properties", err))?,
            provision_state: state("provision_state", &self.provision_state)?,
            target_provision_state: match &self.target_provision_state {
                Some(text) => Some(state("target_provision_state", text)?),
                None => None,
            },
            power_state: self.power_state.as_deref().and_then(PowerState::parse),
            instance_info: from_json(&self.instance_info)
                .map_err(|err| corrupt("instance_info", err))?,
            has_agent_token: self.has_agent_token,
            last_heartbeat: self.last_heartbeat,
            state_entered_at: self.state_entered_at,
            progress: Progress {
                deploy_step: self.deploy_step.clone(),
                bytes_written: self.bytes_written.max(0) as u64,
                bytes_total: self.bytes_total.map(|total| total.max(0) as u64),
            },
            created_at: self.created_at,
            last_error: self.last_error.clone(),
            macs,
            name: self.name,
        })
    }
}

pub(super) fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|err| err.to_string())
}

pub(super) fn to_json<T: Serialize>(what: &'static str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|err| StoreError::Encode {
        what,
        message: err.to_string(),
    })
}

/// Lower-case MAC, so lookups do not depend on how the agent spells it.
pub(super) fn normalize_mac(mac: &str) -> String {
    mac.trim().to_ascii_lowercase().replace('-', ":")
}
