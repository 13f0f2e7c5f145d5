//! Reading one node's fields: typed accessors that record a problem (index, name,
//! field) instead of stopping, and the readers for ports, properties and driver info.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::NodeProblem;
use crate::deploy::store::{Driver, DriverInfo, Properties, QemuFirmware};

pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Reads one node's fields, recording every problem found.
pub(super) struct NodeReader<'a> {
    pub(super) index: usize,
    pub(super) name: Option<String>,
    pub(super) fields: &'a Map<String, Value>,
    pub(super) problems: &'a mut Vec<NodeProblem>,
}

impl NodeReader<'_> {
    pub(super) fn problem(&mut self, field: &str, message: String) {
        self.problems.push(NodeProblem {
            index: self.index,
            name: self.name.clone(),
            field: field.to_string(),
            message,
        });
    }

    pub(super) fn string(&mut self, field: &str) -> Option<String> {
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
    pub(super) fn number(&mut self, field: &str) -> Option<u64> {
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

    pub(super) fn required<T>(&mut self, field: &str, value: Option<T>, driver: &str) -> Option<T> {
        if value.is_none() && !self.reported(field) {
            self.problem(field, format!("required for pm_type {driver}"));
        }
        value
    }

    /// Whether a problem was already recorded for this node's `field`.
    pub(super) fn reported(&self, field: &str) -> bool {
        self.problems
            .iter()
            .any(|problem| problem.index == self.index && problem.field == field)
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

pub(super) fn read_macs(reader: &mut NodeReader<'_>) -> Vec<String> {
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

pub(super) fn read_properties(reader: &mut NodeReader<'_>) -> Properties {
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
pub(super) fn read_capabilities(reader: &mut NodeReader<'_>) -> Option<BTreeMap<String, String>> {
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

pub(super) fn read_driver_info(
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
        redfish_verify_ca: read_verify_ca(reader),
        redfish_auth_type: reader.string("redfish_auth_type").and_then(|text| {
            let lower = text.to_ascii_lowercase();
            if lower == "basic" || lower == "session" {
                Some(lower)
            } else {
                reader.problem(
                    "redfish_auth_type",
                    format!("expected basic or session, got \"{text}\""),
                );
                None
            }
        }),
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

/// `redfish_verify_ca`: a boolean (true or false, also as a string) or a CA file path.
fn read_verify_ca(reader: &mut NodeReader<'_>) -> Option<String> {
    if let Some(Value::Bool(verify)) = reader.fields.get("redfish_verify_ca") {
        return Some(verify.to_string());
    }
    let text = reader.string("redfish_verify_ca")?;
    match text.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Some("true".to_string()),
        "false" | "no" | "0" => Some("false".to_string()),
        _ => Some(text),
    }
}
