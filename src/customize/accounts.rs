//! Accounts: passwords in /etc/shadow, ssh keys in ~/.ssh/authorized_keys,
//! the host name and the time zone.

use std::path::Path;

use crate::customize::CustomizeError;
use crate::customize::guest::{GuestRoot, Kind};
use crate::customize::ops::{PasswordCrypto, PasswordSelector, SshKey};
use crate::customize::password;

/// A user from /etc/passwd.
pub struct PasswdEntry {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

pub fn lookup_user(root: &GuestRoot, user: &str) -> Result<PasswdEntry, CustomizeError> {
    let text = root.read_string_opt("/etc/passwd")?.unwrap_or_default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 7 && f[0] == user {
            return Ok(PasswdEntry {
                uid: f[2].parse().map_err(|_| CustomizeError::BadAccountFile {
                    file: "/etc/passwd".into(),
                    user: user.into(),
                })?,
                gid: f[3].parse().map_err(|_| CustomizeError::BadAccountFile {
                    file: "/etc/passwd".into(),
                    user: user.into(),
                })?,
                home: f[5].to_string(),
            });
        }
    }
    Err(CustomizeError::NoSuchUser(user.to_string()))
}

fn read_secret(path: &Path) -> Result<String, CustomizeError> {
    let text = std::fs::read_to_string(path).map_err(|source| CustomizeError::Local {
        path: path.to_path_buf(),
        source,
    })?;
    // The first line is the password, as virt-customize reads it.
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// The shadow password field for `selector`; `current` is the field now.
fn shadow_field(
    selector: &PasswordSelector,
    current: &str,
    crypto: PasswordCrypto,
    user: &str,
) -> Result<String, CustomizeError> {
    Ok(match selector {
        PasswordSelector::Password(p) => password::hash(p, crypto, user)?,
        PasswordSelector::File(f) => password::hash(&read_secret(f)?, crypto, user)?,
        PasswordSelector::Random => {
            let p = password::random_password()?;
            println!("Setting random password of {user} to {p}");
            password::hash(&p, crypto, user)?
        }
        PasswordSelector::Disabled => "*".to_string(),
        PasswordSelector::Locked(None) => {
            if current.starts_with('!') {
                current.to_string()
            } else {
                format!("!{current}")
            }
        }
        PasswordSelector::Locked(Some(inner)) => {
            format!("!{}", shadow_field(inner, current, crypto, user)?)
        }
    })
}

pub fn set_password(
    root: &GuestRoot,
    user: &str,
    selector: &PasswordSelector,
    crypto: PasswordCrypto,
) -> Result<(), CustomizeError> {
    let text = root
        .read_string_opt("/etc/shadow")?
        .ok_or_else(|| CustomizeError::Missing("/etc/shadow".into()))?;
    let mut found = false;
    let mut out = String::with_capacity(text.len() + 128);
    for line in text.lines() {
        let mut fields: Vec<String> = line.split(':').map(String::from).collect();
        if fields.len() >= 2 && fields[0] == user && !found {
            found = true;
            fields[1] = shadow_field(selector, &fields[1], crypto, user)?;
            out.push_str(&fields.join(":"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !found {
        return Err(CustomizeError::NoSuchUser(user.to_string()));
    }
    root.write("/etc/shadow", out.as_bytes(), 0o640)?;
    Ok(())
}

fn default_keys() -> Result<Vec<String>, CustomizeError> {
    let home = std::env::var_os("HOME").ok_or(CustomizeError::NoDefaultSshKey)?;
    let dir = Path::new(&home).join(".ssh");
    let mut keys = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|_| CustomizeError::NoDefaultSshKey)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pub"))
        .collect();
    names.sort();
    for path in names {
        keys.push(read_secret(&path)?);
    }
    if keys.is_empty() {
        return Err(CustomizeError::NoDefaultSshKey);
    }
    Ok(keys)
}

pub fn ssh_inject(root: &GuestRoot, user: &str, key: &SshKey) -> Result<(), CustomizeError> {
    let keys = match key {
        SshKey::Default => default_keys()?,
        SshKey::File(f) => vec![read_secret(f)?],
        SshKey::String(s) => vec![s.clone()],
    };
    let account = lookup_user(root, user)?;
    let ssh_dir = format!("{}/.ssh", account.home.trim_end_matches('/'));
    if !root.exists(&ssh_dir)? {
        root.mkdir_all(&ssh_dir, 0o700)?;
        root.chown(&ssh_dir, account.uid, account.gid)?;
    }
    let file = format!("{ssh_dir}/authorized_keys");
    let existing = root.read_string_opt(&file)?;
    let mut text = existing.clone().unwrap_or_default();
    for k in keys {
        let k = k.trim();
        if !text.lines().any(|l| l.trim() == k) {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(k);
            text.push('\n');
        }
    }
    root.write(&file, text.as_bytes(), 0o600)?;
    if existing.is_none() {
        root.chmod(&file, 0o600)?;
        root.chown(&file, account.uid, account.gid)?;
    }
    Ok(())
}

/// /etc/hostname, and the 127.0.1.1 line of /etc/hosts (Debian's convention).
pub fn set_hostname(root: &GuestRoot, name: &str) -> Result<(), CustomizeError> {
    let short = name.split('.').next().unwrap_or(name);
    root.write("/etc/hostname", format!("{name}\n").as_bytes(), 0o644)?;
    let alias = if short != name {
        format!("127.0.1.1\t{name} {short}")
    } else {
        format!("127.0.1.1\t{name}")
    };
    let hosts = root.read_string_opt("/etc/hosts")?.unwrap_or_default();
    let mut replaced = false;
    let mut out = String::new();
    for line in hosts.lines() {
        if line.split_whitespace().next() == Some("127.0.1.1") {
            if !replaced {
                out.push_str(&alias);
                out.push('\n');
            }
            replaced = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !replaced {
        out.push_str(&alias);
        out.push('\n');
    }
    root.write("/etc/hosts", out.as_bytes(), 0o644)?;
    Ok(())
}

/// /etc/localtime -> /usr/share/zoneinfo/ZONE, and /etc/timezone where Debian keeps it.
pub fn set_timezone(root: &GuestRoot, zone: &str) -> Result<(), CustomizeError> {
    let zone_file = format!("/usr/share/zoneinfo/{zone}");
    if root.kind_followed(&zone_file)? != Some(Kind::File) {
        return Err(CustomizeError::Missing(zone_file));
    }
    root.symlink(&zone_file, "/etc/localtime")?;
    if root.exists("/etc/timezone")? || root.exists("/etc/debian_version")? {
        root.write("/etc/timezone", format!("{zone}\n").as_bytes(), 0o644)?;
    }
    Ok(())
}
