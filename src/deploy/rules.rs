//! Introspection rules (Ironic inspector style), run after a node's inventory arrives.
//!
//! A rule file is a YAML list of rules; a rule whose conditions all hold runs its
//! actions: set a capability (e.g. profile=control), set a property, or fail the
//! inspection with a message. Before the rules run, the node's basic properties
//! (cpus, memory_mb, local_gb, cpu_arch, boot_mode) are derived from the inventory.

mod condition;
mod derive;
mod field;

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::deploy::store::{Node, Properties, Store, StoreError};

pub use condition::{Condition, Multiple, Op};
use condition::{RawCondition, parse_condition};
pub use derive::{derive_properties, merge_derived};
pub use field::{FieldPath, Root};

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}: not valid YAML: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: expected a list of rules or a mapping with a \"rules\" list")]
    Shape { file: String },
    #[error("{file}: rules[{index}]{}: {field}: {message}", describe(.description))]
    Invalid {
        file: String,
        index: usize,
        description: Option<String>,
        field: String,
        message: String,
    },
    #[error("rule \"{rule}\": set-attribute {path}: {message}")]
    Apply {
        rule: String,
        path: String,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn describe(description: &Option<String>) -> String {
    description
        .as_ref()
        .map(|text| format!(" ({text})"))
        .unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    SetCapability {
        name: String,
        value: String,
    },
    /// `path` is a JSON pointer under /properties, e.g. "/properties/cpus".
    SetAttribute {
        path: String,
        value: Value,
    },
    Fail {
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub description: String,
    pub conditions: Vec<Condition>,
    pub actions: Vec<Action>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    conditions: Vec<RawCondition>,
    actions: Vec<RawAction>,
}

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
enum RawAction {
    SetCapability { name: String, value: Value },
    SetAttribute { path: String, value: Value },
    Fail { message: String },
}

/// Reads and validates a rules file.
pub fn load_rules(path: &Path) -> Result<Vec<Rule>, RulesError> {
    let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_rules(&text, &path.display().to_string())
}

/// Parses rules YAML (or JSON); `file` names it in errors.
pub fn parse_rules(text: &str, file: &str) -> Result<Vec<Rule>, RulesError> {
    let document: Value = serde_yaml_ng::from_str(text).map_err(|err| RulesError::Syntax {
        file: file.to_string(),
        message: err.to_string(),
    })?;
    let entries = match document {
        Value::Array(entries) => entries,
        Value::Object(mut top) => match top.remove("rules") {
            Some(Value::Array(entries)) => entries,
            _ => {
                return Err(RulesError::Shape {
                    file: file.to_string(),
                });
            }
        },
        Value::Null => Vec::new(),
        _ => {
            return Err(RulesError::Shape {
                file: file.to_string(),
            });
        }
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| parse_rule(file, index, entry))
        .collect()
}

fn parse_rule(file: &str, index: usize, entry: Value) -> Result<Rule, RulesError> {
    let description = entry
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_string);
    let invalid = |field: String, message: String| RulesError::Invalid {
        file: file.to_string(),
        index,
        description: description.clone(),
        field,
        message,
    };
    let raw: RawRule = serde_path_to_error::deserialize(entry).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." {
            "(rule)".to_string()
        } else {
            path
        };
        invalid(field, err.into_inner().to_string())
    })?;
    if raw.actions.is_empty() {
        return Err(invalid(
            "actions".to_string(),
            "a rule needs at least one action".to_string(),
        ));
    }
    let mut conditions = Vec::new();
    for (i, condition) in raw.conditions.into_iter().enumerate() {
        conditions
            .push(parse_condition(condition).map_err(|(field, message)| {
                invalid(format!("conditions[{i}].{field}"), message)
            })?);
    }
    let mut actions = Vec::new();
    for (i, action) in raw.actions.into_iter().enumerate() {
        actions.push(
            parse_action(action)
                .map_err(|(field, message)| invalid(format!("actions[{i}].{field}"), message))?,
        );
    }
    Ok(Rule {
        description: raw.description.unwrap_or_else(|| format!("rules[{index}]")),
        conditions,
        actions,
    })
}

