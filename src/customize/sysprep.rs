//! sysprep: remove what makes an installed guest one particular machine
//! (machine-id, host keys, logs, leases, caches), as virt-sysprep's
//! operations do. `--operations defaults,-NAME,NAME` picks them.

use crate::customize::CustomizeError;
use crate::customize::guest::{GuestRoot, Kind};
use crate::initrd::glob::matches;

pub struct Operation {
    pub name: &'static str,
    pub default: bool,
    pub description: &'static str,
    run: fn(&GuestRoot) -> Result<(), CustomizeError>,
}

pub const OPERATIONS: &[Operation] = &[
    Operation {
        name: "bash-history",
        default: true,
        description: "Remove the bash history of root and of the users in /home",
        run: bash_history,
    },
    Operation {
        name: "cloud-init",
        default: true,
        description: "Remove cloud-init's state and logs so it runs again",
        run: cloud_init,
    },
    Operation {
        name: "dhcp-client-state",
        default: true,
        description: "Remove DHCP client leases",
        run: dhcp_client_state,
    },
    Operation {
        name: "logfiles",
        default: true,
        description: "Remove log files and the systemd journal",
        run: logfiles,
    },
    Operation {
        name: "machine-id",
        default: true,
        description: "Empty /etc/machine-id (kept as an empty file, so systemd makes a new one at boot)",
        run: machine_id,
    },
    Operation {
        name: "net-hwaddr",
        default: true,
        description: "Remove HWADDR from ifcfg network scripts",
        run: net_hwaddr,
    },
    Operation {
        name: "package-manager-cache",
        default: true,
        description: "Remove package manager caches (apt, dnf, yum, zypper)",
        run: package_manager_cache,
    },
    Operation {
        name: "rh-subscription-manager",
        default: true,
        description: "Remove subscription-manager's consumer and entitlement certificates",
        run: rh_subscription_manager,
    },
    Operation {
        name: "ssh-hostkeys",
        default: true,
        description: "Remove the SSH host keys (regenerated at boot)",
        run: ssh_hostkeys,
    },
    Operation {
        name: "ssh-userdir",
        default: false,
        description: "Remove the .ssh directories of root and of the users in /home",
        run: ssh_userdir,
    },
    Operation {
        name: "tmp-files",
        default: true,
        description: "Remove the contents of /tmp and /var/tmp",
        run: tmp_files,
    },
    Operation {
        name: "udev-persistent-net",
        default: true,
        description: "Remove udev's persistent network interface rules",
        run: udev_persistent_net,
    },
];

#[derive(Debug, thiserror::Error)]
pub enum SysprepError {
    #[error("--operations: unknown operation `{0}` (see --list-operations)")]
    Unknown(String),
    #[error("sysprep operation {name}: {source}")]
    Failed {
        name: &'static str,
        #[source]
        source: CustomizeError,
    },
    #[error(transparent)]
    Guest(#[from] crate::customize::guest::GuestError),
}

/// `NAME  yes|no  description` lines, as --list-operations prints them.
pub fn list_operations() -> String {
    OPERATIONS
        .iter()
        .map(|o| {
            format!(
                "{} {} {}\n",
                o.name,
                if o.default { "*" } else { " " },
                o.description
            )
        })
        .collect()
}

/// Resolve `defaults,-NAME,NAME,all,none` (left to right) to operation names.
pub fn select(spec: &str) -> Result<Vec<&'static str>, SysprepError> {
    let mut on: Vec<bool> = vec![false; OPERATIONS.len()];
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (neg, name) = match item.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, item),
        };
        match name {
            "defaults" => OPERATIONS.iter().zip(on.iter_mut()).for_each(|(o, s)| {
                if o.default {
                    *s = !neg;
                }
            }),
            "all" => on.iter_mut().for_each(|s| *s = !neg),
            "none" if !neg => on.iter_mut().for_each(|s| *s = false),
            _ => {
                let i = OPERATIONS
                    .iter()
                    .position(|o| o.name == name)
                    .ok_or_else(|| SysprepError::Unknown(name.to_string()))?;
                on[i] = !neg;
            }
        }
    }
    Ok(OPERATIONS
        .iter()
        .zip(on)
        .filter(|(_, s)| *s)
        .map(|(o, _)| o.name)
        .collect())
}

/// Run the named operations (in the order of OPERATIONS) on the guest tree.
pub fn sysprep(root: &std::path::Path, names: &[&str]) -> Result<(), SysprepError> {
    let g = GuestRoot::open(root)?;
    for op in OPERATIONS.iter().filter(|o| names.contains(&o.name)) {
        (op.run)(&g).map_err(|source| SysprepError::Failed {
            name: op.name,
            source,
        })?;
    }
    Ok(())
}

/// Remove entries of `dir` whose names match one of `patterns`.
fn remove_matching(g: &GuestRoot, dir: &str, patterns: &[&str]) -> Result<(), CustomizeError> {
    for name in g.list_dir(dir)? {
        if patterns.iter().any(|p| matches(p, &name)) {
            g.remove_all(&format!("{dir}/{name}"))?;
        }
    }
    Ok(())
}

