//! What the agent's calls change on a node: its token (hash only), heartbeats and
//! streaming progress.

use rusqlite::params;

use super::{Node, Result, Store, now, token};

impl Store {
    /// Remembers only the SHA-256 of the agent token.
    pub fn set_agent_token(&self, node: &str, token: &str) -> Result<Node> {
        let hash = token::hash(token);
        self.update(
            node,
            "UPDATE nodes SET agent_token_hash = ?2 WHERE uuid = ?1",
            &hash,
        )
    }

    pub fn clear_agent_token(&self, node: &str) -> Result<Node> {
        self.update(
            node,
            "UPDATE nodes SET agent_token_hash = ?2 WHERE uuid = ?1",
            &Option::<Vec<u8>>::None,
        )
    }

    /// True only if the node has a token and `token` is it (constant-time compare).
    pub fn verify_agent_token(&self, node: &str, token: &str) -> Result<bool> {
        let uuid = Self::uuid_of(&self.conn, node)?;
        let stored: Option<Vec<u8>> = self.conn.query_row(
            "SELECT agent_token_hash FROM nodes WHERE uuid = ?1",
            [&uuid],
            |row| row.get(0),
        )?;
        Ok(stored.is_some_and(|hash| token::matches(&hash, token)))
    }

    pub fn record_heartbeat(&self, node: &str) -> Result<Node> {
        self.update(
            node,
            "UPDATE nodes SET last_heartbeat = ?2 WHERE uuid = ?1",
            &now(),
        )
    }

    /// Streaming progress: bytes written so far and the total when known.
    pub fn set_progress(&self, node: &str, written: u64, total: Option<u64>) -> Result<Node> {
        let uuid = self.write(|conn| {
            let uuid = Self::uuid_of(conn, node)?;
            conn.execute(
                "UPDATE nodes SET bytes_written = ?2, bytes_total = ?3 WHERE uuid = ?1",
                params![uuid, clamp_i64(written), total.map(clamp_i64)],
            )?;
            Ok(uuid)
        })?;
        self.node(&uuid)
    }

    pub fn set_deploy_step(&self, node: &str, step: Option<&str>) -> Result<Node> {
        self.update(
            node,
            "UPDATE nodes SET deploy_step = ?2 WHERE uuid = ?1",
            &step,
        )
    }
}

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
