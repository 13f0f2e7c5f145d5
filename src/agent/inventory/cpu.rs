//! CPU and memory from /proc/cpuinfo, /proc/meminfo and cpufreq.

use std::path::Path;

use super::{Cpu, InventoryError, Memory, dmi, read_trimmed};

/// CPU count, model, frequency, architecture and flags of `root`.
pub fn collect_cpu(root: &Path) -> Result<Cpu, InventoryError> {
    let path = root.join("proc/cpuinfo");
    let text = std::fs::read_to_string(&path).map_err(|source| InventoryError::Read {
        path: path.clone(),
        source,
    })?;
    let fields = parse_cpuinfo(&text);
    if fields.count == 0 {
        return Err(InventoryError::Parse {
            path,
            problem: "no \"processor\" entries".into(),
        });
    }
    let max_khz = read_trimmed(&root.join("sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"))
        .and_then(|khz| khz.parse::<u64>().ok());
    let frequency = match max_khz {
        Some(khz) => Some(format_mhz(khz)),
        None => fields.mhz,
    };
    Ok(Cpu {
        count: fields.count,
        model_name: fields.model_name,
        frequency,
        architecture: std::env::consts::ARCH.to_string(),
        flags: fields.flags,
    })
}

/// kHz as MHz text without a useless ".000".
fn format_mhz(khz: u64) -> String {
    if khz.is_multiple_of(1000) {
        (khz / 1000).to_string()
    } else {
        format!("{}.{:03}", khz / 1000, khz % 1000)
    }
}

#[derive(Debug, Default, PartialEq)]
struct CpuinfoFields {
    count: u32,
    model_name: Option<String>,
    mhz: Option<String>,
    flags: Vec<String>,
}

/// The first processor's model, speed and flags, and how many processors there are.
/// x86 says "model name" and "flags", arm64 "Features" (and has no model name).
fn parse_cpuinfo(text: &str) -> CpuinfoFields {
    let mut out = CpuinfoFields::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => out.count += 1,
            "model name" if out.model_name.is_none() && !value.is_empty() => {
                out.model_name = Some(value.to_string())
            }
            "cpu MHz" if out.mhz.is_none() && !value.is_empty() => {
                out.mhz = Some(value.to_string())
            }
            "flags" | "Features" if out.flags.is_empty() => {
                out.flags = value.split_whitespace().map(str::to_string).collect()
            }
            _ => {}
        }
    }
    out
}

/// MemTotal, and installed memory from the SMBIOS memory devices (or, without
/// readable firmware tables, MemTotal rounded up to a multiple of 256 MiB: the
/// kernel keeps a little for itself, so a 4 GiB machine shows about 3.8 GiB).
pub fn collect_memory(root: &Path) -> Result<Memory, InventoryError> {
    let path = root.join("proc/meminfo");
    let text = std::fs::read_to_string(&path).map_err(|source| InventoryError::Read {
        path: path.clone(),
        source,
    })?;
    let total = meminfo_total(&text).ok_or_else(|| InventoryError::Parse {
        path,
        problem: "no valid \"MemTotal: N kB\" line".into(),
    })?;
    let physical_mb = dmi::installed_memory_mb(root).or_else(|| Some(round_up_mb(total)));
    Ok(Memory { total, physical_mb })
}

/// MemTotal in bytes.
fn meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

fn round_up_mb(total_bytes: u64) -> u64 {
    const STEP_MB: u64 = 256;
    (total_bytes >> 20).div_ceil(STEP_MB) * STEP_MB
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_x86_and_arm() {
        let x86 = "processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.138\nflags\t\t: fpu vme sse\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n";
        let f = parse_cpuinfo(x86);
        assert_eq!(f.count, 2);
        assert_eq!(f.model_name.as_deref(), Some("AMD EPYC"));
        assert_eq!(f.mhz.as_deref(), Some("2596.138"));
        assert_eq!(f.flags, ["fpu", "vme", "sse"]);
        let arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\n\nprocessor\t: 1\n";
        let f = parse_cpuinfo(arm);
        assert_eq!((f.count, f.model_name), (2, None));
        assert_eq!(f.flags, ["fp", "asimd"]);
    }

    #[test]
    fn meminfo_and_rounding() {
        assert_eq!(
            meminfo_total("MemTotal:       24684084 kB\nMemFree: 1 kB\n"),
            Some(24684084 * 1024)
        );
        assert_eq!(meminfo_total("MemTotal: lots\n"), None);
        assert_eq!(meminfo_total("MemTotal: 12\n"), None);
        assert_eq!(meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(round_up_mb(3_900 << 20), 4096);
        assert_eq!(round_up_mb(2048 << 20), 2048);
        assert_eq!(format_mhz(3_500_000), "3500");
        assert_eq!(format_mhz(2_596_138), "2596.138");
    }
}
