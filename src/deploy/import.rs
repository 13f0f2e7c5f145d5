//! `kiln node import FILE`: TripleO's instackenv.json and nodes.yaml.
//!
//! The whole file is checked before anything is returned: every problem is reported
//! with the node's index (and name when known) and the field, and the caller gets the
//! nodes only if all of them are valid, so the store can enroll them in one go.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use serde_json::{Map, Value};

use crate::deploy::store::{Driver, DriverInfo, NewNode, Properties, QemuFirmware};

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

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
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
];

/// Reads one node's fields, recording every problem found.
struct NodeReader<'a> {
    index: usize,
    name: Option<String>,
    fields: &'a Map<String, Value>,
    problems: &'a mut Vec<NodeProblem>,
}

impl NodeReader<'_> {
    fn problem(&mut self, field: &str, message: String) {
        self.problems.push(NodeProblem {
            index: self.index,
            name: self.name.clone(),
            field: field.to_string(),
            message,
        });
    }

    fn string(&mut self, field: &str) -> Option<String> {
        match self.fields.get(field)? {
            Value::Null => None,
            Value::String(text) if text.trim().is_empty() => {
                self.problem(field, "must not be empty".to_string());
                None
            }
            Value::String(text) => Some(text.trim().to_string()),
            // Ports and passwords written as YAML numbers are still strings to us.
            Value::Number(number) => Some(number.to_string()),
            other => {
                self.problem(field, format!("expected a string, got {}", kind(other)));
                None
            }
        }
    }

    /// A non-negative integer, given as a number or a numeric string (TripleO files
    /// often quote them).
    fn number(&mut self, field: &str) -> Option<u64> {
        let value = self.fields.get(field)?;
        let parsed = match value {
            Value::Null => return None,
            Value::Number(number) => number.as_u64(),
            Value::String(text) => text.trim().parse::<u64>().ok(),
            _ => None,
        };
        if parsed.is_none() {
            self.problem(field, format!("expected a number, got {value}"));
        }
        parsed
    }

    fn required<T>(&mut self, field: &str, value: Option<T>, driver: &str) -> Option<T> {
        if value.is_none() && !self.reported(field) {
            self.problem(field, format!("required for pm_type {driver}"));
        }
        value
    }

    /// Whether a problem was already recorded for this node's `field`.
    fn reported(&self, field: &str) -> bool {
        self.problems
            .iter()
            .any(|problem| problem.index == self.index && problem.field == field)
    }
}

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

/// Normalizes a MAC to lower-case colon form, or says why it is not one.
pub fn normalize_mac(text: &str) -> Result<String, String> {
    let parts: Vec<&str> = text.trim().split([':', '-']).collect();
    let valid = parts.len() == 6
        && parts
            .iter()
            .all(|part| part.len() == 2 && part.chars().all(|c| c.is_ascii_hexdigit()));
    if !valid {
        return Err(format!(
            "\"{text}\" is not a MAC address (six hex pairs like 52:54:00:12:34:56)"
        ));
    }
    Ok(parts.join(":").to_ascii_lowercase())
}

fn read_macs(reader: &mut NodeReader<'_>) -> Vec<String> {
    let mut found: Vec<(String, Value)> = Vec::new();
    match reader.fields.get("ports") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ports)) => {
            for (i, port) in ports.iter().enumerate() {
                match port.get("address") {
                    Some(address) => found.push((format!("ports[{i}].address"), address.clone())),
                    None => reader.problem(
                        &format!("ports[{i}]"),
                        "expected a mapping with an \"address\"".to_string(),
                    ),
                }
            }
        }
        Some(other) => reader.problem("ports", format!("expected a list, got {}", kind(other))),
    }
    match reader.fields.get("mac") {
        None | Some(Value::Null) => {}
        Some(Value::Array(macs)) => {
            for (i, mac) in macs.iter().enumerate() {
                found.push((format!("mac[{i}]"), mac.clone()));
            }
        }
        Some(single @ Value::String(_)) => found.push(("mac".to_string(), single.clone())),
        Some(other) => reader.problem("mac", format!("expected a list, got {}", kind(other))),
    }

    let mut macs = Vec::new();
    for (field, value) in found {
        let normalized = match &value {
            Value::String(text) => normalize_mac(text),
            other => Err(format!(
                "expected a MAC address string, got {}",
                kind(other)
            )),
        };
        match normalized {
            Ok(mac) if macs.contains(&mac) => {
                reader.problem(&field, format!("{mac} is listed twice for this node"))
            }
            Ok(mac) => macs.push(mac),
            Err(message) => reader.problem(&field, message),
        }
    }
    if macs.is_empty() && !reader.fields.contains_key("ports") && !reader.fields.contains_key("mac")
    {
        reader.problem(
            "ports",
            "at least one port MAC address is required (the agent finds its node by MAC)"
                .to_string(),
        );
    }
    macs
}

