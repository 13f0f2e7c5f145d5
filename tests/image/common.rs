//! Helpers shared by the image tests: running commands under a deadline, deterministic
//! test disks, qemu-img / qemu-io wrappers, a tiny qcow2 parser for reading and patching
//! images, and the qemu-made image variants that several test files use.

use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;

/// Deadline for commands on well-formed inputs.
pub const TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline for kiln on hostile inputs: it must give up quickly, not hang.
pub const UNTRUSTED_TIMEOUT: Duration = Duration::from_secs(20);
/// Address-space limit for kiln on hostile inputs, so that a header claiming a huge table
/// makes an unchecked allocation fail loudly (abort = signal = test failure).
const UNTRUSTED_ADDRESS_SPACE: u64 = 4 << 30;

/// Builds an argument list from strings and paths alike: `args!["info", &path]`.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => { vec![$(std::ffi::OsString::from($a)),*] };
}

// ---------------------------------------------------------------------------------------
// Running commands

/// The outcome of one command; `status` is `None` when it was killed at the deadline.
pub struct Run {
    pub cmdline: String,
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    pub fn ok(&self) -> bool {
        self.code() == Some(0)
    }

    /// Why this run counts as a crash (hang, signal, Rust panic), if it does.
    pub fn crash(&self) -> Option<String> {
        let Some(status) = self.status else {
            return Some("did not finish before the deadline (killed)".into());
        };
        if let Some(sig) = status.signal() {
            return Some(format!("killed by signal {sig}"));
        }
        if status.code() == Some(101) || self.stderr.contains("panicked") {
            return Some("panicked".into());
        }
        None
    }

    /// Command line, exit status and output, for failure messages.
    pub fn report(&self) -> String {
        let status = match self.status {
            None => "timed out".to_string(),
            Some(s) => s.to_string(),
        };
        format!(
            "`{}` -> {status}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.cmdline,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.ok(), "command failed: {}", self.report());
        self
    }

    /// Non-zero exit, no crash, and an error message on stderr.
    #[track_caller]
    pub fn assert_clean_failure(&self) -> &Self {
        if let Some(why) = self.crash() {
            panic!("{why}: {}", self.report());
        }
        assert!(!self.ok(), "expected failure: {}", self.report());
        assert!(
            !self.stderr.trim().is_empty(),
            "failed without an error message: {}",
            self.report()
        );
        self
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.report()))
    }
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(3000);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

