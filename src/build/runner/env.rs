//! What a phase script sees: its environment variables, the environment.d
//! files sourced before it, and the shell that does the sourcing.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::build::sandbox::{IN_TARGET_HOOKS, sys};

/// PATH inside the chroot: the hooks' bin/ first, so the helpers kiln ships
/// there (install-packages, pkg-map, ...) win over stale copies in the tree,
/// then the usual system directories, whatever the host's PATH holds.
pub const CHROOT_PATH: &str =
    "/tmp/in_target.d/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Proxy settings a chroot script gets from kiln's own environment, as DIB's
/// `sudo -E` passes them: package managers inside need them.
const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "NO_PROXY",
];

/// Variables that would point a chroot script at host-only places.
const NOT_IN_CHROOT: [&str; 2] = ["TMPDIR", "VIRTUAL_ENV"];

/// Where a script runs.
#[derive(Clone, Copy)]
pub enum Place<'a> {
    Host { hooks_dir: &'a Path },
    Chroot { tree: &'a Path },
}

impl Place<'_> {
    /// The hooks directory as the script sees it.
    pub fn hooks_dir(&self) -> PathBuf {
        match self {
            Place::Host { hooks_dir } => hooks_dir.to_path_buf(),
            Place::Chroot { .. } => PathBuf::from(IN_TARGET_HOOKS),
        }
    }
}

/// The environment of a script: for the host, kiln's own environment with
/// `env` on top and the hooks' bin/ appended to PATH; in the chroot, `env`
/// with the in-chroot TMP_HOOKS_PATH, PATH and HOME, plus kiln's proxy
/// settings (unless `env` sets them). `inherited` is kiln's own environment
/// (`std::env::vars_os()`).
pub fn script_environment(
    place: Place<'_>,
    env: &BTreeMap<String, String>,
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
) -> BTreeMap<OsString, OsString> {
    let mut out: BTreeMap<OsString, OsString> = BTreeMap::new();
    match place {
        Place::Host { hooks_dir } => {
            out.extend(inherited);
            out.extend(env.iter().map(|(k, v)| (k.into(), v.into())));
            let mut path = out
                .get(OsStr::new("PATH"))
                .cloned()
                .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
            path.push(":");
            path.push(hooks_dir.join("bin"));
            out.insert("PATH".into(), path);
        }
        Place::Chroot { .. } => {
            out.extend(
                inherited
                    .into_iter()
                    .filter(|(name, _)| PROXY_VARS.iter().any(|p| name == p) || name == "TERM"),
            );
            out.extend(env.iter().map(|(k, v)| (k.into(), v.into())));
            for name in NOT_IN_CHROOT {
                out.remove(OsStr::new(name));
            }
            out.insert("PATH".into(), CHROOT_PATH.into());
            out.insert("HOME".into(), "/root".into());
            out.insert("TMP_HOOKS_PATH".into(), IN_TARGET_HOOKS.into());
        }
    }
    out
}

/// Names of the files of `hooks_dir/environment.d` that are sourced, in order:
/// files (or symlinks to files) named like `10-foo.bash`, by byte order, as
/// dib-run-parts picks them.
pub fn environment_files(hooks_dir: &Path) -> std::io::Result<Vec<OsString>> {
    let names = crate::element::runparts::list_environment(&hooks_dir.join("environment.d"))?;
    Ok(names.into_iter().map(OsString::from).collect())
}

