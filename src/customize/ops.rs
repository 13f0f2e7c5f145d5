//! The customize operations and their command-line parser. Options keep the
//! names and argument syntax of virt-customize; operations apply in the order
//! given, so the parser walks argv itself rather than letting clap group
//! values by option.

use std::path::{Path, PathBuf};

/// How a password is chosen (`--password USER:SELECTOR`, `--root-password SELECTOR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSelector {
    Password(String),
    File(PathBuf),
    Random,
    /// No password login (`*` in shadow).
    Disabled,
    /// Lock the account, keeping (or setting) a password behind a `!`.
    Locked(Option<Box<PasswordSelector>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCrypto {
    Sha512,
    Yescrypt,
}

/// Where `--ssh-inject` takes the key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshKey {
    /// The invoking user's ~/.ssh/*.pub.
    Default,
    File(PathBuf),
    String(String),
}

/// `--sm-attach` selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmAttach {
    Auto,
    Pool(String),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AppendLine {
        file: String,
        line: String,
    },
    Chmod {
        mode: u32,
        path: String,
    },
    Chown {
        uid: u32,
        gid: u32,
        path: String,
    },
    Copy {
        source: String,
        dest: String,
    },
    CopyIn {
        local: PathBuf,
        remote_dir: String,
    },
    Delete(String),
    Edit {
        file: String,
        expr: String,
    },
    Firstboot(PathBuf),
    FirstbootCommand(String),
    FirstbootInstall(Vec<String>),
    Hostname(String),
    Install(Vec<String>),
    Uninstall(Vec<String>),
    Update,
    Link {
        target: String,
        links: Vec<String>,
    },
    Mkdir(String),
    Move {
        source: String,
        dest: String,
    },
    Password {
        user: String,
        selector: PasswordSelector,
    },
    Run(PathBuf),
    RunCommand(String),
    Scrub(String),
    SelinuxRelabel,
    SshInject {
        user: String,
        key: SshKey,
    },
    /// `--tar-in TARFILE:REMOTEDIR`: unpack a (gzip/xz/zstd/bzip2) tarball there.
    TarIn {
        local: PathBuf,
        remote_dir: String,
    },
    Timezone(String),
    Touch(String),
    Truncate(String),
    TruncateRecursive(String),
    Upload {
        local: PathBuf,
        dest: String,
    },
    Write {
        file: String,
        content: String,
    },
    SmRegister,
    SmAttach(SmAttach),
    SmRemove,
    SmUnregister,
}

/// `--sm-credentials USER:password:PASS` or `USER:file:FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmCredentials {
    pub user: String,
    pub password: PasswordSelector,
}

/// Everything parsed from the command line: the operations in order and the
/// settings that apply to all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Customization {
    pub ops: Vec<Op>,
    pub password_crypto: Option<PasswordCrypto>,
    pub sm_credentials: Option<SmCredentials>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpParseError {
    #[error("unknown customize option `{0}`")]
    Unknown(String),
    #[error("option --{option} needs an argument")]
    MissingArgument { option: String },
    #[error("option --{option} takes no argument (got `{arg}`)")]
    UnexpectedArgument { option: String, arg: String },
    #[error("--{option} `{arg}`: {reason}")]
    Bad {
        option: String,
        arg: String,
        reason: String,
    },
    #[error("--commands-from-file {path}: {source}")]
    CommandsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--commands-from-file {path} line {line}: {source}")]
    CommandsFileLine {
        path: PathBuf,
        line: usize,
        #[source]
        source: Box<OpParseError>,
    },
    #[error("--sm-register needs --sm-credentials")]
    SmNoCredentials,
}

/// Options that take no argument.
const FLAGS: &[&str] = &[
    "update",
    "selinux-relabel",
    "sm-register",
    "sm-remove",
    "sm-unregister",
];

/// Every option name this parser knows (without `--`), for front ends that
/// split their own options from the operations.
pub const OPTION_NAMES: &[&str] = &[
    "append-line",
    "chmod",
    "chown",
    "commands-from-file",
    "copy",
    "copy-in",
    "delete",
    "edit",
    "firstboot",
    "firstboot-command",
    "firstboot-install",
    "hostname",
    "install",
    "uninstall",
    "update",
    "link",
    "mkdir",
    "move",
    "password",
    "root-password",
    "password-crypto",
    "run",
    "run-command",
    "scrub",
    "selinux-relabel",
    "ssh-inject",
    "tar-in",
    "timezone",
    "touch",
    "truncate",
    "truncate-recursive",
    "upload",
    "write",
    "sm-register",
    "sm-attach",
    "sm-remove",
    "sm-unregister",
    "sm-credentials",
];

