//! Running an element phase's scripts, as diskimage-builder's dib-run-parts
//! runs them: each script in its own shell that first sources every
//! environment.d file of the hooks directory (with `set -eu`, as DIB does),
//! then execs the script. Host phases run on the host with the build's paths;
//! chroot phases run chrooted into the tree, with the hooks directory at
//! /tmp/in_target.d. Every script runs in a PID namespace of its own, so
//! nothing it started survives it.
//!
//! Output goes to the build log line by line (and to stderr with an
//! `element/phase/script: ` prefix when asked); a failing script's error
//! carries its last lines. `--break` points open an interactive shell in the
//! same place with the same environment.

mod breakpoint;
mod env;
mod output;
mod spawn;
mod timing;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, IsTerminal};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use breakpoint::{BreakPoint, BreakPoints, UnknownBreakPoint};
pub use env::CHROOT_PATH;
pub use output::{BuildLog, Echo, LAST_LINES};
pub use spawn::Ending as ScriptStatus;
pub use timing::timing_table;

use crate::build::sandbox::{ChrootMounts, SandboxError};
use crate::util::interrupt;
use env::Place;
use output::LineSink;
use spawn::Launch;

/// `$0` is the script, `"$@"` the environment.d files: source them all (a
/// failing one fails the script), then replace the shell by the script.
const SOURCE_THEN_RUN: &str = "set -eu\n\
    if (set -o pipefail) 2>/dev/null; then set -o pipefail; fi\n\
    for kiln_env_file in \"$@\"; do . \"$kiln_env_file\"; done\n\
    exec \"$0\"\n";

/// As SOURCE_THEN_RUN, but `$0` is a shell to start interactively.
const SOURCE_THEN_SHELL: &str = "set -eu\n\
    for kiln_env_file in \"$@\"; do . \"$kiln_env_file\"; done\n\
    set +eu\n\
    exec \"$0\" -i\n";

/// One script of a phase: the element it comes from and its file name in
/// the phase directory of the hooks dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptToRun {
    pub element: String,
    pub name: String,
}

/// How long one script ran.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptTiming {
    pub element: String,
    /// Phase name without `.d` (`install`).
    pub phase: String,
    pub script: String,
    pub duration: Duration,
}

