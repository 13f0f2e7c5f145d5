//! The conductor's state: one SQLite file (WAL mode), or `:memory:` for tests.
//!
//! Every state change is committed before the caller acts on it, so a conductor that
//! dies at any point restarts from a state it really was in. Multi-row changes
//! (enrolling a batch of nodes, a transition plus its timeline row) are one
//! transaction each.

mod agent;
mod config;
mod enroll;
mod model;
mod records;
mod row;
mod schema;
mod token;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use crate::deploy::state::{self, Event, ProvisionState, TransitionError};

pub use config::ConfigReport;
pub use model::{
    Deployment, Driver, DriverInfo, InFlight, InstanceInfo, NewNode, Node, PowerState, Progress,
    Properties, QemuFirmware, StoredInventory, TimelineEvent,
};
use row::{NODE_COLUMNS, from_json, normalize_mac, raw_node, to_json};
pub use schema::SCHEMA_VERSION;
pub use token::new_agent_token;

/// How long a writer waits for another connection's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open state database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error(
        "state database {path} has schema version {found}; this kiln supports up to {supported}"
    )]
    NewerSchema {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("no node named or with UUID \"{0}\"")]
    NodeNotFound(String),
    #[error("no node has a port with MAC {0}")]
    MacNotFound(String),
    #[error("node name(s) already in use: {}", .0.join(", "))]
    DuplicateNames(Vec<String>),
    #[error("MAC address(es) already in use: {}", .0.join(", "))]
    DuplicateMacs(Vec<String>),
    #[error("node {node}: {source}")]
    Transition {
        node: String,
        source: TransitionError,
    },
    #[error(
        "node {node} is {state}: nodes can be deleted only when enroll, manageable, available, \
         inspect failed or clean failed"
    )]
    NotDeletable { node: String, state: ProvisionState },
    #[error("node {node} is now {actual}, no longer {expected}")]
    StateChanged {
        node: String,
        expected: ProvisionState,
        actual: ProvisionState,
    },
    #[error("node {node}: stored {field} is unreadable: {message}")]
    Corrupt {
        node: String,
        field: &'static str,
        message: String,
    },
    #[error("cannot encode {what}: {message}")]
    Encode { what: &'static str, message: String },
    #[error("cannot create an agent token: {0}")]
    Random(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Unix seconds now (UTC).
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}

pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database at `path`; `:memory:` gives a private
    /// in-memory database.
    pub fn open(path: &str) -> Result<Store> {
        let open_error = |source| StoreError::Open {
            path: path.to_string(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        // WAL lets status readers run while a writer commits; an in-memory database
        // answers "memory", which is fine.
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(open_error)?;
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")
            .map_err(open_error)?;
        schema::migrate(&mut conn, path)?;
        Ok(Store { conn })
    }

    /// Runs `work` in an IMMEDIATE transaction (the write lock is taken up front, so
    /// a read-modify-write cannot interleave with another conductor connection).
    fn write<T>(&self, work: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match work(&self.conn) {
            Ok(value) => match self.conn.execute_batch("COMMIT") {
                Ok(()) => Ok(value),
                Err(err) => {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    Err(err.into())
                }
            },
            Err(err) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(err)
            }
        }
    }

    /// The node with this UUID or name.
    pub fn node(&self, id_or_name: &str) -> Result<Node> {
        let column = if Uuid::parse_str(id_or_name).is_ok() {
            "uuid"
        } else {
            "name"
        };
        let sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE {column} = ?1");
        let raw = self
            .conn
            .query_row(&sql, [id_or_name], raw_node)
            .optional()?
            .ok_or_else(|| StoreError::NodeNotFound(id_or_name.to_string()))?;
        let macs = self.macs_of(&raw.uuid)?;
        raw.decode(macs)
    }

    /// Every node, ordered by name.
    pub fn nodes(&self) -> Result<Vec<Node>> {
        let mut ports: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut stmt = self
            .conn
            .prepare("SELECT node_uuid, mac FROM ports ORDER BY mac")?;
        for row in stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))? {
            let (uuid, mac): (String, String) = row?;
            ports.entry(uuid).or_default().push(mac);
        }
        let sql = format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY name");
        let mut stmt = self.conn.prepare(&sql)?;
        let raws = stmt
            .query_map([], raw_node)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        raws.into_iter()
            .map(|raw| {
                let macs = ports.remove(&raw.uuid).unwrap_or_default();
                raw.decode(macs)
            })
            .collect()
    }

    /// The node owning a port with this MAC (any case, `:` or `-` separated).
    pub fn node_by_mac(&self, mac: &str) -> Result<Node> {
        let mac = normalize_mac(mac);
        let uuid: String = self
            .conn
            .query_row(
                "SELECT node_uuid FROM ports WHERE mac = ?1",
                [&mac],
                |row| row.get(0),
            )
            .optional()?
            .ok_or(StoreError::MacNotFound(mac))?;
        self.node(&uuid)
    }

    fn macs_of(&self, uuid: &str) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT mac FROM ports WHERE node_uuid = ?1 ORDER BY mac")?;
        let macs = stmt
            .query_map([uuid], |row| row.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(macs)
    }

    /// The UUID of a node, or NodeNotFound.
    fn uuid_of(conn: &Connection, id_or_name: &str) -> Result<String> {
        conn.query_row(
            "SELECT uuid FROM nodes WHERE uuid = ?1 OR name = ?1",
            [id_or_name],
            |row| row.get(0),
        )
        .optional()?
        .ok_or_else(|| StoreError::NodeNotFound(id_or_name.to_string()))
    }

    /// Applies `event` to the node's provision state and commits the new state with
    /// its timeline row before returning, so the caller acts only on a persisted
    /// state. Operator verbs clear `last_error`; fail, timeout and abort set it to
    /// `message`. Starting a deploy resets the streaming progress.
    pub fn transition(&self, node: &str, event: Event, message: Option<&str>) -> Result<Node> {
        self.apply_event(node, None, event, message)
    }

    /// Like `transition`, but only if the node is still in `expected` (entered at
    /// `entered_at` when given): a timeout or a late callback must not act on a node
    /// that moved on since the caller looked. Otherwise `StateChanged`.
    pub fn transition_if(
        &self,
        node: &str,
        expected: ProvisionState,
        entered_at: Option<i64>,
        event: Event,
        message: Option<&str>,
    ) -> Result<Node> {
        self.apply_event(node, Some((expected, entered_at)), event, message)
    }

    fn apply_event(
        &self,
        node: &str,
        expected: Option<(ProvisionState, Option<i64>)>,
        event: Event,
        message: Option<&str>,
    ) -> Result<Node> {
        let uuid = self.write(|conn| {
            let (uuid, name, current, entered): (String, String, String, i64) = conn
                .query_row(
                    "SELECT uuid, name, provision_state, state_entered_at FROM nodes \
                     WHERE uuid = ?1 OR name = ?1",
                    [node],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )
                .optional()?
                .ok_or_else(|| StoreError::NodeNotFound(node.to_string()))?;
            let from: ProvisionState =
                current
                    .parse()
                    .map_err(|err: state::ParseNameError| StoreError::Corrupt {
                        node: name.clone(),
                        field: "provision_state",
                        message: err.to_string(),
                    })?;
            if let Some((state, at)) = expected
                && (state != from || at.is_some_and(|at| at != entered))
            {
                return Err(StoreError::StateChanged {
                    node: name,
                    expected: state,
                    actual: from,
                });
            }
            let to = state::apply(from, event).map_err(|source| StoreError::Transition {
                node: name.clone(),
                source,
            })?;
            let time = now();
            conn.execute(
                "UPDATE nodes SET provision_state = ?2, target_provision_state = ?3, \
                 state_entered_at = ?4 WHERE uuid = ?1",
                params![uuid, to.as_str(), to.target().map(|t| t.as_str()), time],
            )?;
            if matches!(event, Event::Fail | Event::Timeout | Event::Abort) {
                let error = match message {
                    Some(text) => text.to_string(),
                    None => format!("{event} while {from}"),
                };
                conn.execute(
                    "UPDATE nodes SET last_error = ?2 WHERE uuid = ?1",
                    params![uuid, error],
                )?;
            } else if event.is_verb() {
                conn.execute(
                    "UPDATE nodes SET last_error = NULL WHERE uuid = ?1",
                    [&uuid],
                )?;
            }
            if matches!(event, Event::Deploy | Event::Rebuild) {
                conn.execute(
                    "UPDATE nodes SET deploy_step = NULL, bytes_written = 0, bytes_total = NULL \
                     WHERE uuid = ?1",
                    [&uuid],
                )?;
            }
            conn.execute(
                "INSERT INTO events (node_uuid, time, from_state, to_state, event, message) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    uuid,
                    time,
                    from.as_str(),
                    to.as_str(),
                    event.as_str(),
                    message
                ],
            )?;
            Ok(uuid)
        })?;
        self.node(&uuid)
    }

    /// Updates one node column inside a write transaction.
    fn update(&self, node: &str, sql: &str, value: &dyn rusqlite::ToSql) -> Result<Node> {
        let uuid = self.write(|conn| {
            let uuid = Self::uuid_of(conn, node)?;
            conn.execute(sql, params![uuid, value])?;
            Ok(uuid)
        })?;
        self.node(&uuid)
    }

    pub fn set_power_state(&self, node: &str, power: Option<PowerState>) -> Result<Node> {
        let text = power.map(PowerState::as_str);
        self.update(
            node,
            "UPDATE nodes SET power_state = ?2 WHERE uuid = ?1",
            &text,
        )
    }

    pub fn set_last_error(&self, node: &str, error: Option<&str>) -> Result<Node> {
        self.update(
            node,
            "UPDATE nodes SET last_error = ?2 WHERE uuid = ?1",
            &error,
        )
    }

    /// Replaces the node's properties.
    pub fn set_properties(&self, node: &str, properties: &Properties) -> Result<Node> {
        let json = to_json("properties", properties)?;
        self.update(
            node,
            "UPDATE nodes SET properties = ?2 WHERE uuid = ?1",
            &json,
        )
    }

    /// Sets one capability (e.g. profile=control), keeping the others.
    pub fn set_capability(&self, node: &str, name: &str, value: &str) -> Result<Node> {
        self.modify_properties(node, |properties| {
            properties
                .capabilities
                .insert(name.to_string(), value.to_string());
        })
    }

    /// Read-modify-write of the node's properties in one transaction.
    pub fn modify_properties(
        &self,
        node: &str,
        change: impl FnOnce(&mut Properties),
    ) -> Result<Node> {
        let uuid = self.write(|conn| {
            let (uuid, name, text): (String, String, String) = conn
                .query_row(
                    "SELECT uuid, name, properties FROM nodes WHERE uuid = ?1 OR name = ?1",
                    [node],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?
                .ok_or_else(|| StoreError::NodeNotFound(node.to_string()))?;
            let mut properties: Properties =
                from_json(&text).map_err(|message| StoreError::Corrupt {
                    node: name,
                    field: "properties",
                    message,
                })?;
            change(&mut properties);
            conn.execute(
                "UPDATE nodes SET properties = ?2 WHERE uuid = ?1",
                params![uuid, to_json("properties", &properties)?],
            )?;
            Ok(uuid)
        })?;
        self.node(&uuid)
    }

    pub fn set_instance_info(&self, node: &str, info: &InstanceInfo) -> Result<Node> {
        let json = to_json("instance_info", info)?;
        self.update(
            node,
            "UPDATE nodes SET instance_info = ?2 WHERE uuid = ?1",
            &json,
        )
    }

    /// Applies `timeout` to every in-flight node whose deadline is at or before `now`
    /// (guarded, so a node that moved on meanwhile is left alone). Returns the nodes
    /// that timed out, in their new states.
    pub fn time_out_expired(&self, now: i64) -> Result<Vec<Node>> {
        let mut expired = Vec::new();
        for flying in self.in_flight_nodes()? {
            if !flying.is_timed_out(now) {
                continue;
            }
            let node = &flying.node;
            let message = format!(
                "timed out in state \"{}\" after {} s",
                node.provision_state,
                flying.deadline - node.state_entered_at
            );
            match self.transition_if(
                &node.uuid.to_string(),
                node.provision_state,
                Some(node.state_entered_at),
                Event::Timeout,
                Some(&message),
            ) {
                Ok(node) => expired.push(node),
                Err(StoreError::StateChanged { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(expired)
    }

    /// Nodes in in-flight states with their deadlines, for a (re)starting conductor
    /// to resume or time out.
    pub fn in_flight_nodes(&self) -> Result<Vec<InFlight>> {
        Ok(self
            .nodes()?
            .into_iter()
            .filter_map(|node| {
                let timeout = node.provision_state.default_timeout()?;
                let deadline = node.state_entered_at + timeout.as_secs() as i64;
                Some(InFlight { node, deadline })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
