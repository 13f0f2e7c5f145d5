//! Role config on deployed nodes: the per-node config token (only its SHA-256
//! is kept, like agent tokens) and the node's last config report.

use rusqlite::{OptionalExtension, params};

use super::{Result, Store, StoreError, now, token};
use crate::deploy::protocol::ConfigState;

/// A node's last config report as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigReport {
    pub state: ConfigState,
    pub script: Option<String>,
    pub message: Option<String>,
    pub metadata_sha256: String,
    /// Unix seconds (UTC).
    pub time: i64,
}

impl Store {
    /// Replaces the node's config token and forgets its earlier reports (a new
    /// config drive starts a new config history).
    pub fn set_config_token(&self, node: &str, token: &str) -> Result<()> {
        let hash = token::hash(token);
        self.write(|conn| {
            let uuid = Self::uuid_of(conn, node)?;
            conn.execute(
                "INSERT OR REPLACE INTO node_config (node_uuid, token_hash) VALUES (?1, ?2)",
                params![uuid, hash],
            )?;
            Ok(())
        })
    }

    /// Forgets the node's config token and reports (undeploy).
    pub fn clear_node_config(&self, node: &str) -> Result<()> {
        self.write(|conn| {
            let uuid = Self::uuid_of(conn, node)?;
            conn.execute("DELETE FROM node_config WHERE node_uuid = ?1", [&uuid])?;
            Ok(())
        })
    }

    /// True only if the node has a config token and `token` is it (constant-time).
    pub fn verify_config_token(&self, node: &str, token: &str) -> Result<bool> {
        let uuid = Self::uuid_of(&self.conn, node)?;
        let stored: Option<Option<Vec<u8>>> = self
            .conn
            .query_row(
                "SELECT token_hash FROM node_config WHERE node_uuid = ?1",
                [&uuid],
                |row| row.get(0),
            )
            .optional()?;
        Ok(stored
            .flatten()
            .is_some_and(|hash| token::matches(&hash, token)))
    }

    /// Stores the node's config report (replacing the previous one).
    pub fn record_config_report(
        &self,
        node: &str,
        state: ConfigState,
        script: Option<&str>,
        message: Option<&str>,
        metadata_sha256: &str,
    ) -> Result<()> {
        self.write(|conn| {
            let uuid = Self::uuid_of(conn, node)?;
            let changed = conn.execute(
                "UPDATE node_config SET state = ?2, script = ?3, message = ?4, \
                 metadata_sha256 = ?5, reported_at = ?6 WHERE node_uuid = ?1",
                params![
                    uuid,
                    state.as_str(),
                    script,
                    message,
                    metadata_sha256,
                    now()
                ],
            )?;
            if changed == 0 {
                return Err(StoreError::Corrupt {
                    node: node.to_string(),
                    field: "node_config",
                    message: "no config token was issued to this node".to_string(),
                });
            }
            Ok(())
        })
    }

    /// The node's last config report, if it sent one.
    pub fn config_report(&self, node: &str) -> Result<Option<ConfigReport>> {
        let uuid = Self::uuid_of(&self.conn, node)?;
        type Row = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
        );
        let row: Option<Row> = self
            .conn
            .query_row(
                "SELECT state, script, message, metadata_sha256, reported_at FROM node_config \
                 WHERE node_uuid = ?1",
                [&uuid],
                |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                },
            )
            .optional()?;
        let Some((Some(state), script, message, Some(metadata_sha256), Some(time))) = row else {
            return Ok(None);
        };
        let state = match state.as_str() {
            "configured" => ConfigState::Configured,
            "config failed" => ConfigState::ConfigFailed,
            other => {
                return Err(StoreError::Corrupt {
                    node: node.to_string(),
                    field: "node_config.state",
                    message: format!("unknown config state \"{other}\""),
                });
            }
        };
        Ok(Some(ConfigReport {
            state,
            script,
            message,
            metadata_sha256,
            time,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::store::{Driver, DriverInfo, NewNode, Properties};

    fn store_with_node() -> Store {
        let store = Store::open(":memory:").unwrap();
        store
            .create_nodes(&[NewNode {
                name: "n1".into(),
                driver: Driver::Manual,
                driver_info: DriverInfo::default(),
                properties: Properties::default(),
                macs: vec!["52:54:00:00:00:01".into()],
            }])
            .unwrap();
        store
    }

    #[test]
    fn config_token_is_checked_and_replaced_tokens_stop_working() {
        let store = store_with_node();
        assert!(!store.verify_config_token("n1", "abc").unwrap());
        store.set_config_token("n1", "abc").unwrap();
        assert!(store.verify_config_token("n1", "abc").unwrap());
        assert!(!store.verify_config_token("n1", "abd").unwrap());
        store.set_config_token("n1", "xyz").unwrap();
        assert!(!store.verify_config_token("n1", "abc").unwrap());
        store.clear_node_config("n1").unwrap();
        assert!(!store.verify_config_token("n1", "xyz").unwrap());
    }

    #[test]
    fn reports_are_kept_until_a_new_token_is_issued() {
        let store = store_with_node();
        assert!(
            store
                .record_config_report("n1", ConfigState::Configured, None, None, "aa")
                .is_err(),
            "no token issued"
        );
        store.set_config_token("n1", "abc").unwrap();
        assert_eq!(store.config_report("n1").unwrap(), None);
        store
            .record_config_report(
                "n1",
                ConfigState::ConfigFailed,
                Some("configure.d/20-x"),
                Some("exit 3"),
                "bb",
            )
            .unwrap();
        let report = store.config_report("n1").unwrap().unwrap();
        assert_eq!(report.state, ConfigState::ConfigFailed);
        assert_eq!(report.script.as_deref(), Some("configure.d/20-x"));
        assert_eq!(report.metadata_sha256, "bb");
        store.set_config_token("n1", "new").unwrap();
        assert_eq!(store.config_report("n1").unwrap(), None);
    }
}