/// Home directories: /root and every /home/* directory.
fn homes(g: &GuestRoot) -> Result<Vec<String>, CustomizeError> {
    let mut out = vec!["/root".to_string()];
    for name in g.list_dir("/home")? {
        out.push(format!("/home/{name}"));
    }
    Ok(out)
}

fn bash_history(g: &GuestRoot) -> Result<(), CustomizeError> {
    for home in homes(g)? {
        g.remove_all(&format!("{home}/.bash_history"))?;
    }
    Ok(())
}

fn ssh_userdir(g: &GuestRoot) -> Result<(), CustomizeError> {
    for home in homes(g)? {
        g.remove_all(&format!("{home}/.ssh"))?;
    }
    Ok(())
}

fn cloud_init(g: &GuestRoot) -> Result<(), CustomizeError> {
    remove_matching(g, "/var/lib/cloud", &["*"])?;
    remove_matching(g, "/var/log", &["cloud-init*.log"])
}

fn dhcp_client_state(g: &GuestRoot) -> Result<(), CustomizeError> {
    remove_matching(g, "/var/lib/dhclient", &["*"])?;
    remove_matching(g, "/var/lib/dhcp", &["*.leases", "*.lease"])?;
    remove_matching(g, "/var/lib/NetworkManager", &["dhclient-*", "internal-*"])?;
    remove_matching(g, "/var/lib/systemd/network", &["*"])
}

fn logfiles(g: &GuestRoot) -> Result<(), CustomizeError> {
    // Rotated logs go; current ones are emptied, so services that expect
    // the file (and its owner and mode) find it.
    remove_matching(
        g,
        "/var/log",
        &["*.gz", "*.xz", "*.old", "*.[0-9]", "*-[0-9]*"],
    )?;
    remove_matching(g, "/var/log/journal", &["*"])?;
    for sub in [
        "/var/log",
        "/var/log/apt",
        "/var/log/audit",
        "/var/log/anaconda",
        "/var/log/installer",
    ] {
        if g.kind(sub)? != Some(Kind::Dir) {
            continue;
        }
        for name in g.list_dir(sub)? {
            let path = format!("{sub}/{name}");
            if g.kind(&path)? == Some(Kind::File) {
                g.open_write(&path, 0o640, false)?;
            }
        }
    }
    g.remove_all("/root/anaconda-ks.cfg")?;
    g.remove_all("/root/install.log")?;
    Ok(())
}

fn machine_id(g: &GuestRoot) -> Result<(), CustomizeError> {
    if g.kind("/etc/machine-id")? == Some(Kind::File) {
        g.open_write("/etc/machine-id", 0o444, false)?;
    }
    // dbus's copy: a file is removed, a link to /etc/machine-id kept.
    if g.kind("/var/lib/dbus/machine-id")? == Some(Kind::File) {
        g.remove_all("/var/lib/dbus/machine-id")?;
    }
    Ok(())
}

fn net_hwaddr(g: &GuestRoot) -> Result<(), CustomizeError> {
    let dir = "/etc/sysconfig/network-scripts";
    for name in g.list_dir(dir)? {
        if !name.starts_with("ifcfg-") {
            continue;
        }
        let path = format!("{dir}/{name}");
        if g.kind(&path)? != Some(Kind::File) {
            continue;
        }
        let text = g.read_string_opt(&path)?.unwrap_or_default();
        let kept: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("HWADDR="))
            .map(|l| format!("{l}\n"))
            .collect();
        if kept != text {
            g.write(&path, kept.as_bytes(), 0o644)?;
        }
    }
    Ok(())
}

fn package_manager_cache(g: &GuestRoot) -> Result<(), CustomizeError> {
    remove_matching(g, "/var/cache/apt/archives", &["*.deb"])?;
    remove_matching(g, "/var/cache/apt/archives/partial", &["*"])?;
    remove_matching(g, "/var/cache/apt", &["*.bin"])?;
    for dir in [
        "/var/cache/dnf",
        "/var/cache/yum",
        "/var/cache/zypp/packages",
    ] {
        remove_matching(g, dir, &["*"])?;
    }
    Ok(())
}

fn rh_subscription_manager(g: &GuestRoot) -> Result<(), CustomizeError> {
    remove_matching(g, "/etc/pki/consumer", &["*"])?;
    remove_matching(g, "/etc/pki/entitlement", &["*"])
}

fn ssh_hostkeys(g: &GuestRoot) -> Result<(), CustomizeError> {
    remove_matching(g, "/etc/ssh", &["ssh_host_*"])
}

fn tmp_files(g: &GuestRoot) -> Result<(), CustomizeError> {
    remove_matching(g, "/tmp", &["*", ".*"])?;
    remove_matching(g, "/var/tmp", &["*", ".*"])
}

fn udev_persistent_net(g: &GuestRoot) -> Result<(), CustomizeError> {
    g.remove_all("/etc/udev/rules.d/70-persistent-net.rules")?;
    Ok(())
}