/// The shell that sources environment.d and runs the script: bash, or sh
/// where the root has no bash. Returned as the path the script sees.
pub fn pick_shell(place: Place<'_>, host_env: &BTreeMap<OsString, OsString>) -> PathBuf {
    match place {
        Place::Chroot { tree } => ["bin/bash", "usr/bin/bash", "bin/sh", "usr/bin/sh"]
            .into_iter()
            .find(|candidate| executable_in_root(tree, candidate))
            .map(|found| Path::new("/").join(found))
            .unwrap_or_else(|| PathBuf::from("/bin/sh")),
        Place::Host { .. } => {
            let path = host_env
                .get(OsStr::new("PATH"))
                .cloned()
                .unwrap_or_default();
            ["bash", "sh"]
                .into_iter()
                .find_map(|name| {
                    std::env::split_paths(&path)
                        .map(|dir| dir.join(name))
                        .find(|p| is_executable(p))
                })
                .unwrap_or_else(|| PathBuf::from("/bin/sh"))
        }
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether `rel` names an executable file in `tree`, resolving symlinks as
/// the chroot would (absolute ones stay inside the tree).
fn executable_in_root(tree: &Path, rel: &str) -> bool {
    let Ok(root) = std::fs::File::open(tree) else {
        return false;
    };
    sys::openat2(
        root.as_fd(),
        rel.as_bytes(),
        libc::O_PATH,
        libc::RESOLVE_IN_ROOT,
    )
    .map(std::fs::File::from)
    .and_then(|file| file.metadata())
    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dib_env() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("TARGET_ROOT".to_string(), "/build/mnt".to_string()),
            ("TMP_HOOKS_PATH".to_string(), "/build/hooks".to_string()),
            ("TMPDIR".to_string(), "/build/tmp".to_string()),
            ("DIB_RELEASE".to_string(), "bookworm".to_string()),
        ])
    }

    fn inherited() -> Vec<(OsString, OsString)> {
        [
            ("http_proxy", "http://proxy:3128"),
            ("NO_PROXY", "localhost"),
            ("OTHER", "host value"),
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/home/builder"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
    }

    #[test]
    fn chroot_environment_uses_in_chroot_paths() {
        let env = script_environment(
            Place::Chroot {
                tree: Path::new("/build/mnt"),
            },
            &dib_env(),
            inherited(),
        );
        let get = |k: &str| {
            env.get(OsStr::new(k))
                .map(|v| v.to_string_lossy().into_owned())
        };
        assert_eq!(get("TMP_HOOKS_PATH").as_deref(), Some("/tmp/in_target.d"));
        assert_eq!(get("PATH").as_deref(), Some(CHROOT_PATH));
        assert_eq!(get("HOME").as_deref(), Some("/root"));
        assert_eq!(get("DIB_RELEASE").as_deref(), Some("bookworm"));
        assert_eq!(get("TMPDIR"), None);
        assert_eq!(get("http_proxy").as_deref(), Some("http://proxy:3128"));
        assert_eq!(get("NO_PROXY").as_deref(), Some("localhost"));
        // Only the proxies (and TERM) cross into the chroot, not the host's HOME.
        assert_eq!(get("OTHER"), None);
    }

    #[test]
    fn host_environment_keeps_the_given_paths_and_adds_hooks_bin() {
        let env = script_environment(
            Place::Host {
                hooks_dir: Path::new("/build/hooks"),
            },
            &dib_env(),
            inherited(),
        );
        let get = |k: &str| {
            env.get(OsStr::new(k))
                .map(|v| v.to_string_lossy().into_owned())
        };
        assert_eq!(get("TMP_HOOKS_PATH").as_deref(), Some("/build/hooks"));
        assert_eq!(get("TARGET_ROOT").as_deref(), Some("/build/mnt"));
        assert_eq!(get("OTHER").as_deref(), Some("host value"));
        assert_eq!(
            get("PATH").as_deref(),
            Some("/usr/bin:/bin:/build/hooks/bin")
        );
    }

    #[test]
    fn environment_files_are_filtered_and_sorted_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let envd = dir.path().join("environment.d");
        std::fs::create_dir(&envd).unwrap();
        for name in ["20-b.bash", "10-a.bash", "B-upper", "with space", "x~"] {
            std::fs::write(envd.join(name), "").unwrap();
        }
        std::fs::create_dir(envd.join("30-dir")).unwrap();
        std::os::unix::fs::symlink("10-a.bash", envd.join("15-link")).unwrap();
        std::os::unix::fs::symlink("missing", envd.join("16-dangling")).unwrap();
        let names = environment_files(dir.path()).unwrap();
        assert_eq!(names, ["10-a.bash", "15-link", "20-b.bash", "B-upper"]);
    }
}
