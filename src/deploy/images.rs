//! The conductor's image server: files of one folder served over HTTP with single
//! byte-range support, and their sha256/sha512 computed once (one read pass, both
//! hashes in parallel) and cached in memory and in a JSON file, keyed by the file's
//! identity (size, mtime, inode) so a changed file is hashed again.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

use crate::util::atomic_file::AtomicFile;

/// URL prefix under which images are served.
pub const URL_PREFIX: &str = "/v1/images/";
/// File in the cache folder that keeps checksums across restarts.
const CACHE_FILE: &str = "image-checksums.json";
/// Read size of the hashing pass.
const READ_CHUNK: usize = 4 << 20;
/// Read buffer of each served body: large reads, yet a rack of nodes
/// downloading at once (100 x 1 MiB) stays cheap for the conductor.
const SERVE_BUFFER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image name {0:?} is not allowed (plain file names only: no '/', '..' or leading '.')")]
    BadName(String),
    #[error("image {name:?} not found in {dir}")]
    NotFound { name: String, dir: PathBuf },
    #[error("image {0:?} is a symbolic link or not a regular file")]
    NotRegular(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// What the conductor (and the agent, via the deploy API) knows about an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub sha512: String,
}

/// The identity of a file version: the cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct FileId {
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> Self {
        FileId {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
        }
    }

    /// A strong validator that changes whenever the file does.
    fn etag(&self) -> String {
        format!("\"{:x}-{:x}-{:x}\"", self.size, self.mtime_ns, self.inode)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    id: FileId,
    sha256: String,
    sha512: String,
}

/// The images of one folder.
pub struct ImageStore {
    dir: PathBuf,
    cache_dir: PathBuf,
    cache: Mutex<BTreeMap<String, CacheEntry>>,
    /// Serializes hashing so two requests for a new image hash it once.
    hashing: Mutex<()>,
}

