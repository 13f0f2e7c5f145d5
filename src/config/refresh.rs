//! os-refresh-config: run the phase folders in order with DIB's run-parts
//! rules; when a script fails, run error.d and stop.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::element::runparts;

/// Where os-refresh-config keeps its phases unless told otherwise.
pub const DEFAULT_BASE: &str = "/usr/libexec/os-refresh-config";
/// Environment variable that overrides [`DEFAULT_BASE`].
pub const BASE_ENV: &str = "OS_REFRESH_CONFIG_BASE_DIR";
/// The phases, in the order they run.
pub const PHASES: &[&str] = &[
    "pre-configure.d",
    "configure.d",
    "post-configure.d",
    "migration.d",
];

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("listing {dir}: {source}")]
    List {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("refresh script {script} could not start: {source}")]
    Spawn {
        script: PathBuf,
        source: std::io::Error,
    },
    #[error("refresh script {script} failed ({status})")]
    Failed {
        script: PathBuf,
        status: std::process::ExitStatus,
    },
}

impl RefreshError {
    /// The script that failed or could not start, if any.
    pub fn script(&self) -> Option<&Path> {
        match self {
            RefreshError::Spawn { script, .. } | RefreshError::Failed { script, .. } => {
                Some(script)
            }
            RefreshError::List { .. } => None,
        }
    }
}

/// `$OS_REFRESH_CONFIG_BASE_DIR` or the default.
pub fn default_base_dir() -> PathBuf {
    std::env::var_os(BASE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BASE))
}

/// Run every script of one folder in run-parts order; stop at the first failure.
pub fn run_folder(dir: &Path, env: &[(String, OsString)]) -> Result<Vec<PathBuf>, RefreshError> {
    let listing = runparts::list_scripts(dir).map_err(|source| RefreshError::List {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut ran = Vec::new();
    for name in listing.run {
        let script = dir.join(&name);
        let status = Command::new(&script)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .status()
            .map_err(|source| RefreshError::Spawn {
                script: script.clone(),
                source,
            })?;
        ran.push(script.clone());
        if !status.success() {
            return Err(RefreshError::Failed { script, status });
        }
    }
    Ok(ran)
}

/// Run all phases under `base`. On a failure error.d runs (its own failures
/// are reported on stderr only) and the first failure is returned.
pub fn refresh(base: &Path, env: &[(String, OsString)]) -> Result<Vec<PathBuf>, RefreshError> {
    let mut ran = Vec::new();
    for phase in PHASES {
        match run_folder(&base.join(phase), env) {
            Ok(scripts) => ran.extend(scripts),
            Err(e) => {
                if let Err(error_d) = run_folder(&base.join("error.d"), env) {
                    eprintln!("kiln: error.d: {error_d}");
                }
                return Err(e);
            }
        }
    }
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(base: &Path, phase: &str, name: &str, body: &str) {
        let dir = base.join(phase);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn phases_run_in_order_and_a_failure_runs_error_d() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let log = base.join("log");
        let append = |what: &str| format!("echo {what} >> {}", log.display());
        script(base, "migration.d", "10-m", &append("m"));
        script(base, "configure.d", "9-b", &append("c9"));
        script(base, "configure.d", "10-a", &append("c10"));
        script(base, "pre-configure.d", "00-p", &append("p"));
        script(base, "error.d", "00-e", &append("e"));
        let env = [("KILN_T".to_string(), OsString::from("v"))];
        let ran = refresh(base, &env).unwrap();
        assert_eq!(ran.len(), 4);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "p\nc9\nc10\nm\n");
        std::fs::remove_file(&log).unwrap();
        script(base, "configure.d", "5-fail", "test \"$KILN_T\" = w");
        let err = refresh(base, &env).unwrap_err();
        assert_eq!(
            err.script(),
            Some(base.join("configure.d/5-fail").as_path())
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "p\ne\n");
    }
}
