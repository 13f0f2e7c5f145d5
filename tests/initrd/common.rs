//! Helpers: running commands with a deadline, a test tree with every file type,
//! snapshots of directory trees for comparison, GNU cpio over multi-archive streams.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Seek};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(300);
/// kiln on hostile input must finish quickly and within this address space.
const UNTRUSTED_TIMEOUT: Duration = Duration::from_secs(30);
const UNTRUSTED_AS: u64 = 6 << 30;

pub struct Run {
    pub cmdline: String,
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn report(&self) -> String {
        let status = self
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "timed out".into());
        let out = self.stdout_str();
        let cut = |s: &str| {
            s.chars()
                .rev()
                .take(3000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<String>()
        };
        format!(
            "`{}` -> {status}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.cmdline,
            cut(&out),
            cut(&self.stderr)
        )
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.ok(), "command failed: {}", self.report());
        self
    }

    /// Failed with exit code 1 and a message: no signal, no panic, no hang.
    #[track_caller]
    pub fn assert_clean_failure(&self) -> &Self {
        let status = self
            .status
            .unwrap_or_else(|| panic!("hung: {}", self.report()));
        assert!(
            status.signal().is_none(),
            "killed by a signal: {}",
            self.report()
        );
        assert!(
            !self.stderr.contains("panicked"),
            "panicked: {}",
            self.report()
        );
        assert_eq!(status.code(), Some(1), "expected exit 1: {}", self.report());
        assert!(
            self.stderr.contains("kiln: error:"),
            "no error message: {}",
            self.report()
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.report()))
    }
}

/// Run `cmd` to completion (killing its process group at the deadline).
pub fn run(cmd: &mut Command, timeout: Duration) -> Run {
    let cmdline = format!("{cmd:?}");
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            // SAFETY: plain syscall on the child's process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        cmdline,
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

pub fn kiln_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.env_remove("SOURCE_DATE_EPOCH")
        .env_remove("RAYON_NUM_THREADS")
        .stdin(Stdio::null());
    c
}

pub fn kiln<S: AsRef<OsStr>>(args: &[S]) -> Run {
    run(kiln_cmd().args(args), TIMEOUT)
}

/// kiln on hostile input: short deadline, limited address space.
pub fn kiln_untrusted<S: AsRef<OsStr>>(args: &[S]) -> Run {
    let mut cmd = kiln_cmd();
    cmd.args(args);
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: UNTRUSTED_AS,
                rlim_max: UNTRUSTED_AS,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    run(&mut cmd, UNTRUSTED_TIMEOUT)
}

/// A bash script in `dir` (pipelines of GNU tools).
#[track_caller]
pub fn sh(dir: &Path, script: &str) -> Run {
    let r = run(
        Command::new("bash")
            .arg("-euo")
            .arg("pipefail")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .stdin(Stdio::null()),
        TIMEOUT,
    );
    r.assert_ok();
    r
}

pub fn is_root() -> bool {
    // SAFETY: cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[track_caller]
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "{tool} is not installed (see .ci/packages)");
}

/// Deterministic pseudo-random bytes that compress somewhat (text-like).
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let words: [&[u8]; 8] = [
        b"kernel ",
        b"module ",
        b"initrd ",
        b"\n",
        b"0x1f8b ",
        b"cpio ",
        b"zstd ",
        b"\0\0\0\0",
    ];
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(3) {
            v.extend_from_slice(&x.to_le_bytes());
        } else {
            v.extend_from_slice(words[(x >> 60) as usize & 7]);
        }
    }
    v.truncate(len);
    v
}

fn set_mtime(path: &Path, secs: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let ts = [t, t];
    // SAFETY: valid path and times.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", path.display());
}

fn mknod(path: &Path, mode: u32, dev: u64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid path.
    let r = unsafe { libc::mknod(c.as_ptr(), mode, dev as libc::dev_t) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        path.display(),
        io::Error::last_os_error()
    );
}

