//! Image transport on loopback: the conductor's image server (judged by curl,
//! sha256sum and sha512sum) and the agent's streaming writer (judged by
//! `qemu-img compare` against the source image), including a wrong checksum, a
//! connection cut mid-stream and refused names.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kiln::agent::stream::{Checksum, ImageUrl, StreamError, WriteOptions, write_image};
use kiln::deploy::images::{ImageStore, LocalImageServer};
use kiln::format::qcow2::CompressionType;
use kiln::image::convert::{ConvertOptions, convert};

const MIB: u64 = 1 << 20;
const DISK: u64 = 48 * MIB;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn digest(tool: &str, path: &Path) -> String {
    run(Command::new(tool).arg(path))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A sparse raw disk: data in the first MiB (boot area), scattered compressible and
/// incompressible runs, holes between, data in the last cluster.
fn make_raw(path: &Path) {
    let f = fs::File::create(path).unwrap();
    f.set_len(DISK).unwrap();
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut noise = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let text: Vec<u8> = b"kiln streams images. "
        .iter()
        .copied()
        .cycle()
        .take(300_000)
        .collect();
    f.write_all_at(b"\xeb\x63\x90boot sector", 0).unwrap();
    f.write_all_at(&noise(70_000), 510).unwrap();
    f.write_all_at(&text, 3 * MIB + 4096).unwrap();
    f.write_all_at(&noise(1_000_000), 9 * MIB + 123).unwrap();
    f.write_all_at(&text, 30 * MIB).unwrap();
    f.write_all_at(&noise(5000), DISK - 5000).unwrap();
}

struct Fixture {
    _tmp: tempfile::TempDir,
    raw: PathBuf,
    images: PathBuf,
    work: PathBuf,
    server: LocalImageServer,
}

/// Source images: raw, qemu-img qcow2 plain and zlib-compressed, kiln zstd.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    let work = tmp.path().join("work");
    fs::create_dir_all(&images).unwrap();
    fs::create_dir_all(&work).unwrap();
    let raw = work.join("source.raw");
    make_raw(&raw);
    fs::copy(&raw, images.join("disk.raw")).unwrap();
    run(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(images.join("plain.qcow2")));
    run(Command::new("qemu-img")
        .args(["convert", "-c", "-O", "qcow2"])
        .arg(&raw)
        .arg(images.join("zlib.qcow2")));
    let opts = ConvertOptions {
        output_format: kiln::format::ImageFormat::Qcow2,
        compression: Some(CompressionType::Zstd),
        ..Default::default()
    };
    convert(&raw, &images.join("zstd.qcow2"), &opts).unwrap();
    let store = ImageStore::new(&images, &tmp.path().join("cache")).unwrap();
    let server = LocalImageServer::start(store).unwrap();
    Fixture {
        _tmp: tmp,
        raw,
        images,
        work,
        server,
    }
}

fn sha256_of(path: &Path) -> Checksum {
    format!("sha256:{}", digest("sha256sum", path))
        .parse()
        .unwrap()
}

fn write(
    url: &str,
    sum: &Checksum,
    target: &Path,
) -> Result<kiln::agent::stream::WriteReport, StreamError> {
    write_image(
        &ImageUrl::parse(url).unwrap(),
        sum,
        target,
        &WriteOptions::default(),
    )
}

fn assert_same_disk(target: &Path, source: &Path) {
    run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(target)
        .arg(source));
}

fn first_mib(path: &Path) -> Vec<u8> {
    let mut buf = vec![0u8; MIB as usize];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, 0)
        .unwrap();
    buf
}

const NAMES: [&str; 4] = ["disk.raw", "plain.qcow2", "zlib.qcow2", "zstd.qcow2"];

#[test]
fn every_format_streams_into_a_new_file_and_over_an_older_image() {
    let fx = fixture();
    for name in NAMES {
        let sum = sha256_of(&fx.images.join(name));
        // A new sparse file.
        let fresh = fx.work.join(format!("{name}.new"));
        let report = write(&fx.server.url(name), &sum, &fresh).unwrap();
        assert_eq!(report.virtual_size, DISK, "{name}");
        assert_eq!(report.checksum, sum.to_string());
        assert_same_disk(&fresh, &fx.raw);
        // A disk full of an older image: holes of the new one must become zeros.
        let old = fx.work.join(format!("{name}.old"));
        fs::write(&old, vec![0x5au8; DISK as usize]).unwrap();
        write(&fx.server.url(name), &sum, &old).unwrap();
        assert_same_disk(&old, &fx.raw);
    }
}

