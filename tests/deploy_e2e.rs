//! Issue 6's acceptance test, end to end with real parts only: the test's
//! kiln builds the deploy ramdisk and the busybox VM image; `kiln conductor`
//! runs two TCG nodes (disks are sparse files) through import, inspection
//! by the real agent in the ramdisk (introspection rules set profiles by memory
//! size), provide and a two-role plan; both nodes reach `active` and boot the
//! busybox VM from their own disk under OVMF. Afterwards each disk holds the
//! image (checked against `qemu-img convert`'s decoding) and a config-2
//! partition whose files mtools copies out and cloud-init's reader accepts.
//!
//! Role config (issue 7): the deployed image carries kiln's config service
//! (role-config) and a template and configure.d script (fixture element
//! e2e-role). At first boot each node finds its config drive, renders its
//! role's metadata and reports; the conductor shows both `configured`. Then
//! `kiln deploy update` changes the role config while the nodes run: their
//! polling fetches the new metadata from the conductor and re-applies it. After
//! power-off each disk holds the newly rendered file and a refresh log that
//! shows the first-boot value, then the updated one.
//!
//! Power (issue 9): the scenario runs with every power driver. The qemu run:
//! the conductor starts both VMs itself. The BMC run: node-big is behind an
//! OpenIPMI ipmi_sim (`ipmi` driver), node-small behind a sushy-emulator over
//! TLS with the CA verified (`redfish` driver); both BMCs front `kiln vnode`,
//! which runs the same VM the qemu driver would (tests/common/bmc.rs). The BMC
//! run deploys with `direct` for every role (fixtures/deploy/e2e/plan-direct.yaml:
//! a VM behind a BMC has no iSCSI portal the conductor maps) and leaves out the
//! config update phase to save CI time; the runs take turns (TCG VMs share 2
//! cores).

#[path = "common/bmc.rs"]
mod bmc;

#[path = "common/status_page.rs"]
mod status_page;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use kiln::deploy::power::qemu::{CONDUCTOR_GUEST_ADDR, Firmware, QemuNode};
use serde_json::{Value, json};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
/// Generous bounds for TCG on a busy machine: the flows wait on each other,
/// the limits only end a hung test.
const INSPECT_WAIT: Duration = Duration::from_secs(300);
const DEPLOY_WAIT: Duration = Duration::from_secs(420);
const BOOT_WAIT: Duration = Duration::from_secs(300);
const CONFIG_WAIT: Duration = Duration::from_secs(300);
const GIB: u64 = 1 << 30;
const SECTOR: u64 = 512;

struct NodeSpec {
    name: &'static str,
    mac: &'static str,
    memory_mb: u64,
    /// The role's `e2e.value` in fixtures/deploy/e2e/plan.yaml (the update
    /// plan has -v2 for -v1).
    value: &'static str,
}

