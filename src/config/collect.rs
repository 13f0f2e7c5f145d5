//! Metadata sources, in the order their data is merged (later wins): the
//! config drive, the conductor's HTTP endpoint, local JSON files.

use std::path::{Path, PathBuf};

use super::value::{self, Value};

pub use super::drive::{ConfigDrive, DriveLocation};

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("config drive {device} could not be mounted: {detail}")]
    Mount { device: PathBuf, detail: String },
    #[error("config drive {device}: {source}")]
    Fat {
        device: PathBuf,
        source: super::fat_read::FatReadError,
    },
    #[error("source {0} is not implemented yet")]
    NotImplemented(&'static str),
}

/// One metadata source. `collect` returns None when the source has nothing
/// (no config drive attached, empty folder).
pub trait Collector {
    /// Cache name of the source.
    fn name(&self) -> &str;
    fn collect(&self) -> Result<Option<Value>, CollectError>;
}

pub(crate) fn read_json(path: &Path) -> Result<Option<Value>, CollectError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CollectError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    Value::from_json(&text)
        .map(Some)
        .map_err(|source| CollectError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// os-collect-config's local collector: every `*.json` file of a folder,
/// in name order, deep-merged.
pub struct LocalDir {
    pub dir: PathBuf,
}

impl Collector for LocalDir {
    fn name(&self) -> &str {
        "local"
    }

    fn collect(&self) -> Result<Option<Value>, CollectError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CollectError::Read {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
            .collect();
        paths.sort();
        let mut docs = Vec::new();
        for path in &paths {
            docs.extend(read_json(path)?);
        }
        Ok((!docs.is_empty()).then(|| value::merge_documents(&docs)))
    }
}

/// The conductor's metadata endpoint for this node (token-authenticated).
// TODO(issue 6): GET the node's metadata from the conductor once its API exists.
pub struct Http {
    pub url: String,
}

impl Collector for Http {
    fn name(&self) -> &str {
        "http"
    }

    fn collect(&self) -> Result<Option<Value>, CollectError> {
        Err(CollectError::NotImplemented("http"))
    }
}