fn parse_action(raw: RawAction) -> Result<Action, (&'static str, String)> {
    Ok(match raw {
        RawAction::SetCapability { name, value } => {
            if name.trim().is_empty() || name.contains([':', ',']) {
                return Err(("name", format!("\"{name}\" is not a capability name")));
            }
            let value = match value {
                Value::String(text) => text,
                Value::Number(_) | Value::Bool(_) => value.to_string(),
                other => return Err(("value", format!("expected a string, got {other}"))),
            };
            Action::SetCapability { name, value }
        }
        RawAction::SetAttribute { path, value } => {
            if !path.starts_with("/properties/") || path.len() <= "/properties/".len() {
                return Err((
                    "path",
                    format!("\"{path}\": only /properties/... can be set"),
                ));
            }
            Action::SetAttribute { path, value }
        }
        RawAction::Fail { message } => Action::Fail { message },
    })
}

/// The rules whose conditions all hold, in file order.
pub fn matching_rules<'a>(rules: &'a [Rule], node: &Node, inventory: &Value) -> Vec<&'a Rule> {
    let node_json = serde_json::to_value(node.redacted()).unwrap_or(Value::Null);
    let data = serde_json::json!({ "inventory": inventory });
    rules
        .iter()
        .filter(|rule| rule.conditions.iter().all(|c| c.holds(&node_json, &data)))
        .collect()
}

/// Applies the matched rules' actions to `properties`. Returns the first fail
/// message instead (leaving `properties` as it was) if a matched rule fails.
pub fn apply_actions(
    rules: &[&Rule],
    properties: &mut Properties,
) -> Result<Option<String>, RulesError> {
    for rule in rules {
        for action in &rule.actions {
            if let Action::Fail { message } = action {
                return Ok(Some(format!("{} (rule \"{}\")", message, rule.description)));
            }
        }
    }
    let mut updated = properties.clone();
    for rule in rules {
        for action in &rule.actions {
            match action {
                Action::SetCapability { name, value } => {
                    updated.capabilities.insert(name.clone(), value.clone());
                }
                Action::SetAttribute { path, value } => {
                    updated = set_property(&updated, path, value.clone()).map_err(|message| {
                        RulesError::Apply {
                            rule: rule.description.clone(),
                            path: path.clone(),
                            message,
                        }
                    })?;
                }
                Action::Fail { .. } => {}
            }
        }
    }
    *properties = updated;
    Ok(None)
}

/// Sets `/properties/a/b` in a copy of `properties` via its JSON form, so typed
/// fields keep their types (setting cpus to "many" is an error, not data loss).
fn set_property(properties: &Properties, path: &str, value: Value) -> Result<Properties, String> {
    let mut json = serde_json::json!({ "properties": properties });
    let mut target = &mut json;
    let keys: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (last, parents) = keys.split_last().ok_or("empty path")?;
    for key in parents {
        let object = target
            .as_object_mut()
            .ok_or_else(|| format!("{key}: parent is not a mapping"))?;
        target = object
            .entry(key.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    target
        .as_object_mut()
        .ok_or_else(|| format!("{last}: parent is not a mapping"))?
        .insert(last.to_string(), value);
    serde_json::from_value(json["properties"].take()).map_err(|err| err.to_string())
}

/// What introspection did to a node.
#[derive(Debug, Clone)]
pub struct IntrospectionOutcome {
    pub node: Node,
    /// Descriptions of the rules that matched, in order.
    pub matched: Vec<String>,
    /// Set when a matched rule says `fail`: the caller fails inspection with it.
    pub failure: Option<String>,
}

/// Stores the inventory, derives the node's properties from it and runs the rules.
/// On a `fail` action the inventory is kept but the properties are left unchanged.
pub fn process_inventory(
    store: &Store,
    node: &str,
    inventory: &Value,
    rules: &[Rule],
) -> Result<IntrospectionOutcome, RulesError> {
    store.save_inventory(node, inventory)?;
    let mut current = store.node(node)?;
    current.properties = merge_derived(&current.properties, &derive_properties(inventory));
    let matched = matching_rules(rules, &current, inventory);
    let descriptions = matched
        .iter()
        .map(|rule| rule.description.clone())
        .collect();
    let mut properties = current.properties.clone();
    let failure = apply_actions(&matched, &mut properties)?;
    let node = match failure {
        Some(_) => store.node(node)?,
        None => store.set_properties(node, &properties)?,
    };
    Ok(IntrospectionOutcome {
        node,
        matched: descriptions,
        failure,
    })
}

#[cfg(test)]
mod tests;
