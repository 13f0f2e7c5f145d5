//! SendTargets discovery (RFC 7143 §12.3 / appendix C).

use std::net::SocketAddr;

use crate::deploy::protocol::ChapSecret;
use crate::iscsi::text;

use super::InitiatorError;
use super::login::LoginPlan;
use super::session::open;

/// A target a portal advertises, with the portals ("ADDR:PORT,TPGT") to reach it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DiscoveredTarget {
    pub name: String,
    pub portals: Vec<String>,
}

/// Log in to `portal` as a discovery session and ask for SendTargets=All.
pub fn discover(
    portal: SocketAddr,
    initiator_iqn: &str,
    chap: &ChapSecret,
) -> Result<Vec<DiscoveredTarget>, InitiatorError> {
    let conn = open(
        portal,
        &LoginPlan {
            initiator_iqn,
            target_iqn: None,
            chap,
            mutual_chap: None,
            digests: false,
        },
    )?;
    let answer = conn.text(&[("SendTargets".to_string(), "All".to_string())]);
    let logged_out = conn.logout();
    let keys = text::decode_repeating(&answer?).map_err(|e| InitiatorError::Protocol {
        peer: portal,
        detail: format!("SendTargets answer: {e}"),
    })?;
    logged_out?;
    Ok(targets_from_keys(&keys))
}

/// TargetName starts a record; the TargetAddress keys after it belong to it.
fn targets_from_keys(keys: &[(String, String)]) -> Vec<DiscoveredTarget> {
    let mut targets: Vec<DiscoveredTarget> = Vec::new();
    for (key, value) in keys {
        match key.as_str() {
            "TargetName" => targets.push(DiscoveredTarget {
                name: value.clone(),
                portals: Vec::new(),
            }),
            "TargetAddress" => {
                if let Some(last) = targets.last_mut() {
                    last.portals.push(value.clone());
                }
            }
            _ => {}
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_belong_to_the_name_before_them() {
        let keys: Vec<(String, String)> = [
            ("TargetName", "iqn.a"),
            ("TargetAddress", "127.0.0.1:3260,1"),
            ("TargetAddress", "[::1]:3260,1"),
            ("TargetName", "iqn.b"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let got = targets_from_keys(&keys);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].portals, ["127.0.0.1:3260,1", "[::1]:3260,1"]);
        assert!(got[1].portals.is_empty());
    }
}