const NODES: [NodeSpec; 2] = [
    NodeSpec {
        name: "node-big",
        mac: "52:54:00:6b:00:01",
        memory_mb: 1536,
        value: "controller-v1",
    },
    NodeSpec {
        name: "node-small",
        mac: "52:54:00:6b:00:02",
        memory_mb: 1024,
        value: "compute-v1",
    },
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn build(recipe: &Path, out: &Path) -> Output {
    Command::new(KILN)
        .args(["image", "build"])
        .arg(recipe)
        .arg("--elements-path")
        .arg(repo().join("fixtures/deploy/e2e/elements"))
        .arg("-o")
        .arg(out)
        .env("DIB_KILN_BINARY", KILN)
        .output()
        .expect("run kiln")
}

#[track_caller]
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The conductor process and every qemu it started (found by the pid files in
/// its qemu state directory): all killed when the test ends, also on panic.
struct Conductor {
    child: Child,
    url: String,
    qemu_dir: PathBuf,
}

impl Conductor {
    fn qemu_pids(&self) -> Vec<i32> {
        let Ok(entries) = fs::read_dir(&self.qemu_dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pid"))
            .filter_map(|p| fs::read_to_string(p).ok()?.trim().parse().ok())
            .filter(|&pid| is_qemu(pid))
            .collect()
    }
}

impl Drop for Conductor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in self.qemu_pids() {
            // SAFETY: plain syscall on a qemu this test's conductor started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A live (not zombie) qemu process.
fn is_qemu(pid: i32) -> bool {
    let live = fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !matches!(
            s.rsplit(')').next().and_then(|r| r.trim().chars().next()),
            Some('Z') | Some('X') | None
        )
    });
    live && String::from_utf8_lossy(&fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .contains("qemu")
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// (status, JSON body or Null)
fn call(method: &str, url: &str, body: Option<&str>) -> (u16, Value) {
    let agent = http();
    let response = match method {
        "GET" => agent.get(url).call(),
        "POST" => agent.post(url).send(body.unwrap_or("")),
        "PUT" => agent.put(url).send(body.unwrap_or("")),
        _ => unreachable!(),
    };
    let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn node(conductor: &Conductor, name: &str) -> Value {
    let (status, node) = call("GET", &format!("{}/v1/nodes/{name}", conductor.url), None);
    assert_eq!(status, 200, "{node}");
    node
}

#[track_caller]
fn verb(conductor: &Conductor, name: &str, target: &str) {
    let (status, body) = call(
        "PUT",
        &format!("{}/v1/nodes/{name}/states/provision", conductor.url),
        Some(&json!({ "target": target }).to_string()),
    );
    assert_eq!(status, 202, "{name} {target}: {body}");
}

/// Polls until the node reaches `want`; panics with the node's error and
/// console if it fails or the (generous) limit passes.
fn wait_for(conductor: &Conductor, name: &str, want: &str, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let node = node(conductor, name);
        let now = node["provision_state"].as_str().unwrap().to_string();
        if now == want {
            return node;
        }
        if now.ends_with("failed") || started.elapsed() > limit {
            panic!(
                "{name} is {now}, wanted {want}: {}\nconsole:\n{}",
                node["last_error"],
                console_tail(conductor, name)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn console(conductor: &Conductor, name: &str) -> String {
    let bytes =
        fs::read(conductor.qemu_dir.join(format!("{name}.console.log"))).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn console_tail(conductor: &Conductor, name: &str) -> String {
    let text = console(conductor, name);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// The console text after the deploy ramdisk's last line: the boot that
/// followed the deploy.
fn console_after_ramdisk(conductor: &Conductor, name: &str) -> String {
    let text = console(conductor, name);
    // The ramdisk's start-up script says "kiln-agent:", the agent "kiln agent:".
    let last = [text.rfind("kiln-agent:"), text.rfind("kiln agent:")]
        .into_iter()
        .flatten()
        .max();
    match last {
        Some(at) => text[at..]
            .split_once('\n')
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_default(),
        None => String::new(),
    }
}

/// A partition from `sgdisk -p`: number, first sector, last sector, name.
#[derive(Debug, Clone)]
struct Partition {
    start: u64,
    end: u64,
    name: String,
}

impl Partition {
    fn offset(&self) -> u64 {
        self.start * SECTOR
    }
    fn len(&self) -> u64 {
        (self.end + 1 - self.start) * SECTOR
    }
}

fn partitions(disk: &Path) -> Vec<Partition> {
    let text = run(Command::new("sgdisk").arg("-p").arg(disk));
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("Number"))
        .skip(1)
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            // Number Start End Size Unit Code Name...
            (words.len() >= 7).then(|| Partition {
                start: words[1].parse().unwrap(),
                end: words[2].parse().unwrap(),
                name: words[6..].join(" "),
            })
        })
        .collect()
}

fn read_region(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

/// The first offset in `offset..offset + len` where `a` and `b` differ,
/// other than the offsets in `allowed`.
fn first_difference(a: &Path, b: &Path, offset: u64, len: u64, allowed: &[u64]) -> Option<u64> {
    const CHUNK: u64 = 4 << 20;
    let (fa, fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done) as usize;
        let (mut x, mut y) = (vec![0u8; n], vec![0u8; n]);
        fa.read_exact_at(&mut x, offset + done).unwrap();
        fb.read_exact_at(&mut y, offset + done).unwrap();
        let differs = (0..n)
            .map(|i| offset + done + i as u64)
            .zip(x.iter().zip(&y))
            .find(|(at, (x, y))| x != y && !allowed.contains(at));
        if let Some((at, _)) = differs {
            return Some(at);
        }
        done += n as u64;
    }
    None
}

#[track_caller]
fn assert_same_region(image: &Path, disk: &Path, range: (u64, u64), parts: &[Partition]) {
    let (offset, len) = range;
    // OVMF's FAT driver marks a FAT32 volume in use (boot sector byte 0x41,
    // "CurrentHead" in EFI's FAT layout) and a VM powered off hard never
    // clears it: the one byte of an ESP the firmware may change.
    let allowed: Vec<u64> = parts
        .iter()
        .filter(|p| p.name == "ESP")
        .map(|p| p.offset() + 0x41)
        .collect();
    if let Some(at) = first_difference(image, disk, offset, len, &allowed) {
        let part = parts
            .iter()
            .find(|p| (p.offset()..p.offset() + p.len()).contains(&at));
        panic!(
            "{} differs from the image at byte {at} (sector {}, in {part:?})",
            disk.display(),
            at / SECTOR
        );
    }
}

fn is_ext4(disk: &Path, part: &Partition) -> bool {
    read_region(disk, part.offset() + 0x438, 2) == [0x53, 0xef]
}

/// Every regular file and symlink under `want` is in `got` with the same bytes
/// (the booted VM may add files, never change the image's).
fn assert_tree_contains(want: &Path, got: &Path) {
    let mut count = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(want.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(rel);
            } else if kind.is_symlink() {
                assert_eq!(
                    fs::read_link(want.join(&rel)).unwrap(),
                    fs::read_link(got.join(&rel))
                        .unwrap_or_else(|e| panic!("{}: {e}", rel.display())),
                    "{}",
                    rel.display()
                );
                count += 1;
            } else if kind.is_file() {
                let got = fs::read(got.join(&rel))
                    .unwrap_or_else(|e| panic!("{} missing on the disk: {e}", rel.display()));
                assert!(
                    got == fs::read(want.join(&rel)).unwrap(),
                    "{} differs",
                    rel.display()
                );
                count += 1;
            }
        }
    }
    assert!(count > 20, "only {count} files in {}", want.display());
}

/// debugfs's copy of an ext4 filesystem's tree (after replaying its journal:
/// the VM was powered off hard).
fn ext4_tree(work: &Path, disk: &Path, part: &Partition, tag: &str) -> PathBuf {
    let fs_file = work.join(format!("{tag}.ext4"));
    let out = File::create(&fs_file).unwrap();
    out.set_len(part.len()).unwrap();
    let src = File::open(disk).unwrap();
    let mut done = 0;
    while done < part.len() {
        let n = (4u64 << 20).min(part.len() - done) as usize;
        let mut buf = vec![0u8; n];
        src.read_exact_at(&mut buf, part.offset() + done).unwrap();
        if buf.iter().any(|&b| b != 0) {
            out.write_all_at(&buf, done).unwrap();
        }
        done += n as u64;
    }
    // 0: clean, 1: journal replayed / fixed; anything else is a broken filesystem.
    let fsck = Command::new("e2fsck")
        .args(["-fy"])
        .arg(&fs_file)
        .output()
        .unwrap();
    assert!(
        matches!(fsck.status.code(), Some(0) | Some(1)),
        "e2fsck -fy {tag}: {}\n{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let tree = work.join(format!("{tag}.tree"));
    fs::create_dir_all(&tree).unwrap();
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", tree.display()))
        .arg(&fs_file));
    let _ = fs::remove_file(&fs_file);
    tree
}

/// The disk holds the image: outside the root filesystem (which the booted VM
/// mounted read-write) and the GPT structures (the config drive rewrote the
/// table) byte for byte; the root filesystem's files all as in the image.
/// Returns the disk's root filesystem tree.
fn assert_disk_holds_image(work: &Path, oracle: &Path, disk: &Path, tag: &str) -> PathBuf {
    let image_size = fs::metadata(oracle).unwrap().len();
    let image_parts = partitions(oracle);
    let root = image_parts
        .iter()
        .find(|p| is_ext4(oracle, p))
        .unwrap_or_else(|| panic!("no ext4 partition in the image: {image_parts:?}"))
        .clone();
    // Primary GPT: LBA 0-33; the image's backup GPT: its last 33 sectors.
    let data_start = 34 * SECTOR;
    let data_end = image_size - 33 * SECTOR;
    assert_same_region(
        oracle,
        disk,
        (data_start, root.offset() - data_start),
        &image_parts,
    );
    let after_root = root.offset() + root.len();
    assert_same_region(
        oracle,
        disk,
        (after_root, data_end - after_root),
        &image_parts,
    );
    assert_eq!(
        read_region(oracle, 0, 446),
        read_region(disk, 0, 446),
        "{tag}: MBR boot code"
    );
    // The image's partitions are all there, at the same places.
    let disk_parts = partitions(disk);
    for want in &image_parts {
        assert!(
            disk_parts
                .iter()
                .any(|p| p.start == want.start && p.end == want.end && p.name == want.name),
            "{tag}: partition {want:?} missing: {disk_parts:?}"
        );
    }
    let want = ext4_tree(work, oracle, &root, &format!("{tag}-image-root"));
    let got = ext4_tree(work, disk, &root, &format!("{tag}-disk-root"));
    assert_tree_contains(&want, &got);
    let _ = fs::remove_dir_all(&want);
    got
}

/// The config-2 partition: last on the disk, a clean FAT labelled config-2;
/// returns its `openstack` tree (copied out with mcopy).
fn config_drive_tree(work: &Path, disk: &Path, tag: &str) -> PathBuf {
    let verify = run(Command::new("sgdisk").arg("-v").arg(disk));
    assert!(verify.contains("No problems found"), "{tag}: {verify}");
    let parts = partitions(disk);
    let last = parts.iter().max_by_key(|p| p.start).unwrap();
    assert_eq!(last.name, "config-2", "{tag}: {parts:?}");
    let disk_size = fs::metadata(disk).unwrap().len();
    // At the end: only the backup GPT (and alignment slack) after it.
    assert!(
        disk_size - (last.end + 1) * SECTOR < 2 << 20,
        "{tag}: config-2 ends at sector {} of a {disk_size}-byte disk",
        last.end
    );
    assert!(
        last.len() <= 64 << 20,
        "{tag}: config-2 is {} bytes",
        last.len()
    );
    let fat = work.join(format!("{tag}.fat"));
    fs::write(&fat, read_region(disk, last.offset(), last.len())).unwrap();
    run(Command::new("fsck.fat").arg("-n").arg(&fat));
    let label = run(Command::new("mlabel")
        .arg("-i")
        .arg(&fat)
        .args(["-s", "::"]));
    assert!(
        label.to_ascii_lowercase().contains("config-2"),
        "{tag}: mlabel: {label}"
    );
    let tree = work.join(format!("{tag}.configdrive"));
    fs::create_dir_all(&tree).unwrap();
    run(Command::new("mcopy")
        .args(["-s", "-n", "-i"])
        .arg(&fat)
        .arg("::openstack")
        .arg(&tree));
    tree
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// cloud-init's own ConfigDrive reader (from Debian's cloud-init package,
/// unpacked into the target dir, as tests/agent_node.rs does) on the tree;
/// returns its metadata, or None when its Python modules are unavailable.
fn cloud_init_metadata(tree: &Path) -> Option<Value> {
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let deps = "import yaml, requests, jinja2, jsonpatch, jsonschema, configobj, oauthlib";
    if !Command::new(python)
        .args(["-c", deps])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("SKIPPED cloud-init check: python modules missing ({deps})");
        return None;
    }
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cloud-init-deb");
    let unpacked = cache.join("root/usr/lib/python3/dist-packages");
    if !unpacked.join("cloudinit").is_dir() {
        fs::create_dir_all(&cache).unwrap();
        let downloaded = Command::new("apt-get")
            .args(["download", "cloud-init"])
            .current_dir(&cache)
            .output()
            .is_ok_and(|o| o.status.success());
        let deb = fs::read_dir(&cache)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"));
        let Some(deb) = deb.filter(|_| downloaded) else {
            eprintln!("SKIPPED cloud-init check: apt-get download cloud-init failed");
            return None;
        };
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(cache.join("root")));
    }
    let script = r#"
import json, sys
from cloudinit.sources.DataSourceConfigDrive import read_config_drive
r = read_config_drive(sys.argv[1])
print(json.dumps(r["metadata"]))
"#;
    let out = run(Command::new(python)
        .args(["-c", script])
        .arg(tree)
        .env("PYTHONPATH", &unpacked));
    Some(serde_json::from_str(out.trim()).unwrap())
}

/// The node's config report (GET /v1/nodes/{name} `config`) once it is
/// `configured` for the node's current metadata and, if given, not for
/// `previous_sha`; panics on `config failed` or when the limit passes.
fn wait_configured(
    conductor: &Conductor,
    name: &str,
    previous_sha: Option<&str>,
    limit: Duration,
) -> Value {
    let started = Instant::now();
    loop {
        let config = node(conductor, name)["config"].clone();
        let fresh = previous_sha.is_none_or(|sha| config["metadata_sha256"] != sha);
        if config["state"] == "configured" && config["current"] == true && fresh {
            return config;
        }
        if config["state"] == "config failed" || started.elapsed() > limit {
            panic!(
                "{name}: config {config}\nconsole:\n{}",
                console_tail(conductor, name)
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// What the image's template renders into /etc/kiln-role.
fn kiln_role(role: &str, hostname: &str, value: &str) -> String {
    format!("role={role}\nhostname={hostname}\nvalue={value}\n")
}

/// Profiles by the memory the agent reports (control from 1280 MiB).
const RULES: &str = include_str!("../fixtures/deploy/e2e/rules.yaml");
/// One Controller (profile control) and one Compute (profile compute).
const PLAN: &str = include_str!("../fixtures/deploy/e2e/plan.yaml");
/// The same with `deploy_interface: direct` for both roles.
const PLAN_DIRECT: &str = include_str!("../fixtures/deploy/e2e/plan-direct.yaml");

/// The deploy ramdisk and the busybox VM image, built by this kiln once per
/// test process for all scenarios.
struct BuiltImages {
    dir: PathBuf,
    /// deploy.kernel and deploy.initramfs.
    ramdisk: PathBuf,
    vm_image: PathBuf,
}

static BUILT_IMAGES: OnceLock<BuiltImages> = OnceLock::new();

fn built_images() -> &'static BuiltImages {
    BUILT_IMAGES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        // A static is never dropped: the directory goes when the process exits
        // (unless KILN_E2E_KEEP asks to keep it).
        extern "C" fn remove_built_images() {
            if let Some(built) = BUILT_IMAGES.get()
                && std::env::var_os("KILN_E2E_KEEP").is_none()
            {
                let _ = fs::remove_dir_all(&built.dir);
            }
        }
        // SAFETY: registers a plain function without arguments.
        unsafe { libc::atexit(remove_built_images) };
        // Both images, built by this kiln in parallel.
        let vm_out = dir.join("vm");
        let vm_build = {
            let vm_out = vm_out.clone();
            let recipe = repo().join("fixtures/deploy/e2e/busybox-vm-config.yaml");
            std::thread::spawn(move || build(&recipe, &vm_out))
        };
        let ramdisk = dir.join("ramdisk");
        let out = build(&repo().join("recipes/deploy-ramdisk.yaml"), &ramdisk);
        let vm = vm_build.join().unwrap();
        if !out.status.success() || !vm.status.success() {
            let _ = fs::remove_dir_all(&dir);
            panic!("image builds:\ndeploy ramdisk: {out:?}\nbusybox-vm-config: {vm:?}");
        }
        BuiltImages {
            vm_image: vm_out.join("busybox-vm-config.qcow2"),
            ramdisk,
            dir,
        }
    })
}

/// How the conductor powers the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    /// The conductor runs the VMs itself.
    Qemu,
    /// node-big: `ipmi` through an ipmi_sim; node-small: `redfish` through a
    /// sushy-emulator. Each BMC fronts its node's `kiln vnode`.
    IpmiAndRedfish,
}

impl Driver {
    /// The directory the nodes' VMs keep their pid files and consoles in.
    fn vm_dir(self, work: &Path) -> PathBuf {
        match self {
            Driver::Qemu => work.join("qemu-nodes"),
            Driver::IpmiAndRedfish => work.join("vnodes"),
        }
    }

    /// Whether the run includes `kiln deploy update` (the qemu run only).
    fn updates_config(self) -> bool {
        self == Driver::Qemu
    }

    fn plan(self) -> &'static str {
        match self {
            Driver::Qemu => PLAN,
            Driver::IpmiAndRedfish => PLAN_DIRECT,
        }
    }
}

/// Two scenarios at once would put four TCG VMs on CI's two cores.
static ONE_SCENARIO_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn two_qemu_nodes_inspect_deploy_and_boot_from_disk() {
    deploy_scenario(Driver::Qemu);
}

#[test]
fn an_ipmi_node_and_a_redfish_node_behind_emulated_bmcs_inspect_deploy_and_boot_from_disk() {
    deploy_scenario(Driver::IpmiAndRedfish);
}

/// The BMC emulators of a run, held until it ends (dropping one stops it).
#[derive(Default)]
struct Bmcs {
    _ipmi: Vec<bmc::IpmiBmc>,
    _redfish: Option<bmc::RedfishBmc>,
}

/// The VM `kiln vnode` runs for `n`: what the qemu driver would start for it,
/// booting the deploy ramdisk with the conductor at http://10.0.2.100.
fn vnode_definition(
    work: &Path,
    n: &NodeSpec,
    disk: &Path,
    ramdisk: &Path,
    conductor_port: u16,
) -> PathBuf {
    let node = QemuNode {
        name: n.name.to_string(),
        disk: disk.to_path_buf(),
        disk_format: "raw".into(),
        mac: n.mac.to_string(),
        memory_mb: n.memory_mb as u32,
        cpus: 1,
        firmware: Firmware::Uefi,
        state_dir: Driver::IpmiAndRedfish.vm_dir(work),
        deploy_kernel: ramdisk.join("deploy.kernel"),
        deploy_initramfs: ramdisk.join("deploy.initramfs"),
        kernel_append: format!("console=ttyS0,115200 ipa-api-url=http://{CONDUCTOR_GUEST_ADDR}"),
        conductor_port,
        qemu_binary: "qemu-system-x86_64".into(),
        ovmf_dir: "/usr/share/OVMF".into(),
        relay: None,
    };
    let path = work.join(format!("{}.vnode.json", n.name));
    fs::write(&path, serde_json::to_vec(&node).unwrap()).unwrap();
    path
}

/// The nodes' instackenv.json entries for `driver`, and the BMCs behind them.
fn enroll(
    driver: Driver,
    work: &Path,
    disks: &BTreeMap<&str, PathBuf>,
    ramdisk: &Path,
    conductor_port: u16,
) -> (Vec<Value>, Bmcs) {
    let vnode = |n: &NodeSpec| vnode_definition(work, n, &disks[n.name], ramdisk, conductor_port);
    match driver {
        Driver::Qemu => {
            let nodes = NODES
                .iter()
                .map(|n| {
                    json!({
                        "name": n.name, "pm_type": "qemu", "ports": [{"address": n.mac}],
                        "qemu_disk": disks[n.name], "qemu_memory_mb": n.memory_mb,
                        "qemu_firmware": "uefi", "arch": "x86_64",
                    })
                })
                .collect();
            (nodes, Bmcs::default())
        }
        Driver::IpmiAndRedfish => {
            let [ipmi_node, redfish_node] = &NODES;
            let dir = work.join(format!("{}.bmc", ipmi_node.name));
            let ipmi = bmc::IpmiBmc::start(&dir, &bmc::vnode_chassis_control(&vnode(ipmi_node)));
            let ipmi_entry = json!({
                "name": ipmi_node.name, "pm_type": "ipmi", "pm_addr": "127.0.0.1",
                "pm_port": ipmi.port, "pm_user": bmc::IPMI_USER,
                "pm_password": bmc::IPMI_PASSWORD,
                "ports": [{"address": ipmi_node.mac}], "arch": "x86_64",
            });
            let system = bmc::RedfishVnode {
                uuid: "6b6b0000-0000-4000-8000-000000000001".into(),
                name: redfish_node.name.to_string(),
                mac: redfish_node.mac.to_string(),
                definition: vnode(redfish_node),
            };
            let redfish =
                bmc::RedfishBmc::start(&work.join("redfish-bmc"), std::slice::from_ref(&system));
            let redfish_entry = json!({
                "name": redfish_node.name, "pm_type": "redfish", "pm_addr": "127.0.0.1",
                "pm_port": redfish.port, "pm_user": bmc::REDFISH_USER,
                "pm_password": bmc::REDFISH_PASSWORD, "pm_system_id": system.uuid,
                "redfish_verify_ca": redfish.ca,
                "ports": [{"address": redfish_node.mac}], "arch": "x86_64",
            });
            (
                vec![ipmi_entry, redfish_entry],
                Bmcs {
                    _ipmi: vec![ipmi],
                    _redfish: Some(redfish),
                },
            )
        }
    }
}

fn deploy_scenario(driver: Driver) {
    let _one_at_a_time = ONE_SCENARIO_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let mut dir = tempfile::tempdir().unwrap();
    // KILN_E2E_KEEP=1 keeps the disks, consoles and state for a post-mortem.
    dir.disable_cleanup(std::env::var_os("KILN_E2E_KEEP").is_some());
    let work = dir.path();

    let built = built_images();
    let ramdisk_out = built.ramdisk.clone();
    let images = work.join("images");
    fs::create_dir_all(&images).unwrap();
    let image = images.join("busybox-vm-config.qcow2");
    // A copy: the conductor owns its images directory.
    fs::copy(&built.vm_image, &image).unwrap();
    eprintln!("e2e: images built after {:?}", started.elapsed());

    let mut child = Command::new(KILN)
        .args(["conductor", "--listen", "127.0.0.1:0"])
        .arg("--state")
        .arg(work.join("state.db"))
        .arg("--images")
        .arg(&images)
        .arg("--deploy-kernel")
        .arg(ramdisk_out.join("deploy.kernel"))
        .arg("--deploy-initramfs")
        .arg(ramdisk_out.join("deploy.initramfs"))
        .args(["--kernel-append", "console=ttyS0,115200"])
        .args(["--heartbeat-interval", "2"])
        // Deployed nodes reach the conductor's config endpoints through
        // qemu's relay (src/deploy/power/qemu.rs), as the deploy ramdisk does.
        .args(["--public-url", "http://10.0.2.100"])
        // TCG boots are slow; these only bound a hung node.
        .args(["--inspect-timeout", "400", "--callback-timeout", "400"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kiln conductor");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let conductor = Conductor {
        child,
        url: line.trim().to_string(),
        qemu_dir: driver.vm_dir(work),
    };
    assert!(
        conductor.url.starts_with("http://"),
        "conductor printed {line:?}"
    );
    let url = conductor.url.clone();

    // instackenv.json: two nodes with sparse 5 GiB disks, powered by `driver`.
    let mut disks = BTreeMap::new();
    for n in &NODES {
        let disk = work.join(format!("{}.disk", n.name));
        File::create(&disk).unwrap().set_len(5 * GIB).unwrap();
        disks.insert(n.name, disk);
    }
    let conductor_port = url
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in the conductor's URL {url}"));
    let (nodes, _bmcs) = enroll(driver, work, &disks, &ramdisk_out, conductor_port);
    let (status, body) = call(
        "POST",
        &format!("{url}/v1/nodes"),
        Some(&json!({ "nodes": nodes }).to_string()),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = call("PUT", &format!("{url}/v1/rules"), Some(RULES));
    assert_eq!(status, 200, "{body}");

    // Inspection by the real agent in the deploy ramdisk.
    for n in &NODES {
        verb(&conductor, n.name, "manage");
        verb(&conductor, n.name, "inspect");
    }
    for n in &NODES {
        wait_for(&conductor, n.name, "manageable", INSPECT_WAIT);
    }
    eprintln!("e2e: both nodes inspected after {:?}", started.elapsed());
    for n in &NODES {
        let node = node(&conductor, n.name);
        let want = if n.memory_mb >= 1280 {
            "control"
        } else {
            "compute"
        };
        assert_eq!(
            node["properties"]["capabilities"]["profile"], want,
            "{}: {node}",
            n.name
        );
        assert_eq!(node["power_state"], "power off", "{}: {node}", n.name);
        let (status, body) = call("GET", &format!("{url}/v1/nodes/{}/inventory", n.name), None);
        assert_eq!(status, 200, "{body}");
        let inv = &body["inventory"];
        // qemu's -m is what the VM's firmware reports as installed memory.
        let physical = inv["memory"]["physical_mb"].as_u64().unwrap_or(0);
        assert!(
            physical.abs_diff(n.memory_mb) <= 64,
            "{}: physical_mb {physical} for -m {}: {inv}",
            n.name,
            n.memory_mb
        );
        let total = inv["memory"]["total"].as_u64().unwrap_or(0);
        assert!(
            total > 0 && total <= n.memory_mb << 20,
            "{}: memory.total {total}: {inv}",
            n.name
        );
        assert_eq!(inv["cpu"]["architecture"], "x86_64", "{inv}");
        assert!(inv["cpu"]["count"].as_u64() == Some(1), "{inv}");
        let disks = inv["disks"].as_array().unwrap();
        assert!(
            disks
                .iter()
                .any(|d| d["size"] == 5 * GIB && d["name"].as_str().unwrap().contains("vd")),
            "{}: no 5 GiB virtio disk: {inv}",
            n.name
        );
        assert!(
            inv["interfaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["mac_address"] == n.mac),
            "{}: no interface with {}: {inv}",
            n.name,
            n.mac
        );
        assert_eq!(inv["system_vendor"]["manufacturer"], "QEMU", "{inv}");
        assert!(
            inv["system_vendor"]["product_name"]
                .as_str()
                .is_some_and(|p| p.contains("Standard PC")),
            "{inv}"
        );
        assert_eq!(inv["boot"]["current_boot_mode"], "uefi", "{inv}");
    }

    for n in &NODES {
        verb(&conductor, n.name, "provide");
        wait_for(&conductor, n.name, "available", Duration::from_secs(60));
    }

    let (status, body) = call(
        "POST",
        &format!("{url}/v1/deployments"),
        Some(driver.plan()),
    );
    assert_eq!(status, 202, "{body}");
    // Issue 9: the status page in a browser shows both nodes on their way.
    let on_the_way: &[&str] = &["wait call-back", "deploying", "active"];
    status_page::check_status_page(
        &format!("{url}/status"),
        &[("node-big", on_the_way), ("node-small", on_the_way)],
        &status_page::artifact_dir("deploy_e2e"),
    );
    let mut deployed = BTreeMap::new();
    for n in &NODES {
        deployed.insert(n.name, wait_for(&conductor, n.name, "active", DEPLOY_WAIT));
    }
    eprintln!("e2e: both nodes active after {:?}", started.elapsed());
    let big = &deployed["node-big"];
    let small = &deployed["node-small"];
    assert_eq!(big["instance_info"]["role"], "Controller", "{big}");
    assert_eq!(
        big["instance_info"]["hostname"], "overcloud-controller-0",
        "{big}"
    );
    assert_eq!(small["instance_info"]["role"], "Compute", "{small}");
    assert_eq!(
        small["instance_info"]["hostname"], "overcloud-novacompute-0",
        "{small}"
    );
    // With the qemu driver, Compute deploys over iSCSI (the plan's
    // deploy_interface) and Controller over HTTP; the BMC runs use plan-direct.
    let (_, steps) = call("GET", &format!("{url}/v1/nodes/node-small/timeline"), None);
    assert_eq!(
        steps.to_string().contains("image written over iSCSI"),
        driver == Driver::Qemu,
        "{steps}"
    );

    // Both boot the busybox VM from their disk under OVMF, not the ramdisk.
    for n in &NODES {
        let limit = Instant::now() + BOOT_WAIT;
        loop {
            let text = console_after_ramdisk(&conductor, n.name);
            if text.contains("kiln busybox-minimal: up") && text.contains("busybox login:") {
                break;
            }
            assert!(
                Instant::now() < limit
                    && !["Kernel panic", "grub rescue>", "No bootable"]
                        .iter()
                        .any(|m| text.contains(m)),
                "{} did not boot its disk:\n{text}",
                n.name
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        // OVMF's boot manager chose the disk.
        assert!(
            console_after_ramdisk(&conductor, n.name).contains("BdsDxe: starting"),
            "{} did not boot its disk through OVMF",
            n.name
        );
        assert!(
            console(&conductor, n.name).contains("kiln-agent:"),
            "{} never ran the deploy ramdisk",
            n.name
        );
    }
    eprintln!(
        "e2e: both nodes booted their disks after {:?}",
        started.elapsed()
    );

    // First boot: each node read its config drive, rendered, ran configure.d
    // and reported; the conductor shows it configured, node and deployment.
    let mut first_sha = BTreeMap::new();
    for n in &NODES {
        let config = wait_configured(&conductor, n.name, None, CONFIG_WAIT);
        assert!(config["script"].is_null(), "{}: {config}", n.name);
        first_sha.insert(
            n.name,
            config["metadata_sha256"].as_str().unwrap().to_string(),
        );
    }
    let (status, deployment) = call("GET", &format!("{url}/v1/deployments/overcloud"), None);
    assert_eq!(status, 200, "{deployment}");
    for n in &NODES {
        let entry = deployment["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["node"] == n.name)
            .unwrap_or_else(|| panic!("{} not in {deployment}", n.name));
        assert_eq!(entry["config"]["state"], "configured", "{deployment}");
        assert_eq!(entry["config"]["current"], true, "{deployment}");
        assert_eq!(
            entry["config"]["metadata_sha256"], first_sha[n.name],
            "{deployment}"
        );
    }
    eprintln!(
        "e2e: both nodes configured at first boot after {:?}",
        started.elapsed()
    );

    // A config change while the nodes run, through the operator's command: the
    // nodes' polling fetches it from the conductor and applies it.
    if driver.updates_config() {
        let plan_v2 = work.join("plan-v2.yaml");
        fs::write(&plan_v2, driver.plan().replace("-v1", "-v2")).unwrap();
        let table = run(Command::new(KILN)
            .args(["deploy", "--url", &url, "update"])
            .arg(&plan_v2));
        eprintln!("e2e: kiln deploy update:\n{table}");
        for n in &NODES {
            let config = wait_configured(&conductor, n.name, Some(&first_sha[n.name]), CONFIG_WAIT);
            assert!(config["script"].is_null(), "{}: {config}", n.name);
        }
        eprintln!(
            "e2e: both nodes applied the update after {:?}",
            started.elapsed()
        );
    }

    for n in &NODES {
        let (status, body) = call(
            "PUT",
            &format!("{url}/v1/nodes/{}/states/power", n.name),
            Some(&json!({"target": "power off"}).to_string()),
        );
        assert_eq!(status, 202, "{body}");
    }
    assert!(
        conductor.qemu_pids().is_empty(),
        "qemu still runs after power off"
    );

    // The disks: the image, then a config drive cloud-init accepts.
    let oracle = work.join("image.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&image)
        .arg(&oracle));
    for n in &NODES {
        let disk = &disks[n.name];
        let node = &deployed[n.name];
        let root = assert_disk_holds_image(work, &oracle, disk, n.name);
        let role = node["instance_info"]["role"].as_str().unwrap();
        let hostname = node["instance_info"]["hostname"].as_str().unwrap();
        // The file rendered from the image's template holds the update (when
        // there was one)...
        let updated = if driver.updates_config() {
            n.value.replace("-v1", "-v2")
        } else {
            n.value.to_string()
        };
        let rendered = fs::read_to_string(root.join("etc/kiln-role"))
            .unwrap_or_else(|e| panic!("{}: /etc/kiln-role: {e}", n.name));
        assert_eq!(rendered, kiln_role(role, hostname, &updated), "{}", n.name);
        // ...and configure.d's log shows the first-boot value, then the update
        // (a line per refresh, the rendered file's lines joined by spaces).
        let applied = fs::read_to_string(root.join("var/lib/kiln-e2e/applied"))
            .unwrap_or_else(|e| panic!("{}: configure.d log: {e}", n.name));
        let line = |value: &str| kiln_role(role, hostname, value).replace('\n', " ");
        let (first, second) = (line(n.value), line(&updated));
        let lines: Vec<&str> = applied.lines().collect();
        assert!(
            lines.first() == Some(&first.as_str())
                && lines.last() == Some(&second.as_str())
                && lines.iter().all(|l| *l == first || *l == second)
                && lines.is_sorted_by_key(|l| *l == second),
            "{}: configure.d log:\n{applied}",
            n.name
        );
        let _ = fs::remove_dir_all(&root);
        let tree = config_drive_tree(work, disk, n.name);
        let latest = tree.join("openstack/latest");
        let meta = read_json(&latest.join("meta_data.json"));
        assert_eq!(meta["uuid"], node["uuid"], "{meta}");
        assert_eq!(meta["hostname"], hostname, "{meta}");
        assert_eq!(meta["name"], hostname, "{meta}");
        assert!(meta["public_keys"].is_object(), "{meta}");
        assert_eq!(
            meta["meta"]["role"], node["instance_info"]["role"],
            "{meta}"
        );
        let network = read_json(&latest.join("network_data.json"));
        assert_eq!(
            network["links"][0]["ethernet_mac_address"], n.mac,
            "{network}"
        );
        let config = read_json(&latest.join("kiln_config.json"));
        // Written at deploy time: the first value, and the conductor as the
        // node reaches it.
        assert_eq!(config["e2e"]["value"], n.value, "{config}");
        assert_eq!(
            config["kiln"]["metadata_url"],
            format!(
                "http://10.0.2.100/v1/nodes/{}/metadata",
                node["uuid"].as_str().unwrap()
            ),
            "{config}"
        );
        if n.name == "node-big" {
            assert_eq!(config["ntp"]["servers"], json!(["10.0.0.1"]), "{config}");
            assert_eq!(
                meta["public_keys"]["default"],
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiln kiln@e2e",
                "{meta}"
            );
        } else {
            assert_eq!(config["role_flavor"], "compute", "{config}");
        }
        if let Some(read) = cloud_init_metadata(&tree) {
            assert_eq!(read["uuid"], node["uuid"], "{read}");
            assert_eq!(read["hostname"], hostname, "{read}");
            assert_eq!(read["public_keys"], meta["public_keys"], "{read}");
        }
    }
    drop(conductor);
    eprintln!("e2e: {driver:?} done after {:?}", started.elapsed());
}
