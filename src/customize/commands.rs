//! Operations that run programs in the guest: --run, --run-command, package
//! installs and updates, SELinux relabelling and subscription-manager. Each
//! runs through kiln's build runner: chrooted into the guest with /proc, /sys,
//! /dev, the host's resolv.conf and proxy variables, in a PID namespace of its
//! own. The script is written to a host-side hooks directory that the runner
//! mounts read-only at /tmp/in_target.d, so nothing is left in the guest.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use crate::build::runner::{self, BuildLog, RunContext, RunError, ScriptToRun};
use crate::customize::CustomizeError;
use crate::customize::guest::GuestRoot;
use crate::customize::ops::{PasswordSelector, SmAttach, SmCredentials};

const PHASE: &str = "customize.d";

/// Run `script` (a complete script, with its `#!` line) chrooted in the
/// guest; `what` names it in errors (the command line, or the script file).
pub fn run_script(root: &GuestRoot, what: &str, script: &[u8]) -> Result<(), CustomizeError> {
    let hooks = tempfile::Builder::new()
        .prefix("kiln-customize-")
        .tempdir()
        .map_err(|source| CustomizeError::Local {
            path: std::env::temp_dir(),
            source,
        })?;
    let phase_dir = hooks.path().join(PHASE);
    let local = |source| CustomizeError::Local {
        path: phase_dir.clone(),
        source,
    };
    std::fs::create_dir(&phase_dir).map_err(local)?;
    let script_path = phase_dir.join("run");
    std::fs::write(&script_path, script).map_err(local)?;
    std::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o755))
        .map_err(local)?;
    let mut ctx = RunContext::new(root.host_path(), hooks.path(), BuildLog::discard());
    let result = runner::run_phase(
        &mut ctx,
        PHASE,
        true,
        &[ScriptToRun {
            element: "customize".into(),
            name: "run".into(),
        }],
        &BTreeMap::new(),
    );
    match result {
        Ok(_) => Ok(()),
        Err(RunError::Script {
            status, last_lines, ..
        }) => Err(CustomizeError::CommandFailed {
            command: what.to_string(),
            status: status.to_string(),
            output: last_lines.join("\n"),
        }),
        Err(e) => Err(CustomizeError::Run {
            command: what.to_string(),
            source: Box::new(e),
        }),
    }
}

pub fn run_command(root: &GuestRoot, command: &str) -> Result<(), CustomizeError> {
    let script = format!("#!/bin/sh\n{command}\n");
    run_script(root, command, script.as_bytes())
}

/// Single-quote for sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The guest's package manager, found by its binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageManager {
    Apt,
    Dnf,
    Yum,
    Zypper,
    Apk,
}

impl PackageManager {
    pub fn detect(root: &GuestRoot) -> Result<Option<Self>, CustomizeError> {
        for (path, pm) in [
            ("/usr/bin/apt-get", PackageManager::Apt),
            ("/usr/bin/dnf", PackageManager::Dnf),
            ("/usr/bin/dnf5", PackageManager::Dnf),
            ("/usr/bin/yum", PackageManager::Yum),
            ("/usr/bin/zypper", PackageManager::Zypper),
            ("/sbin/apk", PackageManager::Apk),
        ] {
            if root.kind_followed(path)?.is_some() {
                return Ok(Some(pm));
            }
        }
        Ok(None)
    }

    pub fn name(self) -> &'static str {
        match self {
            PackageManager::Apt => "apt",
            PackageManager::Dnf => "dnf",
            PackageManager::Yum => "yum",
            PackageManager::Zypper => "zypper",
            PackageManager::Apk => "apk",
        }
    }

    /// Shell commands for an install (`Some(pkgs)` with `remove` false), a
    /// removal, or an update of everything (`None`).
    pub fn commands(self, pkgs: Option<&[String]>, remove: bool) -> String {
        let list = pkgs
            .unwrap_or_default()
            .iter()
            .map(|p| shell_quote(p))
            .collect::<Vec<_>>()
            .join(" ");
        const APT: &str =
            "DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Options::=--force-confnew";
        match (self, pkgs.is_some(), remove) {
            (PackageManager::Apt, true, false) => format!("{APT} update\n{APT} install {list}"),
            (PackageManager::Apt, true, true) => format!("{APT} remove {list}"),
            (PackageManager::Apt, false, _) => format!("{APT} update\n{APT} dist-upgrade"),
            (PackageManager::Dnf, true, false) => format!("dnf -y install {list}"),
            (PackageManager::Dnf, true, true) => format!("dnf -y remove {list}"),
            (PackageManager::Dnf, false, _) => "dnf -y --best upgrade".into(),
            (PackageManager::Yum, true, false) => format!("yum -y install {list}"),
            (PackageManager::Yum, true, true) => format!("yum -y remove {list}"),
            (PackageManager::Yum, false, _) => "yum -y update".into(),
            (PackageManager::Zypper, true, false) => format!("zypper -n in -l {list}"),
            (PackageManager::Zypper, true, true) => format!("zypper -n rm {list}"),
            (PackageManager::Zypper, false, _) => "zypper -n update -l".into(),
            (PackageManager::Apk, true, false) => format!("apk update\napk add {list}"),
            (PackageManager::Apk, true, true) => format!("apk del {list}"),
            (PackageManager::Apk, false, _) => "apk update\napk upgrade".into(),
        }
    }
}