#[test]
fn sha512_checksums_are_accepted() {
    let fx = fixture();
    let path = fx.images.join("zstd.qcow2");
    let sum: Checksum = format!("sha512:{}", digest("sha512sum", &path))
        .parse()
        .unwrap();
    let target = fx.work.join("t");
    write(&fx.server.url("zstd.qcow2"), &sum, &target).unwrap();
    assert_same_disk(&target, &fx.raw);
}

#[test]
fn wrong_checksum_fails_and_leaves_no_bootable_first_mib() {
    let fx = fixture();
    for name in ["disk.raw", "zlib.qcow2"] {
        // The target held an older image with a boot sector.
        let target = fx.work.join(format!("{name}.old"));
        fs::write(&target, vec![0xa5u8; DISK as usize]).unwrap();
        let wrong: Checksum = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
        let err = write(&fx.server.url(name), &wrong, &target).unwrap_err();
        let actual = digest("sha256sum", &fx.images.join(name));
        let msg = err.to_string();
        assert!(matches!(err, StreamError::ChecksumMismatch { .. }), "{msg}");
        assert!(
            msg.contains(&"0".repeat(64)) && msg.contains(&actual),
            "{msg}"
        );
        assert!(
            first_mib(&target).iter().all(|&b| b == 0),
            "{name}: first MiB not zeroed"
        );
        // A new file gets the same treatment.
        let fresh = fx.work.join(format!("{name}.new"));
        write(&fx.server.url(name), &wrong, &fresh).unwrap_err();
        assert!(first_mib(&fresh).iter().all(|&b| b == 0));
    }
}

/// File offset of the compressed cluster holding `guest`, read from the qcow2
/// tables as the format specification lays them out (an oracle apart from kiln's
/// reader): header -> L1 -> L2 entry with the compressed flag (bit 62).
fn compressed_cluster_host_offset(image: &Path, guest: u64) -> u64 {
    let f = fs::File::open(image).unwrap();
    let be64 = |at: u64| {
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, at).unwrap();
        u64::from_be_bytes(b)
    };
    let mut b4 = [0u8; 4];
    f.read_exact_at(&mut b4, 20).unwrap();
    let cluster_bits = u32::from_be_bytes(b4) as u64;
    let l1_offset = be64(40);
    let l2_entries = 1u64 << (cluster_bits - 3);
    let cluster = guest >> cluster_bits;
    let l1_entry = be64(l1_offset + 8 * (cluster / l2_entries));
    let l2_offset = l1_entry & 0x00ff_ffff_ffff_fe00;
    let entry = be64(l2_offset + 8 * (cluster % l2_entries));
    assert!(
        entry & (1 << 62) != 0,
        "guest {guest} is not a compressed cluster"
    );
    entry & ((1u64 << (62 - (cluster_bits - 8))) - 1)
}

#[test]
fn a_corrupt_compressed_cluster_stops_every_worker_and_names_the_guest_offset() {
    let fx = fixture();
    // Early in the disk, so the parser still has most of the stream to hand out
    // when the worker that meets it fails.
    let guest = 3 * MIB;
    let path = fx.images.join("zlib.qcow2");
    let host = compressed_cluster_host_offset(&path, guest);
    // 0xff starts a deflate block of the reserved type 3: invalid for any reader.
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&[0xffu8; 16], host)
        .unwrap();
    let qemu = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
        .arg(&path)
        .arg(&fx.raw)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        !qemu.success(),
        "qemu-img still reads the corrupted image as the source"
    );
    // The checksum matches the file as served: only the decoder can object.
    let sum = sha256_of(&path);
    let target = fx.work.join("corrupt");
    fs::write(&target, vec![0xa5u8; DISK as usize]).unwrap();
    let opts = WriteOptions {
        threads: Some(3),
        ..Default::default()
    };
    let err = write_image(
        &ImageUrl::parse(&fx.server.url("zlib.qcow2")).unwrap(),
        &sum,
        &target,
        &opts,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StreamError::Qcow2 { .. }), "{msg}");
    assert!(msg.contains(&format!("guest offset {guest}")), "{msg}");
    assert!(
        first_mib(&target).iter().all(|&b| b == 0),
        "first MiB not zeroed"
    );
}

