//! Where one stream spends its time, per pipeline stage: how long each stage's
//! threads lived and how much of that they were blocked on a queue (waiting for
//! input or for room downstream). The rest is the stage's own work. Collected
//! only when `KILN_STREAM_TRACE=1`, and printed to stderr when the write ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The environment variable that turns tracing on.
pub const TRACE_ENV: &str = "KILN_STREAM_TRACE";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the HTTP body (includes waiting for the server and the network).
    Receive,
    Hash,
    Parse,
    /// Decompressing and writing, summed over the worker threads.
    Work,
}

const STAGES: [Stage; 4] = [Stage::Receive, Stage::Hash, Stage::Parse, Stage::Work];

#[derive(Default)]
struct Times {
    alive_ns: AtomicU64,
    blocked_ns: AtomicU64,
}

pub struct Trace {
    enabled: bool,
    started: Instant,
    stages: [Times; 4],
    /// Zeroing holes before the stream, and the final flush + first MiB after it.
    zero_ns: AtomicU64,
    commit_ns: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Trace {
    pub fn new(enabled: bool) -> Self {
        Trace {
            enabled,
            started: Instant::now(),
            stages: Default::default(),
            zero_ns: AtomicU64::new(0),
            commit_ns: AtomicU64::new(0),
        }
    }

    /// On when `KILN_STREAM_TRACE=1`.
    pub fn from_env() -> Self {
        Self::new(std::env::var_os(TRACE_ENV).is_some_and(|v| v == "1"))
    }

    fn times(&self, stage: Stage) -> &Times {
        &self.stages[stage as usize]
    }

    fn timed<T>(&self, counter: &AtomicU64, f: impl FnOnce() -> T) -> T {
        if !self.enabled {
            return f();
        }
        let t = Instant::now();
        let out = f();
        counter.fetch_add(nanos(t.elapsed()), Ordering::Relaxed);
        out
    }

    /// Run a stage thread's body, counting its lifetime.
    pub fn thread<T>(&self, stage: Stage, f: impl FnOnce() -> T) -> T {
        self.timed(&self.times(stage).alive_ns, f)
    }

    /// Run a queue operation that may block the stage.
    pub fn blocked<T>(&self, stage: Stage, f: impl FnOnce() -> T) -> T {
        self.timed(&self.times(stage).blocked_ns, f)
    }

    pub fn zeroing<T>(&self, f: impl FnOnce() -> T) -> T {
        self.timed(&self.zero_ns, f)
    }

    pub fn commit<T>(&self, f: impl FnOnce() -> T) -> T {
        self.timed(&self.commit_ns, f)
    }

    /// One line: wall time, then per stage "busy / blocked" seconds.
    pub fn summary(&self) -> String {
        let s = |ns: u64| ns as f64 / 1e9;
        let mut line = format!(
            "stream trace: wall {:.2} s; zero holes {:.2} s",
            self.started.elapsed().as_secs_f64(),
            s(self.zero_ns.load(Ordering::Relaxed))
        );
        for stage in STAGES {
            let t = self.times(stage);
            let alive = t.alive_ns.load(Ordering::Relaxed);
            let blocked = t.blocked_ns.load(Ordering::Relaxed);
            line += &format!(
                "; {stage:?} busy {:.2} s, blocked {:.2} s",
                s(alive.saturating_sub(blocked)),
                s(blocked)
            );
        }
        line += &format!(
            "; commit {:.2} s",
            s(self.commit_ns.load(Ordering::Relaxed))
        );
        line
    }

    /// Print the summary to stderr if tracing is on.
    pub fn finish(&self) {
        if self.enabled {
            eprintln!("{}", self.summary());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_lifetime_minus_blocked_and_off_counts_nothing() {
        let on = Trace::new(true);
        on.thread(Stage::Parse, || {
            on.blocked(Stage::Parse, || {
                std::thread::sleep(Duration::from_millis(30))
            });
        });
        let parse = on.times(Stage::Parse);
        let alive = parse.alive_ns.load(Ordering::Relaxed);
        let blocked = parse.blocked_ns.load(Ordering::Relaxed);
        assert!(
            blocked >= 30_000_000 && alive >= blocked,
            "{alive} {blocked}"
        );
        assert!(on.summary().contains("Parse busy"), "{}", on.summary());

        let off = Trace::new(false);
        off.thread(Stage::Work, || off.blocked(Stage::Work, || ()));
        for stage in STAGES {
            assert_eq!(off.times(stage).alive_ns.load(Ordering::Relaxed), 0);
        }
    }
}