/// A tree with every kind of entry: directories (one with mode 0700, one deep),
/// files of several modes (setuid and setgid too), empty and multi-MiB files (past
/// one gzip part), symlinks (relative, absolute, dangling), two hard-link groups
/// (one across directories), a fifo, and as root a device node and other owners.
/// `big` adds ~9 MiB so gzip output has several parts.
pub fn make_tree(root: &Path, big: bool) {
    let d = |p: &str| {
        fs::create_dir_all(root.join(p)).unwrap();
    };
    let f = |p: &str, data: &[u8], mode: u32| {
        let path = root.join(p);
        fs::write(&path, data).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    };
    d("bin");
    d("etc/conf.d");
    d("usr/lib/modules/6.1.0/kernel/drivers/net");
    d("private");
    d("with space/ünïcödé");
    f("init", b"#!/bin/sh\nexec /sbin/init\n", 0o755);
    f("etc/fstab", b"", 0o644);
    f("etc/conf.d/secret", &bytes(1, 1000), 0o600);
    f("bin/su", &bytes(2, 20_000), 0o4755);
    f("bin/wall", &bytes(3, 3000), 0o2755);
    f(
        "usr/lib/modules/6.1.0/kernel/drivers/net/e1000.ko",
        &bytes(4, 300_000),
        0o644,
    );
    f("with space/ünïcödé/file name", b"spaces\n", 0o640);
    f("private/key", b"k", 0o400);
    if big {
        for i in 0..3 {
            f(
                &format!("usr/lib/big{i}.bin"),
                &bytes(10 + i, 3 << 20),
                0o644,
            );
        }
    }
    // hard links: one group in one directory, one across directories
    f("bin/busybox", &bytes(5, 50_000), 0o755);
    fs::hard_link(root.join("bin/busybox"), root.join("bin/sh")).unwrap();
    fs::hard_link(root.join("bin/busybox"), root.join("usr/lib/busybox-link")).unwrap();
    f("etc/a", b"same inode\n", 0o644);
    fs::hard_link(root.join("etc/a"), root.join("etc/b")).unwrap();
    symlink("usr/lib", root.join("lib")).unwrap();
    symlink("/proc/mounts", root.join("etc/mtab")).unwrap();
    symlink("../nowhere", root.join("etc/dangling")).unwrap();
    mknod(&root.join("etc/initctl"), libc::S_IFIFO | 0o600, 0);
    if is_root() {
        d("dev");
        mknod(
            &root.join("dev/console"),
            libc::S_IFCHR | 0o600,
            libc::makedev(5, 1),
        );
        mknod(
            &root.join("dev/sda"),
            libc::S_IFBLK | 0o660,
            libc::makedev(8, 0),
        );
        std::os::unix::fs::lchown(root.join("etc/conf.d/secret"), Some(1000), Some(1001)).unwrap();
        std::os::unix::fs::lchown(root.join("bin/wall"), Some(0), Some(5)).unwrap();
        std::os::unix::fs::lchown(root.join("etc/dangling"), Some(7), Some(8)).unwrap();
        fs::set_permissions(root.join("bin/su"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::set_permissions(root.join("bin/wall"), fs::Permissions::from_mode(0o2755)).unwrap();
    }
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    // Fixed mtimes, deepest first so setting them sticks.
    let mut all = walk(root);
    all.reverse();
    for (i, p) in all.iter().enumerate() {
        set_mtime(p, 1_600_000_000 + (i as i64) * 1000);
    }
    set_mtime(root, 1_600_000_000);
}

/// Every path under `root` (root excluded), sorted.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// What a tree entry is, for comparing trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub kind: char,
    pub perm: u32,
    /// uid:gid, only compared as root (otherwise everything is ours).
    pub owner: Option<(u32, u32)>,
    /// mtime; `None` for symlinks (GNU cpio does not restore theirs).
    pub mtime: Option<i64>,
    /// File contents (as a length + hash), symlink target or device number.
    pub content: String,
    /// The other paths sharing this file's inode.
    pub links: Vec<String>,
}

/// A snapshot of a tree: relative path -> metadata.
pub fn snapshot(root: &Path, with_mtime: bool) -> BTreeMap<String, Meta> {
    let paths = walk(root);
    let rel = |p: &Path| p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    for p in &paths {
        let m = fs::symlink_metadata(p).unwrap();
        if m.is_file() && m.nlink() > 1 {
            inodes.entry((m.dev(), m.ino())).or_default().push(rel(p));
        }
    }
    let mut out = BTreeMap::new();
    for p in &paths {
        let m = fs::symlink_metadata(p).unwrap();
        let ft = m.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_file() {
            '-'
        } else if ft.is_fifo() {
            'p'
        } else if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else {
            's'
        };
        let content = match kind {
            '-' => {
                let data = fs::read(p).unwrap();
                format!("{} bytes, hash {:016x}", data.len(), fnv(&data))
            }
            'l' => fs::read_link(p).unwrap().to_string_lossy().into_owned(),
            'c' | 'b' => format!("{}:{}", libc::major(m.rdev()), libc::minor(m.rdev())),
            _ => String::new(),
        };
        let mut links = if m.is_file() && m.nlink() > 1 {
            inodes[&(m.dev(), m.ino())].clone()
        } else {
            Vec::new()
        };
        links.sort();
        out.insert(
            rel(p),
            Meta {
                kind,
                perm: if kind == 'l' { 0 } else { m.mode() & 0o7777 },
                owner: is_root().then(|| (m.uid(), m.gid())),
                mtime: (with_mtime && kind != 'l').then(|| m.mtime()),
                content,
                links,
            },
        );
    }
    out
}

pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The snapshot without directory mtimes (extractors that set them before filling
/// the directory, or not at all).
pub fn without_dir_mtimes(m: &BTreeMap<String, Meta>) -> BTreeMap<String, Meta> {
    m.iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            if v.kind == 'd' {
                v.mtime = None;
            }
            (k.clone(), v)
        })
        .collect()
}

