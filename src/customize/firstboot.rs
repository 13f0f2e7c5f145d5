//! Firstboot scripts: each `--firstboot*` op adds a numbered script to
//! /usr/lib/kiln-firstboot/scripts. At boot a runner executes the scripts in
//! name order, once each: after a script ran (whatever its result) it moves
//! to scripts-done, and its output goes to /var/log/kiln-firstboot.log. The
//! runner is started by a systemd unit (systemd guests) or an /etc/rc.d
//! S-script (busybox-init guests, which run /etc/rc.d/S* at start).

use crate::customize::CustomizeError;
use crate::customize::commands::PackageManager;
use crate::customize::guest::GuestRoot;

const DIR: &str = "/usr/lib/kiln-firstboot";
const RUNNER: &str = "/usr/lib/kiln-firstboot/firstboot.sh";
const UNIT: &str = "/etc/systemd/system/kiln-firstboot.service";
const UNIT_WANTS: &str = "/etc/systemd/system/multi-user.target.wants/kiln-firstboot.service";
const RC_SCRIPT: &str = "/etc/rc.d/S99kiln-firstboot";

const RUNNER_SCRIPT: &str = r#"#!/bin/sh
# kiln firstboot: run each script once, in order.
d=/usr/lib/kiln-firstboot
mkdir -p "$d/scripts-done"
for f in "$d"/scripts/*; do
    [ -f "$f" ] || continue
    echo "=== kiln-firstboot: running $f ===" >>/var/log/kiln-firstboot.log
    sh "$f" >>/var/log/kiln-firstboot.log 2>&1
    echo "=== kiln-firstboot: $f exited $? ===" >>/var/log/kiln-firstboot.log
    mv "$f" "$d/scripts-done/"
done
"#;

const UNIT_TEXT: &str = "[Unit]\n\
Description=kiln firstboot scripts\n\
After=network.target\n\
ConditionPathExistsGlob=/usr/lib/kiln-firstboot/scripts/*\n\
\n\
[Service]\n\
Type=oneshot\n\
ExecStart=/usr/lib/kiln-firstboot/firstboot.sh\n\
RemainAfterExit=yes\n\
StandardOutput=journal+console\n\
TimeoutSec=0\n\
\n\
[Install]\n\
WantedBy=multi-user.target\n";

const RC_TEXT: &str = "#!/bin/sh\n\
# kiln firstboot (busybox init runs /etc/rc.d/S* with `start`).\n\
[ \"${1:-start}\" = start ] && /usr/lib/kiln-firstboot/firstboot.sh\n\
exit 0\n";

fn is_systemd(root: &GuestRoot) -> Result<bool, CustomizeError> {
    for p in ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"] {
        if root.kind_followed(p)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn install_runner(root: &GuestRoot) -> Result<(), CustomizeError> {
    root.mkdir_all(&format!("{DIR}/scripts"), 0o755)?;
    root.write(RUNNER, RUNNER_SCRIPT.as_bytes(), 0o755)?;
    root.chmod(RUNNER, 0o755)?;
    if is_systemd(root)? {
        root.mkdir_all("/etc/systemd/system/multi-user.target.wants", 0o755)?;
        root.write(UNIT, UNIT_TEXT.as_bytes(), 0o644)?;
        root.symlink(UNIT, UNIT_WANTS)?;
    } else if root.exists("/etc/rc.d")? || root.kind_followed("/bin/busybox")?.is_some() {
        root.mkdir_all("/etc/rc.d", 0o755)?;
        root.write(RC_SCRIPT, RC_TEXT.as_bytes(), 0o755)?;
        root.chmod(RC_SCRIPT, 0o755)?;
    } else {
        return Err(CustomizeError::NoFirstbootInit);
    }
    Ok(())
}

/// Add `script` as the next firstboot script; `label` becomes part of its name.
pub fn add(root: &GuestRoot, label: &str, script: &[u8]) -> Result<(), CustomizeError> {
    install_runner(root)?;
    let existing = root.list_dir(&format!("{DIR}/scripts"))?;
    let next = existing
        .iter()
        .filter_map(|n| n.split('-').next()?.parse::<u32>().ok())
        .max()
        .map_or(1, |n| n + 1);
    let clean: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(32)
        .collect();
    let path = format!("{DIR}/scripts/{next:04}-{clean}");
    root.write(&path, script, 0o755)?;
    root.chmod(&path, 0o755)?;
    Ok(())
}

pub fn add_command(root: &GuestRoot, command: &str) -> Result<(), CustomizeError> {
    add(
        root,
        "command",
        format!("#!/bin/sh\n{command}\n").as_bytes(),
    )
}

pub fn add_file(root: &GuestRoot, local: &std::path::Path) -> Result<(), CustomizeError> {
    let bytes = std::fs::read(local).map_err(|source| CustomizeError::Local {
        path: local.to_path_buf(),
        source,
    })?;
    let label = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "script".into());
    add(root, &label, &bytes)
}

pub fn add_install(root: &GuestRoot, pkgs: &[String]) -> Result<(), CustomizeError> {
    let pm = PackageManager::detect(root)?.ok_or(CustomizeError::NoPackageManager)?;
    let cmds = pm.commands(Some(pkgs), false);
    add(root, "install", format!("#!/bin/sh\n{cmds}\n").as_bytes())
}