fn read_properties(reader: &mut NodeReader<'_>) -> Properties {
    let mut properties = Properties {
        cpus: reader.number("cpu"),
        memory_mb: reader.number("memory"),
        local_gb: reader.number("disk"),
        cpu_arch: reader.string("arch"),
        ..Properties::default()
    };
    if let Some(capabilities) = read_capabilities(reader) {
        properties.capabilities = capabilities;
    }
    match reader.fields.get("root_device") {
        None | Some(Value::Null) => {}
        Some(hints @ Value::Object(_)) => {
            properties
                .extra
                .insert("root_device".to_string(), hints.clone());
        }
        Some(other) => reader.problem(
            "root_device",
            format!("expected a mapping of hints, got {}", kind(other)),
        ),
    }
    properties
}

/// "profile:compute,boot_option:local" or a mapping.
fn read_capabilities(reader: &mut NodeReader<'_>) -> Option<BTreeMap<String, String>> {
    let mut capabilities = BTreeMap::new();
    match reader.fields.get("capabilities")? {
        Value::Null => {}
        Value::String(text) => {
            for item in text
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
            {
                match item.split_once(':') {
                    Some((key, value)) if !key.trim().is_empty() => {
                        capabilities.insert(key.trim().to_string(), value.trim().to_string());
                    }
                    _ => reader.problem("capabilities", format!("\"{item}\" is not KEY:VALUE")),
                }
            }
        }
        Value::Object(map) => {
            for (key, value) in map {
                match value {
                    Value::String(text) => {
                        capabilities.insert(key.clone(), text.clone());
                    }
                    Value::Number(_) | Value::Bool(_) => {
                        capabilities.insert(key.clone(), value.to_string());
                    }
                    other => reader.problem(
                        &format!("capabilities.{key}"),
                        format!("expected a string, got {}", kind(other)),
                    ),
                }
            }
        }
        other => reader.problem(
            "capabilities",
            format!(
                "expected \"key:value,...\" or a mapping, got {}",
                kind(other)
            ),
        ),
    }
    Some(capabilities)
}

fn read_driver_info(
    reader: &mut NodeReader<'_>,
    driver: Option<Driver>,
    properties: &Properties,
) -> DriverInfo {
    let pm_port = reader.number("pm_port").and_then(|port| {
        let port = u16::try_from(port).ok().filter(|&port| port != 0);
        if port.is_none() {
            reader.problem("pm_port", "expected a port number 1-65535".to_string());
        }
        port
    });
    let qemu_cpus = reader.number("qemu_cpus").and_then(|cpus| {
        let cpus = u32::try_from(cpus).ok().filter(|&cpus| cpus > 0);
        if cpus.is_none() {
            reader.problem(
                "qemu_cpus",
                "expected a CPU count of at least 1".to_string(),
            );
        }
        cpus
    });
    let qemu_firmware =
        reader
            .string("qemu_firmware")
            .and_then(|text| match text.to_ascii_lowercase().as_str() {
                "uefi" => Some(QemuFirmware::Uefi),
                "bios" => Some(QemuFirmware::Bios),
                _ => {
                    reader.problem(
                        "qemu_firmware",
                        format!("expected uefi or bios, got \"{text}\""),
                    );
                    None
                }
            });
    let mut info = DriverInfo {
        pm_addr: reader.string("pm_addr"),
        pm_port,
        pm_user: reader.string("pm_user"),
        pm_password: reader.string("pm_password"),
        pm_system_id: reader.string("pm_system_id"),
        qemu_disk: reader.string("qemu_disk"),
        qemu_memory_mb: reader.number("qemu_memory_mb"),
        qemu_cpus,
        qemu_firmware,
    };
    let Some(driver) = driver else {
        return info;
    };
    let name = driver.as_str();
    match driver {
        Driver::Ipmi => {
            reader.required("pm_addr", info.pm_addr.as_ref(), name);
            reader.required("pm_user", info.pm_user.as_ref(), name);
            reader.required("pm_password", info.pm_password.as_ref(), name);
        }
        Driver::Redfish => {
            reader.required("pm_addr", info.pm_addr.as_ref(), name);
            reader.required("pm_user", info.pm_user.as_ref(), name);
            reader.required("pm_password", info.pm_password.as_ref(), name);
            reader.required("pm_system_id", info.pm_system_id.as_ref(), name);
        }
        Driver::Qemu => {
            reader.required("qemu_disk", info.qemu_disk.as_ref(), name);
            info.qemu_memory_mb = info.qemu_memory_mb.or(properties.memory_mb);
            info.qemu_cpus = info
                .qemu_cpus
                .or_else(|| properties.cpus.and_then(|c| u32::try_from(c).ok()));
            if info.qemu_memory_mb.is_none()
                && !reader.reported("qemu_memory_mb")
                && !reader.reported("memory")
            {
                reader.problem(
                    "qemu_memory_mb",
                    "required for pm_type qemu (or give memory)".to_string(),
                );
            }
            info.qemu_firmware = info.qemu_firmware.or(Some(QemuFirmware::Uefi));
        }
        Driver::Manual => {}
    }
    info
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
