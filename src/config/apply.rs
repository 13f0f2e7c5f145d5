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

/// [`apply_once`], then tell the reporter how it went. A report that cannot
/// be sent is logged and does not change the result.
pub fn apply_and_report(opts: &ApplyOptions) -> Result<ApplyOutcome, ApplyError> {
    let mut merged = None;
    let result = apply_collecting(opts, &mut merged);
    if let (Some(reporter), Some(metadata)) = (&opts.reporter, &merged)
        && let Some(report) = ApplyReport::from_result(&result, Some(metadata))
        && let Err(e) = reporter.report(&report, metadata)
    {
        eprintln!("kiln: warning: {e}");
    }
    result
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