/// Compare two snapshots and say every difference.
#[track_caller]
pub fn assert_same_tree(want: &BTreeMap<String, Meta>, got: &BTreeMap<String, Meta>, what: &str) {
    let mut diffs = Vec::new();
    for (p, m) in want {
        match got.get(p) {
            None => diffs.push(format!("missing {p}")),
            Some(g) if g != m => diffs.push(format!("{p}: want {m:?}, got {g:?}")),
            _ => {}
        }
    }
    for p in got.keys() {
        if !want.contains_key(p) {
            diffs.push(format!("extra {p}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// Run GNU cpio once per archive of a plain cpio stream in `stream` (kiln's gzip
/// output is several archives in a row; `cpio` stops at each trailer). `-C 1`
/// makes cpio read exactly up to the end of each archive.
pub fn gnu_cpio_each_archive(stream: &Path, args: &[&str], cwd: &Path) -> Vec<Run> {
    let mut file = fs::File::open(stream).unwrap();
    let len = file.metadata().unwrap().len();
    let mut runs = Vec::new();
    loop {
        let pos = file.stream_position().unwrap();
        if pos >= len {
            break;
        }
        let r = run(
            Command::new("cpio")
                .args(["-H", "newc", "-C", "1", "--quiet"])
                .args(args)
                .current_dir(cwd)
                .stdin(file.try_clone().unwrap()),
            TIMEOUT,
        );
        r.assert_ok();
        let after = file.stream_position().unwrap();
        assert!(after > pos, "cpio did not advance at offset {pos}");
        runs.push(r);
        assert!(runs.len() < 1000);
    }
    runs
}

/// The paths `kiln initrd ls --json` prints, over all segments.
pub fn kiln_paths(image: &Path) -> BTreeSet<String> {
    let v = kiln(&[
        OsStr::new("initrd"),
        "ls".as_ref(),
        "--json".as_ref(),
        image.as_os_str(),
    ])
    .assert_ok()
    .json();
    v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["entries"].as_array().unwrap().iter())
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

/// Names in a folder, for "nothing new appeared" checks.
pub fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}
