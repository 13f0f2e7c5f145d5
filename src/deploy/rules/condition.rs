//! Rule conditions: parsing (operators, regexes compiled once, numeric values
//! checked) and evaluation against the node and its introspection data.

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::field::{FieldPath, Root};

/// Comparison operators (Ironic inspector's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
    /// Regular expression found anywhere in the value.
    Contains,
    /// Regular expression matching the whole value.
    Matches,
}

/// How a condition on a list field (a path with `[*]`) combines its values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Multiple {
    #[default]
    Any,
    All,
    First,
}

#[derive(Debug, Clone)]
pub struct Condition {
    pub op: Op,
    pub field: FieldPath,
    pub value: Value,
    pub invert: bool,
    pub multiple: Multiple,
    pub(super) regex: Option<Regex>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCondition {
    op: Op,
    field: String,
    value: Value,
    #[serde(default)]
    invert: bool,
    #[serde(default)]
    multiple: Multiple,
}

pub(super) fn parse_condition(raw: RawCondition) -> Result<Condition, (&'static str, String)> {
    let field = FieldPath::parse(&raw.field).map_err(|message| ("field", message))?;
    let regex = match raw.op {
        Op::Contains | Op::Matches => {
            let pattern = raw
                .value
                .as_str()
                .ok_or(("value", "expected a regular expression string".to_string()))?;
            let anchored = match raw.op {
                Op::Matches => format!("^(?:{pattern})$"),
                _ => pattern.to_string(),
            };
            Some(Regex::new(&anchored).map_err(|err| ("value", err.to_string()))?)
        }
        Op::Lt | Op::Gt | Op::Le | Op::Ge => {
            if as_number(&raw.value).is_none() {
                return Err(("value", format!("expected a number, got {}", raw.value)));
            }
            None
        }
        Op::Eq | Op::Ne => None,
    };
    Ok(Condition {
        op: raw.op,
        field,
        value: raw.value,
        invert: raw.invert,
        multiple: raw.multiple,
        regex,
    })
}

/// A number from a JSON number or a numeric string.
fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

impl Condition {
    /// Whether the condition holds for the node (as JSON) and introspection data.
    /// A missing field never satisfies a condition, inverted or not.
    pub fn holds(&self, node: &Value, data: &Value) -> bool {
        let root = match self.field.root() {
            Root::Properties => node.get("properties").unwrap_or(&Value::Null),
            Root::Node => node,
            Root::Data => data,
        };
        let values = self.field.resolve(root);
        if values.is_empty() {
            return false;
        }
        let result = match self.multiple {
            Multiple::Any => values.iter().any(|value| self.test(value)),
            Multiple::All => values.iter().all(|value| self.test(value)),
            Multiple::First => self.test(values[0]),
        };
        result != self.invert
    }

    fn test(&self, actual: &Value) -> bool {
        if let Some(regex) = &self.regex {
            return regex.is_match(&as_text(actual));
        }
        let numbers = as_number(actual).zip(as_number(&self.value));
        match self.op {
            Op::Eq | Op::Ne => {
                let equal = match numbers {
                    Some((a, b)) => a == b,
                    None => as_text(actual) == as_text(&self.value),
                };
                equal == (self.op == Op::Eq)
            }
            Op::Lt => numbers.is_some_and(|(a, b)| a < b),
            Op::Gt => numbers.is_some_and(|(a, b)| a > b),
            Op::Le => numbers.is_some_and(|(a, b)| a <= b),
            Op::Ge => numbers.is_some_and(|(a, b)| a >= b),
            Op::Contains | Op::Matches => false,
        }
    }
}
