//! Progress bars on a terminal, silence elsewhere.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A byte-counting bar on stderr, hidden unless `wanted` and stderr is a terminal.
pub fn bytes_bar(total: u64, wanted: bool) -> ProgressBar {
    if !wanted || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar
}

/// A `Write` adaptor that advances `bar` by the bytes written through it.
pub struct ProgressWriter<W> {
    inner: W,
    bar: ProgressBar,
}

impl<W: std::io::Write> ProgressWriter<W> {
    pub fn new(inner: W, bar: ProgressBar) -> Self {
        ProgressWriter { inner, bar }
    }

    /// Clear the bar and return the inner writer.
    pub fn finish(self) -> W {
        self.bar.finish_and_clear();
        self.inner
    }
}

impl<W: std::io::Write> std::io::Write for ProgressWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(buf)?;
        self.bar.inc(buf.len() as u64);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
