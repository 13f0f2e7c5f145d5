//! os-collect-config's cache: per source `NAME.json` (what was collected
//! last), `NAME.json.last` (what was last applied successfully) and
//! `NAME.json.orig` (the first thing ever collected).

use std::path::{Path, PathBuf};

use super::value::Value;

/// Where kiln keeps its cache unless told otherwise.
pub const DEFAULT_CACHE: &str = "/var/lib/kiln-config";
/// Environment variable that overrides [`DEFAULT_CACHE`].
pub const CACHE_ENV: &str = "KILN_CONFIG_CACHE";

#[derive(Debug, thiserror::Error)]
#[error("cache file {path}: {source}")]
pub struct CacheError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

pub fn default_cache_dir() -> PathBuf {
    std::env::var_os(CACHE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

pub struct Cache {
    dir: PathBuf,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let err = |source| CacheError {
        path: path.to_path_buf(),
        source,
    };
    let out = crate::util::atomic_file::AtomicFile::create(path).map_err(err)?;
    std::io::Write::write_all(&mut out.file(), bytes).map_err(err)?;
    out.file().sync_all().map_err(err)?;
    out.commit().map_err(err)
}

impl Cache {
    pub fn open(dir: &Path) -> Result<Cache, CacheError> {
        std::fs::create_dir_all(dir).map_err(|source| CacheError {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    /// `NAME.json`: the current copy of a source.
    pub fn current_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    pub fn last_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json.last"))
    }

    pub fn orig_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json.orig"))
    }

    /// Store what a source gave; true when it differs from the last applied copy.
    pub fn store(&self, name: &str, value: &Value) -> Result<bool, CacheError> {
        let text = value.to_python_json();
        let current = self.current_path(name);
        write_atomic(&current, text.as_bytes())?;
        let orig = self.orig_path(name);
        if !orig.exists() {
            write_atomic(&orig, text.as_bytes())?;
        }
        let last = std::fs::read(self.last_path(name)).ok();
        Ok(last.as_deref() != Some(text.as_bytes()))
    }

    /// Mark the current copy of a source as applied.
    pub fn commit(&self, name: &str) -> Result<(), CacheError> {
        let current = self.current_path(name);
        let bytes = std::fs::read(&current).map_err(|source| CacheError {
            path: current.clone(),
            source,
        })?;
        write_atomic(&self.last_path(name), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_until_committed_and_orig_keeps_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let one = Value::from_json(r#"{"v": 1}"#).unwrap();
        let two = Value::from_json(r#"{"v": 2}"#).unwrap();
        assert!(cache.store("local", &one).unwrap());
        assert!(cache.store("local", &one).unwrap(), "not applied yet");
        cache.commit("local").unwrap();
        assert!(!cache.store("local", &one).unwrap());
        assert!(cache.store("local", &two).unwrap());
        let orig = std::fs::read_to_string(cache.orig_path("local")).unwrap();
        assert_eq!(orig, r#"{"v": 1}"#);
    }
}
