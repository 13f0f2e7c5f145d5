//! Enrolling nodes: a batch is inserted in one transaction or not at all.

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::row::{normalize_mac, to_json};
use super::{NewNode, Node, Result, Store, StoreError, now};
use crate::deploy::state::ProvisionState;

/// States a node may be deleted in (Ironic's rule): it holds no instance and
/// nothing is in flight.
pub const DELETABLE_STATES: &[ProvisionState] = &[
    ProvisionState::Enroll,
    ProvisionState::Manageable,
    ProvisionState::Available,
    ProvisionState::InspectFailed,
    ProvisionState::CleanFailed,
];

impl Store {
    /// Deletes a node with its ports, inventory and timeline, in one
    /// transaction, only in one of `DELETABLE_STATES`. Returns the node as it was.
    pub fn delete_node(&self, id_or_name: &str) -> Result<Node> {
        let node = self.node(id_or_name)?;
        self.write(|conn| {
            let state: String = conn.query_row(
                "SELECT provision_state FROM nodes WHERE uuid = ?1",
                params![node.uuid.to_string()],
                |row| row.get(0),
            )?;
            let state = state.parse().unwrap_or(ProvisionState::Error);
            if !DELETABLE_STATES.contains(&state) {
                return Err(StoreError::NotDeletable {
                    node: node.name.clone(),
                    state,
                });
            }
            conn.execute(
                "DELETE FROM nodes WHERE uuid = ?1",
                params![node.uuid.to_string()],
            )?;
            Ok(())
        })?;
        Ok(node)
    }

    /// Enrolls all `nodes` in one transaction, in `enroll` state: either every node is
    /// stored or none is. Names and MACs already in use (in the store or twice in
    /// the batch) are refused, all of them named in the error.
    pub fn create_nodes(&self, nodes: &[NewNode]) -> Result<Vec<Node>> {
        let created = self.write(|conn| {
            check_unique(conn, nodes)?;
            let time = now();
            let mut uuids = Vec::with_capacity(nodes.len());
            for node in nodes {
                let uuid = Uuid::new_v4().to_string();
                conn.execute(
                    "INSERT INTO nodes (uuid, name, driver, driver_info, properties, \
                     provision_state, instance_info, state_entered_at, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, '{}', ?7, ?7)",
                    params![
                        uuid,
                        node.name,
                        node.driver.as_str(),
                        to_json("driver_info", &node.driver_info)?,
                        to_json("properties", &node.properties)?,
                        ProvisionState::Enroll.as_str(),
                        time,
                    ],
                )?;
                for mac in &node.macs {
                    conn.execute(
                        "INSERT INTO ports (mac, node_uuid) VALUES (?1, ?2)",
                        params![normalize_mac(mac), uuid],
                    )?;
                }
                uuids.push(uuid);
            }
            Ok(uuids)
        })?;
        created.iter().map(|uuid| self.node(uuid)).collect()
    }
}

/// Refuses names and MACs that repeat in the batch or are already stored.
fn check_unique(conn: &Connection, nodes: &[NewNode]) -> Result<()> {
    let mut seen_names = BTreeSet::new();
    let mut bad_names = BTreeSet::new();
    let mut seen_macs = BTreeSet::new();
    let mut bad_macs = BTreeSet::new();
    for node in nodes {
        let taken: bool = conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM nodes WHERE name = ?1)",
            [&node.name],
            |row| row.get(0),
        )?;
        if taken || !seen_names.insert(node.name.clone()) {
            bad_names.insert(node.name.clone());
        }
        for mac in &node.macs {
            let mac = normalize_mac(mac);
            let owner: Option<String> = conn
                .query_row(
                    "SELECT nodes.name FROM ports JOIN nodes ON nodes.uuid = ports.node_uuid \
                     WHERE ports.mac = ?1",
                    [&mac],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(owner) = owner {
                bad_macs.insert(format!("{mac} (node {owner})"));
            } else if !seen_macs.insert(mac.clone()) {
                bad_macs.insert(format!("{mac} (twice in the new nodes)"));
            }
        }
    }
    if !bad_names.is_empty() {
        return Err(StoreError::DuplicateNames(bad_names.into_iter().collect()));
    }
    if !bad_macs.is_empty() {
        return Err(StoreError::DuplicateMacs(bad_macs.into_iter().collect()));
    }
    Ok(())
}
