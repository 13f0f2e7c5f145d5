//! `kiln config`: rendering conformance against os-apply-config from PyPI,
//! `key` against `os-apply-config --key`, and apply's refresh order,
//! error.d, retry, lock and unchanged-metadata behaviour.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/config")
}

fn metadata_files() -> Vec<PathBuf> {
    vec![fixtures().join("meta1.json"), fixtures().join("meta2.json")]
}

/// os-apply-config from PyPI in a private venv ($OS_APPLY_CONFIG names an
/// installed one instead).
fn oracle() -> &'static Path {
    static ORACLE: OnceLock<(PathBuf, Option<tempfile::TempDir>)> = OnceLock::new();
    &ORACLE
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("OS_APPLY_CONFIG") {
                return (PathBuf::from(path), None);
            }
            let venv = tempfile::tempdir().unwrap();
            let ok = Command::new("python3")
                .args(["-m", "venv"])
                .arg(venv.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "python3 -m venv failed");
            let ok = Command::new(venv.path().join("bin/pip"))
                .args(["install", "-q", "os-apply-config"])
                .status()
                .unwrap()
                .success();
            assert!(ok, "pip install os-apply-config failed");
            (venv.path().join("bin/os-apply-config"), Some(venv))
        })
        .0
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

/// One entry of a tree: relative path, mode, uid, gid, bytes (None for folders).
type Entry = (PathBuf, u32, u32, u32, Option<Vec<u8>>);

/// Files of a tree with their bytes, mode and owners; folders with mode.
fn snapshot(root: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let body = if meta.is_dir() {
                pending.push(path.clone());
                None
            } else {
                Some(std::fs::read(&path).unwrap())
            };
            out.push((rel, meta.mode(), meta.uid(), meta.gid(), body));
        }
    }
    out.sort();
    out
}

/// An output root with files already there: one whose mode must survive and
/// one that an empty render with allow_empty: false must delete.
fn prepared_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let app = root.path().join("etc/app");
    std::fs::create_dir_all(&app).unwrap();
    for name in ["existing.conf", "gone.conf"] {
        std::fs::write(app.join(name), "old\n").unwrap();
    }
    std::fs::set_permissions(
        app.join("existing.conf"),
        std::fs::Permissions::from_mode(0o604),
    )
    .unwrap();
    root
}