#[test]
fn target_smaller_than_the_disk_is_refused_untouched() {
    let fx = fixture();
    let target = fx.work.join("small");
    fs::write(&target, vec![7u8; (DISK - MIB) as usize]).unwrap();
    let name = "zstd.qcow2";
    let err = write(
        &fx.server.url(name),
        &sha256_of(&fx.images.join(name)),
        &target,
    )
    .unwrap_err();
    assert!(
        matches!(err, StreamError::TargetTooSmall { needed: DISK, .. }),
        "{err}"
    );
    assert!(first_mib(&target).iter().all(|&b| b == 7));
}

#[test]
fn qcow2_with_a_backing_file_is_refused() {
    let fx = fixture();
    let overlay = fx.images.join("overlay.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-F", "qcow2", "-b", "plain.qcow2"])
        .arg(&overlay));
    let err = write(
        &fx.server.url("overlay.qcow2"),
        &sha256_of(&overlay),
        &fx.work.join("t"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("backing file"), "{err}");
}

/// A TCP proxy to `upstream` that closes a connection after forwarding
/// `cut_after` response bytes on it, once; with `dead_after_cut`, later
/// connections are closed at once (a server that went away).
struct CuttingProxy {
    addr: std::net::SocketAddr,
    cuts: Arc<AtomicU64>,
}

