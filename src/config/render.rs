//! os-apply-config's job: render every template of a tree that mirrors `/`
//! with the merged metadata, then write the results under an output root.
//! Everything is rendered before anything is written, so a broken template
//! changes no file.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::mustache::{self, MustacheError};
use super::oac::{self, FileControl, OacError};
use super::value::{self, Value};
use crate::util::atomic_file::AtomicFile;

/// Where os-apply-config looks for templates unless told otherwise.
pub const DEFAULT_TEMPLATES: &str = "/usr/libexec/os-apply-config/templates";
/// Environment variable that overrides [`DEFAULT_TEMPLATES`].
pub const TEMPLATES_ENV: &str = "OS_CONFIG_APPLIER_TEMPLATES";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("metadata file {path}: {source}")]
    MetadataRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not parse metadata file {path}: {source}")]
    MetadataParse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("templates folder {path}: {source}")]
    Walk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("template {path}: {source}")]
    ReadTemplate {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("template {path} is not UTF-8 text")]
    NotText { path: PathBuf },
    #[error("could not render moustache template {path}: {source}")]
    Mustache {
        path: PathBuf,
        source: MustacheError,
    },
    #[error("config script {path} could not run: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config script failed: {path} ({status})\n\nwith output:\n\n{output}")]
    ScriptFailed {
        path: PathBuf,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error(transparent)]
    Control(#[from] OacError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The templates folder: `$OS_CONFIG_APPLIER_TEMPLATES` or the default.
pub fn default_templates_dir() -> PathBuf {
    std::env::var_os(TEMPLATES_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TEMPLATES))
}

/// Read and deep-merge metadata files in order (later wins). Files that do
/// not exist are skipped, as os-apply-config skips them.
pub fn load_metadata(files: &[PathBuf]) -> Result<Value, RenderError> {
    let mut docs = Vec::new();
    for path in files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(RenderError::MetadataRead {
                    path: path.clone(),
                    source,
                });
            }
        };
        docs.push(
            Value::from_json(&text).map_err(|source| RenderError::MetadataParse {
                path: path.clone(),
                source,
            })?,
        );
    }
    Ok(value::merge_documents(&docs))
}

/// One rendered file, not yet written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Path relative to the output root.
    pub path: PathBuf,
    pub body: Vec<u8>,
    pub control: FileControl,
}

/// Template files under `root` (control files left out), as (template,
/// path relative to root), sorted. Symlinked folders are not entered; a
/// missing `root` has no templates.
pub fn template_paths(root: &Path) -> Result<Vec<(PathBuf, PathBuf)>, RenderError> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // No templates folder renders nothing, as with os-apply-config.
            Err(e) if dir == root && e.kind() == std::io::ErrorKind::NotFound => break,
            Err(source) => return Err(RenderError::Walk { path: dir, source }),
        };
        for entry in entries {
            let entry = entry.map_err(|source| RenderError::Walk {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir {
                pending.push(path);
            } else if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                // os.walk lists a symlinked folder but does not follow it.
            } else if !path.to_string_lossy().ends_with(".oac") {
                let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                found.push((path, rel));
            }
        }
    }
    found.sort();
    Ok(found)
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Render one template: executables get the metadata JSON on stdin and
/// their stdout is the file; other files are mustache templates.
pub fn render_template(path: &Path, metadata: &Value) -> Result<Vec<u8>, RenderError> {
    if is_executable(path) {
        return run_executable(path, metadata);
    }
    let bytes = std::fs::read(path).map_err(|source| RenderError::ReadTemplate {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| RenderError::NotText {
        path: path.to_path_buf(),
    })?;
    // Python reads templates in text mode: CRLF and CR become LF.
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    mustache::render(&text, metadata)
        .map(String::into_bytes)
        .map_err(|source| RenderError::Mustache {
            path: path.to_path_buf(),
            source,
        })
}

fn run_executable(path: &Path, metadata: &Value) -> Result<Vec<u8>, RenderError> {
    let spawn_err = |source| RenderError::Spawn {
        path: path.to_path_buf(),
        source,
    };
    let mut child = Command::new(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let input = metadata.to_python_json();
    let mut stdin = child.stdin.take().expect("stdin was piped");
    // Feed stdin from a thread so a script that writes before reading cannot deadlock.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let output = child.wait_with_output().map_err(spawn_err)?;
    let _ = feeder.join();
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(RenderError::ScriptFailed {
            path: path.to_path_buf(),
            status: output.status,
            output: text,
        });
    }
    Ok(output.stdout)
}

/// Render every template under `templates` (nothing is written).
pub fn build_tree(templates: &Path, metadata: &Value) -> Result<Vec<RenderedFile>, RenderError> {
    let mut files = Vec::new();
    for (template, rel) in template_paths(templates)? {
        let body = render_template(&template, metadata)?;
        let control = oac::load_for(&template)?;
        files.push(RenderedFile {
            path: rel,
            body,
            control,
        });
    }
    Ok(files)
}

/// What writing one file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Written(PathBuf),
    Deleted(PathBuf),
    SkippedEmpty(PathBuf),
}

/// Write one rendered file under `root` the way os-apply-config does: empty
/// output with `allow_empty: false` removes the file; otherwise an atomic
/// replace keeping the old file's mode and owner unless the control file
/// says otherwise (new files: 0644, the caller's owner).
pub fn write_file(root: &Path, file: &RenderedFile) -> Result<WriteOutcome, RenderError> {
    let dest = root.join(&file.path);
    let write_err = |source| RenderError::Write {
        path: dest.clone(),
        source,
    };
    let existing = std::fs::metadata(&dest).ok();
    if !file.control.allow_empty && file.body.is_empty() {
        if existing.is_some() {
            std::fs::remove_file(&dest).map_err(write_err)?;
            return Ok(WriteOutcome::Deleted(dest));
        }
        return Ok(WriteOutcome::SkippedEmpty(dest));
    }
    let (mode, uid, gid) = match &existing {
        Some(m) => (m.mode() & 0o7777, Some(m.uid()), Some(m.gid())),
        None => (0o644, None, None),
    };
    let mode = file.control.mode.unwrap_or(mode);
    let uid = file.control.owner.or(uid);
    let gid = file.control.group.or(gid);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(write_err)?;
    }
    let out = AtomicFile::create(&dest).map_err(write_err)?;
    out.file().write_all(&file.body).map_err(write_err)?;
    out.file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(write_err)?;
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::fchown(out.file(), uid, gid).map_err(write_err)?;
        // chown clears set-id bits; put the mode back as asked.
        out.file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(write_err)?;
    }
    out.commit().map_err(write_err)?;
    Ok(WriteOutcome::Written(dest))
}

/// `os-apply-config --templates DIR --output ROOT` with merged metadata.
pub fn install(
    templates: &Path,
    metadata: &Value,
    root: &Path,
) -> Result<Vec<WriteOutcome>, RenderError> {
    let files = build_tree(templates, metadata)?;
    files.iter().map(|f| write_file(root, f)).collect()
}