/// Parse `args` (`--name value`, `--name=value`, flags alone) into a customization.
pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<Customization, OpParseError> {
    let mut out = Customization::default();
    parse_into(&mut out, args)?;
    if out.ops.contains(&Op::SmRegister) && out.sm_credentials.is_none() {
        return Err(OpParseError::SmNoCredentials);
    }
    Ok(out)
}

fn parse_into<S: AsRef<str>>(out: &mut Customization, args: &[S]) -> Result<(), OpParseError> {
    let mut i = 0;
    while i < args.len() {
        let raw = args[i].as_ref();
        i += 1;
        let Some(body) = raw.strip_prefix("--") else {
            return Err(OpParseError::Unknown(raw.to_string()));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if !OPTION_NAMES.contains(&name) {
            return Err(OpParseError::Unknown(raw.to_string()));
        }
        let arg = if FLAGS.contains(&name) {
            if let Some(v) = inline {
                return Err(OpParseError::UnexpectedArgument {
                    option: name.to_string(),
                    arg: v,
                });
            }
            None
        } else if let Some(v) = inline {
            Some(v)
        } else if i < args.len() {
            i += 1;
            Some(args[i - 1].as_ref().to_string())
        } else {
            return Err(OpParseError::MissingArgument {
                option: name.to_string(),
            });
        };
        apply_option(out, name, arg)?;
    }
    Ok(())
}

fn bad(option: &str, arg: &str, reason: impl Into<String>) -> OpParseError {
    OpParseError::Bad {
        option: option.to_string(),
        arg: arg.to_string(),
        reason: reason.into(),
    }
}

/// `A:B` split at the first colon, both parts non-empty.
/// `LOCAL:REMOTE`, split at the last colon (local paths may hold colons).
fn local_and_remote<'a>(
    option: &str,
    arg: &'a str,
    what: &str,
) -> Result<(&'a str, &'a str), OpParseError> {
    arg.rsplit_once(':')
        .filter(|(l, r)| !l.is_empty() && !r.is_empty())
        .ok_or_else(|| bad(option, arg, format!("expected {what}")))
}

fn split2<'a>(option: &str, arg: &'a str, what: &str) -> Result<(&'a str, &'a str), OpParseError> {
    match arg.split_once(':') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a, b)),
        _ => Err(bad(option, arg, format!("expected {what}"))),
    }
}

fn package_list(option: &str, arg: &str) -> Result<Vec<String>, OpParseError> {
    let pkgs: Vec<String> = arg
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    if pkgs.is_empty() {
        return Err(bad(option, arg, "no package names"));
    }
    // Names go into a package manager's command line: refuse shell syntax.
    if let Some(p) = pkgs.iter().find(|p| {
        !p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-._:~@/=*<>".contains(c))
    }) {
        return Err(bad(option, arg, format!("`{p}` is not a package name")));
    }
    Ok(pkgs)
}

fn not_empty(option: &str, arg: &str) -> Result<String, OpParseError> {
    if arg.is_empty() {
        Err(bad(option, arg, "must not be empty"))
    } else {
        Ok(arg.to_string())
    }
}

/// virt-customize's PERMISSIONS: decimal, or octal with a leading 0, or 0x hex.
fn parse_mode(option: &str, arg: &str, text: &str) -> Result<u32, OpParseError> {
    let parsed = if let Some(hex) = text.strip_prefix("0x") {
        u32::from_str_radix(hex, 16)
    } else if text.len() > 1 && text.starts_with('0') {
        u32::from_str_radix(&text[1..], 8)
    } else {
        text.parse()
    };
    match parsed {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(bad(
            option,
            arg,
            format!("`{text}` is not a file mode (octal needs a leading 0, like 0755)"),
        )),
    }
}

pub fn parse_password_selector(option: &str, arg: &str) -> Result<PasswordSelector, OpParseError> {
    if let Some(rest) = arg.strip_prefix("locked:") {
        let inner = parse_password_selector(option, rest)?;
        if matches!(
            inner,
            PasswordSelector::Locked(_) | PasswordSelector::Disabled
        ) {
            return Err(bad(
                option,
                arg,
                "locked: must be followed by password:, file: or random",
            ));
        }
        return Ok(PasswordSelector::Locked(Some(Box::new(inner))));
    }
    match arg {
        "random" => return Ok(PasswordSelector::Random),
        "disabled" => return Ok(PasswordSelector::Disabled),
        "locked" => return Ok(PasswordSelector::Locked(None)),
        _ => {}
    }
    if let Some(pw) = arg.strip_prefix("password:") {
        return Ok(PasswordSelector::Password(pw.to_string()));
    }
    if let Some(f) = arg.strip_prefix("file:") {
        if f.is_empty() {
            return Err(bad(option, arg, "file: needs a file name"));
        }
        return Ok(PasswordSelector::File(PathBuf::from(f)));
    }
    Err(bad(
        option,
        arg,
        "expected password:PASS, file:FILE, random, disabled, locked or locked:SELECTOR",
    ))
}

