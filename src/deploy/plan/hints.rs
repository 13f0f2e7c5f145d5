//! Root device hints as written in plans (Ironic's names). The agent applies them to
//! the real disks; here they are checked for syntax, and the size hint is compared
//! with a node's known root disk size when matching.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

const STRING_HINTS: &[&str] = &[
    "model",
    "vendor",
    "serial",
    "wwn",
    "wwn_with_extension",
    "wwn_vendor_extension",
    "name",
    "hctl",
    "by_path",
];

/// A size hint in GiB: "4" or "== 4" (exactly), or with != >= <= > <.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeHint {
    pub op: SizeOp,
    pub gib: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeOp {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    Lt,
}

impl SizeHint {
    pub fn parse(value: &Value) -> Result<SizeHint, String> {
        let text = match value {
            Value::Number(number) => number.to_string(),
            Value::String(text) => text.trim().to_string(),
            other => {
                return Err(format!(
                    "size: expected GiB like 40 or \">= 40\", got {other}"
                ));
            }
        };
        // Longest operators first, so ">=" is not read as ">".
        let operators = [
            (">=", SizeOp::Ge),
            ("<=", SizeOp::Le),
            ("!=", SizeOp::Ne),
            ("==", SizeOp::Eq),
            (">", SizeOp::Gt),
            ("<", SizeOp::Lt),
            ("=", SizeOp::Eq),
        ];
        let (op, number) = operators
            .iter()
            .find_map(|(symbol, op)| text.strip_prefix(symbol).map(|rest| (*op, rest)))
            .unwrap_or((SizeOp::Eq, text.as_str()));
        let gib = number
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("size: expected GiB like 40 or \">= 40\", got \"{text}\""))?;
        Ok(SizeHint { op, gib })
    }

    /// Whether a disk of `gib` GiB satisfies the hint.
    pub fn accepts(self, gib: u64) -> bool {
        match self.op {
            SizeOp::Eq => gib == self.gib,
            SizeOp::Ne => gib != self.gib,
            SizeOp::Ge => gib >= self.gib,
            SizeOp::Le => gib <= self.gib,
            SizeOp::Gt => gib > self.gib,
            SizeOp::Lt => gib < self.gib,
        }
    }
}

impl fmt::Display for SizeHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let symbol = match self.op {
            SizeOp::Eq => "==",
            SizeOp::Ne => "!=",
            SizeOp::Ge => ">=",
            SizeOp::Le => "<=",
            SizeOp::Gt => ">",
            SizeOp::Lt => "<",
        };
        write!(f, "{symbol} {}", self.gib)
    }
}

/// Checks hint names and value types.
pub fn check_root_device_hints(hints: &BTreeMap<String, Value>) -> Result<(), String> {
    for (key, value) in hints {
        match key.as_str() {
            "size" => {
                SizeHint::parse(value)?;
            }
            "rotational" => {
                let valid = value.is_boolean()
                    || value.as_str().is_some_and(|text| {
                        matches!(
                            text.to_ascii_lowercase().as_str(),
                            "true" | "false" | "1" | "0"
                        )
                    });
                if !valid {
                    return Err(format!("rotational: expected true or false, got {value}"));
                }
            }
            key if STRING_HINTS.contains(&key) => {
                if !(value.is_string() || value.is_number()) {
                    return Err(format!("{key}: expected a string, got {value}"));
                }
            }
            other => {
                return Err(format!(
                    "unknown hint \"{other}\" (known: size, rotational, {})",
                    STRING_HINTS.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// The size hint of a hint map, if it has a valid one.
pub(super) fn size_hint(hints: &BTreeMap<String, Value>) -> Option<SizeHint> {
    hints
        .get("size")
        .and_then(|value| SizeHint::parse(value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn size_hints_parse_and_compare() {
        let ge = SizeHint::parse(&json!(">= 4")).unwrap();
        assert!(ge.accepts(4) && ge.accepts(40) && !ge.accepts(3));
        let exact = SizeHint::parse(&json!(40)).unwrap();
        assert!(exact.accepts(40) && !exact.accepts(41));
        assert!(SizeHint::parse(&json!("<8")).unwrap().accepts(7));
        assert!(!SizeHint::parse(&json!("> 8")).unwrap().accepts(8));
        assert!(SizeHint::parse(&json!("!= 8")).unwrap().accepts(9));
        assert!(SizeHint::parse(&json!("<= 8")).unwrap().accepts(8));
        assert!(SizeHint::parse(&json!("= 8")).unwrap().accepts(8));
        assert!(SizeHint::parse(&json!("big")).is_err());
        assert!(SizeHint::parse(&json!(">= -1")).is_err());
        assert!(SizeHint::parse(&json!([4])).is_err());
    }
}