fn cutting_proxy(
    upstream: std::net::SocketAddr,
    cut_after: u64,
    dead_after_cut: bool,
) -> CuttingProxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let armed = Arc::new(AtomicBool::new(true));
    let cuts = Arc::new(AtomicU64::new(0));
    let cuts2 = cuts.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let (armed, cuts) = (armed.clone(), cuts2.clone());
            std::thread::spawn(move || {
                let Ok(server) = TcpStream::connect(upstream) else {
                    return;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                let mut sent = 0u64;
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match s_in.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if dead_after_cut && cuts.load(Ordering::SeqCst) > 0 {
                        break; // also connections opened before the cut
                    }
                    if c_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n as u64;
                    if sent >= cut_after && armed.swap(false, Ordering::SeqCst) {
                        cuts.fetch_add(1, Ordering::SeqCst);
                        let _ = c_out.shutdown(std::net::Shutdown::Both);
                        let _ = s_in.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                }
                let _ = c_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    CuttingProxy { addr, cuts }
}

#[test]
fn a_connection_cut_mid_stream_is_resumed() {
    let fx = fixture();
    for name in ["disk.raw", "zstd.qcow2"] {
        let size = fs::metadata(fx.images.join(name)).unwrap().len();
        let proxy = cutting_proxy(fx.server.addr, size / 2, false);
        let url = format!("http://{}/v1/images/{name}", proxy.addr);
        let target = fx.work.join(format!("{name}.cut"));
        let report = write(&url, &sha256_of(&fx.images.join(name)), &target).unwrap();
        assert_eq!(
            proxy.cuts.load(Ordering::SeqCst),
            1,
            "{name}: the proxy never cut"
        );
        assert!(report.resumes >= 1, "{name}: {report:?}");
        assert_same_disk(&target, &fx.raw);
    }
}

#[test]
fn a_connection_that_keeps_failing_is_an_error_naming_url_and_offset() {
    let fx = fixture();
    let name = "disk.raw";
    let proxy = cutting_proxy(fx.server.addr, 20 * MIB, true);
    let url = format!("http://{}/v1/images/{name}", proxy.addr);
    let target = fx.work.join("old");
    fs::write(&target, vec![0xa5u8; DISK as usize]).unwrap();
    // Reconnects are tried for a short window here (the default outlasts a
    // conductor restart).
    let options = WriteOptions {
        resume_window: Some(std::time::Duration::from_secs(3)),
        ..WriteOptions::default()
    };
    let err = write_image(
        &ImageUrl::parse(&url).unwrap(),
        &sha256_of(&fx.images.join(name)),
        &target,
        &options,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("within 3 s"), "{msg}");
    assert!(
        matches!(err, StreamError::Http { offset, .. } if offset >= 20 * MIB),
        "{msg}"
    );
    assert!(msg.contains(&url), "{msg}");
    assert!(first_mib(&target).iter().all(|&b| b == 0));
}

#[test]
fn server_checksums_equal_sha256sum_and_sha512sum_and_survive_a_restart() {
    let fx = fixture();
    let cache = fx.work.join("cache");
    let store = ImageStore::new(&fx.images, &cache).unwrap();
    let mut listed = store.list().unwrap();
    listed.sort();
    assert_eq!(listed, {
        let mut n = NAMES.to_vec();
        n.sort();
        n
    });
    for name in NAMES {
        let path = fx.images.join(name);
        let info = store.stat(name).unwrap();
        assert_eq!(info.size, fs::metadata(&path).unwrap().len());
        assert_eq!(info.sha256, digest("sha256sum", &path));
        assert_eq!(info.sha512, digest("sha512sum", &path));
    }
    // A restarted store answers from the cache file: prove it by planting a
    // value there that hashing would never produce.
    let file = cache.join("image-checksums.json");
    let json = fs::read_to_string(&file).unwrap();
    let real = digest("sha256sum", &fx.images.join("disk.raw"));
    fs::write(&file, json.replace(&real, &"f".repeat(64))).unwrap();
    let restarted = ImageStore::new(&fx.images, &cache).unwrap();
    assert_eq!(restarted.stat("disk.raw").unwrap().sha256, "f".repeat(64));
    // A changed file is hashed again.
    fs::OpenOptions::new()
        .append(true)
        .open(fx.images.join("disk.raw"))
        .unwrap()
        .write_all(b"more")
        .unwrap();
    let info = restarted.stat("disk.raw").unwrap();
    assert_eq!(
        info.sha256,
        digest("sha256sum", &fx.images.join("disk.raw"))
    );
}

fn curl(args: &[&str]) -> (String, Vec<u8>) {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let headers = run(Command::new("curl")
        .args(["-s", "-D", "-", "-o"])
        .arg(tmp.path())
        .args(args));
    (headers, fs::read(tmp.path()).unwrap())
}

fn status(headers: &str) -> u16 {
    headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn range_requests_behave_for_curl() {
    let fx = fixture();
    let url = fx.server.url("zlib.qcow2");
    let file = fs::read(fx.images.join("zlib.qcow2")).unwrap();
    let size = file.len();
    let cases: [(&str, usize, usize); 4] = [
        ("100-299", 100, 300),
        ("1000-", 1000, size),
        ("-500", size - 500, size),
        (&format!("{}-{}", size - 10, size + 1000), size - 10, size),
    ];
    for (range, start, end) in cases {
        let (h, body) = curl(&["-r", range, &url]);
        assert_eq!(status(&h), 206, "{range}: {h}");
        let want = format!("content-range: bytes {start}-{}/{size}", end - 1);
        assert!(h.to_ascii_lowercase().contains(&want), "{range}: {h}");
        assert!(body == file[start..end], "{range}: body differs");
    }
    let (h, _) = curl(&["-r", &format!("{size}-"), &url]);
    assert_eq!(status(&h), 416, "{h}");
    assert!(
        h.to_ascii_lowercase()
            .contains(&format!("content-range: bytes */{size}"))
    );
    // Whole file, and HEAD with the length and range support but no body.
    let (h, body) = curl(&[&url]);
    assert_eq!(status(&h), 200);
    assert!(body == file);
    let (h, body) = curl(&["-I", &url]);
    let lower = h.to_ascii_lowercase();
    assert_eq!(status(&h), 200);
    assert!(
        lower.contains(&format!("content-length: {size}"))
            && lower.contains("accept-ranges: bytes"),
        "{h}"
    );
    // curl -I writes the headers where the body would go: no image bytes there.
    assert!(
        !body.windows(4).any(|w| w == b"QFI\xfb"),
        "HEAD sent a body"
    );
    // If-Range with a stale validator: the whole file, not the range.
    let (h, body) = curl(&["-r", "0-9", "-H", "If-Range: \"stale\"", &url]);
    assert_eq!(status(&h), 200, "{h}");
    assert_eq!(body.len(), size);
}

#[test]
fn names_outside_the_folder_are_refused() {
    let fx = fixture();
    fs::write(fx.work.join("secret"), b"not an image").unwrap();
    std::os::unix::fs::symlink(fx.work.join("secret"), fx.images.join("link.raw")).unwrap();
    let base = format!("http://{}/v1/images/", fx.server.addr);
    for path in [
        "../work/secret",
        "..%2fwork%2fsecret",
        "link.raw",
        ".hidden",
        "missing.raw",
    ] {
        let (h, body) = curl(&["--path-as-is", &format!("{base}{path}")]);
        assert!(
            matches!(status(&h), 400 | 404),
            "{path}: {h} {}",
            String::from_utf8_lossy(&body)
        );
        assert!(!body.starts_with(b"not an image"), "{path} leaked the file");
    }
    let store = ImageStore::new(&fx.images, &fx.work.join("c")).unwrap();
    assert!(store.stat("../work/secret").is_err());
    assert!(store.stat("link.raw").is_err());
    assert!(!store.list().unwrap().contains(&"link.raw".to_string()));
}