fn apply_option(
    out: &mut Customization,
    name: &str,
    arg: Option<String>,
) -> Result<(), OpParseError> {
    let a = arg.unwrap_or_default();
    let a = a.as_str();
    let op = match name {
        "append-line" => {
            let (file, line) = a
                .split_once(':')
                .filter(|(f, _)| !f.is_empty())
                .ok_or_else(|| bad(name, a, "expected FILE:LINE"))?;
            Op::AppendLine {
                file: file.into(),
                line: line.into(),
            }
        }
        "chmod" => {
            let (perms, path) = split2(name, a, "PERMISSIONS:FILE")?;
            Op::Chmod {
                mode: parse_mode(name, a, perms)?,
                path: path.into(),
            }
        }
        "chown" => {
            let (ids, path) = split2(name, a, "UID.GID:PATH")?;
            let (uid, gid) = ids
                .split_once('.')
                .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
                .ok_or_else(|| bad(name, a, "expected numeric UID.GID:PATH"))?;
            Op::Chown {
                uid,
                gid,
                path: path.into(),
            }
        }
        "commands-from-file" => {
            return read_commands_file(out, Path::new(a));
        }
        "copy" => {
            let (s, d) = split2(name, a, "SOURCE:DEST")?;
            Op::Copy {
                source: s.into(),
                dest: d.into(),
            }
        }
        "copy-in" => {
            let (l, r) = local_and_remote(name, a, "LOCALPATH:REMOTEDIR")?;
            Op::CopyIn {
                local: l.into(),
                remote_dir: r.into(),
            }
        }
        "tar-in" => {
            let (l, r) = local_and_remote(name, a, "TARFILE:REMOTEDIR")?;
            Op::TarIn {
                local: l.into(),
                remote_dir: r.into(),
            }
        }
        "delete" => Op::Delete(not_empty(name, a)?),
        "edit" => {
            let (f, e) = split2(name, a, "FILE:EXPR")?;
            crate::customize::edit::Substitution::parse(e).map_err(|r| bad(name, a, r))?;
            Op::Edit {
                file: f.into(),
                expr: e.into(),
            }
        }
        "firstboot" => Op::Firstboot(not_empty(name, a)?.into()),
        "firstboot-command" => Op::FirstbootCommand(not_empty(name, a)?),
        "firstboot-install" => Op::FirstbootInstall(package_list(name, a)?),
        "hostname" => {
            if a.is_empty()
                || a.len() > 253
                || !a
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                return Err(bad(
                    name,
                    a,
                    "not a host name (letters, digits, `-` and `.`)",
                ));
            }
            Op::Hostname(a.into())
        }
        "install" => Op::Install(package_list(name, a)?),
        "uninstall" => Op::Uninstall(package_list(name, a)?),
        "update" => Op::Update,
        "link" => {
            let mut parts = a.split(':');
            let target = parts.next().unwrap_or_default();
            let links: Vec<String> = parts.filter(|l| !l.is_empty()).map(String::from).collect();
            if target.is_empty() || links.is_empty() {
                return Err(bad(name, a, "expected TARGET:LINK[:LINK..]"));
            }
            Op::Link {
                target: target.into(),
                links,
            }
        }
        "mkdir" => Op::Mkdir(not_empty(name, a)?),
        "move" => {
            let (s, d) = split2(name, a, "SOURCE:DEST")?;
            Op::Move {
                source: s.into(),
                dest: d.into(),
            }
        }
        "password" => {
            let (user, sel) = split2(name, a, "USER:SELECTOR")?;
            Op::Password {
                user: user.into(),
                selector: parse_password_selector(name, sel)?,
            }
        }
        "root-password" => Op::Password {
            user: "root".into(),
            selector: parse_password_selector(name, a)?,
        },
        "password-crypto" => {
            out.password_crypto = Some(match a {
                "sha512" => PasswordCrypto::Sha512,
                "yescrypt" => PasswordCrypto::Yescrypt,
                _ => return Err(bad(name, a, "expected sha512 or yescrypt")),
            });
            return Ok(());
        }
        "run" => Op::Run(not_empty(name, a)?.into()),
        "run-command" => Op::RunCommand(not_empty(name, a)?),
        "scrub" => Op::Scrub(not_empty(name, a)?),
        "selinux-relabel" => Op::SelinuxRelabel,
        "ssh-inject" => {
            let (user, key) = match a.split_once(':') {
                None => (a, SshKey::Default),
                Some((u, rest)) => {
                    let key = if let Some(f) = rest.strip_prefix("file:") {
                        SshKey::File(f.into())
                    } else if let Some(s) = rest.strip_prefix("string:") {
                        SshKey::String(s.into())
                    } else {
                        return Err(bad(
                            name,
                            a,
                            "expected USER, USER:file:FILE or USER:string:KEY",
                        ));
                    };
                    (u, key)
                }
            };
            Op::SshInject {
                user: not_empty(name, user)?,
                key,
            }
        }
        "timezone" => {
            if a.is_empty()
                || a.starts_with('/')
                || a.split('/').any(|p| p.is_empty() || p == "." || p == "..")
                || !a
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/_-+".contains(c))
            {
                return Err(bad(name, a, "not a time zone name like Europe/London"));
            }
            Op::Timezone(a.into())
        }
        "touch" => Op::Touch(not_empty(name, a)?),
        "truncate" => Op::Truncate(not_empty(name, a)?),
        "truncate-recursive" => Op::TruncateRecursive(not_empty(name, a)?),
        "upload" => {
            let (l, d) = split2(name, a, "FILE:DEST")?;
            Op::Upload {
                local: l.into(),
                dest: d.into(),
            }
        }
        "write" => {
            let (f, c) = a
                .split_once(':')
                .filter(|(f, _)| !f.is_empty())
                .ok_or_else(|| bad(name, a, "expected FILE:CONTENT"))?;
            Op::Write {
                file: f.into(),
                content: c.into(),
            }
        }
        "sm-register" => Op::SmRegister,
        "sm-attach" => Op::SmAttach(if a == "auto" {
            SmAttach::Auto
        } else if let Some(p) = a.strip_prefix("pool:").filter(|p| !p.is_empty()) {
            SmAttach::Pool(p.into())
        } else if let Some(f) = a.strip_prefix("file:").filter(|f| !f.is_empty()) {
            SmAttach::File(f.into())
        } else {
            return Err(bad(name, a, "expected auto, pool:ID or file:FILE"));
        }),
        "sm-remove" => Op::SmRemove,
        "sm-unregister" => Op::SmUnregister,
        "sm-credentials" => {
            let (user, sel) = split2(name, a, "USER:password:PASS or USER:file:FILE")?;
            let password = parse_password_selector(name, sel)?;
            if !matches!(
                password,
                PasswordSelector::Password(_) | PasswordSelector::File(_)
            ) {
                return Err(bad(
                    name,
                    a,
                    "expected USER:password:PASS or USER:file:FILE",
                ));
            }
            out.sm_credentials = Some(SmCredentials {
                user: user.into(),
                password,
            });
            return Ok(());
        }
        other => return Err(OpParseError::Unknown(format!("--{other}"))),
    };
    out.ops.push(op);
    Ok(())
}

/// `--commands-from-file`: one option per line without its `--`, its argument
/// after the first space; `#` comments and blank lines are skipped, a line
/// ending in `\` continues on the next.
fn read_commands_file(out: &mut Customization, path: &Path) -> Result<(), OpParseError> {
    let text = std::fs::read_to_string(path).map_err(|source| OpParseError::CommandsFile {
        path: path.to_path_buf(),
        source,
    })?;
    let mut pending = String::new();
    let mut start_line = 0;
    for (index, line) in text.lines().enumerate() {
        if pending.is_empty() {
            start_line = index + 1;
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push('\n');
            continue;
        }
        pending.push_str(line);
        let entry = std::mem::take(&mut pending);
        let entry = entry.trim_start();
        let (name, arg) = match entry.split_once(' ') {
            Some((n, a)) => (n, Some(a.to_string())),
            None => (entry.trim_end(), None),
        };
        let mut args = vec![format!("--{name}")];
        args.extend(arg);
        parse_into(out, &args).map_err(|e| OpParseError::CommandsFileLine {
            path: path.to_path_buf(),
            line: start_line,
            source: Box::new(e),
        })?;
    }
    Ok(())
}