impl fmt::Display for ScriptStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ScriptStatus::Exited(code) => write!(f, "exit status {code}"),
            ScriptStatus::Signaled(sig) => {
                // SAFETY: strsignal returns a static or thread-local string.
                let name = unsafe { std::ffi::CStr::from_ptr(libc::strsignal(sig)) };
                write!(f, "killed by signal {sig} ({})", name.to_string_lossy())
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{}", describe_failure(.element, .phase, .script, .status, .last_lines))]
    Script {
        element: String,
        phase: String,
        script: String,
        status: ScriptStatus,
        last_lines: Vec<String>,
    },
    #[error(
        "interrupted at {phase}.d/{script} of element {element}; the script was killed or not started"
    )]
    Interrupted {
        element: String,
        phase: String,
        script: String,
    },
    #[error("interrupted at break point {point}")]
    InterruptedAtBreak { point: String },
    #[error("cannot start {phase}.d/{script} of element {element}: {source}")]
    Start {
        element: String,
        phase: String,
        script: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "script {phase}.d/{script} of element {element} is missing from the hooks directory ({path})"
    )]
    MissingScript {
        element: String,
        phase: String,
        script: String,
        path: PathBuf,
    },
    #[error("`{script}` of element {element} is not a script file name (phase {phase})")]
    BadScriptName {
        element: String,
        phase: String,
        script: String,
    },
    #[error("`{0}` is not a phase directory name (like install.d)")]
    BadPhase(String),
    #[error("reading {path}: {source}")]
    EnvironmentDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the build log {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--break {point} needs a terminal on stdin for its shell, and stdin is not a terminal")]
    BreakNeedsTerminal { point: String },
    #[error("starting the shell of break point {point}: {source}")]
    BreakShell {
        point: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

fn describe_failure(
    element: &str,
    phase: &str,
    script: &str,
    status: &ScriptStatus,
    last_lines: &[String],
) -> String {
    let mut text = format!("{phase}.d/{script} of element {element} failed ({status})");
    if last_lines.is_empty() {
        text.push_str(" without output");
    } else {
        text.push_str(&format!("; its last {} output lines:", last_lines.len()));
        for line in last_lines {
            text.push_str("\n    ");
            text.push_str(line);
        }
    }
    text
}

/// Everything run_phase needs besides the phase itself.
pub struct RunContext {
    /// The root tree (TARGET_ROOT / TMP_MOUNT_PATH) as the host sees it.
    pub target_root: PathBuf,
    /// The assembled hooks directory (TMP_HOOKS_PATH on the host).
    pub hooks_dir: PathBuf,
    pub log: BuildLog,
    pub echo: Echo,
    pub breaks: BreakPoints,
    /// Chroot mounts kept across phases (`hold_chroot_mounts`).
    held: Option<ChrootMounts>,
}

impl RunContext {
    pub fn new(target_root: &Path, hooks_dir: &Path, log: BuildLog) -> Self {
        RunContext {
            target_root: target_root.to_path_buf(),
            hooks_dir: hooks_dir.to_path_buf(),
            log,
            echo: Echo::default(),
            breaks: BreakPoints::default(),
            held: None,
        }
    }

    /// Mount the chroot filesystems now and keep them until
    /// `release_chroot_mounts`, instead of once per chroot phase: host
    /// scripts that chroot into the tree themselves then find them too.
    pub fn hold_chroot_mounts(&mut self) -> Result<(), RunError> {
        if self.held.is_none() {
            self.held = Some(ChrootMounts::mount(
                &self.target_root,
                Some(&self.hooks_dir),
            )?);
        }
        Ok(())
    }

    /// Undo `hold_chroot_mounts`.
    pub fn release_chroot_mounts(&mut self) -> Result<(), RunError> {
        match self.held.take() {
            Some(mounts) => Ok(mounts.release()?),
            None => Ok(()),
        }
    }
}

/// Run `scripts` (in the order given) of the phase `phase_dir_name`
/// (`install.d`, or just `install`), on the host or chrooted into the tree,
/// with `env` (the DIB variables of the build). Stops at the first failing
/// script. Chroot phases mount the chroot filesystems for their duration,
/// unless the context holds them already.
pub fn run_phase(
    ctx: &mut RunContext,
    phase_dir_name: &str,
    in_chroot: bool,
    scripts: &[ScriptToRun],
    env: &BTreeMap<String, String>,
) -> Result<Vec<ScriptTiming>, RunError> {
    let phase = phase_dir_name.strip_suffix(".d").unwrap_or(phase_dir_name);
    if phase.is_empty() || !is_plain_name(phase) {
        return Err(RunError::BadPhase(phase_dir_name.to_string()));
    }
    let mounts = if in_chroot && ctx.held.is_none() {
        Some(ChrootMounts::mount(&ctx.target_root, Some(&ctx.hooks_dir))?)
    } else {
        None
    };
    let result = run_scripts(ctx, phase, in_chroot, scripts, env);
    match (result, mounts) {
        (Ok(timings), Some(mounts)) => {
            mounts.release()?;
            Ok(timings)
        }
        // The script's error matters more; dropping the guard still unmounts.
        (result, _) => result,
    }
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// The fixed parts of every launch in one phase.
struct PhaseSetup {
    shell: PathBuf,
    env: Vec<(OsString, OsString)>,
    /// environment.d files as the script sees them.
    env_files: Vec<OsString>,
    hooks_dir: PathBuf,
    chroot: Option<PathBuf>,
}

fn run_scripts(
    ctx: &mut RunContext,
    phase: &str,
    in_chroot: bool,
    scripts: &[ScriptToRun],
    env: &BTreeMap<String, String>,
) -> Result<Vec<ScriptTiming>, RunError> {
    let place = if in_chroot {
        Place::Chroot {
            tree: &ctx.target_root,
        }
    } else {
        Place::Host {
            hooks_dir: &ctx.hooks_dir,
        }
    };
    let env_map = env::script_environment(place, env, std::env::vars_os());
    let hooks_dir = place.hooks_dir();
    let env_files = env::environment_files(&ctx.hooks_dir)
        .map_err(|source| RunError::EnvironmentDir {
            path: ctx.hooks_dir.join("environment.d"),
            source,
        })?
        .into_iter()
        .map(|name| hooks_dir.join("environment.d").join(name).into_os_string())
        .collect();
    let setup = PhaseSetup {
        shell: env::pick_shell(place, &env_map),
        env: env_map.into_iter().collect(),
        env_files,
        hooks_dir,
        chroot: in_chroot.then(|| ctx.target_root.clone()),
    };

    let before = BreakPoint::Before(phase.to_string());
    if ctx.breaks.contains(&before) {
        break_shell(&before, &setup)?;
    }
    let echo = ctx.echo.enabled();
    let mut timings = Vec::with_capacity(scripts.len());
    for script in scripts {
        match run_script(ctx, phase, &setup, script, echo) {
            Ok(timing) => timings.push(timing),
            Err(error @ RunError::Script { .. }) => {
                if ctx.breaks.contains(&BreakPoint::AfterError) {
                    eprintln!("kiln: {error}");
                    break_shell(&BreakPoint::AfterError, &setup)?;
                }
                return Err(error);
            }
            Err(error) => return Err(error),
        }
    }
    let after = BreakPoint::After(phase.to_string());
    if ctx.breaks.contains(&after) {
        break_shell(&after, &setup)?;
    }
    Ok(timings)
}

fn run_script(
    ctx: &mut RunContext,
    phase: &str,
    setup: &PhaseSetup,
    script: &ScriptToRun,
    echo: bool,
) -> Result<ScriptTiming, RunError> {
    let names = || {
        (
            script.element.clone(),
            phase.to_string(),
            script.name.clone(),
        )
    };
    if !is_plain_name(&script.name) {
        let (element, phase, script) = names();
        return Err(RunError::BadScriptName {
            element,
            phase,
            script,
        });
    }
    if interrupt::check().is_err() {
        let (element, phase, script) = names();
        return Err(RunError::Interrupted {
            element,
            phase,
            script,
        });
    }
    let phase_dir = format!("{phase}.d");
    let host_path = ctx.hooks_dir.join(&phase_dir).join(&script.name);
    if !host_path.is_file() {
        let (element, phase, script) = names();
        return Err(RunError::MissingScript {
            element,
            phase,
            script,
            path: host_path,
        });
    }
    let script_path = setup.hooks_dir.join(&phase_dir).join(&script.name);
    let mut args: Vec<OsString> = vec!["-c".into(), SOURCE_THEN_RUN.into(), script_path.into()];
    args.extend(setup.env_files.iter().cloned());

    let log_path = ctx.log.path().to_path_buf();
    let log_err = |source| RunError::Log {
        path: log_path.clone(),
        source,
    };
    let header = format!(
        "kiln: running {phase_dir}/{} of element {}",
        script.name, script.element
    );
    ctx.log.line(header.as_bytes()).map_err(log_err)?;

    let start_error = |source: io::Error| {
        let (element, phase, script) = names();
        RunError::Start {
            element,
            phase,
            script,
            source,
        }
    };
    let started = Instant::now();
    let running = spawn::start(&Launch {
        chroot: setup.chroot.as_deref(),
        program: &setup.shell,
        args: &args,
        env: &setup.env,
        interactive: false,
    })
    .map_err(&start_error)?;
    let prefix = echo.then(|| format!("{}/{phase}/{}: ", script.element, script.name));
    let mut sink = LineSink::new(&mut ctx.log, prefix);
    let pumped = pump(
        running.output().expect("a script's output is piped"),
        &mut sink,
    );
    match pumped {
        Ok(()) => {}
        Err(PumpError::Interrupted) => {
            running.kill();
            let _ = running.wait();
            let (element, phase, script) = names();
            return Err(RunError::Interrupted {
                element,
                phase,
                script,
            });
        }
        Err(PumpError::Log(source)) => {
            running.kill();
            let _ = running.wait();
            return Err(RunError::Log {
                path: log_path,
                source,
            });
        }
    }
    let ending = running.wait().map_err(&start_error)?;
    let duration = started.elapsed();
    let last_lines = sink.finish().map_err(|source| RunError::Log {
        path: log_path.clone(),
        source,
    })?;
    let footer = format!(
        "kiln: {phase_dir}/{} ended: {ending}, {:.3} s",
        script.name,
        duration.as_secs_f64()
    );
    ctx.log
        .line(footer.as_bytes())
        .map_err(|source| RunError::Log {
            path: log_path,
            source,
        })?;
    let (element, phase, script) = names();
    if ending != ScriptStatus::Exited(0) {
        return Err(RunError::Script {
            element,
            phase,
            script,
            status: ending,
            last_lines,
        });
    }
    Ok(ScriptTiming {
        element,
        phase,
        script,
        duration,
    })
}

enum PumpError {
    Interrupted,
    Log(io::Error),
}

/// Copy the script's output into `sink` until EOF, watching for interrupts.
fn pump(output: BorrowedFd<'_>, sink: &mut LineSink<'_>) -> Result<(), PumpError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if interrupt::check().is_err() {
            return Err(PumpError::Interrupted);
        }
        let mut pollfd = libc::pollfd {
            fd: output.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // A timeout, so a signal that restarted nothing is still noticed.
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pollfd, 1, 200) };
        if ready <= 0 {
            continue;
        }
        // SAFETY: valid buffer of the given length.
        let n = unsafe { libc::read(output.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return Ok(());
        }
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // A broken output pipe ends the output, not the build.
            return Ok(());
        }
        sink.feed(&buf[..n as usize]).map_err(PumpError::Log)?;
    }
}

