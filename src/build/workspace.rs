//! The build directory of one `kiln image build` and the environment its
//! element scripts see.
//!
//! The directory is a fixed path with a tmpfs mounted on it inside the build's
//! private mount namespace: concurrent builds each see their own empty tmpfs
//! there, and when kiln ends, even by SIGKILL, the kernel drops the namespace
//! and the tmpfs with everything in it. With `no-tmpfs` a unique directory under
//! it is used and removed at the end instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::sandbox::{BuildTmpfs, SandboxError};

/// Where build directories are mounted (created once, kept empty).
pub const BUILD_BASE: &str = "/var/tmp/kiln-build";

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WorkspaceError + '_ {
    move |source| WorkspaceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The directories of one build. Dropping it removes them.
pub struct Workspace {
    dir: PathBuf,
    storage: Storage,
}

enum Storage {
    /// A tmpfs on the shared mount point: unmounting is all. The mount point
    /// itself must stay: removing it would unmount the tmpfs of every other
    /// build in its own namespace.
    Tmpfs(Option<BuildTmpfs>),
    /// A directory of our own below the mount point.
    Directory { removed: bool },
}

impl Workspace {
    /// Create the build directory: a tmpfs on [`BUILD_BASE`] (the caller must be in
    /// a private mount namespace), or with `use_tmpfs` false a fresh directory
    /// below it.
    pub fn create(use_tmpfs: bool) -> Result<Workspace, WorkspaceError> {
        let base = Path::new(BUILD_BASE);
        std::fs::create_dir_all(base).map_err(io_err(base))?;
        if use_tmpfs {
            let tmpfs = BuildTmpfs::mount(base, None)?;
            let ws = Workspace {
                dir: base.to_path_buf(),
                storage: Storage::Tmpfs(Some(tmpfs)),
            };
            ws.make_dirs()?;
            return Ok(ws);
        }
        let dir = tempfile::Builder::new()
            .prefix("build.")
            .tempdir_in(base)
            .map_err(io_err(base))?
            .keep();
        let ws = Workspace {
            dir,
            storage: Storage::Directory { removed: false },
        };
        ws.make_dirs()?;
        Ok(ws)
    }

    fn make_dirs(&self) -> Result<(), WorkspaceError> {
        for d in [self.target_root(), self.image_dir()] {
            std::fs::create_dir(&d).map_err(io_err(&d))?;
        }
        Ok(())
    }

    /// TMP_BUILD_DIR.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// TARGET_ROOT / TMP_MOUNT_PATH: the root tree being built.
    pub fn target_root(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    /// TMP_HOOKS_PATH (created by the hooks assembly).
    pub fn hooks_dir(&self) -> PathBuf {
        self.dir.join("hooks")
    }

    /// TMP_IMAGE_DIR: where the raw disk is assembled.
    pub fn image_dir(&self) -> PathBuf {
        self.dir.join("image")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("build.log")
    }

    /// Remove everything now, reporting what went wrong.
    pub fn remove(mut self) -> Result<(), WorkspaceError> {
        self.cleanup()
    }

    fn cleanup(&mut self) -> Result<(), WorkspaceError> {
        match &mut self.storage {
            Storage::Tmpfs(tmpfs) => match tmpfs.take() {
                Some(t) => Ok(t.release()?),
                None => Ok(()),
            },
            Storage::Directory { removed } if !*removed => {
                *removed = true;
                std::fs::remove_dir_all(&self.dir).map_err(io_err(&self.dir))
            }
            Storage::Directory { .. } => Ok(()),
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = self.cleanup();
    }
}

/// DIB's variables for every script of a build, before environment.d.
pub fn script_environment(
    ws: &Workspace,
    recipe_env: &BTreeMap<String, String>,
    element_env: &[(String, String)],
    elements_path: &str,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let root = ws.target_root().display().to_string();
    env.insert("TARGET_ROOT".into(), root.clone());
    env.insert("TMP_MOUNT_PATH".into(), root);
    env.insert("TMP_BUILD_DIR".into(), ws.dir().display().to_string());
    // Host scripts see this; chroot scripts get /tmp/in_target.d instead.
    env.insert(
        "TMP_HOOKS_PATH".into(),
        ws.hooks_dir().display().to_string(),
    );
    env.insert("TMP_IMAGE_DIR".into(), ws.image_dir().display().to_string());
    env.insert("ELEMENTS_PATH".into(), elements_path.to_string());
    env.insert("DIB_IMAGE_CACHE".into(), default_image_cache());
    env.insert("DIB_ENV".into(), String::new());
    if let Ok(exe) = std::env::current_exe() {
        // Host scripts may call kiln's own tools (initrd, image).
        env.insert("KILN".into(), exe.display().to_string());
    }
    // DIB users export DIB_* settings in their shell; chroot scripts get only
    // what is passed on explicitly.
    for (k, v) in std::env::vars() {
        if k.starts_with("DIB_") {
            env.insert(k, v);
        }
    }
    for (k, v) in element_env {
        env.insert(k.clone(), v.clone());
    }
    for (k, v) in recipe_env {
        env.insert(k.clone(), v.clone());
    }
    env
}

/// DIB's cache of downloads: ~/.cache/image-create.
fn default_image_cache() -> String {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    format!("{home}/.cache/image-create")
}