#[test]
fn render_matches_os_apply_config() {
    let templates = fixtures().join("templates");
    let theirs = prepared_root();
    let ours = prepared_root();
    let out = run(Command::new(oracle())
        .arg("-t")
        .arg(&templates)
        .arg("-m")
        .args(metadata_files())
        .arg("-o")
        .arg(theirs.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(Command::new(KILN)
        .args(["config", "render", "-t"])
        .arg(&templates)
        .arg("-m")
        .args(metadata_files())
        .arg("-o")
        .arg(ours.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (snapshot(theirs.path()), snapshot(ours.path()));
    assert_eq!(a.len(), b.len(), "different file lists:\n{a:?}\n{b:?}");
    for (t, o) in a.iter().zip(&b) {
        assert_eq!(t.0, o.0, "file lists differ");
        assert_eq!(
            (t.1, t.2, t.3),
            (o.1, o.2, o.3),
            "{}: mode/uid/gid",
            t.0.display()
        );
        assert!(
            t.4 == o.4,
            "{} differs:\n--- os-apply-config\n{}\n--- kiln\n{}",
            t.0.display(),
            String::from_utf8_lossy(t.4.as_deref().unwrap_or_default()),
            String::from_utf8_lossy(o.4.as_deref().unwrap_or_default())
        );
    }
    // The fixture exercises what it claims to.
    let names: Vec<String> = b.iter().map(|f| f.0.display().to_string()).collect();
    for expected in [
        "etc/app/app.conf",
        "usr/local/bin/generated",
        "a/b/c/deep.txt",
        "etc/app/kept-empty.conf",
    ] {
        assert!(
            names.contains(&expected.to_string()),
            "{expected} missing: {names:?}"
        );
    }
    assert!(!names.contains(&"etc/app/gone.conf".to_string()));
    let kept = b
        .iter()
        .find(|f| f.0 == Path::new("etc/app/kept-empty.conf"))
        .unwrap();
    assert_eq!(
        kept.4.as_deref(),
        Some(&b""[..]),
        "allow_empty defaults to true"
    );
}

#[test]
fn key_matches_os_apply_config() {
    let table = [
        ("port", "int"),
        ("port", "dsn"),
        ("host.name", "default"),
        ("host.name", "netaddress"),
        ("host.ip", "netaddress"),
        ("servers.1", "default"),
        ("servers.-1", "default"),
        ("servers.9", "default"),
        ("users.1.name", "default"),
        ("users.0.admin", "raw"),
        ("disabled", "default"),
        ("host", "raw"),
        ("servers", "raw"),
        ("ratio", "raw"),
        ("big", "raw"),
        ("small", "raw"),
        ("host.nothing", "default"),
        ("password", "default"),
        ("password", "raw"),
        ("motto", "raw"),
        ("nested", "raw"),
        ("zero", "int"),
        ("no.such", "default"),
    ];
    for (key, type_name) in table {
        for default in [None, Some("fallback")] {
            let mut theirs = Command::new(oracle());
            theirs
                .arg("-m")
                .args(metadata_files())
                .args(["--key", key, "--type", type_name]);
            let mut ours = Command::new(KILN);
            ours.args(["config", "key", key, "--type", type_name, "-m"])
                .args(metadata_files());
            if let Some(d) = default {
                theirs.args(["--key-default", d]);
                ours.args(["--key-default", d]);
            }
            let (t, o) = (run(&mut theirs), run(&mut ours));
            assert_eq!(
                (t.status.code(), String::from_utf8_lossy(&t.stdout)),
                (o.status.code(), String::from_utf8_lossy(&o.stdout)),
                "--key {key} --type {type_name} --key-default {default:?}"
            );
        }
    }
    for key in [
        "enabled",
        "disabled",
        "port",
        "missing",
        "users.0.admin",
        "users.1.admin",
    ] {
        let t = run(Command::new(oracle())
            .arg("-m")
            .args(metadata_files())
            .args(["--boolean-key", key]));
        let o = run(Command::new(KILN)
            .args(["config", "key", "--boolean", key, "-m"])
            .args(metadata_files()));
        assert_eq!(t.status.code(), o.status.code(), "--boolean-key {key}");
    }
}

/// A node layout: templates, refresh phases, local metadata, cache, output root.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let node = Node {
            dir: tempfile::tempdir().unwrap(),
        };
        let t = node.path("templates/etc");
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join("role.conf"), "role={{role}}\n").unwrap();
        node.set_metadata(r#"{"role": "compute"}"#);
        for phase in [
            "pre-configure.d",
            "configure.d",
            "post-configure.d",
            "migration.d",
        ] {
            node.script(
                phase,
                "50-log",
                &format!("echo {phase} >> {}", node.log().display()),
            );
        }
        node.script(
            "configure.d",
            "10-sees-file",
            &format!(
                "cat {}/etc/role.conf >> {}",
                node.path("root").display(),
                node.log().display()
            ),
        );
        node
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn log(&self) -> PathBuf {
        self.path("log")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn set_metadata(&self, json: &str) {
        std::fs::create_dir_all(self.path("local")).unwrap();
        std::fs::write(self.path("local/role.json"), json).unwrap();
    }

    fn script(&self, phase: &str, name: &str, body: &str) {
        let dir = self.path("refresh").join(phase);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn apply_command(&self) -> Command {
        let mut cmd = Command::new(KILN);
        cmd.args(["config", "apply", "--one-time", "--no-config-drive"])
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .arg("--templates")
            .arg(self.path("templates"))
            .arg("--output")
            .arg(self.path("root"))
            .arg("--refresh-dir")
            .arg(self.path("refresh"))
            .arg("--local-dir")
            .arg(self.path("local"));
        cmd
    }

    fn apply(&self) -> Output {
        run(&mut self.apply_command())
    }
}

#[test]
fn apply_runs_phases_in_order_once_per_change() {
    let node = Node::new();
    let out = node.apply();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = "pre-configure.d\nrole=compute\nconfigure.d\npost-configure.d\nmigration.d\n";
    assert_eq!(node.log_text(), first);
    // Same metadata: nothing runs.
    let out = node.apply();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no changes"));
    assert_eq!(node.log_text(), first);
    // New metadata: rendered and refreshed again.
    node.set_metadata(r#"{"role": "controller"}"#);
    assert!(node.apply().status.success());
    assert_eq!(
        node.log_text(),
        format!(
            "{first}pre-configure.d\nrole=controller\nconfigure.d\npost-configure.d\nmigration.d\n"
        )
    );
    assert!(node.path("cache/local.json.orig").exists());
    assert_eq!(
        std::fs::read(node.path("cache/local.json.last")).unwrap(),
        std::fs::read(node.path("cache/local.json")).unwrap()
    );
}

#[test]
fn failing_script_runs_error_d_and_is_retried() {
    let node = Node::new();
    let fixed = node.path("fixed");
    node.script(
        "configure.d",
        "20-flaky",
        &format!("test -e {}", fixed.display()),
    );
    node.script(
        "error.d",
        "10-note",
        &format!("echo error.d >> {}", node.log().display()),
    );
    let out = node.apply();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("configure.d/20-flaky"), "{stderr}");
    assert_eq!(node.log_text(), "pre-configure.d\nrole=compute\nerror.d\n");
    assert!(!node.path("cache/local.json.last").exists());
    // Fixed: the same metadata is applied on the next run.
    std::fs::write(&fixed, "").unwrap();
    let out = node.apply();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        node.log_text()
            .ends_with("configure.d\npost-configure.d\nmigration.d\n")
    );
    assert!(node.path("cache/local.json.last").exists());
}

#[test]
fn a_second_apply_is_refused_while_one_runs() {
    let node = Node::new();
    let (started, release) = (node.path("started"), node.path("release"));
    node.script(
        "configure.d",
        "30-wait",
        &format!(
            "touch {}; while ! test -e {}; do sleep 0.05; done",
            started.display(),
            release.display()
        ),
    );
    let mut first = node.apply_command().spawn().unwrap();
    while !started.exists() {
        assert!(
            first.try_wait().unwrap().is_none(),
            "first apply ended early"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = node.apply();
    std::fs::write(&release, "").unwrap();
    let first_status = first.wait().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!(
            "another kiln config apply is running (pid {})",
            first.id()
        )),
        "{stderr}"
    );
    assert!(first_status.success());
}

#[test]
fn config_drive_folder_feeds_templates() {
    let node = Node::new();
    let latest = node.path("drive/openstack/latest");
    std::fs::create_dir_all(&latest).unwrap();
    std::fs::write(latest.join("meta_data.json"), r#"{"hostname": "n0"}"#).unwrap();
    std::fs::write(
        latest.join("kiln_config.json"),
        r#"{"role": "storage", "x": 1}"#,
    )
    .unwrap();
    std::fs::write(
        node.path("templates/etc/host.conf"),
        "{{meta_data.hostname}} {{role}} {{x}}\n",
    )
    .unwrap();
    std::fs::remove_file(node.path("local/role.json")).unwrap();
    let mut cmd = Command::new(KILN);
    cmd.args(["config", "apply", "--one-time", "--config-drive"])
        .arg(node.path("drive"))
        .arg("--cache-dir")
        .arg(node.path("cache"))
        .arg("--templates")
        .arg(node.path("templates"))
        .arg("--output")
        .arg(node.path("root"))
        .arg("--refresh-dir")
        .arg(node.path("refresh"));
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(node.path("root/etc/host.conf")).unwrap(),
        "n0 storage 1\n"
    );
}

/// Python in the oracle's venv (next to its os-apply-config script).
fn oracle_python() -> PathBuf {
    oracle().parent().unwrap().join("python3")
}

/// Small deterministic generator (xorshift) so failures reproduce.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// A random template with balanced sections; delimiter changes are tracked
/// so later tags use the delimiters in force.
fn random_template(rng: &mut Rng, depth: usize, delims: &mut (String, String), out: &mut String) {
    const NAMES: &[&str] = &[
        "a", "b", "a.b", "a.c", "l", "l.0", "d", "d.k", "d.e.f", "n", "f", "z", "s", "u",
        "missing", ".", "empty", "nul", "o",
    ];
    const TEXT: &[&str] = &[
        "x",
        " ",
        "  ",
        "\t",
        "\n",
        "\n",
        "\r\n",
        "{",
        "}",
        "y z",
        "é",
        "{{ }}",
        "{{#}}",
        "{{{a}}",
        "{{a}}}",
        "{{ a\n}}",
        "{{{ d.k }}}",
        "{{=",
        "{{  &  a  }}",
        "\r",
        " \t\n",
        "{{/zzz}}",
    ];
    for _ in 0..rng.below(7) + 1 {
        let (o, c) = (delims.0.clone(), delims.1.clone());
        let name = rng.pick(NAMES);
        match rng.below(13) {
            0..=2 => out.push_str(rng.pick(TEXT)),
            3 => out.push_str(&format!("{o}{name}{c}")),
            4 => out.push_str(&format!("{o} {name} {c}")),
            5 => out.push_str(&format!("{o}{{{name}}}{c}")),
            6 => out.push_str(&format!("{o}& {name}{c}")),
            7 => out.push_str(&format!("{o}! note {name}\n{c}")),
            8 if depth < 3 => {
                let sigil = if rng.below(2) == 0 { '#' } else { '^' };
                let pad = rng.pick(&["", "\n", "  "]);
                out.push_str(&format!(
                    "{pad}{o}{sigil}{name}{c}{}",
                    rng.pick(&["", "\n"])
                ));
                random_template(rng, depth + 1, delims, out);
                let (o, c) = (delims.0.clone(), delims.1.clone());
                out.push_str(&format!(
                    "{pad}{o}/{name}{c}{}",
                    rng.pick(&["", "\n", " \n"])
                ));
            }
            9 => {
                let (no, nc) = if delims.0 == "{{" {
                    ("<%", "%>")
                } else {
                    ("{{", "}}")
                };
                out.push_str(&format!(
                    "{}{o}={no} {nc}={c}{}",
                    rng.pick(&["", "\n"]),
                    rng.pick(&["", "\n"])
                ));
                *delims = (no.to_string(), nc.to_string());
            }
            10 => out.push_str(&format!("\n{o}>part{c}\n")),
            _ => out.push_str(&format!("{o}{name}{c}{}", rng.pick(TEXT))),
        }
    }
}

#[test]
fn mustache_matches_pystache_on_generated_templates() {
    let data = r#"{"a": {"b": "B<&>", "c": [1, 2.5, null]}, "b": false, "l": ["p", {"a": "inner"}, 3, []],
        "d": {"k": "v", "e": {"f": true}}, "n": 7, "f": 0.1, "z": 0, "s": "", "u": "ü\"\\",
        "empty": {}, "nul": null, "o": {"o": {"n": -1}}}"#;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let templates: Vec<String> = (0..3000)
        .map(|_| {
            let mut t = String::new();
            random_template(&mut rng, 0, &mut ("{{".into(), "}}".into()), &mut t);
            t
        })
        .collect();
    let script = r#"
import json, sys
from os_apply_config import apply_config
req = json.load(sys.stdin)
data = json.loads(req["data"])
out = []
for t in req["templates"]:
    try:
        out.append(apply_config.render_moustache(t, data))
    except Exception:
        out.append(None)
json.dump(out, sys.stdout)
"#;
    let request = serde_json::json!({ "data": data, "templates": templates });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("req.json"), request.to_string()).unwrap();
    let out = run(Command::new(oracle_python())
        .args(["-c", script])
        .current_dir(dir.path())
        .stdin(std::fs::File::open(dir.path().join("req.json")).unwrap()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: Vec<Option<String>> = serde_json::from_slice(&out.stdout).unwrap();
    let data = kiln::config::value::Value::from_json(data).unwrap();
    let mut compared = 0;
    for (template, want) in templates.iter().zip(expected) {
        let got = kiln::config::mustache::render(template, &data).ok();
        assert_eq!(got, want, "template {template:?}");
        compared += usize::from(want.is_some());
    }
    assert!(compared > 2000, "only {compared} templates rendered");
}

/// A config drive image made by dosfstools and mtools (long names), read by
/// kiln's own FAT reader.
fn fat_config_drive(dir: &Path, fat_bits: &str, mib: u64) -> PathBuf {
    let image = dir.join(format!("config-drive-fat{fat_bits}.img"));
    let file = std::fs::File::create(&image).unwrap();
    file.set_len(mib << 20).unwrap();
    drop(file);
    let ok = |cmd: &mut Command| {
        let out = run(cmd);
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(Command::new("mkfs.fat")
        .args(["-F", fat_bits, "-n", "CONFIG-2"])
        .arg(&image));
    let files = dir.join(format!("files{fat_bits}"));
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(
        files.join("meta_data.json"),
        r#"{"hostname": "node-7", "uuid": "u-1"}"#,
    )
    .unwrap();
    std::fs::write(files.join("network_data.json"), r#"{"links": []}"#).unwrap();
    std::fs::write(files.join("user_data"), "#cloud-config\n").unwrap();
    // Longer than one cluster so chains are followed.
    let padding = "p".repeat(5000);
    std::fs::write(
        files.join("kiln_config.json"),
        format!(r#"{{"role": "fat{fat_bits}", "padding": "{padding}"}}"#),
    )
    .unwrap();
    ok(Command::new("mmd")
        .arg("-i")
        .arg(&image)
        .args(["::openstack", "::openstack/latest"]));
    for name in [
        "meta_data.json",
        "network_data.json",
        "user_data",
        "kiln_config.json",
    ] {
        ok(Command::new("mcopy")
            .arg("-i")
            .arg(&image)
            .arg(files.join(name))
            .arg(format!("::openstack/latest/{name}")));
    }
    image
}

#[test]
fn fat_config_drive_is_read_without_mounting() {
    for (bits, mib) in [("12", 2), ("16", 16), ("32", 40)] {
        let node = Node::new();
        let image = fat_config_drive(node.dir.path(), bits, mib);
        assert_eq!(
            kiln::config::drive::probe_label(&image).as_deref(),
            Some("CONFIG-2")
        );
        std::fs::write(
            node.path("templates/etc/host.conf"),
            "{{meta_data.hostname}} {{role}} {{user_data}}{{network_data.links}} {{padding}}\n",
        )
        .unwrap();
        std::fs::remove_file(node.path("local/role.json")).unwrap();
        let mut cmd = node.apply_command();
        cmd.arg("--config-drive").arg(&image);
        let args: Vec<_> = cmd
            .get_args()
            .filter(|a| *a != "--no-config-drive")
            .collect();
        let out = run(Command::new(KILN).args(args));
        assert!(
            out.status.success(),
            "FAT{bits}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(node.path("root/etc/host.conf")).unwrap(),
            format!("node-7 fat{bits} #cloud-config\n[] {}\n", "p".repeat(5000)),
            "FAT{bits}"
        );
    }
}
