//! Agent tokens: handed to the agent once, stored only as a SHA-256, checked in
//! constant time so a wrong guess learns nothing from the response time.

use sha2::{Digest, Sha256};

use super::StoreError;

/// A fresh random token (256 bits, hex) for an agent that just looked its node up.
pub fn new_agent_token() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| StoreError::Random(err.to_string()))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

pub(super) fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Compares the stored hash with the candidate token's hash without an early exit.
pub(super) fn matches(stored_hash: &[u8], candidate: &str) -> bool {
    let candidate_hash = hash(candidate);
    if stored_hash.len() != candidate_hash.len() {
        return false;
    }
    let difference = stored_hash
        .iter()
        .zip(&candidate_hash)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    difference == 0
}