impl ImageStore {
    /// Serve the files of `dir`; checksums are remembered in `cache_dir` (created
    /// if missing). An unreadable or corrupt cache file is ignored.
    pub fn new(dir: &Path, cache_dir: &Path) -> Result<Self, ImageError> {
        std::fs::create_dir_all(cache_dir).map_err(|source| ImageError::Io {
            path: cache_dir.to_path_buf(),
            source,
        })?;
        let cache = std::fs::read(cache_dir.join(CACHE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Ok(Self {
            dir: dir.to_path_buf(),
            cache_dir: cache_dir.to_path_buf(),
            cache: Mutex::new(cache),
            hashing: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Names of the regular files in the folder, sorted (hidden files left out).
    pub fn list(&self) -> Result<Vec<String>, ImageError> {
        let io_err = |source| ImageError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if check_name(&name).is_ok() && entry.file_type().is_ok_and(|t| t.is_file()) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Open `name` without following symbolic links; only regular files qualify.
    fn open(&self, name: &str) -> Result<(File, std::fs::Metadata), ImageError> {
        check_name(name)?;
        let path = self.dir.join(name);
        let file = rustix::fs::open(
            &path,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| match e {
            rustix::io::Errno::NOENT => ImageError::NotFound {
                name: name.into(),
                dir: self.dir.clone(),
            },
            rustix::io::Errno::LOOP => ImageError::NotRegular(name.into()),
            e => ImageError::Io {
                path: path.clone(),
                source: e.into(),
            },
        })?;
        let meta = file
            .metadata()
            .map_err(|source| ImageError::Io { path, source })?;
        if !meta.is_file() {
            return Err(ImageError::NotRegular(name.into()));
        }
        Ok((file, meta))
    }

    /// Size and checksums of `name`, hashed on first use of each file version.
    pub fn stat(&self, name: &str) -> Result<ImageInfo, ImageError> {
        let (file, meta) = self.open(name)?;
        let id = FileId::of(&meta);
        let info = |e: &CacheEntry| ImageInfo {
            name: name.into(),
            size: id.size,
            sha256: e.sha256.clone(),
            sha512: e.sha512.clone(),
        };
        if let Some(hit) = self.cached(name, id) {
            return Ok(info(&hit));
        }
        let _one_at_a_time = self.hashing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = self.cached(name, id) {
            return Ok(info(&hit));
        }
        let (sha256, sha512) = hash_file(file).map_err(|source| ImageError::Io {
            path: self.dir.join(name),
            source,
        })?;
        let entry = CacheEntry { id, sha256, sha512 };
        let result = info(&entry);
        let snapshot = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.insert(name.into(), entry);
            cache.clone()
        };
        self.save_cache(&snapshot)?;
        Ok(result)
    }

    fn cached(&self, name: &str, id: FileId) -> Option<CacheEntry> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(name).filter(|e| e.id == id).cloned()
    }

    fn save_cache(&self, cache: &BTreeMap<String, CacheEntry>) -> Result<(), ImageError> {
        let path = self.cache_dir.join(CACHE_FILE);
        let io_err = |source| ImageError::Io {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(cache).map_err(|e| io_err(e.into()))?;
        let out = AtomicFile::create(&path).map_err(io_err)?;
        std::io::Write::write_all(&mut out.file(), &json).map_err(io_err)?;
        out.commit().map_err(io_err)
    }

    /// Answer a GET or HEAD request for `/v1/images/NAME` (other paths: 404).
    pub fn handle(&self, request: tiny_http::Request) -> io::Result<()> {
        let response = self.response(
            request.method(),
            request.url(),
            header(request.headers(), "Range"),
            header(request.headers(), "If-Range"),
        );
        request.respond(response)
    }

    /// Build the response to a request; the body reads the file in large pieces
    /// as it is sent, never all of it at once.
    pub fn response(
        &self,
        method: &tiny_http::Method,
        url: &str,
        range: Option<&str>,
        if_range: Option<&str>,
    ) -> tiny_http::Response<Box<dyn Read + Send>> {
        use tiny_http::Method;
        if !matches!(method, Method::Get | Method::Head) {
            return text_response(405, "only GET and HEAD are allowed\n")
                .with_header(plain_header("Allow", "GET, HEAD"));
        }
        let Some(name) = url
            .split('?')
            .next()
            .and_then(|p| p.strip_prefix(URL_PREFIX))
        else {
            return text_response(404, "no such resource\n");
        };
        let (mut file, meta) = match self.open(name) {
            Ok(f) => f,
            Err(e @ ImageError::BadName(_)) => return text_response(400, &format!("{e}\n")),
            Err(e @ (ImageError::NotFound { .. } | ImageError::NotRegular(_))) => {
                return text_response(404, &format!("{e}\n"));
            }
            Err(e) => return text_response(500, &format!("{e}\n")),
        };
        let id = FileId::of(&meta);
        let size = id.size;
        let etag = id.etag();
        // A Range is honoured only if the client's validator still matches.
        let range = range.filter(|_| if_range.is_none_or(|v| v.trim() == etag));
        let (status, start, len) = match range.map(|r| parse_range(r, size)) {
            None | Some(RangeRequest::Ignore) => (200, 0, size),
            Some(RangeRequest::Unsatisfiable) => {
                return text_response(416, "range not satisfiable\n")
                    .with_header(plain_header("Content-Range", &format!("bytes */{size}")))
                    .with_header(plain_header("Accept-Ranges", "bytes"));
            }
            Some(RangeRequest::Bytes { start, end }) => (206, start, end - start + 1),
        };
        if start > 0
            && let Err(e) = file.seek(SeekFrom::Start(start))
        {
            return text_response(500, &format!("seek in {name}: {e}\n"));
        }
        let body: Box<dyn Read + Send> = Box::new(io::BufReader::with_capacity(
            SERVE_BUFFER.min(len.max(1) as usize),
            file.take(len),
        ));
        let mut response = tiny_http::Response::new(
            tiny_http::StatusCode(status),
            vec![
                plain_header("Accept-Ranges", "bytes"),
                plain_header("ETag", &etag),
                plain_header("Content-Type", "application/octet-stream"),
            ],
            body,
            Some(len as usize),
            None,
        )
        // Content-Length, not chunks: clients learn the size from HEAD and
        // resume by offset.
        .with_chunked_threshold(usize::MAX);
        if status == 206 {
            response = response.with_header(plain_header(
                "Content-Range",
                &format!("bytes {start}-{}/{size}", start + len - 1),
            ));
        }
        response
    }
}

/// Plain file names only: the name must stay inside the folder.
fn check_name(name: &str) -> Result<(), ImageError> {
    let bad = name.is_empty()
        || name.starts_with('.')
        || name.contains('/')
        || name.contains('\0')
        || name.contains('\\')
        || name.len() > 255;
    if bad {
        return Err(ImageError::BadName(name.into()));
    }
    Ok(())
}

fn header<'a>(headers: &'a [tiny_http::Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn plain_header(name: &str, value: &str) -> tiny_http::Header {
    // Our names and values are ASCII; a failure would be a bug, not bad input.
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|_| tiny_http::Header::from_bytes(&b"X-Invalid"[..], &b"1"[..]).unwrap())
}

fn text_response(status: u16, text: &str) -> tiny_http::Response<Box<dyn Read + Send>> {
    let bytes = text.as_bytes().to_vec();
    let len = bytes.len();
    tiny_http::Response::new(
        tiny_http::StatusCode(status),
        vec![plain_header("Content-Type", "text/plain; charset=utf-8")],
        Box::new(io::Cursor::new(bytes)),
        Some(len),
        None,
    )
}

/// A Range header, as far as a single-range server cares.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// Malformed, multiple ranges or not in bytes: RFC 9110 lets us send it all.
    Ignore,
    Unsatisfiable,
    /// Inclusive byte positions.
    Bytes {
        start: u64,
        end: u64,
    },
}

/// Parse `bytes=a-b`, `bytes=a-` or `bytes=-n` against a file of `size` bytes.
pub fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Ignore;
    };
    if spec.contains(',') {
        return RangeRequest::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Ignore;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim(), b.trim()) {
        ("", suffix) => match num(suffix) {
            None => RangeRequest::Ignore,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Bytes {
                start: size.saturating_sub(n),
                end: size - 1,
            },
        },
        (first, last) => {
            let Some(start) = num(first) else {
                return RangeRequest::Ignore;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match num(last) {
                    Some(e) if e >= start => e,
                    _ => return RangeRequest::Ignore,
                }
            };
            if start >= size {
                return RangeRequest::Unsatisfiable;
            }
            RangeRequest::Bytes {
                start,
                end: end.min(size - 1),
            }
        }
    }
}

/// sha256 and sha512 of a file in one read pass, each hash on its own thread.
fn hash_file(mut file: File) -> io::Result<(String, String)> {
    let (tx256, rx256) = mpsc::sync_channel::<Arc<Vec<u8>>>(4);
    let (tx512, rx512) = mpsc::sync_channel::<Arc<Vec<u8>>>(4);
    std::thread::scope(|scope| {
        let h256 = scope.spawn(move || {
            let mut h = Sha256::new();
            for chunk in rx256 {
                h.update(&chunk[..]);
            }
            hex(&h.finalize())
        });
        let h512 = scope.spawn(move || {
            let mut h = Sha512::new();
            for chunk in rx512 {
                h.update(&chunk[..]);
            }
            hex(&h.finalize())
        });
        let read = (|| -> io::Result<()> {
            loop {
                let mut buf = vec![0u8; READ_CHUNK];
                let n = read_full(&mut file, &mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                let chunk = Arc::new(buf);
                if tx256.send(chunk.clone()).is_err() || tx512.send(chunk).is_err() {
                    return Err(io::Error::other("hashing thread stopped"));
                }
            }
        })();
        drop((tx256, tx512));
        let sums = (h256.join(), h512.join());
        read?;
        match sums {
            (Ok(a), Ok(b)) => Ok((a, b)),
            _ => Err(io::Error::other("hashing thread panicked")),
        }
    })
}

/// Read until `buf` is full or the end of the input; returns the bytes read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Lowercase hex, as sha256sum prints it.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A tiny_http server on 127.0.0.1 (random port) serving `store`, one thread per
/// connection. For tests and benches; the conductor mounts `handle` in its router.
pub struct LocalImageServer {
    pub addr: std::net::SocketAddr,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalImageServer {
    pub fn start(store: ImageStore) -> io::Result<Self> {
        let server = tiny_http::Server::http("127.0.0.1:0").map_err(io::Error::other)?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("server has no IP address"))?;
        let server = Arc::new(server);
        let store = Arc::new(store);
        let accept = server.clone();
        let thread = std::thread::spawn(move || {
            for request in accept.incoming_requests() {
                let store = store.clone();
                std::thread::spawn(move || {
                    let _ = store.handle(request);
                });
            }
        });
        Ok(Self {
            addr,
            server,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT/v1/images/NAME`
    pub fn url(&self, name: &str) -> String {
        format!("http://{}{URL_PREFIX}{name}", self.addr)
    }
}

impl Drop for LocalImageServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-9", 100), Bytes { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=90-", 100), Bytes { start: 90, end: 99 });
        assert_eq!(
            parse_range("bytes=90-500", 100),
            Bytes { start: 90, end: 99 }
        );
        assert_eq!(parse_range("bytes=-10", 100), Bytes { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=-500", 100), Bytes { start: 0, end: 99 });
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 100), Ignore);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ignore);
        assert_eq!(parse_range("items=0-1", 100), Ignore);
        assert_eq!(parse_range("bytes=x-1", 100), Ignore);
    }

    #[test]
    fn names_must_stay_in_the_folder() {
        for bad in ["..", "../etc/passwd", "a/b", ".hidden", "", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("overcloud-full.qcow2").is_ok());
    }
}
