//! Root device hints as written in plans (Ironic's names), parsed by the
//! agent's hint parser so the conductor and the node agree on the syntax. Here
//! they are validated, and the size hint is compared with a node's known root
//! disk size when matching; the agent applies them to the real disks.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::agent::hints::RootDeviceHints;

/// Checks hint names and values; the message names the hint.
pub fn check_root_device_hints(hints: &BTreeMap<String, Value>) -> Result<(), String> {
    parse(hints).map(|_| ())
}

fn parse(hints: &BTreeMap<String, Value>) -> Result<RootDeviceHints, String> {
    let map: serde_json::Map<String, Value> = hints.clone().into_iter().collect();
    RootDeviceHints::parse(&Value::Object(map)).map_err(|e| e.to_string())
}

/// Whether a root disk of `local_gb` GiB satisfies the size hint of `hints`:
/// `None` when there is no (valid) size hint.
pub(super) fn size_accepts(hints: &BTreeMap<String, Value>, local_gb: u64) -> Option<bool> {
    parse(hints).ok()?.size_accepts(local_gb)
}

/// The size hint as written, for messages.
pub(super) fn size_text(hints: &BTreeMap<String, Value>) -> String {
    match hints.get("size") {
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hints(size: Value) -> BTreeMap<String, Value> {
        BTreeMap::from([("size".to_string(), size)])
    }

    #[test]
    fn size_hints_compare_with_the_root_disk() {
        assert_eq!(size_accepts(&hints(json!(">= 4")), 4), Some(true));
        assert_eq!(size_accepts(&hints(json!(">= 4")), 3), Some(false));
        assert_eq!(size_accepts(&hints(json!(40)), 41), Some(false));
        assert_eq!(
            size_accepts(&hints(json!("<or> 8 <or> 16")), 16),
            Some(true)
        );
        assert_eq!(size_accepts(&BTreeMap::new(), 1), None);
        assert!(check_root_device_hints(&hints(json!("big"))).is_err());
        let unknown = BTreeMap::from([("colour".to_string(), json!("red"))]);
        let err = check_root_device_hints(&unknown).unwrap_err();
        assert!(err.contains("colour"), "{err}");
    }
}
