//! `kiln config apply`: collect, and when anything changed since the last
//! successful apply, render the templates and run the refresh phases. The
//! last-applied copies move only on success, so a failed apply is retried.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::cache::{Cache, CacheError};
use super::collect::{self, CollectError, Collector};
use super::lock::{ApplyLock, LockError};
use super::refresh::{self, RefreshError};
use super::render::{self, RenderError};
use super::report::{ApplyReport, Reporter};
use super::value::{self, Value};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("collecting from {source_name}: {error}")]
    Collect {
        source_name: String,
        error: CollectError,
    },
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Refresh(#[from] RefreshError),
}

pub struct ApplyOptions {
    pub cache_dir: PathBuf,
    pub templates: PathBuf,
    /// Root the rendered files are written under (`/` on a node).
    pub output_root: PathBuf,
    pub refresh_base: PathBuf,
    /// Merged in this order, later sources winning.
    pub sources: Vec<Box<dyn Collector>>,
    /// Where results go (the conductor); None reports nowhere.
    pub reporter: Option<Box<dyn Reporter>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Metadata equals what was last applied: nothing ran.
    Unchanged,
    /// Files rendered and these refresh scripts ran.
    Applied { scripts: Vec<PathBuf> },
}

/// The lock file of a cache folder.
pub fn lock_path(cache_dir: &std::path::Path) -> PathBuf {
    cache_dir.join("apply.lock")
}

/// One collect / render / refresh round.
pub fn apply_once(opts: &ApplyOptions) -> Result<ApplyOutcome, ApplyError> {
    apply_collecting(opts, &mut None)
}

/// The cache folder, created root-only: its copies hold the node's config
/// token. An existing folder keeps its mode (the operator's choice).
fn create_private_dir(dir: &std::path::Path) -> Result<(), ApplyError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| {
            ApplyError::Cache(CacheError {
                path: dir.to_path_buf(),
                source,
            })
        })
}

/// A source that cannot be reached (the conductor down, the network not up
/// yet) does not stop the others: its last collected copy stands in for it.
fn collect_or_cached(
    source: &dyn Collector,
    cache: &Cache,
    earlier: &Value,
) -> Result<Option<Value>, ApplyError> {
    let name = source.name().to_string();
    match source.collect_after(earlier) {
        Ok(data) => Ok(data),
        Err(error @ CollectError::Unreachable { .. }) => {
            eprintln!("kiln: warning: source {name} unavailable, using its last copy: {error}");
            collect::read_json(&cache.current_path(&name)).map_err(|error| ApplyError::Collect {
                source_name: name,
                error,
            })
        }
        Err(error) => Err(ApplyError::Collect {
            source_name: name,
            error,
        }),
    }
}

/// [`apply_once`], leaving the merged metadata in `merged_out` once collected
/// (the report needs it, also when render or refresh fails).
fn apply_collecting(
    opts: &ApplyOptions,
    merged_out: &mut Option<Value>,
) -> Result<ApplyOutcome, ApplyError> {
    create_private_dir(&opts.cache_dir)?;
    let _lock = ApplyLock::acquire(&lock_path(&opts.cache_dir))?;
    let cache = Cache::open(&opts.cache_dir)?;
    let mut collected: Vec<(String, Value)> = Vec::new();
    let mut changed = false;
    for source in &opts.sources {
        let name = source.name().to_string();
        let earlier = value::merge_documents(collected.iter().map(|(_, v)| v));
        if let Some(data) = collect_or_cached(source.as_ref(), &cache, &earlier)? {
            changed |= cache.store(&name, &data)?;
            collected.push((name, data));
        }
    }
    let merged = value::merge_documents(collected.iter().map(|(_, v)| v));
    *merged_out = Some(merged.clone());
    if !changed {
        return Ok(ApplyOutcome::Unchanged);
    }
    render::install(&opts.templates, &merged, &opts.output_root)?;
    // Refresh scripts that call os-apply-config --key find the metadata here.
    let files: Vec<String> = collected
        .iter()
        .map(|(name, _)| cache.current_path(name).to_string_lossy().into_owned())
        .collect();
    let env = vec![(
        "OS_CONFIG_FILES".to_string(),
        OsString::from(files.join(":")),
    )];
    let scripts = refresh::refresh(&opts.refresh_base, &env)?;
    for (name, _) in &collected {
        cache.commit(name)?;
    }
    Ok(ApplyOutcome::Applied { scripts })
}

/// The last report the reporter accepted (its request body): a success the
/// conductor missed while it was down is sent again once metadata is unchanged.
pub fn sent_report_path(cache_dir: &std::path::Path) -> PathBuf {
    cache_dir.join("report.sent.json")
}

