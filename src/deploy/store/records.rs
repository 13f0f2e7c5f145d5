//! Records kept beside the node row: inventories, the per-node timeline and
//! deployment plans.

use rusqlite::{OptionalExtension, params};
use serde_json::Value;

use super::row::{from_json, to_json};
use super::{Deployment, Result, Store, StoreError, StoredInventory, TimelineEvent, now};
use crate::deploy::state;

impl Store {
    /// Stores (replacing) the node's inventory as collected now.
    pub fn save_inventory(&self, node: &str, inventory: &Value) -> Result<()> {
        let json = to_json("inventory", inventory)?;
        self.write(|conn| {
            let uuid = Self::uuid_of(conn, node)?;
            conn.execute(
                "INSERT INTO inventories (node_uuid, inventory, collected_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(node_uuid) DO UPDATE SET inventory = ?2, collected_at = ?3",
                params![uuid, json, now()],
            )?;
            Ok(())
        })
    }

    pub fn inventory(&self, node: &str) -> Result<Option<StoredInventory>> {
        let uuid = Self::uuid_of(&self.conn, node)?;
        let row: Option<(String, i64)> = self
            .conn
            .query_row(
                "SELECT inventory, collected_at FROM inventories WHERE node_uuid = ?1",
                [&uuid],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        row.map(|(text, collected_at)| {
            let inventory = from_json(&text).map_err(|message| StoreError::Corrupt {
                node: node.to_string(),
                field: "inventory",
                message,
            })?;
            Ok(StoredInventory {
                inventory,
                collected_at,
            })
        })
        .transpose()
    }

    /// The node's state changes, oldest first.
    pub fn timeline(&self, node: &str) -> Result<Vec<TimelineEvent>> {
        let uuid = Self::uuid_of(&self.conn, node)?;
        let mut stmt = self.conn.prepare(
            "SELECT time, from_state, to_state, event, message FROM events \
             WHERE node_uuid = ?1 ORDER BY id",
        )?;
        let rows = stmt
            .query_map([&uuid], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<String>>(4)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(time, from, to, event, message)| {
                let corrupt = |message: String| StoreError::Corrupt {
                    node: node.to_string(),
                    field: "timeline",
                    message,
                };
                Ok(TimelineEvent {
                    time,
                    from_state: from
                        .parse()
                        .map_err(|e: state::ParseNameError| corrupt(e.to_string()))?,
                    to_state: to
                        .parse()
                        .map_err(|e: state::ParseNameError| corrupt(e.to_string()))?,
                    event: event
                        .parse()
                        .map_err(|e: state::ParseNameError| corrupt(e.to_string()))?,
                    message,
                })
            })
            .collect()
    }

    /// Stores (or replaces) a deployment's plan.
    pub fn save_deployment(&self, name: &str, plan: &Value) -> Result<()> {
        let json = to_json("plan", plan)?;
        self.write(|conn| {
            let time = now();
            conn.execute(
                "INSERT INTO deployments (name, plan, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?3) \
                 ON CONFLICT(name) DO UPDATE SET plan = ?2, updated_at = ?3",
                params![name, json, time],
            )?;
            Ok(())
        })
    }

    /// The introspection rules as last set (a JSON list), or an empty list.
    pub fn introspection_rules(&self) -> Result<Value> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT rules FROM introspection_rules", [], |row| {
                row.get(0)
            })
            .optional()?;
        match text {
            None => Ok(Value::Array(Vec::new())),
            Some(text) => from_json(&text).map_err(|message| StoreError::Corrupt {
                node: "(introspection rules)".to_string(),
                field: "rules",
                message,
            }),
        }
    }

    /// Replaces the introspection rules.
    pub fn set_introspection_rules(&self, rules: &Value) -> Result<()> {
        let text = to_json("introspection rules", rules)?;
        self.write(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO introspection_rules (id, rules, updated_at) \
                 VALUES (1, ?1, ?2)",
                params![text, now()],
            )?;
            Ok(())
        })
    }

    pub fn deployment(&self, name: &str) -> Result<Option<Deployment>> {
        let row: Option<(String, i64, i64)> = self
            .conn
            .query_row(
                "SELECT plan, created_at, updated_at FROM deployments WHERE name = ?1",
                [name],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        row.map(|(text, created_at, updated_at)| {
            let plan = from_json(&text).map_err(|message| StoreError::Corrupt {
                node: format!("(deployment {name})"),
                field: "plan",
                message,
            })?;
            Ok(Deployment {
                name: name.to_string(),
                plan,
                created_at,
                updated_at,
            })
        })
        .transpose()
    }

    pub fn deployment_names(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM deployments ORDER BY name")?;
        let names = stmt
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(names)
    }
}