fn package_manager(root: &GuestRoot) -> Result<PackageManager, CustomizeError> {
    PackageManager::detect(root)?.ok_or(CustomizeError::NoPackageManager)
}

pub fn packages(
    root: &GuestRoot,
    pkgs: Option<&[String]>,
    remove: bool,
) -> Result<(), CustomizeError> {
    let pm = package_manager(root)?;
    let cmds = pm.commands(pkgs, remove);
    let script = format!("#!/bin/sh\nset -e\n{cmds}\n");
    run_script(root, &cmds.replace('\n', "; "), script.as_bytes())
}

/// setfiles with the policy named in /etc/selinux/config; without an SELinux
/// configuration there is nothing to relabel.
pub fn selinux_relabel(root: &GuestRoot) -> Result<(), CustomizeError> {
    let Some(config) = root.read_string_opt("/etc/selinux/config")? else {
        return Ok(());
    };
    let policy = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("SELINUXTYPE="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| "targeted".into());
    if policy.is_empty() || policy.contains('/') || policy.contains("..") {
        return Err(CustomizeError::BadGuestFile {
            file: "/etc/selinux/config".into(),
            reason: format!("SELINUXTYPE `{policy}` is not a policy name"),
        });
    }
    let contexts = format!("/etc/selinux/{policy}/contexts/files/file_contexts");
    if root.kind_followed("/usr/sbin/setfiles")?.is_none()
        && root.kind_followed("/sbin/setfiles")?.is_none()
    {
        // No setfiles in the guest: let it relabel itself at next boot.
        root.write("/.autorelabel", b"", 0o644)?;
        return Ok(());
    }
    let cmd = format!(
        "setfiles -F -e /proc -e /sys -e /dev {} /",
        shell_quote(&contexts)
    );
    run_script(root, &cmd, format!("#!/bin/sh\n{cmd}\n").as_bytes())
}

fn subscription_manager(root: &GuestRoot) -> Result<(), CustomizeError> {
    for p in [
        "/usr/sbin/subscription-manager",
        "/usr/bin/subscription-manager",
    ] {
        if root.kind_followed(p)?.is_some() {
            return Ok(());
        }
    }
    Err(CustomizeError::NoSubscriptionManager)
}

fn secret(sel: &PasswordSelector) -> Result<String, CustomizeError> {
    match sel {
        PasswordSelector::Password(p) => Ok(p.clone()),
        PasswordSelector::File(f) => std::fs::read_to_string(f)
            .map(|t| t.lines().next().unwrap_or_default().to_string())
            .map_err(|source| CustomizeError::Local {
                path: f.clone(),
                source,
            }),
        _ => Err(CustomizeError::NoSmCredentials),
    }
}

pub fn sm_register(root: &GuestRoot, creds: Option<&SmCredentials>) -> Result<(), CustomizeError> {
    subscription_manager(root)?;
    let creds = creds.ok_or(CustomizeError::NoSmCredentials)?;
    let pass = secret(&creds.password)?;
    let script = format!(
        "#!/bin/sh\nsubscription-manager register --username={} --password={}\n",
        shell_quote(&creds.user),
        shell_quote(&pass)
    );
    // The password stays out of the message.
    run_script(root, "subscription-manager register", script.as_bytes())
}

pub fn sm_attach(root: &GuestRoot, how: &SmAttach) -> Result<(), CustomizeError> {
    subscription_manager(root)?;
    let cmd = match how {
        SmAttach::Auto => "subscription-manager attach --auto".to_string(),
        SmAttach::Pool(p) => format!("subscription-manager attach --pool={}", shell_quote(p)),
        SmAttach::File(f) => {
            let pools = std::fs::read_to_string(f).map_err(|source| CustomizeError::Local {
                path: f.clone(),
                source,
            })?;
            format!("subscription-manager attach --file=- <<'KILN_POOLS'\n{pools}\nKILN_POOLS")
        }
    };
    run_script(root, &cmd, format!("#!/bin/sh\n{cmd}\n").as_bytes())
}

pub fn sm_simple(root: &GuestRoot, args: &str) -> Result<(), CustomizeError> {
    subscription_manager(root)?;
    let cmd = format!("subscription-manager {args}");
    run_script(root, &cmd, format!("#!/bin/sh\n{cmd}\n").as_bytes())
}
