//! The image as an HTTP resource: its size and validator (HEAD), byte ranges for
//! metadata, and one sequential body that survives dropped connections by asking
//! again with `Range: bytes=N-` (and `If-Range`, so a replaced file is noticed).

use std::io::{self, Read};
use std::time::{Duration, Instant};

use super::StreamError;

/// How long a download keeps reconnecting after a failure before it gives up:
/// long enough for a conductor to be restarted in the middle of a deploy.
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(120);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Doubling pauses between attempts, within a time window that starts at the
/// first failure of a streak.
struct Backoff {
    started: Instant,
    window: Duration,
    pause: Duration,
    tries: u32,
}

impl Backoff {
    fn new(window: Duration) -> Self {
        Backoff {
            started: Instant::now(),
            window,
            pause: FIRST_BACKOFF,
            tries: 0,
        }
    }

    /// Sleep before the next attempt; false once the window is spent.
    fn wait(&mut self) -> bool {
        let Some(left) = self.window.checked_sub(self.started.elapsed()) else {
            return false;
        };
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(self.pause.min(left));
        self.pause = (self.pause * 2).min(MAX_BACKOFF);
        self.tries += 1;
        true
    }
}

/// A parsed `http://` image address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUrl(String);

impl ImageUrl {
    pub fn parse(url: &str) -> Result<Self, StreamError> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| StreamError::Url(format!("{url:?}: only http:// and https:// URLs")))?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(StreamError::Url(format!("{url:?} names no host")));
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(StreamError::Url(format!("{url:?} contains spaces")));
        }
        Ok(Self(url.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ImageUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One image on one server.
pub struct HttpImage {
    agent: ureq::Agent,
    url: ImageUrl,
    resume_window: Duration,
    pub size: u64,
    /// The server's validator from HEAD, if it sent one.
    pub etag: Option<String>,
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl HttpImage {
    /// HEAD the image for its size and validator. Failures are retried for
    /// `resume_window`, here and for every later request of the download.
    pub fn open(url: &ImageUrl, resume_window: Duration) -> Result<Self, StreamError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .build()
            .into();
        let resp = retry(url, 0, resume_window, || {
            agent.head(url.as_str()).call().map_err(|e| e.to_string())
        })?;
        if resp.status() != 200 {
            return Err(StreamError::Status {
                url: url.to_string(),
                status: resp.status().as_u16(),
                wanted: "200 to HEAD",
            });
        }
        let size = header(&resp, "content-length")
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| StreamError::Http {
                url: url.to_string(),
                offset: 0,
                message: "HEAD response has no Content-Length".into(),
            })?;
        Ok(Self {
            agent,
            url: url.clone(),
            resume_window,
            size,
            etag: header(&resp, "etag"),
        })
    }

    pub fn url(&self) -> &ImageUrl {
        &self.url
    }

    /// Send a GET starting at `offset` (ranged unless 0); checks the status, the
    /// Content-Range and that the validator did not change.
    fn get_from(&self, offset: u64, end: Option<u64>) -> Result<ureq::Body, String> {
        let mut req = self.agent.get(self.url.as_str());
        if offset > 0 || end.is_some() {
            let last = end.map(|e| (e - 1).to_string()).unwrap_or_default();
            req = req.header("Range", &format!("bytes={offset}-{last}"));
            if let Some(tag) = &self.etag {
                req = req.header("If-Range", tag);
            }
        }
        let resp = req.call().map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let ranged = offset > 0 || end.is_some();
        match (ranged, status) {
            (false, 200) | (true, 206) => {}
            (true, 200) => return Err(Fatal::Changed.into()),
            (_, s) => return Err(format!("HTTP status {s}")),
        }
        if ranged {
            let want = format!("bytes {offset}-");
            let got = header(&resp, "content-range").unwrap_or_default();
            if !got.starts_with(&want) {
                return Err(format!(
                    "server answered Content-Range {got:?} to a range from {offset}"
                ));
            }
        }
        if let (Some(ours), Some(theirs)) = (&self.etag, header(&resp, "etag"))
            && *ours != theirs
        {
            return Err(Fatal::Changed.into());
        }
        Ok(resp.into_body())
    }

    /// Bytes `[start, end)` of the image (for metadata), retried on failure.
    pub fn range(&self, start: u64, end: u64) -> Result<Vec<u8>, StreamError> {
        let end = end.min(self.size);
        if start >= end {
            return Ok(Vec::new());
        }
        retry(&self.url, start, self.resume_window, || {
            let body = self.get_from(start, Some(end))?;
            let mut buf = vec![0u8; (end - start) as usize];
            let mut reader = body.into_reader();
            let n = crate::deploy::images::read_full(&mut reader, &mut buf)
                .map_err(|e| e.to_string())?;
            if n as u64 != end - start {
                return Err(format!("short read: {n} of {} bytes", end - start));
            }
            Ok(buf)
        })
    }

    /// The whole image as one stream, resuming after dropped connections.
    pub fn stream(&self) -> Result<ResumingBody<'_>, StreamError> {
        let body = retry(&self.url, 0, self.resume_window, || self.get_from(0, None))?;
        Ok(ResumingBody {
            image: self,
            body: Some(Box::new(body.into_reader())),
            pos: 0,
            resumes: 0,
        })
    }
}

/// Errors that no retry can fix, marked inside the retry loop's string errors.
enum Fatal {
    Changed,
}

const CHANGED: &str = "the image changed on the server during the download (validator differs)";

impl From<Fatal> for String {
    fn from(f: Fatal) -> String {
        match f {
            Fatal::Changed => CHANGED.into(),
        }
    }
}

/// Run `attempt` until it succeeds, with doubling pauses, for at most `window`.
fn retry<T>(
    url: &ImageUrl,
    offset: u64,
    window: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> Result<T, StreamError> {
    let mut backoff = Backoff::new(window);
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(message) if message == CHANGED || !backoff.wait() => {
                return Err(StreamError::Http {
                    url: url.to_string(),
                    offset,
                    message: if backoff.tries > 0 {
                        format!("{message} (after {} retries)", backoff.tries)
                    } else {
                        message
                    },
                });
            }
            Err(_) => {}
        }
    }
}

/// The image body as a `Read`: a short read or an error before the end reconnects
/// at the current offset.
pub struct ResumingBody<'a> {
    image: &'a HttpImage,
    body: Option<Box<dyn Read + Send + 'a>>,
    pos: u64,
    pub resumes: u32,
}

impl ResumingBody<'_> {
    pub fn position(&self) -> u64 {
        self.pos
    }
}

impl Read for ResumingBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos >= self.image.size {
            return Ok(0);
        }
        let mut backoff: Option<Backoff> = None;
        loop {
            let outcome = match self.body.as_mut() {
                Some(body) => body.read(buf),
                None => Ok(0),
            };
            match outcome {
                Ok(n) if n > 0 => {
                    let n = n.min((self.image.size - self.pos) as usize);
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A clean end or an error before the image's end: the connection dropped.
                _ => {}
            }
            self.body = None;
            let backoff = backoff.get_or_insert_with(|| Backoff::new(self.image.resume_window));
            if !backoff.wait() {
                return Err(io::Error::other(format!(
                    "connection lost at offset {} and {} attempts to resume within {} s failed",
                    self.pos,
                    backoff.tries,
                    self.image.resume_window.as_secs()
                )));
            }
            match self.image.get_from(self.pos, None) {
                Ok(body) => {
                    self.resumes += 1;
                    self.body = Some(Box::new(body.into_reader()));
                }
                Err(m) if m == CHANGED => return Err(io::Error::other(m)),
                Err(_) => {}
            }
        }
    }
}
