//! `kiln image customize / sysprep / inspect` on a guest root directory.
//! The caller mounts the image (in a private mount namespace) and passes the
//! root directory; everything here works on that tree through `GuestRoot`,
//! which keeps every guest path inside it.

pub mod accounts;
pub mod commands;
pub mod edit;
pub mod files;
pub mod firstboot;
pub mod guest;
pub mod image;
pub mod inspect;
pub mod ops;
pub mod osinfo;
pub mod password;
pub mod sysprep;
pub mod tarin;

use std::path::{Path, PathBuf};

pub use guest::{GuestError, GuestRoot};
pub use ops::{Customization, Op, OpParseError, parse_args};

#[derive(Debug, thiserror::Error)]
pub enum CustomizeError {
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error(transparent)]
    Password(#[from] password::PasswordError),
    #[error("reading {path} on the host: {source}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} does not exist in the guest")]
    Missing(String),
    #[error("{0} is not a directory in the guest")]
    NotADirectory(String),
    #[error("{path}: {what} is not supported")]
    Unsupported { path: String, what: &'static str },
    #[error("--edit {file}: {reason}")]
    Edit { file: String, reason: String },
    #[error("user {0} does not exist in the guest")]
    NoSuchUser(String),
    #[error("{file}: the entry of user {user} is malformed")]
    BadAccountFile { file: String, user: String },
    #[error("{file}: {reason}")]
    BadGuestFile { file: String, reason: String },
    #[error("--ssh-inject without a key needs ~/.ssh/*.pub on the host; none found")]
    NoDefaultSshKey,
    #[error("command `{command}` failed in the guest ({status}); its output:\n{output}")]
    CommandFailed {
        command: String,
        status: String,
        output: String,
    },
    #[error("running `{command}` in the guest: {source}")]
    Run {
        command: String,
        #[source]
        source: Box<crate::build::runner::RunError>,
    },
    #[error("no package manager found in the guest (looked for apt-get, dnf, yum, zypper, apk)")]
    NoPackageManager,
    #[error(
        "subscription-manager is not installed in the guest (/usr/sbin/subscription-manager missing)"
    )]
    NoSubscriptionManager,
    #[error("--sm-register needs --sm-credentials USER:password:PASS or USER:file:FILE")]
    NoSmCredentials,
    #[error("firstboot needs a systemd or busybox-init guest; this guest has neither")]
    NoFirstbootInit,
    // The cause is part of the message (not a `source`), so error chains do
    // not print it twice.
    #[error("operation {index} ({op}) failed: {cause}")]
    Op {
        index: usize,
        op: String,
        cause: Box<CustomizeError>,
    },
}

/// A short description of an op for messages and progress (no secrets).
pub fn describe(op: &Op) -> String {
    let p = |path: &std::path::Path| path.display().to_string();
    match op {
        Op::AppendLine { file, .. } => format!("--append-line {file}"),
        Op::Chmod { mode, path } => format!("--chmod {mode:o}:{path}"),
        Op::Chown { uid, gid, path } => format!("--chown {uid}.{gid}:{path}"),
        Op::Copy { source, dest } => format!("--copy {source}:{dest}"),
        Op::CopyIn { local, remote_dir } => format!("--copy-in {}:{remote_dir}", p(local)),
        Op::Delete(path) => format!("--delete {path}"),
        Op::Edit { file, expr } => format!("--edit {file}:{expr}"),
        Op::Firstboot(script) => format!("--firstboot {}", p(script)),
        Op::FirstbootCommand(cmd) => format!("--firstboot-command {cmd}"),
        Op::FirstbootInstall(pkgs) => format!("--firstboot-install {}", pkgs.join(",")),
        Op::Hostname(name) => format!("--hostname {name}"),
        Op::Install(pkgs) => format!("--install {}", pkgs.join(",")),
        Op::Uninstall(pkgs) => format!("--uninstall {}", pkgs.join(",")),
        Op::Update => "--update".into(),
        Op::Link { target, links } => format!("--link {target}:{}", links.join(":")),
        Op::Mkdir(path) => format!("--mkdir {path}"),
        Op::Move { source, dest } => format!("--move {source}:{dest}"),
        // Never the password itself.
        Op::Password { user, .. } => format!("--password {user}:..."),
        Op::Run(script) => format!("--run {}", p(script)),
        Op::RunCommand(cmd) => format!("--run-command {cmd}"),
        Op::Scrub(path) => format!("--scrub {path}"),
        Op::SelinuxRelabel => "--selinux-relabel".into(),
        Op::SshInject { user, .. } => format!("--ssh-inject {user}"),
        Op::TarIn { local, remote_dir } => format!("--tar-in {}:{remote_dir}", p(local)),
        Op::Timezone(tz) => format!("--timezone {tz}"),
        Op::Touch(path) => format!("--touch {path}"),
        Op::Truncate(path) => format!("--truncate {path}"),
        Op::TruncateRecursive(path) => format!("--truncate-recursive {path}"),
        Op::Upload { local, dest } => format!("--upload {}:{dest}", p(local)),
        // The content may be a secret; the file name is enough.
        Op::Write { file, .. } => format!("--write {file}"),
        Op::SmRegister => "--sm-register".into(),
        Op::SmAttach(_) => "--sm-attach".into(),
        Op::SmRemove => "--sm-remove".into(),
        Op::SmUnregister => "--sm-unregister".into(),
    }
}

