//! Helpers: write `Staged` items into a directory, run a tool.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::initrd::staging::{Content, Staged, StagedKind};

/// Write the items under `root`, as the initrd packer would (missing parents
/// are created as plain directories).
pub fn materialize(root: &Path, items: &[Staged]) {
    for s in items {
        let p = root.join(s.path.trim_start_matches('/'));
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        match &s.kind {
            StagedKind::Dir => {
                if fs::symlink_metadata(&p).is_err() {
                    fs::create_dir(&p).unwrap();
                }
            }
            StagedKind::Symlink(t) => {
                symlink(t, &p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
            StagedKind::File(Content::Host(h)) => {
                fs::copy(h, &p).unwrap_or_else(|e| panic!("{}: {e}", h.display()));
            }
            StagedKind::File(Content::Bytes(b)) => fs::write(&p, b).unwrap(),
        }
        // Owner first: chown clears set-id bits.
        std::os::unix::fs::lchown(&p, Some(s.uid), Some(s.gid)).unwrap();
        if !matches!(s.kind, StagedKind::Symlink(_)) {
            fs::set_permissions(&p, fs::Permissions::from_mode(s.mode)).unwrap();
        }
    }
}

/// Run a command, return (success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?}: {e} (is its Debian package in .ci/packages installed?)")
    });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn canon(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn host_files(items: &[Staged]) -> Vec<PathBuf> {
    items
        .iter()
        .filter_map(|s| match &s.kind {
            StagedKind::File(Content::Host(h)) => Some(h.clone()),
            _ => None,
        })
        .collect()
}