/// Ignores SIGINT and SIGQUIT in kiln while a break shell owns the terminal
/// (as system(3) does), restoring the previous handlers on drop.
struct TerminalSignalsIgnored {
    saved: [(libc::c_int, libc::sigaction); 2],
}

impl TerminalSignalsIgnored {
    fn new() -> Self {
        let mut saved = [
            (libc::SIGINT, unsafe_zeroed()),
            (libc::SIGQUIT, unsafe_zeroed()),
        ];
        for (sig, old) in &mut saved {
            let mut ignore = unsafe_zeroed();
            ignore.sa_sigaction = libc::SIG_IGN;
            // SAFETY: valid sigaction structs.
            unsafe {
                libc::sigaction(*sig, &ignore, old);
            }
        }
        TerminalSignalsIgnored { saved }
    }
}

fn unsafe_zeroed() -> libc::sigaction {
    // SAFETY: sigaction is plain data; all-zero is SIG_DFL with an empty mask.
    unsafe { std::mem::zeroed() }
}

impl Drop for TerminalSignalsIgnored {
    fn drop(&mut self) {
        for (sig, old) in &self.saved {
            // SAFETY: restoring a sigaction obtained from the kernel.
            unsafe {
                libc::sigaction(*sig, old, std::ptr::null_mut());
            }
        }
    }
}

