//! kiln's iSCSI initiator against tgt (tgtd with file backing stores), an
//! independent target; qemu-img compare is the oracle for what lands on disk.

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[path = "common/tgtd.rs"]
mod tgtd;

use kiln::deploy::protocol::ChapSecret;
use kiln::iscsi::initiator::{InitiatorError, LoginOptions, Session, discover, write_image};
use tgtd::Tgtd;

const MIB: u64 = 1 << 20;
const INITIATOR: &str = "iqn.2026-11.org.kiln:test-conductor";
const USER: &str = "deployer";
const SECRET: &str = "per-deploy-secret-1";
const MUTUAL_USER: &str = "agent";
const MUTUAL_SECRET: &str = "target-proves-this";

fn need(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    let found = found || Path::new("/usr/sbin").join(program).is_file();
    assert!(
        found,
        "{program} is missing: install the Debian package {package}"
    );
}

/// A tgtd with the two accounts every test here uses.
fn start_tgtd() -> Tgtd {
    let tgtd = Tgtd::start();
    tgtd.add_account(USER, SECRET);
    tgtd.add_account(MUTUAL_USER, MUTUAL_SECRET);
    tgtd
}

/// Target `tid` named `iqn` with LUN 1 backed by `file`, CHAP required.
fn add_target(tgtd: &Tgtd, tid: u32, iqn: &str, file: &Path, mutual: bool) {
    tgtd.add_target(tid, iqn, file, USER, mutual.then_some(MUTUAL_USER));
}

fn options(target: &str) -> LoginOptions {
    LoginOptions {
        initiator_iqn: INITIATOR.into(),
        target_iqn: target.into(),
        chap: ChapSecret {
            user: USER.into(),
            secret: SECRET.into(),
        },
        mutual_chap: None,
        digests: false,
    }
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A used disk: random bytes everywhere.
fn used_disk(path: &Path, size: u64, seed: u64) {
    std::fs::write(path, noise(size as usize, seed)).unwrap();
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (package qemu-utils): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 40 MiB raw image with data in the first MiB, holes, runs of zeros and
/// data at the end.
fn raw_image(dir: &Path) -> PathBuf {
    let path = dir.join("image.raw");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(40 * MIB).unwrap();
    file.write_all_at(&noise(64 << 10, 1), 0).unwrap();
    file.write_all_at(&noise(6 * MIB as usize, 2), 3 * MIB)
        .unwrap();
    file.write_all_at(&vec![0u8; 2 * MIB as usize], 12 * MIB)
        .unwrap();
    file.write_all_at(&noise(MIB as usize + 4096, 3), 20 * MIB - 4096)
        .unwrap();
    file.write_all_at(&noise(MIB as usize, 4), 39 * MIB)
        .unwrap();
    path
}

/// The raw image as a zstd-compressed qcow2 with zero clusters added.
fn qcow2_image(dir: &Path, raw: &Path) -> PathBuf {
    let path = dir.join("image.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-c",
            "-o",
            "compression_type=zstd",
            raw.to_str().unwrap(),
            path.to_str().unwrap(),
        ],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -z 4M 1M",
            path.to_str().unwrap(),
        ],
    );
    path
}

