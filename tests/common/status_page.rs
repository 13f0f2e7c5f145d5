//! The conductor's status page as a real browser renders it: headless Chromium
//! (Debian's `chromium`) dumps the DOM after parsing and takes a screenshot.
//! The screenshot is kept under target/test-artifacts/ for people to look at.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Chromium gets this long per run before it is killed.
const CHROMIUM_LIMIT: Duration = Duration::from_secs(60);

/// target/test-artifacts/NAME, created.
pub fn artifact_dir(name: &str) -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp
        .parent()
        .unwrap_or(tmp)
        .join("test-artifacts")
        .join(name);
    std::fs::create_dir_all(&dir).expect("create the test artifact directory");
    dir
}

/// Loads `url` in headless Chromium and checks that every expected node has
/// a row whose provision state is one of the acceptable ones; takes a
/// screenshot into `artifact_dir` (printing its path). Returns the state each
/// node's row showed.
pub fn check_status_page(
    url: &str,
    expected: &[(&str, &[&str])],
    artifact_dir: &Path,
) -> BTreeMap<String, String> {
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let dom = Chromium::run(profile.path(), &["--dump-dom", url]);
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(
        dom.contains("<title>kiln conductor status</title>"),
        "chromium did not load the status page from {url}:\n{dom}"
    );
    let rows = node_rows(&dom);
    for (node, acceptable) in expected {
        let state = rows
            .get(*node)
            .unwrap_or_else(|| panic!("no row for node {node} on {url}; rows: {rows:?}"));
        assert!(
            acceptable.contains(&state.as_str()),
            "node {node} shows {state:?} on {url}, wanted one of {acceptable:?}"
        );
    }

    std::fs::create_dir_all(artifact_dir).expect("create the artifact directory");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let png = artifact_dir.join(format!("status-page-{stamp}.png"));
    let partial = artifact_dir.join(format!(".status-page-{stamp}.partial.png"));
    let shot = Chromium::run(
        profile.path(),
        &[
            &format!("--screenshot={}", partial.display()),
            "--window-size=1280,900",
            url,
        ],
    );
    let bytes = std::fs::read(&partial).unwrap_or_else(|err| {
        panic!(
            "chromium wrote no screenshot {}: {err}; stderr: {}",
            partial.display(),
            String::from_utf8_lossy(&shot.stderr)
        )
    });
    assert!(
        bytes.len() > 8 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot {} is not a PNG ({} bytes)",
        partial.display(),
        bytes.len()
    );
    std::fs::rename(&partial, &png).expect("keep the screenshot");
    eprintln!("status page screenshot: {}", png.display());
    rows
}

/// node name -> the state text of its row in the node table
/// (`<tr class="node" data-node=...>` ... `<td class="state ...">STATE`).
fn node_rows(dom: &str) -> BTreeMap<String, String> {
    let mut rows = BTreeMap::new();
    let marker = "<tr class=\"node\" data-node=\"";
    let mut rest = dom;
    while let Some(start) = rest.find(marker) {
        rest = &rest[start + marker.len()..];
        let Some(name_end) = rest.find('"') else {
            break;
        };
        let name = unescape(&rest[..name_end]);
        let row = &rest[..rest.find("</tr>").unwrap_or(rest.len())];
        let state = row.find("<td class=\"state ").and_then(|cell| {
            let text = &row[cell..];
            let open = text.find('>')? + 1;
            let close = text[open..].find('<')? + open;
            Some(unescape(text[open..close].trim()))
        });
        rows.insert(name, state.unwrap_or_default());
    }
    rows
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// What a finished chromium run printed.
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// A chromium process in its own process group; dropping it kills the group
/// (browser, zygote, renderers) and reaps the browser.
struct Chromium {
    child: Child,
}

impl Chromium {
    /// Runs chromium headless with `args` and a private profile and HOME under
    /// `profile`; fails the test if it does not finish in time or fails.
    fn run(profile: &Path, args: &[&str]) -> Output {
        use std::os::unix::process::CommandExt;
        let home = profile.join("home");
        std::fs::create_dir_all(&home).expect("chromium home");
        let spawned = Command::new("chromium")
            .args(["--headless=new", "--no-sandbox", "--disable-gpu"])
            .arg(format!(
                "--user-data-dir={}",
                profile.join("data").display()
            ))
            .args([
                "--no-first-run",
                "--disable-extensions",
                "--hide-scrollbars",
            ])
            .args(args)
            .env("HOME", &home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                panic!("chromium is not installed (Debian package chromium)")
            }
            Err(err) => panic!("cannot start chromium: {err}"),
        };
        let mut browser = Chromium { child };
        // Read both pipes while waiting: a big DOM would fill a pipe and stall it.
        let stdout = drain(browser.child.stdout.take());
        let stderr = drain(browser.child.stderr.take());
        let started = Instant::now();
        let status = loop {
            match browser.child.try_wait().expect("wait for chromium") {
                Some(status) => break status,
                None if started.elapsed() > CHROMIUM_LIMIT => {
                    panic!("chromium {args:?} did not finish within {CHROMIUM_LIMIT:?}")
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let output = Output {
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        };
        assert!(
            status.success(),
            "chromium {args:?}: {status}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The group id is the browser's pid (process_group(0)); it may have exited,
        // leaving helpers behind.
        let group = self.child.id() as i32;
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// html5lib's strict parser (the WHATWG parsing algorithm) finds no parse
/// error in `html`. Needs Debian's python3 with its html5lib (package python3-html5lib).
pub fn assert_html5_parses(html: &str) {
    const SCRIPT: &str = "\
import sys
try:
    import html5lib
except ImportError:
    sys.exit(3)
parser = html5lib.HTMLParser(strict=True)
try:
    parser.parse(sys.stdin.buffer.read())
except html5lib.html5parser.ParseError:
    print(parser.errors, file=sys.stderr)
    sys.exit(1)
";
    use std::io::Write;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is not installed (Debian python3 and python3-html5lib)");
    let mut stdin = child.stdin.take().expect("python3 stdin");
    let input = html.as_bytes().to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("run python3");
    let _ = writer.join();
    assert_ne!(
        out.status.code(),
        Some(3),
        "html5lib is missing (Debian package python3-html5lib)"
    );
    assert!(
        out.status.success(),
        "the status page is not valid HTML5: {}\n{html}",
        String::from_utf8_lossy(&out.stderr)
    );
}