/// Open an interactive shell for `point` where the scripts run, with their
/// environment; returns when the user leaves it.
fn break_shell(point: &BreakPoint, setup: &PhaseSetup) -> Result<(), RunError> {
    let name = point.to_string();
    if !io::stdin().is_terminal() {
        return Err(RunError::BreakNeedsTerminal { point: name });
    }
    let place = match &setup.chroot {
        Some(tree) => format!("chrooted into {}", tree.display()),
        None => "on the host".to_string(),
    };
    eprintln!(
        "kiln: break point {name}: starting a shell {place}. Exit it to {}.",
        if *point == BreakPoint::AfterError {
            "end the build"
        } else {
            "resume the build"
        }
    );
    let mut args: Vec<OsString> = vec![
        "-c".into(),
        SOURCE_THEN_SHELL.into(),
        setup.shell.clone().into(),
    ];
    args.extend(setup.env_files.iter().cloned());
    let result = {
        let _quiet = TerminalSignalsIgnored::new();
        spawn::start(&Launch {
            chroot: setup.chroot.as_deref(),
            program: &setup.shell,
            args: &args,
            env: &setup.env,
            interactive: true,
        })
        .and_then(|running| running.wait())
    };
    result.map_err(|source| RunError::BreakShell {
        point: name.clone(),
        source,
    })?;
    if interrupt::check().is_err() {
        return Err(RunError::InterruptedAtBreak { point: name });
    }
    eprintln!("kiln: leaving break point {name}");
    Ok(())
}
