//! `kiln node import FILE`: TripleO's instackenv.json and nodes.yaml.
//!
//! The whole file is checked before anything is returned: every problem is reported
//! with the node's index (and name when known) and the field, and the caller gets the
//! nodes only if all of them are valid, so the store can enroll them in one go.

mod fields;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde_json::Value;

use crate::deploy::store::{Driver, NewNode};

pub use fields::normalize_mac;
use fields::{NodeReader, kind, read_driver_info, read_macs, read_properties};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}: not valid {format}: {message}")]
    Syntax {
        file: String,
        format: &'static str,
        message: String,
    },
    #[error("{file}: expected a list of nodes or a mapping with a \"nodes\" list, found {found}")]
    Shape { file: String, found: &'static str },
    #[error("{file}: {} problem(s), nothing imported:\n{}", .problems.len(), list(.problems))]
    Invalid {
        file: String,
        problems: Vec<NodeProblem>,
    },
}

/// One thing wrong with one node of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProblem {
    pub index: usize,
    pub name: Option<String>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for NodeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nodes[{}]", self.index)?;
        if let Some(name) = &self.name {
            write!(f, " ({name})")?;
        }
        write!(f, ": {}: {}", self.field, self.message)
    }
}

fn list(problems: &[NodeProblem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
    lines.join("\n")
}

/// Reads and validates a node file.
pub fn import_file(path: &Path) -> Result<Vec<NewNode>, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_nodes(&text, &path.display().to_string())
}

/// Parses and validates node file contents; `file` names it in errors. JSON and YAML
/// are both accepted whatever the name.
pub fn parse_nodes(text: &str, file: &str) -> Result<Vec<NewNode>, ImportError> {
    let document = parse_document(text, file)?;
    let entries = match document {
        Value::Array(entries) => entries,
        Value::Object(mut top) => match top.remove("nodes") {
            Some(Value::Array(entries)) => entries,
            Some(other) => {
                return Err(ImportError::Shape {
                    file: file.to_string(),
                    found: kind(&other),
                });
            }
            None => {
                return Err(ImportError::Shape {
                    file: file.to_string(),
                    found: "a mapping without \"nodes\"",
                });
            }
        },
        other => {
            return Err(ImportError::Shape {
                file: file.to_string(),
                found: kind(&other),
            });
        }
    };

    let mut problems = Vec::new();
    let mut nodes = Vec::new();
    let mut identities = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let (node, identity) = parse_node(index, entry, &mut problems);
        nodes.extend(node);
        identities.push(identity);
    }
    check_duplicates(&identities, &mut problems);
    if problems.is_empty() {
        Ok(nodes)
    } else {
        problems.sort_by_key(|problem| problem.index);
        Err(ImportError::Invalid {
            file: file.to_string(),
            problems,
        })
    }
}

fn parse_document(text: &str, file: &str) -> Result<Value, ImportError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON proper first: its errors are clearer than YAML's for a .json file.
        return serde_json::from_str(text).map_err(|err| ImportError::Syntax {
            file: file.to_string(),
            format: "JSON",
            message: err.to_string(),
        });
    }
    serde_yaml_ng::from_str(text).map_err(|err| ImportError::Syntax {
        file: file.to_string(),
        format: "YAML",
        message: err.to_string(),
    })
}

/// Fields TripleO files carry that kiln has no use for; accepted and ignored.
const IGNORED_FIELDS: &[&str] = &[
    "_comment",
    "description",
    "kernel_id",
    "ramdisk_id",
    "deploy_kernel",
    "deploy_ramdisk",
    "platform",
    "resource_class",
    "pm_vbmc_node",
];

const KNOWN_FIELDS: &[&str] = &[
    "name",
    "pm_type",
    "pm_addr",
    "pm_port",
    "pm_user",
    "pm_password",
    "pm_system_id",
    "ports",
    "mac",
    "cpu",
    "memory",
    "disk",
    "arch",
    "capabilities",
    "root_device",
    "qemu_disk",
    "qemu_memory_mb",
    "qemu_cpus",
    "qemu_firmware",
    "redfish_verify_ca",
    "redfish_auth_type",
];

/// What duplicate detection needs of a node, valid or not.
struct Identity {
    index: usize,
    name: Option<String>,
    macs: Vec<String>,
}

