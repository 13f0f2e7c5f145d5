//! Text output of the operator commands: aligned tables and the `node show` page.

use std::fmt::Write as _;

use serde_json::Value;

use crate::deploy::protocol::{DeploymentStatus, NodeConfigState};

use super::{NodeDetails, NodeRecord};

/// Longest last error shown in a table cell (`node show` prints it whole).
const SHORT_ERROR: usize = 48;

/// Left-aligned columns separated by two spaces, with a header line. Widths are
/// counted in characters, so names with accents stay aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// First line of an error, cut to fit a table cell.
pub fn short_error(error: Option<&str>) -> String {
    let Some(error) = error else {
        return String::new();
    };
    let line = error.lines().next().unwrap_or("");
    if line.chars().count() <= SHORT_ERROR && !error.contains('\n') {
        return line.to_string();
    }
    let cut: String = line.chars().take(SHORT_ERROR - 3).collect();
    format!("{cut}...")
}

/// `kiln node list`.
pub fn node_table(nodes: &[NodeRecord]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|node| {
            vec![
                node.name.clone(),
                node.uuid.to_string(),
                node.power_state
                    .map(|power| power.as_str().to_string())
                    .unwrap_or_else(|| "-".to_string()),
                node.provision_state.as_str().to_string(),
                node.profile().unwrap_or("-").to_string(),
                short_error(node.last_error.as_deref()),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "UUID",
            "POWER STATE",
            "PROVISION STATE",
            "PROFILE",
            "LAST ERROR",
        ],
        &rows,
    )
}

/// `kiln deploy status`: one line per node.
pub fn deployment_table(status: &DeploymentStatus) -> String {
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|node| {
            vec![
                node.node.clone(),
                node.role.clone().unwrap_or_else(|| "-".to_string()),
                node.hostname.clone().unwrap_or_else(|| "-".to_string()),
                node.state.clone(),
                node.progress
                    .map(|p| progress_text(p.done, Some(p.total)))
                    .unwrap_or_else(|| "-".to_string()),
                config_text(node.config.as_ref()),
                short_error(node.last_error.as_deref()),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "ROLE",
            "HOSTNAME",
            "PROVISION STATE",
            "PROGRESS",
            "CONFIG",
            "LAST ERROR",
        ],
        &rows,
    )
}

/// The role configuration a node reported: "configured", "config failed
/// (configure.d/20-x)", with "update pending" while it has not applied the
/// newest metadata; "-" before its first report.
pub fn config_text(config: Option<&NodeConfigState>) -> String {
    let Some(config) = config else {
        return "-".to_string();
    };
    let mut text = config.state.as_str().to_string();
    if let Some(script) = &config.script {
        text.push_str(&format!(" ({script})"));
    }
    if !config.current {
        text.push_str(", update pending");
    }
    text
}

/// "512.0 MiB / 1.0 GiB (50%)".
pub fn progress_text(done: u64, total: Option<u64>) -> String {
    match total {
        Some(total) if total > 0 => format!(
            "{} / {} ({}%)",
            bytes(done),
            bytes(total),
            done.min(total) * 100 / total
        ),
        _ => bytes(done),
    }
}

/// Binary units with one decimal: 1536 -> "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `kiln node show`: every field of the record, an inventory summary and the timeline.
pub fn node_page(details: &NodeDetails) -> String {
    let mut out = String::new();
    let record = serde_json::to_value(&details.node).unwrap_or(Value::Null);
    let mut rows = Vec::new();
    if let Value::Object(fields) = record {
        for (key, value) in fields {
            let text = match value.as_i64() {
                // Unix seconds read better as dates.
                Some(seconds) if key.ends_with("_at") || key == "last_heartbeat" => utc(seconds),
                _ => field_text(&value),
            };
            rows.push(vec![key, text]);
        }
    }
    rows.sort();
    out.push_str(&table(&["FIELD", "VALUE"], &rows));
    if let Some(inventory) = &details.inventory {
        out.push_str("\nInventory:\n");
        out.push_str(&inventory_summary(inventory));
    }
    if !details.timeline.is_empty() {
        out.push_str("\nTimeline:\n");
        let rows: Vec<Vec<String>> = details
            .timeline
            .iter()
            .map(|entry| {
                vec![
                    utc(entry.time),
                    entry.event.clone(),
                    format!("{} -> {}", entry.from, entry.to),
                    entry.message.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(&["TIME (UTC)", "EVENT", "STATES", "MESSAGE"], &rows));
    }
    out
}

fn field_text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The IPA inventory's headline facts, one per line.
pub fn inventory_summary(inventory: &Value) -> String {
    let text = |value: &Value, key: &str| -> String {
        match value.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => "?".to_string(),
            Some(other) => other.to_string(),
        }
    };
    let mut out = String::new();
    let cpu = inventory.get("cpu").unwrap_or(&Value::Null);
    let _ = writeln!(
        out,
        "  cpu: {} x {} ({})",
        text(cpu, "count"),
        text(cpu, "model_name"),
        text(cpu, "architecture")
    );
    let memory = inventory.get("memory").unwrap_or(&Value::Null);
    let _ = writeln!(out, "  memory: {} MiB", text(memory, "physical_mb"));
    let vendor = inventory.get("system_vendor").unwrap_or(&Value::Null);
    let _ = writeln!(
        out,
        "  system: {} {} (serial {})",
        text(vendor, "manufacturer"),
        text(vendor, "product_name"),
        text(vendor, "serial_number")
    );
    if let Some(boot) = inventory.get("boot") {
        let _ = writeln!(out, "  boot mode: {}", text(boot, "current_boot_mode"));
    }
    for disk in inventory
        .get("disks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let size = disk
            .get("size")
            .and_then(Value::as_u64)
            .map(bytes)
            .unwrap_or_else(|| "?".to_string());
        let _ = writeln!(
            out,
            "  disk {}: {size}, {} (serial {}){}",
            text(disk, "name"),
            text(disk, "model"),
            text(disk, "serial"),
            if disk.get("rotational") == Some(&Value::Bool(true)) {
                ", rotational"
            } else {
                ""
            }
        );
    }
    for interface in inventory
        .get("interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            out,
            "  interface {}: {}",
            text(interface, "name"),
            text(interface, "mac_address")
        );
    }
    out
}

/// Unix seconds as "YYYY-MM-DD HH:MM:SS" (UTC), without a time-zone database.
pub fn utc(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    let (year, month, day) = crate::util::civil::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}