/// Apply `custom.ops` in order to the guest tree at `root`. Ops that run
/// programs need the calling thread to be in kiln's private mount namespace
/// (`build::sandbox::enter_private_mount_namespace`). `log` gets one line per op.
pub fn customize(
    root: &Path,
    custom: &Customization,
    log: &mut dyn FnMut(&str),
) -> Result<(), CustomizeError> {
    let guest = GuestRoot::open(root)?;
    let os = osinfo::OsRelease::read(&guest)?;
    let crypto = custom
        .password_crypto
        .unwrap_or_else(|| password::default_for(os.as_ref()));
    for (index, op) in custom.ops.iter().enumerate() {
        log(&describe(op));
        apply(&guest, op, custom, crypto).map_err(|source| CustomizeError::Op {
            index: index + 1,
            op: describe(op),
            cause: Box::new(source),
        })?;
    }
    Ok(())
}

fn apply(
    g: &GuestRoot,
    op: &Op,
    custom: &Customization,
    crypto: ops::PasswordCrypto,
) -> Result<(), CustomizeError> {
    match op {
        Op::AppendLine { file, line } => files::append_line(g, file, line),
        Op::Chmod { mode, path } => Ok(g.chmod(path, *mode)?),
        Op::Chown { uid, gid, path } => Ok(g.chown(path, *uid, *gid)?),
        Op::Copy { source, dest } => files::copy(g, source, dest),
        Op::CopyIn { local, remote_dir } => files::copy_in(g, local, remote_dir),
        Op::TarIn { local, remote_dir } => tarin::tar_in(g, local, remote_dir),
        Op::Delete(path) => Ok(g.remove_all(path)?),
        Op::Edit { file, expr } => files::edit(g, file, expr),
        Op::Firstboot(local) => firstboot::add_file(g, local),
        Op::FirstbootCommand(cmd) => firstboot::add_command(g, cmd),
        Op::FirstbootInstall(pkgs) => firstboot::add_install(g, pkgs),
        Op::Hostname(name) => accounts::set_hostname(g, name),
        Op::Install(pkgs) => commands::packages(g, Some(pkgs), false),
        Op::Uninstall(pkgs) => commands::packages(g, Some(pkgs), true),
        Op::Update => commands::packages(g, None, false),
        Op::Link { target, links } => files::link(g, target, links),
        Op::Mkdir(path) => Ok(g.mkdir_all(path, 0o755)?),
        Op::Move { source, dest } => Ok(g.rename(source, dest)?),
        Op::Password { user, selector } => accounts::set_password(g, user, selector, crypto),
        Op::Run(local) => {
            let script = std::fs::read(local).map_err(|source| CustomizeError::Local {
                path: local.clone(),
                source,
            })?;
            commands::run_script(g, &local.display().to_string(), &script)
        }
        Op::RunCommand(cmd) => commands::run_command(g, cmd),
        Op::Scrub(path) => files::scrub(g, path),
        Op::SelinuxRelabel => commands::selinux_relabel(g),
        Op::SshInject { user, key } => accounts::ssh_inject(g, user, key),
        Op::Timezone(zone) => accounts::set_timezone(g, zone),
        Op::Touch(path) => files::touch(g, path),
        Op::Truncate(path) => files::truncate(g, path),
        Op::TruncateRecursive(path) => files::truncate_recursive(g, path),
        Op::Upload { local, dest } => files::upload(g, local, dest),
        Op::Write { file, content } => files::write(g, file, content),
        Op::SmRegister => commands::sm_register(g, custom.sm_credentials.as_ref()),
        Op::SmAttach(how) => commands::sm_attach(g, how),
        Op::SmRemove => commands::sm_simple(g, "remove --all"),
        Op::SmUnregister => commands::sm_simple(g, "unregister"),
    }
}
