//! Where script output goes: every line to the build log, optionally to
//! stderr with an `element/phase/script: ` prefix, and the last lines kept
//! for the error message when the script fails.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// How many output lines a failing script's error shows.
pub const LAST_LINES: usize = 30;

/// The build log file (or nowhere, for callers that keep no log).
pub struct BuildLog {
    path: PathBuf,
    file: Option<File>,
}

impl BuildLog {
    /// Start a new log at `path`, replacing an older one.
    pub fn create(path: &Path) -> io::Result<Self> {
        Ok(BuildLog {
            path: path.to_path_buf(),
            file: Some(File::create(path)?),
        })
    }

    /// Append to the log at `path`, creating it if needed.
    pub fn append(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(BuildLog {
            path: path.to_path_buf(),
            file: Some(file),
        })
    }

    /// A log that drops everything.
    pub fn discard() -> Self {
        BuildLog {
            path: PathBuf::new(),
            file: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write one line (a newline is added).
    pub fn line(&mut self, text: &[u8]) -> io::Result<()> {
        if let Some(file) = &mut self.file {
            // One write per line: a killed kiln loses nothing already seen.
            let mut buf = Vec::with_capacity(text.len() + 1);
            buf.extend_from_slice(text);
            buf.push(b'\n');
            file.write_all(&buf)?;
        }
        Ok(())
    }
}

/// Whether script output is also shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Echo {
    Never,
    /// --verbose.
    Always,
    /// When stderr is a terminal.
    #[default]
    WhenTerminal,
}

impl Echo {
    pub fn enabled(self) -> bool {
        match self {
            Echo::Never => false,
            Echo::Always => true,
            Echo::WhenTerminal => io::stderr().is_terminal(),
        }
    }
}

/// Splits a script's output into lines and sends each where it belongs.
pub struct LineSink<'a> {
    log: &'a mut BuildLog,
    /// `element/phase/script: ` when echoing to stderr.
    echo_prefix: Option<String>,
    partial: Vec<u8>,
    last: VecDeque<String>,
}

impl<'a> LineSink<'a> {
    pub fn new(log: &'a mut BuildLog, echo_prefix: Option<String>) -> Self {
        LineSink {
            log,
            echo_prefix,
            partial: Vec::new(),
            last: VecDeque::with_capacity(LAST_LINES),
        }
    }

    /// Take a chunk of output; complete lines are passed on at once.
    pub fn feed(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&bytes[..end]);
            bytes = &bytes[end + 1..];
            let line = std::mem::take(&mut self.partial);
            self.emit(&line)?;
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    /// Pass on a last line without newline, and return the kept last lines.
    pub fn finish(mut self) -> io::Result<Vec<String>> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line)?;
        }
        Ok(self.last.into())
    }

    fn emit(&mut self, line: &[u8]) -> io::Result<()> {
        self.log.line(line)?;
        let text = String::from_utf8_lossy(line).into_owned();
        if let Some(prefix) = &self.echo_prefix {
            // A closed or full stderr must not stop the build.
            let _ = writeln!(io::stderr().lock(), "{prefix}{text}");
        }
        if self.last.len() == LAST_LINES {
            self.last.pop_front();
        }
        self.last.push_back(text);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_reach_the_log_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("build.log");
        let mut log = BuildLog::create(&path).unwrap();
        let mut sink = LineSink::new(&mut log, None);
        sink.feed(b"first li").unwrap();
        sink.feed(b"ne\nsecond\nthi").unwrap();
        sink.feed(b"rd").unwrap();
        let last = sink.finish().unwrap();
        assert_eq!(last, ["first line", "second", "third"]);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "first line\nsecond\nthird\n"
        );
    }

    #[test]
    fn only_the_last_lines_are_kept() {
        let mut log = BuildLog::discard();
        let mut sink = LineSink::new(&mut log, None);
        for i in 0..100 {
            sink.feed(format!("line {i}\n").as_bytes()).unwrap();
        }
        let last = sink.finish().unwrap();
        assert_eq!(last.len(), LAST_LINES);
        assert_eq!(last.first().unwrap(), "line 70");
        assert_eq!(last.last().unwrap(), "line 99");
    }
}
