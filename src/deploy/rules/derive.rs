//! Node properties derived from an IPA-style inventory, as Ironic inspector does:
//! cpus from cpu.count, memory_mb from memory.physical_mb (else total bytes),
//! cpu_arch from cpu.architecture, local_gb from the root disk, and the boot_mode
//! capability from boot.current_boot_mode.

use serde_json::Value;

use crate::deploy::store::Properties;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// The default root disk is the smallest disk of at least this size (as the agent's
/// root device choice without hints).
const MIN_ROOT_DISK: u64 = 4 * GIB;

/// Properties found in the inventory; fields it does not describe stay `None`.
pub fn derive_properties(inventory: &Value) -> Properties {
    let mut properties = Properties {
        cpus: inventory.pointer("/cpu/count").and_then(Value::as_u64),
        memory_mb: inventory
            .pointer("/memory/physical_mb")
            .and_then(Value::as_u64)
            .or_else(|| {
                inventory
                    .pointer("/memory/total")
                    .and_then(Value::as_u64)
                    .map(|bytes| bytes / MIB)
            }),
        cpu_arch: inventory
            .pointer("/cpu/architecture")
            .and_then(Value::as_str)
            .map(str::to_string),
        local_gb: root_disk_size(inventory).map(|bytes| bytes / GIB),
        ..Properties::default()
    };
    if let Some(mode) = inventory
        .pointer("/boot/current_boot_mode")
        .and_then(Value::as_str)
    {
        properties
            .capabilities
            .insert("boot_mode".to_string(), mode.to_string());
    }
    properties
}

/// Size in bytes of the smallest disk of at least 4 GiB.
fn root_disk_size(inventory: &Value) -> Option<u64> {
    inventory
        .get("disks")?
        .as_array()?
        .iter()
        .filter_map(|disk| disk.get("size").and_then(Value::as_u64))
        .filter(|&size| size >= MIN_ROOT_DISK)
        .min()
}

/// `existing` with every field the inventory describes replaced by the derived value
/// (hardware facts win over what the import file claimed).
pub fn merge_derived(existing: &Properties, derived: &Properties) -> Properties {
    let mut merged = existing.clone();
    merged.cpus = derived.cpus.or(existing.cpus);
    merged.memory_mb = derived.memory_mb.or(existing.memory_mb);
    merged.local_gb = derived.local_gb.or(existing.local_gb);
    merged.cpu_arch = derived
        .cpu_arch
        .clone()
        .or_else(|| existing.cpu_arch.clone());
    for (key, value) in &derived.capabilities {
        merged.capabilities.insert(key.clone(), value.clone());
    }
    merged
}
