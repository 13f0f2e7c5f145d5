//! The SQLite schema and its migrations.
//!
//! `MIGRATIONS[i]` brings a database from version `i` to `i + 1`; a new release adds
//! a step at the end and never edits an old one. The version lives in
//! `schema_version` and is bumped in the same transaction as the step.

use rusqlite::{Connection, OptionalExtension};

use super::StoreError;

const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the first schema.
    "
    CREATE TABLE nodes (
        uuid TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        driver TEXT NOT NULL,
        driver_info TEXT NOT NULL,
        properties TEXT NOT NULL,
        provision_state TEXT NOT NULL,
        target_provision_state TEXT,
        power_state TEXT,
        last_error TEXT,
        instance_info TEXT NOT NULL,
        agent_token_hash BLOB,
        last_heartbeat INTEGER,
        state_entered_at INTEGER NOT NULL,
        deploy_step TEXT,
        bytes_written INTEGER NOT NULL DEFAULT 0,
        bytes_total INTEGER,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE ports (
        mac TEXT PRIMARY KEY,
        node_uuid TEXT NOT NULL REFERENCES nodes(uuid) ON DELETE CASCADE
    );
    CREATE INDEX ports_by_node ON ports(node_uuid);
    CREATE TABLE inventories (
        node_uuid TEXT PRIMARY KEY REFERENCES nodes(uuid) ON DELETE CASCADE,
        inventory TEXT NOT NULL,
        collected_at INTEGER NOT NULL
    );
    CREATE TABLE deployments (
        name TEXT PRIMARY KEY,
        plan TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        node_uuid TEXT NOT NULL REFERENCES nodes(uuid) ON DELETE CASCADE,
        time INTEGER NOT NULL,
        from_state TEXT NOT NULL,
        to_state TEXT NOT NULL,
        event TEXT NOT NULL,
        message TEXT
    );
    CREATE INDEX events_by_node ON events(node_uuid, id);
    ",
    // 1 -> 2: role config on deployed nodes: the config token (hash only) and the
    // node's last config report.
    "
    CREATE TABLE node_config (
        node_uuid TEXT PRIMARY KEY REFERENCES nodes(uuid) ON DELETE CASCADE,
        token_hash BLOB,
        state TEXT,
        script TEXT,
        message TEXT,
        metadata_sha256 TEXT,
        reported_at INTEGER
    );
    ",
    // 2 -> 3: the introspection rules (one JSON list) live in the state file too.
    "
    CREATE TABLE introspection_rules (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        rules TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );
    ",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the database up to `SCHEMA_VERSION`, refusing databases from a newer kiln.
pub(super) fn migrate(conn: &mut Connection, path: &str) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let found: Option<u32> = tx
        .query_row("SELECT version FROM schema_version", [], |row| row.get(0))
        .optional()?;
    let found = found.unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_string(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for step in &MIGRATIONS[found as usize..] {
        tx.execute_batch(step)?;
    }
    tx.execute("DELETE FROM schema_version", [])?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES (?1)",
        [SCHEMA_VERSION],
    )?;
    tx.commit()?;
    Ok(())
}