/// Parses one node; the node is `None` if it has any problem.
fn parse_node(
    index: usize,
    entry: &Value,
    problems: &mut Vec<NodeProblem>,
) -> (Option<NewNode>, Identity) {
    let Value::Object(fields) = entry else {
        problems.push(NodeProblem {
            index,
            name: None,
            field: "(node)".to_string(),
            message: format!("expected a mapping, got {}", kind(entry)),
        });
        let identity = Identity {
            index,
            name: None,
            macs: Vec::new(),
        };
        return (None, identity);
    };
    let mut reader = NodeReader {
        index,
        name: None,
        fields,
        problems,
    };
    let first_problem = reader.problems.len();

    let name = reader.string("name");
    reader.name = name.clone();
    if let Some(Err(message)) = name.as_deref().map(check_name) {
        reader.problem("name", message);
    }

    for key in fields.keys() {
        if !KNOWN_FIELDS.contains(&key.as_str()) && !IGNORED_FIELDS.contains(&key.as_str()) {
            reader.problem(key, "unknown field".to_string());
        }
    }

    let driver = match reader.string("pm_type") {
        None => Some(Driver::Ipmi),
        Some(text) => {
            match driver_from_pm_type(&text) {
                Some(driver) => Some(driver),
                None => {
                    reader.problem(
                    "pm_type",
                    format!("unknown power driver \"{text}\" (expected ipmi, redfish, manual or qemu)"),
                );
                    None
                }
            }
        }
    };

    let macs = read_macs(&mut reader);
    let properties = read_properties(&mut reader);
    let driver_info = read_driver_info(&mut reader, driver, &properties);
    let mut properties = properties;
    if properties.memory_mb.is_none() {
        properties.memory_mb = driver_info.qemu_memory_mb;
    }
    if properties.cpus.is_none() {
        properties.cpus = driver_info.qemu_cpus.map(u64::from);
    }

    let name = name.unwrap_or_else(|| default_name(&macs, index));
    let identity = Identity {
        index,
        name: Some(name.clone()),
        macs: macs.clone(),
    };
    let node = match driver {
        Some(driver) if reader.problems.len() == first_problem => Some(NewNode {
            name,
            driver,
            driver_info,
            properties,
            macs,
        }),
        _ => None,
    };
    (node, identity)
}

/// Ironic classic driver names still found in TripleO files map to their hardware type.
fn driver_from_pm_type(pm_type: &str) -> Option<Driver> {
    match pm_type.to_ascii_lowercase().as_str() {
        "ipmi" | "ipmitool" | "pxe_ipmitool" | "agent_ipmitool" | "pxe_ipmi" => Some(Driver::Ipmi),
        "redfish" | "pxe_redfish" | "idrac-redfish" => Some(Driver::Redfish),
        "manual" | "manual-management" | "fake" | "fake-hardware" => Some(Driver::Manual),
        "qemu" => Some(Driver::Qemu),
        _ => None,
    }
}

/// Names are used in URLs and on the command line, and must not look like a UUID
/// (nodes are looked up by either).
fn check_name(name: &str) -> Result<(), String> {
    if name.len() > 63 {
        return Err(format!("\"{name}\" is longer than 63 characters"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~')))
    {
        return Err(format!(
            "\"{name}\" contains {bad:?}; use letters, digits, '-', '_', '.', '~'"
        ));
    }
    if uuid::Uuid::parse_str(name).is_ok() {
        return Err(format!("\"{name}\" looks like a UUID"));
    }
    Ok(())
}

fn default_name(macs: &[String], index: usize) -> String {
    match macs.first() {
        Some(mac) => format!("node-{}", mac.replace(':', "")),
        None => format!("node-{index}"),
    }
}

/// Names and MACs must be unique within the file.
fn check_duplicates(identities: &[Identity], problems: &mut Vec<NodeProblem>) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut macs: HashMap<&str, usize> = HashMap::new();
    for node in identities {
        if let Some(name) = &node.name {
            if let Some(&first) = names.get(name.as_str()) {
                problems.push(NodeProblem {
                    index: node.index,
                    name: Some(name.clone()),
                    field: "name".to_string(),
                    message: format!("\"{name}\" is also the name of nodes[{first}]"),
                });
            } else {
                names.insert(name, node.index);
            }
        }
        for mac in &node.macs {
            if let Some(&first) = macs.get(mac.as_str()) {
                problems.push(NodeProblem {
                    index: node.index,
                    name: node.name.clone(),
                    field: "ports".to_string(),
                    message: format!("{mac} is also a MAC of nodes[{first}]"),
                });
            } else {
                macs.insert(mac, node.index);
            }
        }
    }
}

#[cfg(test)]
mod tests;