/// [`apply_once`], then tell the reporter how it went. A report that cannot
/// be sent is logged and does not change the result; a success is sent again
/// on later unchanged rounds until the reporter accepts one.
pub fn apply_and_report(opts: &ApplyOptions) -> Result<ApplyOutcome, ApplyError> {
    let mut merged = None;
    let result = apply_collecting(opts, &mut merged);
    let (Some(reporter), Some(metadata)) = (&opts.reporter, &merged) else {
        return result;
    };
    let unchanged = matches!(result, Ok(ApplyOutcome::Unchanged));
    let report = match ApplyReport::from_result(&result, Some(metadata)) {
        Some(report) => report,
        // Unchanged means the metadata was applied successfully before.
        None if unchanged => ApplyReport::configured(metadata),
        None => return result,
    };
    let body = serde_json::to_string(&report.to_request(metadata)).unwrap_or_default();
    let sent = sent_report_path(&opts.cache_dir);
    if unchanged && std::fs::read_to_string(&sent).ok().as_deref() == Some(body.as_str()) {
        return result;
    }
    match reporter.report(&report, metadata) {
        Ok(()) => {
            if let Err(e) = write_sent(&sent, &body) {
                eprintln!("kiln: warning: {}: {e}", sent.display());
            }
        }
        Err(e) => eprintln!("kiln: warning: {e}"),
    }
    result
}

fn write_sent(path: &std::path::Path, body: &str) -> std::io::Result<()> {
    let out = crate::util::atomic_file::AtomicFile::create(path)?;
    std::io::Write::write_all(&mut out.file(), body.as_bytes())?;
    out.commit()
}

/// Poll forever: apply every `interval`; after a failure wait twice as long
/// as the last time, up to `max_backoff`.
pub fn poll(opts: &ApplyOptions, interval: Duration, max_backoff: Duration) -> ! {
    let mut wait = interval;
    loop {
        match apply_and_report(opts) {
            Ok(ApplyOutcome::Unchanged) => wait = interval,
            Ok(ApplyOutcome::Applied { .. }) => {
                eprintln!("kiln: config applied");
                wait = interval;
            }
            Err(e) => {
                eprintln!("kiln: error: {e}");
                wait = (wait * 2).min(max_backoff.max(interval));
            }
        }
        std::thread::sleep(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::collect::LocalDir;
    use crate::config::report::{ReportError, ReportStatus};
    use std::sync::{Arc, Mutex};

    /// Records reports; refuses the first `fail_first` of them.
    struct Recorder {
        sent: Arc<Mutex<Vec<ReportStatus>>>,
        fail_first: Mutex<usize>,
    }

    impl Reporter for Recorder {
        fn report(&self, report: &ApplyReport, _: &Value) -> Result<(), ReportError> {
            let mut left = self.fail_first.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(ReportError::Unreachable {
                    url: "test".into(),
                    message: "down".into(),
                });
            }
            self.sent.lock().unwrap().push(report.status);
            Ok(())
        }
    }

    #[test]
    fn a_success_the_conductor_missed_is_sent_on_the_next_unchanged_round_once() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("local");
        std::fs::create_dir_all(&local).unwrap();
        std::fs::write(local.join("a.json"), r#"{"v": 1}"#).unwrap();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let opts = ApplyOptions {
            cache_dir: dir.path().join("cache"),
            templates: dir.path().join("templates"),
            output_root: dir.path().join("root"),
            refresh_base: dir.path().join("refresh"),
            sources: vec![Box::new(LocalDir { dir: local })],
            reporter: Some(Box::new(Recorder {
                sent: Arc::clone(&sent),
                fail_first: Mutex::new(1),
            })),
        };
        assert!(matches!(
            apply_and_report(&opts),
            Ok(ApplyOutcome::Applied { .. })
        ));
        assert!(sent.lock().unwrap().is_empty(), "the first report was lost");
        assert_eq!(apply_and_report(&opts).unwrap(), ApplyOutcome::Unchanged);
        assert_eq!(*sent.lock().unwrap(), vec![ReportStatus::Configured]);
        assert_eq!(apply_and_report(&opts).unwrap(), ApplyOutcome::Unchanged);
        assert_eq!(sent.lock().unwrap().len(), 1, "not sent again");
    }

    /// Answers once, then is unreachable.
    struct Flaky {
        calls: Mutex<u32>,
    }

    impl Collector for Flaky {
        fn name(&self) -> &str {
            "http"
        }

        fn collect(&self) -> Result<Option<Value>, CollectError> {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            if *calls == 1 {
                Ok(Some(Value::from_json(r#"{"x": "from-http"}"#).unwrap()))
            } else {
                Err(CollectError::Unreachable {
                    url: "http://conductor".into(),
                    message: "connection refused".into(),
                })
            }
        }
    }

    #[test]
    fn an_unreachable_source_is_replaced_by_its_last_copy() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("local");
        std::fs::create_dir_all(&local).unwrap();
        std::fs::write(local.join("a.json"), r#"{"v": 1}"#).unwrap();
        let templates = dir.path().join("templates");
        std::fs::create_dir_all(&templates).unwrap();
        std::fs::write(templates.join("out"), "{{v}} {{x}}\n").unwrap();
        let opts = ApplyOptions {
            cache_dir: dir.path().join("cache"),
            templates,
            output_root: dir.path().join("root"),
            refresh_base: dir.path().join("refresh"),
            sources: vec![
                Box::new(Flaky {
                    calls: Mutex::new(0),
                }),
                Box::new(LocalDir { dir: local.clone() }),
            ],
            reporter: None,
        };
        let out = dir.path().join("root/out");
        apply_once(&opts).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "1 from-http\n");
        std::fs::write(local.join("a.json"), r#"{"v": 2}"#).unwrap();
        assert!(matches!(
            apply_once(&opts),
            Ok(ApplyOutcome::Applied { .. })
        ));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "2 from-http\n");
    }
}