/// Runs `program` with a deadline, killing its whole process group when it expires.
fn run_cmd(program: &OsStr, args: Vec<OsString>, timeout: Duration, untrusted: bool) -> Run {
    let name = Path::new(program).file_name().unwrap_or(program);
    let cmdline = std::iter::once(name)
        .chain(args.iter().map(OsString::as_os_str))
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new(program);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if untrusted {
        // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: UNTRUSTED_ADDRESS_SPACE,
                    rlim_max: UNTRUSTED_ADDRESS_SPACE,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{cmdline}`: {e}"));
    let readers = [
        spawn_reader(child.stdout.take().unwrap()),
        spawn_reader(child.stderr.take().unwrap()),
    ];
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // SAFETY: plain syscall; the group id is the child's pid (process_group(0)).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            child.wait().expect("reap killed child");
            break None;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    let [stdout, stderr] = readers.map(|r| r.join().expect("pipe reader"));
    Run {
        cmdline,
        status,
        stdout,
        stderr,
    }
}

fn spawn_reader(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

pub fn kiln(args: Vec<OsString>) -> Run {
    run_cmd(env!("CARGO_BIN_EXE_kiln").as_ref(), args, TIMEOUT, false)
}

/// kiln on hostile input: short deadline and a limited address space.
pub fn kiln_untrusted(args: Vec<OsString>) -> Run {
    run_cmd(
        env!("CARGO_BIN_EXE_kiln").as_ref(),
        args,
        UNTRUSTED_TIMEOUT,
        true,
    )
}

pub fn qemu_img(args: Vec<OsString>) -> Run {
    run_cmd("qemu-img".as_ref(), args, TIMEOUT, false)
}

#[track_caller]
pub fn qemu_img_ok(args: Vec<OsString>) -> Run {
    let run = qemu_img(args);
    run.assert_ok();
    run
}

/// Runs qemu-io commands (`write -P 0x11 0 4k`, `write -z -u ...`, `discard ...`) on a qcow2.
#[track_caller]
pub fn qemu_io(image: &Path, commands: &[&str]) {
    let mut args = args!["-f", "qcow2"];
    for c in commands {
        args.extend(args!["-c", *c]);
    }
    args.push(image.into());
    run_cmd("qemu-io".as_ref(), args, TIMEOUT, false).assert_ok();
}

pub fn qemu_info(image: &Path) -> Value {
    qemu_img_ok(args!["info", "--output=json", image]).json()
}

/// `qemu-img info --backing-chain`: the image first, then its backing files.
pub fn qemu_chain(image: &Path) -> Vec<Value> {
    let chain = qemu_img_ok(args!["info", "--backing-chain", "--output=json", image]).json();
    chain.as_array().expect("backing chain is an array").clone()
}

/// `qemu-img check` exit code (0 clean, 2 corruptions, 3 leaks only) and its report.
pub fn qemu_check(image: &Path) -> (i32, Run) {
    let run = qemu_img(args!["check", image]);
    (run.code().expect("qemu-img check crashed"), run)
}

pub fn qemu_map(image: &Path) -> Vec<Value> {
    let map = qemu_img_ok(args!["map", "--output=json", image]).json();
    map.as_array().expect("map is an array").clone()
}

/// Navigates a dotted path (`format-specific.data.compat`) in qemu-img's JSON.
pub fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, key| &v[key])
}

/// Asserts fields of `qemu-img info` (values compared as JSON text, strings unquoted).
#[track_caller]
pub fn assert_qemu_info(image: &Path, expected: &[(&str, &str)]) {
    let info = qemu_info(image);
    for (path, want) in expected {
        let got = match field(&info, path) {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(&got, want, "qemu-img info {path} of {}", image.display());
    }
}

#[track_caller]
pub fn assert_qemu_check_clean(image: &Path) {
    let (code, run) = qemu_check(image);
    assert_eq!(code, 0, "qemu-img check: {}", run.report());
}

// ---------------------------------------------------------------------------------------
// kiln wrappers

/// `kiln image info --json IMAGE`, asserted to succeed.
#[track_caller]
pub fn kiln_info(image: &Path) -> Value {
    kiln(args!["image", "info", "--json", image])
        .assert_ok()
        .json()
}

/// Result of a convert into an output folder that was empty before.
pub struct Converted {
    pub run: Run,
    pub dst: PathBuf,
    /// What is wrong with the folder afterwards: on success it must hold exactly DST,
    /// on failure nothing at all (no half image, no temp file).
    pub leftover: Option<String>,
}

/// Runs `kiln image convert OPTS SRC OUT_DIR/NAME` with OUT_DIR created empty.
pub fn kiln_convert_into(
    out_dir: &Path,
    name: &str,
    opts: &[&str],
    src: &Path,
    untrusted: bool,
) -> Converted {
    fs::create_dir_all(out_dir).unwrap();
    assert!(
        dir_entries(out_dir).is_empty(),
        "{} not empty",
        out_dir.display()
    );
    let dst = out_dir.join(name);
    let mut args = args!["image", "convert"];
    args.extend(opts.iter().map(OsString::from));
    args.extend(args![src, &dst]);
    let run = if untrusted {
        kiln_untrusted(args)
    } else {
        kiln(args)
    };
    let entries = dir_entries(out_dir);
    let leftover = if run.ok() && entries != [name] {
        Some(format!(
            "after success the folder must hold only {name}: {entries:?}"
        ))
    } else if !run.ok() && !entries.is_empty() {
        Some(format!(
            "after failure the folder must be empty: {entries:?}"
        ))
    } else {
        None
    };
    Converted { run, dst, leftover }
}

/// A convert that must succeed and leave exactly DST in OUT_DIR; returns DST.
#[track_caller]
pub fn kiln_convert(opts: &[&str], src: &Path, out_dir: &Path, name: &str) -> PathBuf {
    let c = kiln_convert_into(out_dir, name, opts, src, false);
    c.run.assert_ok();
    if let Some(problem) = c.leftover {
        panic!("{problem}: {}", c.run.report());
    }
    c.dst
}

pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// kiln's info must agree with `qemu-img info --backing-chain` on format, virtual size,
/// cluster size, compression type and the backing chain (file names and formats).
#[track_caller]
pub fn assert_info_matches_qemu(image: &Path) {
    let ours = kiln_info(image);
    let chain = qemu_chain(image);
    let theirs = &chain[0];
    let what = image.display();
    assert_eq!(ours["format"], theirs["format"], "format of {what}: {ours}");
    assert_eq!(
        ours["virtual_size"], theirs["virtual-size"],
        "virtual_size of {what}: {ours}"
    );
    assert!(ours["disk_size"].is_u64(), "disk_size of {what}: {ours}");
    if theirs["format"] == "qcow2" {
        assert_eq!(
            ours["cluster_size"], theirs["cluster-size"],
            "cluster_size of {what}: {ours}"
        );
        assert_eq!(
            ours["compression"],
            *field(theirs, "format-specific.data.compression-type"),
            "compression of {what}: {ours}"
        );
    } else {
        assert!(
            ours["compression"].is_null(),
            "compression of {what}: {ours}"
        );
    }
    let name_format = |v: &Value| {
        let name = Path::new(v["filename"].as_str().unwrap_or_default())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        (name, v["format"].as_str().map(str::to_owned))
    };
    let mut our_chain: Vec<_> = ours["backing_chain"]
        .as_array()
        .unwrap_or_else(|| panic!("backing_chain of {what} is not a list: {ours}"))
        .iter()
        .map(name_format)
        .collect();
    // Accept a chain that lists the image itself first.
    if our_chain.first() == Some(&name_format(theirs)) {
        our_chain.remove(0);
    }
    let their_chain: Vec<_> = chain[1..].iter().map(name_format).collect();
    assert_eq!(our_chain, their_chain, "backing chain of {what}: {ours}");
}

// ---------------------------------------------------------------------------------------
// Comparing files

/// `None` when both files hold the same bytes; otherwise where they first differ.
pub fn first_difference(a: &Path, b: &Path) -> Option<String> {
    let (mut fa, mut fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut offset = 0u64;
    loop {
        let (na, nb) = (read_full(&mut fa, &mut ba), read_full(&mut fb, &mut bb));
        let n = na.min(nb);
        if ba[..n] != bb[..n] {
            let i = (0..n).find(|&i| ba[i] != bb[i]).unwrap();
            return Some(format!(
                "{} and {} first differ at offset {} ({:#x}): {:#04x} vs {:#04x}",
                a.display(),
                b.display(),
                offset + i as u64,
                offset + i as u64,
                ba[i],
                bb[i]
            ));
        }
        if na != nb {
            let (la, lb) = (file_len(a), file_len(b));
            return Some(format!(
                "{} is {la} bytes, {} is {lb} bytes (equal up to the shorter length)",
                a.display(),
                b.display()
            ));
        }
        if n == 0 {
            return None;
        }
        offset += n as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]).unwrap() {
            0 => break,
            n => got += n,
        }
    }
    got
}

#[track_caller]
pub fn assert_same_bytes(ours: &Path, expected: &Path) {
    if let Some(diff) = first_difference(ours, expected) {
        panic!("output differs from qemu-img's: {diff}");
    }
}

pub fn file_len(p: &Path) -> u64 {
    fs::metadata(p).unwrap().len()
}

// ---------------------------------------------------------------------------------------
// Deterministic data

/// splitmix64: a tiny seeded generator, so every run builds the same disks.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
        }
    }
}

#[derive(Clone, Copy)]
pub enum Content {
    /// Holes, random data, written zeros, repeated patterns, text, random runs that stop at
    /// odd byte offsets; the last 4 KiB are random and the very last byte is non-zero.
    Mixed,
    /// Compressible text only (plus the random tail).
    Text,
}

/// Writes a sparse raw disk of `size` bytes (a multiple of 512) with seeded content.
/// Segments are multiples of 512 bytes, so boundaries rarely fall on cluster boundaries.
pub fn make_disk(path: &Path, size: u64, seed: u64, content: Content) {
    assert_eq!(size % 512, 0, "disk sizes are whole sectors");
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut rng = Rng::new(seed);
    let mut offset = 0;
    while offset < size {
        let len = (512 * (1 + rng.below(384))).min(size - offset);
        let mut buf = vec![0u8; len as usize];
        let kind = match content {
            Content::Text => 3,
            Content::Mixed => rng.below(6),
        };
        match kind {
            0 => {} // hole
            1 => rng.fill(&mut buf),
            2 => {
                let pattern = [0xA5, rng.next_u64() as u8 | 1, 0x5A, 0];
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = pattern[i % 4];
                }
            }
            3 => fill_text(&mut rng, &mut buf),
            4 => {
                let cut = rng.below(len) as usize;
                rng.fill(&mut buf[..cut]);
            }
            _ => {} // written zeros
        }
        if kind != 0 {
            f.write_all_at(&buf, offset).unwrap();
        }
        offset += len;
    }
    let tail = 4096.min(size);
    let mut buf = vec![0u8; tail as usize];
    rng.fill(&mut buf);
    *buf.last_mut().unwrap() = 0xEE;
    f.write_all_at(&buf, size - tail).unwrap();
}

fn fill_text(rng: &mut Rng, buf: &mut [u8]) {
    const WORDS: [&str; 16] = [
        "kiln", "image", "cluster", "refcount", "backing", "overlay", "sector", "qcow2", "the",
        "of", "and", "to", "disk", "table", "entry", "zero",
    ];
    let mut text = Vec::with_capacity(buf.len() + 128);
    let mut line = 0;
    while text.len() < buf.len() {
        write!(text, "{line:08} ").unwrap();
        for _ in 0..4 + rng.below(8) {
            text.extend_from_slice(WORDS[rng.below(16) as usize].as_bytes());
            text.push(b' ');
        }
        text.push(b'\n');
        line += 1;
    }
    buf.copy_from_slice(&text[..buf.len()]);
}

// ---------------------------------------------------------------------------------------
// A tiny qcow2 parser (big-endian header fields, L1/L2 walk, 16-bit refcounts)

/// Byte offsets of header fields (qcow2 spec, docs/interop/qcow2.txt).
pub mod hdr {
    pub const VERSION: u64 = 4;
    pub const BACKING_FILE_OFFSET: u64 = 8;
    pub const BACKING_FILE_SIZE: u64 = 16;
    pub const CLUSTER_BITS: u64 = 20;
    pub const SIZE: u64 = 24;
    pub const CRYPT_METHOD: u64 = 32;
    pub const L1_SIZE: u64 = 36;
    pub const L1_TABLE_OFFSET: u64 = 40;
    pub const REFCOUNT_TABLE_OFFSET: u64 = 48;
    pub const INCOMPATIBLE_FEATURES: u64 = 72;
    pub const REFCOUNT_ORDER: u64 = 96;
    pub const HEADER_LENGTH: u64 = 100;
    /// Where header extensions start in a version 2 image.
    pub const V2_LENGTH: u64 = 72;
}

pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const COPIED: u64 = 1 << 63;
pub const COMPRESSED: u64 = 1 << 62;
pub const ZERO: u64 = 1;
pub const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
pub const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;

pub struct Qcow2 {
    file: File,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u64,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_order: u32,
    pub extended_l2: bool,
}

/// A guest cluster that is stored uncompressed in the file.
pub struct DataCluster {
    /// File position of its L2 entry.
    pub entry_pos: u64,
    pub host: u64,
}

impl Qcow2 {
    /// Opens read-write and parses the header.
    pub fn open(path: &Path) -> Self {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut q = Qcow2 {
            file,
            cluster_bits: 0,
            size: 0,
            l1_size: 0,
            l1_table_offset: 0,
            refcount_table_offset: 0,
            refcount_order: 4,
            extended_l2: false,
        };
        assert_eq!(q.u32_at(0), 0x5146_49fb, "{} is not qcow2", path.display());
        let version = q.u32_at(hdr::VERSION);
        q.cluster_bits = q.u32_at(hdr::CLUSTER_BITS);
        q.size = q.u64_at(hdr::SIZE);
        q.l1_size = q.u32_at(hdr::L1_SIZE).into();
        q.l1_table_offset = q.u64_at(hdr::L1_TABLE_OFFSET);
        q.refcount_table_offset = q.u64_at(hdr::REFCOUNT_TABLE_OFFSET);
        if version >= 3 {
            q.refcount_order = q.u32_at(hdr::REFCOUNT_ORDER);
            q.extended_l2 = q.u64_at(hdr::INCOMPATIBLE_FEATURES) & INCOMPAT_EXTENDED_L2 != 0;
        }
        q
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub fn file_len(&self) -> u64 {
        self.file.metadata().unwrap().len()
    }

    pub fn set_len(&self, len: u64) {
        self.file.set_len(len).unwrap();
    }

    pub fn read_at(&self, pos: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, pos).unwrap();
        buf
    }

    pub fn write_at(&self, pos: u64, bytes: &[u8]) {
        self.file.write_all_at(bytes, pos).unwrap();
    }

    pub fn u32_at(&self, pos: u64) -> u32 {
        u32::from_be_bytes(self.read_at(pos, 4).try_into().unwrap())
    }

    pub fn u64_at(&self, pos: u64) -> u64 {
        u64::from_be_bytes(self.read_at(pos, 8).try_into().unwrap())
    }

    pub fn set_u32(&self, pos: u64, v: u32) {
        self.write_at(pos, &v.to_be_bytes());
    }

    pub fn set_u64(&self, pos: u64, v: u64) {
        self.write_at(pos, &v.to_be_bytes());
    }

    fn l2_entries_per_table(&self) -> u64 {
        let entry = if self.extended_l2 { 16 } else { 8 };
        self.cluster_size() / entry
    }

    /// File position of the L2 entry mapping guest offset `guest`, if its L2 table exists.
    pub fn l2_entry_pos(&self, guest: u64) -> Option<u64> {
        let cluster = guest >> self.cluster_bits;
        let per_table = self.l2_entries_per_table();
        let l1_index = cluster / per_table;
        if l1_index >= self.l1_size {
            return None;
        }
        let l2 = self.u64_at(self.l1_table_offset + 8 * l1_index) & OFFSET_MASK;
        let entry = if self.extended_l2 { 16 } else { 8 };
        (l2 != 0).then_some(l2 + entry * (cluster % per_table))
    }

    /// The first L2 table: (index in L1, file offset).
    pub fn first_l2_table(&self) -> (u64, u64) {
        (0..self.l1_size)
            .map(|i| (i, self.u64_at(self.l1_table_offset + 8 * i) & OFFSET_MASK))
            .find(|&(_, l2)| l2 != 0)
            .expect("image has an L2 table")
    }

    fn entries(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        (0..self.size)
            .step_by(self.cluster_size() as usize)
            .filter_map(|guest| {
                let pos = self.l2_entry_pos(guest)?;
                Some((guest, pos, self.u64_at(pos)))
            })
    }

    /// The first cluster stored uncompressed (allocated, not flagged zero).
    pub fn first_data_cluster(&self) -> DataCluster {
        self.entries()
            .find(|&(_, _, e)| e & COMPRESSED == 0 && e & ZERO == 0 && e & OFFSET_MASK != 0)
            .map(|(_, entry_pos, e)| DataCluster {
                entry_pos,
                host: e & OFFSET_MASK,
            })
            .expect("image has an uncompressed data cluster")
    }

    /// How many guest clusters are stored compressed (read from the L2 tables, so it
    /// does not depend on `qemu-img map` reporting it: qemu 7.2 does not).
    pub fn compressed_count(&self) -> usize {
        self.entries()
            .filter(|&(_, _, e)| e & COMPRESSED != 0)
            .count()
    }

    /// The first compressed cluster's data: (file offset, length in the file).
    pub fn first_compressed_data(&self) -> (u64, u64) {
        let (_, _, e) = self
            .entries()
            .find(|&(_, _, e)| e & COMPRESSED != 0)
            .expect("image has a compressed cluster");
        let offset_bits = 62 - (self.cluster_bits - 8);
        let host = e & ((1 << offset_bits) - 1);
        let extra_sectors = (e >> offset_bits) & ((1 << (self.cluster_bits - 8)) - 1);
        let end = ((host & !511) + (extra_sectors + 1) * 512).min(self.file_len());
        (host, end - host)
    }

    /// File position of the refcount entry of host cluster `index` (16-bit refcounts only).
    fn refcount_pos(&self, index: u64) -> u64 {
        assert_eq!(
            self.refcount_order, 4,
            "helper handles 16-bit refcounts only"
        );
        let per_block = self.cluster_size() / 2;
        let block = self.u64_at(self.refcount_table_offset + 8 * (index / per_block));
        assert_ne!(block, 0, "no refcount block covers cluster {index}");
        block + 2 * (index % per_block)
    }

    pub fn refcount(&self, index: u64) -> u16 {
        u16::from_be_bytes(
            self.read_at(self.refcount_pos(index), 2)
                .try_into()
                .unwrap(),
        )
    }

    pub fn set_refcount(&self, index: u64, v: u16) {
        self.write_at(self.refcount_pos(index), &v.to_be_bytes());
    }
}

/// Removes one header extension (e.g. the backing-format one), shifting the rest up.
pub fn remove_header_extension(path: &Path, ext_type: u32) {
    let q = Qcow2::open(path);
    let start = if q.u32_at(hdr::VERSION) >= 3 {
        u64::from(q.u32_at(hdr::HEADER_LENGTH))
    } else {
        hdr::V2_LENGTH
    };
    let (mut pos, mut kept, mut found) = (start, Vec::new(), false);
    loop {
        let (ty, len) = (q.u32_at(pos), u64::from(q.u32_at(pos + 4)));
        if ty == 0 {
            break;
        }
        let whole = 8 + len.next_multiple_of(8);
        if ty == ext_type {
            found = true;
        } else {
            kept.extend(q.read_at(pos, whole as usize));
        }
        pos += whole;
    }
    assert!(found, "{} has no extension {ext_type:#x}", path.display());
    kept.resize((pos + 8 - start) as usize, 0);
    q.write_at(start, &kept);
}

// ---------------------------------------------------------------------------------------
// Images made by qemu-img / qemu-io

/// Default source disk: not a multiple of 4 KiB, 64 KiB or 2 MiB, but of 512.
pub const DISK_SIZE: u64 = 6 * MIB + 1536;

/// `qemu-img convert -f raw -O qcow2 [-c] -o OPTS SRC DST`.
pub fn qcow2_from_raw(src: &Path, dst: &Path, opts: &str, compress: bool) {
    let mut args = args!["convert", "-f", "raw", "-O", "qcow2"];
    if compress {
        args.push("-c".into());
    }
    if !opts.is_empty() {
        args.extend(args!["-o", opts]);
    }
    args.extend(args![src, dst]);
    qemu_img_ok(args);
}

/// Seeded overwrites in shuffled order, so host clusters are no longer in guest order,
/// plus zero writes and a discard.
pub fn scatter_writes(image: &Path, size: u64, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut cmds: Vec<String> = (0..12)
        .map(|i| {
            let len = 1 + rng.below(96 * KIB);
            let off = rng.below(size - len);
            format!("write -P {:#x} {off} {len}", 0x10 + i)
        })
        .collect();
    let cluster_off = |rng: &mut Rng| rng.below(size / (64 * KIB) - 1) * 64 * KIB;
    cmds.push(format!("write -z {} 65536", cluster_off(&mut rng)));
    cmds.push(format!("write -z -u {} 131072", cluster_off(&mut rng)));
    cmds.push(format!("discard {} 65536", cluster_off(&mut rng)));
    cmds.push(format!("write -z {} 5000", rng.below(size - 5000)));
    qemu_io(image, &cmds.iter().map(String::as_str).collect::<Vec<_>>());
}

#[derive(Clone, Copy, Debug)]
pub enum Variant {
    Compat010,
    Compat11,
    Cluster4k,
    Cluster2m,
    CompressedZlib,
    CompressedZstd,
    CompressedCompat010,
    ExtendedL2,
    ExtendedL2OverBacking,
    RefcountBits1,
    RefcountBits64,
    LazyRefcountsDirty,
    PreallocMetadataV2,
    PreallocMetadataV3,
    BackingChain,
    BackingChainNoFormat,
}

const COMPAT: &str = "format-specific.data.compat";
const COMPRESSION_TYPE: &str = "format-specific.data.compression-type";
const REFCOUNT_BITS: &str = "format-specific.data.refcount-bits";

impl Variant {
    /// Builds the image under `dir` with qemu tools and asserts, with qemu-img, that it
    /// really has the property the variant is about. Returns the image to read.
    pub fn build(self, dir: &Path) -> PathBuf {
        use Variant::*;
        fs::create_dir_all(dir).unwrap();
        let seed = self as u64 + 1;
        let (src, img) = (dir.join("source.raw"), dir.join("image.qcow2"));
        let size = match self {
            Cluster2m => 20 * MIB + 512,
            _ => DISK_SIZE,
        };
        // Converts the source with `opts`, optionally scatters writes over it, and checks
        // `expect` in qemu-img info.
        let from_raw = |opts: &str, compress: bool, scatter: bool, expect: &[(&str, &str)]| {
            make_disk(&src, size, seed, Content::Mixed);
            qcow2_from_raw(&src, &img, opts, compress);
            if scatter {
                scatter_writes(&img, size, seed);
            }
            assert_qemu_info(&img, expect);
        };
        match self {
            Compat010 => from_raw("compat=0.10", false, true, &[(COMPAT, "0.10")]),
            Compat11 => from_raw("compat=1.1", false, true, &[(COMPAT, "1.1")]),
            Cluster4k => from_raw(
                "cluster_size=4096",
                false,
                false,
                &[("cluster-size", "4096")],
            ),
            Cluster2m => from_raw(
                "cluster_size=2M",
                false,
                false,
                &[("cluster-size", "2097152")],
            ),
            RefcountBits1 => from_raw("refcount_bits=1", false, true, &[(REFCOUNT_BITS, "1")]),
            RefcountBits64 => from_raw("refcount_bits=64", false, true, &[(REFCOUNT_BITS, "64")]),
            CompressedZlib | CompressedZstd | CompressedCompat010 => {
                let (opts, ctype) = match self {
                    CompressedZlib => ("compression_type=zlib", "zlib"),
                    CompressedZstd => ("compression_type=zstd", "zstd"),
                    _ => ("compat=0.10,cluster_size=4096", "zlib"),
                };
                from_raw(opts, true, false, &[(COMPRESSION_TYPE, ctype)]);
                assert!(
                    Qcow2::open(&img).compressed_count() > 0,
                    "qemu-img stored no compressed cluster"
                );
            }
            ExtendedL2 => {
                from_raw("extended_l2=on", false, false, &[]);
                // Sub-cluster (2 KiB) writes into a hole, a zeroed sub-cluster over data
                // (the host bytes stay), unaligned writes, zero writes and a discard.
                let tail = format!("write -P 0x67 {} 1k", size - 3 * KIB);
                qemu_io(
                    &img,
                    &[
                        "write -z -u 0 128k",
                        "write -P 0x55 4k 2k",
                        "write -P 0x56 6k 2k",
                        "write -z 6k 2k",
                        "write -P 0x66 33000 1000",
                        "write -z 70k 6k",
                        "write -z -u 200k 4k",
                        "discard 300k 2k",
                        &tail,
                    ],
                );
                assert_partially_allocated(&img);
                assert_zero_flag_over_data(&img, 6 * KIB);
            }
            ExtendedL2OverBacking => {
                make_disk(&dir.join("base.raw"), 4 * MIB, seed, Content::Mixed);
                create_overlay(&img, "base.raw", "raw", "extended_l2=on", 5 * MIB + 512);
                // Unallocated sub-clusters of an allocated cluster show the backing file.
                qemu_io(
                    &img,
                    &[
                        "write -P 0x21 4k 2k",
                        "write -P 0x20 8k 2k",
                        "write -z 8k 2k",
                        "write -P 0x22 33000 1000",
                        "write -z -u 128k 64k",
                        "discard 256k 8k",
                        "write -P 0x23 4090k 12k",
                        "write -z 4608k 4k",
                        "write -P 0x24 5000k 2k",
                    ],
                );
                assert_partially_allocated(&img);
                assert_zero_flag_over_data(&img, 8 * KIB);
            }
            LazyRefcountsDirty => {
                from_raw("lazy_refcounts=on", false, false, &[]);
                // New clusters (in the grown tail) are allocated, then `abort` kills
                // qemu-io like a crash: the dirty bit stays set, refcounts are stale.
                qemu_img_ok(args!["resize", &img, "+1M"]);
                let tail = format!("write -P 0x78 {} 64k", size + 64 * KIB);
                let mut args = args!["-f", "qcow2", "-c", "write -P 0x77 64k 128k"];
                args.extend(args!["-c", tail, "-c", "abort", &img]);
                let run = run_cmd("qemu-io".as_ref(), args, TIMEOUT, false);
                assert_eq!(run.status.and_then(|s| s.signal()), Some(libc::SIGABRT));
                assert_qemu_info(&img, &[("dirty-flag", "true")]);
                assert_eq!(qemu_check(&img).0, 2, "qemu-img sees the stale refcounts");
                return img;
            }
            PreallocMetadataV2 | PreallocMetadataV3 => {
                let v3 = matches!(self, PreallocMetadataV3);
                let level = if v3 { "1.1" } else { "0.10" };
                let opts = format!("compat={level},preallocation=metadata");
                from_raw(&opts, false, false, &[(COMPAT, level)]);
                let writes = [
                    "write -P 0x30 1m 64k",
                    "write -z 1m 64k",
                    "write -P 0x31 2m 1000",
                ];
                qemu_io(&img, &writes);
                if v3 {
                    assert_zero_flag_over_data(&img, MIB);
                }
            }
            BackingChain | BackingChainNoFormat => {
                return build_chain(dir, seed, matches!(self, BackingChain));
            }
        }
        assert_qemu_check_clean(&img);
        img
    }
}

/// `qemu-img create -f qcow2 -o OPTS -b BACKING -F FORMAT IMAGE SIZE` (BACKING relative
/// to IMAGE's folder).
fn create_overlay(image: &Path, backing: &str, format: &str, opts: &str, size: u64) {
    let mut args = args!["create", "-f", "qcow2", "-o", opts];
    args.extend(args!["-b", backing, "-F", format, image, size.to_string()]);
    qemu_img_ok(args);
}

/// qemu-img map shows allocations smaller than a cluster (sub-clusters at work).
fn assert_partially_allocated(image: &Path) {
    assert_qemu_info(image, &[("format-specific.data.extended-l2", "true")]);
    let cs = qemu_info(image)["cluster-size"].as_u64().unwrap();
    let partial = qemu_map(image)
        .iter()
        .any(|e| e["depth"] == 0 && e["data"] == true && e["length"].as_u64().unwrap() % cs != 0);
    assert!(
        partial,
        "no partially allocated cluster in {}",
        image.display()
    );
}

/// The (sub-)cluster at `guest` is flagged zero but still has host space holding non-zero
/// bytes, so a reader that ignores the flag returns stale data.
fn assert_zero_flag_over_data(image: &Path, guest: u64) {
    let q = Qcow2::open(image);
    let pos = q.l2_entry_pos(guest).expect("L2 table");
    let e = q.u64_at(pos);
    let (zero, host, len) = if q.extended_l2 {
        let sub = q.cluster_size() / 32;
        let index = guest % q.cluster_size() / sub;
        let zero = (q.u64_at(pos + 8) >> (32 + index)) & 1 != 0;
        (zero, (e & OFFSET_MASK) + index * sub, sub)
    } else {
        (e & ZERO != 0, e & OFFSET_MASK, q.cluster_size())
    };
    assert!(zero && e & OFFSET_MASK != 0, "entry {e:#x} at {guest}");
    let bytes = q.read_at(host, len as usize);
    assert!(
        bytes.iter().any(|&b| b != 0),
        "host bytes of {guest} are zero"
    );
}

/// raw base (4 MiB) <- mid qcow2 v2 (6 MiB + 512, 64 KiB clusters, backing `../base/base.raw`)
/// <- top qcow2 v3 (8 MiB + 1536, 4 KiB clusters, backing `mid/mid.qcow2`), each overlay
/// larger than its backing file, with data, zero, unmap, discard and compressed writes.
/// Without `with_format` the backing-format extensions are removed afterwards.
fn build_chain(dir: &Path, seed: u64, with_format: bool) -> PathBuf {
    fs::create_dir_all(dir.join("base")).unwrap();
    fs::create_dir_all(dir.join("mid")).unwrap();
    let base = dir.join("base/base.raw");
    let mid = dir.join("mid/mid.qcow2");
    let top = dir.join("top.qcow2");
    make_disk(&base, 4 * MIB, seed, Content::Mixed);
    create_overlay(
        &mid,
        "../base/base.raw",
        "raw",
        "compat=0.10",
        6 * MIB + 512,
    );
    qemu_io(
        &mid,
        &[
            "write -P 0x11 1000 3000",
            "write -z 64k 64k",
            "write -z -u 192k 128k",
            "discard 448k 64k",
            "write -c -P 0x5a 512k 64k",
            "write -P 0x22 3968k 256k",
            "write -z 4032k 16k",
            "write -P 0x33 5m 4k",
        ],
    );
    create_overlay(
        &top,
        "mid/mid.qcow2",
        "qcow2",
        "cluster_size=4096",
        8 * MIB + 1536,
    );
    qemu_io(
        &top,
        &[
            "write -P 0x44 60k 8k",
            "write -z 1m 4k",
            "write -z -u 1040k 12k",
            "discard 2m 64k",
            "write -z 4000k 200k",
            "write -P 0x55 6m 4k",
            "write -P 0x66 8m 1536",
        ],
    );
    if !with_format {
        remove_header_extension(&mid, EXT_BACKING_FORMAT);
        remove_header_extension(&top, EXT_BACKING_FORMAT);
    }
    let chain = qemu_chain(&top);
    assert_eq!(chain.len(), 3, "qemu-img sees the whole chain");
    assert_eq!(chain[0]["backing-filename"], "mid/mid.qcow2");
    assert_eq!(chain[1]["backing-filename"], "../base/base.raw");
    assert_eq!(chain[1]["format"], "qcow2");
    assert_eq!(chain[2]["format"], "raw");
    for entry in &chain[..2] {
        let declared = entry["backing-filename-format"].is_string();
        assert_eq!(declared, with_format, "backing format recorded: {entry}");
    }
    assert_qemu_check_clean(&mid);
    assert_qemu_check_clean(&top);
    top
}
