//! Helpers for tests that run a real `kiln conductor` and `kiln agent --simulate`
//! processes on loopback: starting and killing them, JSON calls, waiting for
//! node states, and qcow2 images with a GPT whose data `qemu-img compare` checks
//! on the written disks.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");
/// Generous: the flows wait on each other, never on a clock for a verdict.
pub const WAIT: Duration = Duration::from_secs(240);
pub const SECTOR: u64 = 512;
/// Simulated disks are this big; the default root device hint wants >= 4 GiB.
pub const DISK_SIZE: &str = "5G";

/// A `kiln conductor` process; dropping it SIGKILLs it.
pub struct Conductor {
    pub child: Child,
    pub url: String,
}

impl Conductor {
    /// Starts a conductor with its state file and images under `dir`, and waits
    /// for the URL it prints once it listens.
    pub fn start(dir: &Path, listen: &str, extra: &[&str]) -> Conductor {
        let mut child = Command::new(KILN)
            .args(["conductor", "--listen", listen, "--heartbeat-interval", "1"])
            .arg("--state")
            .arg(dir.join("state.db"))
            .arg("--images")
            .arg(dir.join("images"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kiln conductor");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("http://"), "conductor printed {line:?}");
        Conductor {
            child,
            url: line.trim().to_string(),
        }
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }
}

impl Drop for Conductor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kiln agent --simulate` process; dropping it SIGKILLs it.
pub struct Agent(pub Child);

impl Agent {
    pub fn start(url: &str, mac: &str, disk: &Path, memory_mb: u64) -> Agent {
        Self::start_logged(url, mac, disk, memory_mb, None)
    }

    /// Like [`Agent::start`], with the agent's stderr written to `log`.
    pub fn start_logged(
        url: &str,
        mac: &str,
        disk: &Path,
        memory_mb: u64,
        log: Option<&Path>,
    ) -> Agent {
        let stderr = match log {
            Some(log) => Stdio::from(std::fs::File::create(log).expect("create agent log")),
            None => Stdio::inherit(),
        };
        let child = Command::new(KILN)
            .args(["agent", "--simulate", "--api-url", url, "--mac", mac])
            .arg("--disk")
            .arg(format!("{}:{DISK_SIZE}", disk.display()))
            .args(["--memory-mb", &memory_mb.to_string()])
            .stderr(stderr)
            .spawn()
            .expect("start kiln agent");
        Agent(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// (status, JSON body or Null)
pub fn call(method: &str, url: &str, body: Option<&str>, token: Option<&str>) -> (u16, Value) {
    let agent = http();
    let response = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        ("POST", body) => {
            let mut request = agent.post(url);
            if let Some(token) = token {
                request = request.header("X-Agent-Token", token);
            }
            request.send(body.unwrap_or(""))
        }
        ("PUT", body) => agent.put(url).send(body.unwrap_or("")),
        _ => unreachable!(),
    };
    let mut response = response.expect("HTTP call");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub fn node(conductor: &Conductor, name: &str) -> Value {
    let (status, node) = call(
        "GET",
        &format!("{}/v1/nodes/{name}", conductor.url),
        None,
        None,
    );
    assert_eq!(status, 200, "{node}");
    node
}

pub fn nodes(conductor: &Conductor) -> Vec<Value> {
    let (status, body) = call("GET", &format!("{}/v1/nodes", conductor.url), None, None);
    assert_eq!(status, 200, "{body}");
    body["nodes"].as_array().unwrap().clone()
}

pub fn state(conductor: &Conductor, name: &str) -> String {
    node(conductor, name)["provision_state"]
        .as_str()
        .unwrap()
        .to_string()
}

pub fn verb(conductor: &Conductor, name: &str, target: &str) -> (u16, Value) {
    call(
        "PUT",
        &format!("{}/v1/nodes/{name}/states/provision", conductor.url),
        Some(&json!({ "target": target }).to_string()),
        None,
    )
}

/// Polls until the node reaches `want`; panics naming the state it is stuck in
/// if it settles in a failed state first.
pub fn wait_for(conductor: &Conductor, name: &str, want: &str) -> Value {
    wait_until(conductor, name, &format!("state {want}"), |node| {
        let now = node["provision_state"].as_str().unwrap();
        assert!(
            !now.ends_with("failed") || want.ends_with("failed"),
            "{name} is {now}, wanted {want}: {}",
            node["last_error"]
        );
        now == want
    })
}

/// Polls the node until `done` holds.
pub fn wait_until(
    conductor: &Conductor,
    name: &str,
    what: &str,
    mut done: impl FnMut(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let node = node(conductor, name);
        if done(&node) {
            return node;
        }
        assert!(started.elapsed() < WAIT, "{name}: no {what}: {node}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn import(conductor: &Conductor, nodes: Value) {
    let (status, body) = call(
        "POST",
        &format!("{}/v1/nodes", conductor.url),
        Some(&nodes.to_string()),
        None,
    );
    assert_eq!(status, 201, "{body}");
}

pub fn manual_node(name: &str, mac: &str, profile: Option<&str>) -> Value {
    let mut node = json!({"name": name, "pm_type": "manual", "ports": [{"address": mac}]});
    if let Some(profile) = profile {
        node["capabilities"] = json!(format!("profile:{profile}"));
    }
    node
}

/// Imports manual nodes `(name, mac, profile)` and makes them available.
pub fn available_nodes(conductor: &Conductor, list: &[(&str, &str, &str)]) {
    let nodes: Vec<Value> = list
        .iter()
        .map(|(name, mac, profile)| manual_node(name, mac, Some(profile)))
        .collect();
    import(conductor, Value::Array(nodes));
    for (name, _, _) in list {
        assert_eq!(verb(conductor, name, "manage").0, 202);
        assert_eq!(verb(conductor, name, "provide").0, 202);
        assert_eq!(state(conductor, name), "available");
    }
}

pub fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img")
}

/// xorshift64*: reproducible bytes that no compressor shrinks.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Noise {
        Noise(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let word = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// A qcow2 image in `dir/images/NAME.qcow2` made by qemu-img from a raw disk of
/// `size` bytes: a GPT (sgdisk) with one partition from 1 MiB, boot code and
/// the gap before the partition filled (so a first MiB written wrong shows), and
/// the partition filled with noise except every fourth MiB, which stays a hole.
pub fn make_image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let raw = dir.join(format!("{name}.raw"));
    std::fs::File::create(&raw).unwrap().set_len(size).unwrap();
    let out = Command::new("sgdisk")
        .args(["-n", "1:2048:0", "-c", "1:root"])
        .arg(&raw)
        .output()
        .expect("run sgdisk");
    assert!(out.status.success(), "{out:?}");
    let file = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    let mut noise = Noise::new(size ^ name.len() as u64);
    let write = |buf: &[u8], at: u64| std::os::unix::fs::FileExt::write_all_at(&file, buf, at);
    let mut boot = [0u8; 440];
    noise.fill(&mut boot);
    write(&boot, 0).unwrap();
    let mut gap = vec![0u8; (1 << 20) - 34 * SECTOR as usize];
    noise.fill(&mut gap);
    write(&gap, 34 * SECTOR).unwrap();
    let mut mib = vec![0u8; 1 << 20];
    let last = size / (1 << 20) - 1; // the backup GPT lives in the last MiB
    for index in 1..last {
        if index % 4 != 3 {
            noise.fill(&mut mib);
            write(&mib, index << 20).unwrap();
        }
    }
    drop(file);
    let qcow2 = images.join(format!("{name}.qcow2"));
    let out = qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    std::fs::remove_file(&raw).unwrap();
    qcow2
}

/// The virtual size of a qcow2 image.
pub fn virtual_size(image: &Path) -> u64 {
    let out = qemu_img(&["info", "--output=json", image.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    info["virtual-size"].as_u64().unwrap()
}

/// The disk holds the image: `qemu-img compare` over everything but the GPT
/// structures at both ends of the image (the config drive rewrites them), the
/// MBR boot code byte for byte, and sgdisk finds the table sound with the
/// image's partition and a config-2 partition.
pub fn assert_deployed(image: &Path, disk: &Path) {
    let size = virtual_size(image);
    let (start, len) = (34 * SECTOR, size - 34 * SECTOR - 33 * SECTOR);
    let ours = format!(
        "driver=raw,offset={start},size={len},file.driver=qcow2,file.file.filename={}",
        image.display()
    );
    let theirs = format!(
        "driver=raw,offset={start},size={len},file.filename={}",
        disk.display()
    );
    let out = qemu_img(&["compare", "--image-opts", &ours, &theirs]);
    assert!(
        out.status.success(),
        "{} does not hold {}: {}",
        disk.display(),
        image.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    let boot_code = |path: &Path| {
        let mut buf = [0u8; 440];
        std::io::Read::read_exact(&mut std::fs::File::open(path).unwrap(), &mut buf).unwrap();
        buf
    };
    let oracle = image.with_extension("head.raw");
    let out = qemu_img(&[
        "dd",
        "-O",
        "raw",
        "bs=440",
        "count=1",
        &format!("if={}", image.display()),
        &format!("of={}", oracle.display()),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(boot_code(&oracle), boot_code(disk), "MBR boot code differs");
    let verify = Command::new("sgdisk").arg("-v").arg(disk).output().unwrap();
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(text.contains("No problems found"), "{text}");
    let print = Command::new("sgdisk").arg("-p").arg(disk).output().unwrap();
    let table = String::from_utf8_lossy(&print.stdout);
    assert!(
        table.contains("root") && table.contains("config-2"),
        "{table}"
    );
}

/// A plan deploying `image` (a file in the image dir) to `count` compute nodes.
pub fn compute_plan(name: &str, image: &str, count: usize) -> String {
    format!(
        "name: {name}\nimages: {{img: {image}}}\nroles:\n  - {{name: Compute, count: {count}, \
         profile: compute, image: img}}\n"
    )
}

pub fn deploy(conductor: &Conductor, plan: &str) -> Value {
    let (status, body) = call(
        "POST",
        &format!("{}/v1/deployments", conductor.url),
        Some(plan),
        None,
    );
    assert_eq!(status, 202, "{body}");
    body
}