fn assert_identical(image: &Path, disk: &Path) {
    need("qemu-img", "qemu-utils");
    let out = Command::new("qemu-img")
        .args(["compare", image.to_str().unwrap(), disk.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare {image:?} {disk:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn discovery_lists_every_target_of_the_portal() {
    let dir = tempfile::tempdir().unwrap();
    let tgtd = start_tgtd();
    for (tid, name) in [(1, "iqn.2026-11.org.kiln:a"), (2, "iqn.2026-11.org.kiln:b")] {
        let file = dir.path().join(format!("{tid}.img"));
        used_disk(&file, 4 * MIB, tid.into());
        add_target(&tgtd, tid, name, &file, false);
    }
    let chap = ChapSecret {
        user: USER.into(),
        secret: SECRET.into(),
    };
    let mut found = discover(tgtd.portal, INITIATOR, &chap).unwrap();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<_> = found.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["iqn.2026-11.org.kiln:a", "iqn.2026-11.org.kiln:b"]);
    let port = tgtd.portal.port().to_string();
    assert!(
        found[0]
            .portals
            .iter()
            .any(|p| p.starts_with("127.0.0.1:") && p.contains(&port))
    );
}

#[test]
fn a_wrong_secret_is_an_authentication_error() {
    let dir = tempfile::tempdir().unwrap();
    let tgtd = start_tgtd();
    let file = dir.path().join("lun.img");
    used_disk(&file, 4 * MIB, 7);
    add_target(&tgtd, 1, "iqn.2026-11.org.kiln:auth", &file, false);
    let mut opts = options("iqn.2026-11.org.kiln:auth");
    opts.chap.secret = "not-the-secret-at-all".into();
    let err = Session::login(tgtd.portal, &opts)
        .err()
        .expect("login must fail");
    assert!(
        matches!(err, InitiatorError::Authentication { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("CHAP authentication"), "{err}");
    // The right secret works on the same target.
    Session::login(tgtd.portal, &options("iqn.2026-11.org.kiln:auth"))
        .unwrap()
        .logout()
        .unwrap();
}

#[test]
fn mutual_chap_accepts_the_real_target_and_refuses_an_impostor() {
    let dir = tempfile::tempdir().unwrap();
    let tgtd = start_tgtd();
    let file = dir.path().join("lun.img");
    used_disk(&file, 4 * MIB, 8);
    add_target(&tgtd, 1, "iqn.2026-11.org.kiln:mutual", &file, true);
    let mut opts = options("iqn.2026-11.org.kiln:mutual");
    opts.mutual_chap = Some(ChapSecret {
        user: MUTUAL_USER.into(),
        secret: MUTUAL_SECRET.into(),
    });
    Session::login(tgtd.portal, &opts)
        .unwrap()
        .logout()
        .unwrap();
    // We expect a secret the target does not hold: it cannot prove it.
    opts.mutual_chap = Some(ChapSecret {
        user: MUTUAL_USER.into(),
        secret: "a-secret-tgtd-lacks".into(),
    });
    let err = Session::login(tgtd.portal, &opts).err().expect("must fail");
    assert!(
        matches!(err, InitiatorError::Authentication { ref detail, .. } if detail.contains("mutual")),
        "{err}"
    );
}

#[test]
fn read_at_returns_the_backing_file_and_capacity_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let tgtd = start_tgtd();
    let file = dir.path().join("lun.img");
    used_disk(&file, 6 * MIB, 9);
    add_target(&tgtd, 1, "iqn.2026-11.org.kiln:read", &file, false);
    let session = Session::login(tgtd.portal, &options("iqn.2026-11.org.kiln:read")).unwrap();
    let (bs, blocks) = session.capacity();
    assert_eq!(u64::from(bs) * blocks, 6 * MIB);
    let want = std::fs::read(&file).unwrap();
    // More than one command's worth, from an odd block.
    let got = session.read_at(512 * 3, 3 * MIB as usize).unwrap();
    assert!(
        got == want[512 * 3..512 * 3 + 3 * MIB as usize],
        "read_at differs from the file"
    );
    // Past the end is refused before anything is sent.
    let err = session.read_at(6 * MIB, 512).unwrap_err();
    assert!(matches!(err, InitiatorError::OutOfRange { .. }), "{err}");
    session.logout().unwrap();
}

#[test]
fn write_image_of_a_zstd_qcow2_and_of_a_raw_image_lands_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_image(dir.path());
    let qcow2 = qcow2_image(dir.path(), &raw);
    let tgtd = start_tgtd();
    for (tid, image) in [(1, &qcow2), (2, &raw)] {
        let file = dir.path().join(format!("lun{tid}.img"));
        used_disk(&file, 40 * MIB, tid.into());
        let iqn = format!("iqn.2026-11.org.kiln:write{tid}");
        add_target(&tgtd, tid, &iqn, &file, false);
        let session = Session::login(tgtd.portal, &options(&iqn)).unwrap();
        let report = write_image(&session, image, false, &|_, _| {}).unwrap();
        assert_eq!(report.virtual_size, 40 * MIB);
        assert_eq!(report.bytes_written + report.bytes_zeroed, 40 * MIB);
        // What the initiator reads back is what tgtd stored.
        let head = session.read_at(0, MIB as usize).unwrap();
        session.logout().unwrap();
        assert_identical(image, &file);
        assert!(head == std::fs::read(&file).unwrap()[..MIB as usize]);
    }
}

#[test]
fn two_sessions_write_two_targets_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_image(dir.path());
    let qcow2 = qcow2_image(dir.path(), &raw);
    let tgtd = start_tgtd();
    let files: Vec<PathBuf> = (1..=2)
        .map(|tid| {
            let file = dir.path().join(format!("node{tid}.img"));
            used_disk(&file, 48 * MIB, 10 + tid);
            add_target(
                &tgtd,
                tid as u32,
                &format!("iqn.2026-11.org.kiln:node{tid}"),
                &file,
                false,
            );
            file
        })
        .collect();
    std::thread::scope(|scope| {
        for tid in 1..=2 {
            let (portal, qcow2) = (tgtd.portal, &qcow2);
            scope.spawn(move || {
                let iqn = format!("iqn.2026-11.org.kiln:node{tid}");
                let session = Session::login(portal, &options(&iqn)).unwrap();
                write_image(&session, qcow2, false, &|_, _| {}).unwrap();
                session.logout().unwrap();
            });
        }
    });
    for file in &files {
        // The disk is larger than the image: compare the image's span.
        let f = std::fs::File::options().write(true).open(file).unwrap();
        f.set_len(40 * MIB).unwrap();
        assert_identical(&qcow2, file);
    }
}

/// `kiln agent export` (kiln's own target), killed and reaped on drop.
struct KilnTarget {
    child: Child,
    portal: SocketAddr,
}

impl KilnTarget {
    fn start(disk: &Path, iqn: &str) -> KilnTarget {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["agent", "export", "--disk", disk.to_str().unwrap()])
            .args([
                "--listen",
                "127.0.0.1:0",
                "--target-iqn",
                iqn,
                "--chap-user",
                USER,
            ])
            .env("KILN_CHAP_SECRET", SECRET)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kiln agent export");
        // The first line of its output is the address it listens on.
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let portal = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("kiln agent export printed {line:?}, not an address")
        });
        KilnTarget { child, portal }
    }
}

impl Drop for KilnTarget {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn write_image_onto_kilns_own_target_with_digests() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_image(dir.path());
    let qcow2 = qcow2_image(dir.path(), &raw);
    let disk = dir.path().join("node.img");
    used_disk(&disk, 40 * MIB, 21);
    let iqn = "iqn.2026-11.org.kiln:self";
    let target = KilnTarget::start(&disk, iqn);
    let found = discover(
        target.portal,
        INITIATOR,
        &ChapSecret {
            user: USER.into(),
            secret: SECRET.into(),
        },
    )
    .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, iqn);
    let mut opts = options(iqn);
    opts.digests = true;
    let session = Session::login(target.portal, &opts).unwrap();
    write_image(&session, &qcow2, false, &|_, _| {}).unwrap();
    session.logout().unwrap();
    drop(target);
    assert_identical(&qcow2, &disk);
}
