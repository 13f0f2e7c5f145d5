//! `kiln node` and `kiln deploy` against a real `kiln conductor` on a free loopback
//! port: import and list round-trip the file, a malformed file changes nothing,
//! refused verbs name the allowed ones, an unreachable conductor is a clear error,
//! and the whole inspect -> provide -> deploy -> undeploy flow with simulated
//! agents, driven only through the CLI, puts the image on the disks.

#[path = "common/conductor.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// The shared conductor process, driven here through the CLI.
struct Conductor(common::Conductor);

impl Conductor {
    fn start(dir: &Path) -> Conductor {
        std::fs::create_dir_all(dir.join("images")).unwrap();
        Conductor(common::Conductor::start(dir, "127.0.0.1:0", &[]))
    }

    /// Runs `kiln ARGS --url URL`: (exit code, stdout, stderr).
    fn kiln(&self, args: &[&str]) -> (i32, String, String) {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--url", &self.0.url]);
        kiln(&all, &[])
    }

    /// `kiln node list --json`, which must succeed.
    fn nodes(&self) -> Vec<Value> {
        let (code, out, err) = self.kiln(&["node", "list", "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).expect("node list --json prints JSON")
    }

    fn node(&self, name: &str) -> Value {
        self.nodes()
            .into_iter()
            .find(|node| node["name"] == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }
}

fn kiln(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(KILN);
    command.args(args).env_remove("KILN_CONDUCTOR_URL");
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().expect("run kiln");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

const GOOD_NODES: &str = r#"{"nodes": [
  {"name": "ctl-0", "pm_type": "ipmi", "pm_addr": "192.0.2.21", "pm_user": "admin",
   "pm_password": "s3cret-ipmi", "pm_port": "6231", "mac": ["52:54:00:BB:00:01"],
   "cpu": "8", "memory": "16384", "disk": "100", "arch": "x86_64",
   "capabilities": "profile:control,boot_option:local"},
  {"name": "cmp-0", "pm_type": "manual", "ports": [{"address": "52-54-00-bb-00-02"}],
   "cpu": 4, "memory": 8192, "disk": 50, "arch": "x86_64",
   "capabilities": {"profile": "compute"}}
]}"#;

#[test]
fn imported_nodes_list_as_the_file_describes_them() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path());
    let file = write(dir.path(), "instackenv.json", GOOD_NODES);

    let (code, out, err) = conductor.kiln(&["node", "import", arg(&file)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ctl-0") && out.contains("cmp-0"), "{out}");

    // Oracle: the input file itself, with MACs normalised to lower-case colons.
    let input: Value = serde_json::from_str(GOOD_NODES).unwrap();
    let listed = conductor.nodes();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for want in input["nodes"].as_array().unwrap() {
        let name = want["name"].as_str().unwrap();
        let got = conductor.node(name);
        assert_eq!(got["provision_state"], "enroll", "{got}");
        let number = |v: &Value| match v {
            Value::String(s) => json!(s.parse::<u64>().unwrap()),
            other => other.clone(),
        };
        assert_eq!(got["properties"]["cpus"], number(&want["cpu"]), "{got}");
        assert_eq!(got["properties"]["memory_mb"], number(&want["memory"]));
        assert_eq!(got["properties"]["local_gb"], number(&want["disk"]));
        assert_eq!(got["properties"]["cpu_arch"], want["arch"]);
        let profile = if name == "ctl-0" {
            "control"
        } else {
            "compute"
        };
        assert_eq!(got["properties"]["capabilities"]["profile"], profile);
        let mac = want["mac"][0]
            .as_str()
            .or(want["ports"][0]["address"].as_str())
            .unwrap()
            .to_lowercase()
            .replace('-', ":");
        assert_eq!(got["macs"], json!([mac]), "{got}");
    }
    let ctl = conductor.node("ctl-0");
    assert_eq!(ctl["driver"], "ipmi");
    assert_eq!(ctl["driver_info"]["pm_addr"], "192.0.2.21");
    assert_eq!(ctl["driver_info"]["pm_user"], "admin");
    assert_eq!(ctl["driver_info"]["pm_port"], 6231);
    assert_eq!(conductor.node("cmp-0")["driver"], "manual");

    // Passwords never leave the conductor, in list, show or show --json.
    let (code, page, err) = conductor.kiln(&["node", "show", "ctl-0"]);
    assert_eq!(code, 0, "{err}");
    let (code, page_json, err) = conductor.kiln(&["node", "show", "ctl-0", "--json"]);
    assert_eq!(code, 0, "{err}");
    for text in [&page, &page_json, &ctl.to_string()] {
        assert!(!text.contains("s3cret-ipmi"), "{text}");
    }
    assert!(
        page.contains("******") && page.contains("192.0.2.21"),
        "{page}"
    );

    // Importing the same file again is refused by the conductor (names taken).
    let (code, _, err) = conductor.kiln(&["node", "import", arg(&file)]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(conductor.nodes().len(), 2);
}

#[test]
fn a_malformed_file_names_the_node_and_field_and_imports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path());
    let bad = GOOD_NODES.replace("52-54-00-bb-00-02", "52-54-00-bb-00-zz");
    let file = write(dir.path(), "bad.json", &bad);

    let (code, out, err) = conductor.kiln(&["node", "import", arg(&file)]);
    assert_eq!(code, 1, "{out}{err}");
    // Checked locally (the message names the file, not a request body).
    assert!(err.contains("bad.json"), "{err}");
    assert!(err.contains("nodes[1]"), "{err}");
    assert!(err.contains("ports[0]"), "{err}");
    assert!(err.contains("52-54-00-bb-00-zz"), "{err}");
    assert!(!err.contains("nodes[0]"), "only nodes[1] is wrong: {err}");
    assert_eq!(conductor.nodes(), Vec::<Value>::new());

    // A YAML nodes file with a problem is named the same way.
    let yaml = "nodes:\n  - {name: a, pm_type: manual, mac: ['52:54:00:00:00:01']}\n  - {name: b, pm_type: manual, mac: ['nope']}\n";
    let file = write(dir.path(), "nodes.yaml", yaml);
    let (code, _, err) = conductor.kiln(&["node", "import", arg(&file)]);
    assert_eq!(code, 1);
    assert!(err.contains("nodes[1]") && err.contains("mac[0]"), "{err}");
    assert_eq!(conductor.nodes(), Vec::<Value>::new());

    let (code, _, err) = conductor.kiln(&["node", "import", "/nonexistent/instackenv.json"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/instackenv.json"), "{err}");
}

#[test]
fn refused_verbs_name_the_allowed_ones_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path());
    let file = write(dir.path(), "instackenv.json", GOOD_NODES);
    assert_eq!(conductor.kiln(&["node", "import", arg(&file)]).0, 0);

    let (code, _, err) = conductor.kiln(&["node", "provide", "cmp-0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("allowed verbs: manage"), "{err}");
    assert_eq!(conductor.node("cmp-0")["provision_state"], "enroll");

    let (code, _, err) = conductor.kiln(&["node", "manage", "nosuchnode"]);
    assert_eq!(code, 1);
    assert!(err.contains("nosuchnode"), "{err}");

    let (code, out, err) =
        conductor.kiln(&["node", "manage", "cmp-0", "--wait", "--timeout", "60"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("manageable"), "{out}");
    assert_eq!(conductor.node("cmp-0")["provision_state"], "manageable");
    let (code, page, _) = conductor.kiln(&["node", "show", "cmp-0"]);
    assert_eq!(code, 0);
    assert!(page.contains("enroll -> manageable"), "{page}");

    // Now `manage` itself is refused, naming what a manageable node accepts.
    let (code, _, err) = conductor.kiln(&["node", "manage", "cmp-0"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("allowed verbs:") && err.contains("provide"),
        "{err}"
    );

    // An idle node can be deleted; a node being inspected cannot.
    assert_eq!(conductor.kiln(&["node", "inspect", "cmp-0"]).0, 0);
    let (code, _, err) = conductor.kiln(&["node", "delete", "cmp-0"]);
    assert_eq!(code, 1);
    assert!(err.contains("cmp-0 is inspecting"), "{err}");
    let (code, _, err) = conductor.kiln(&["node", "delete", "ctl-0"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = conductor.kiln(&["node", "show", "ctl-0"]);
    assert_eq!(code, 1, "deleted node still shown: {err}");
    assert_eq!(conductor.node("cmp-0")["provision_state"], "inspecting");
}

#[test]
fn an_unreachable_conductor_is_a_clear_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, _, err) = kiln(&["node", "list", "--url", &url], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("cannot reach the conductor at {url}")),
        "{err}"
    );
    // The environment variable is the default for --url.
    let (code, _, err) = kiln(&["deploy", "list"], &[("KILN_CONDUCTOR_URL", &url)]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("cannot reach the conductor at {url}")),
        "{err}"
    );
}

#[test]
fn rules_and_plans_are_checked_before_the_conductor_acts() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path());
    std::fs::write(dir.path().join("images/overcloud-full.qcow2"), b"not used").unwrap();
    let file = write(dir.path(), "instackenv.json", GOOD_NODES);
    assert_eq!(conductor.kiln(&["node", "import", arg(&file)]).0, 0);

    let bad_rules = write(
        dir.path(),
        "bad-rules.yaml",
        "- conditions: [{op: bigger, field: memory_mb, value: 1}]\n  actions: []\n",
    );
    let (code, _, err) = conductor.kiln(&["node", "rules", "set", arg(&bad_rules)]);
    assert_eq!(code, 1);
    assert!(err.contains("bad-rules.yaml"), "{err}");
    let (code, out, _) = conductor.kiln(&["node", "rules", "show"]);
    assert_eq!(code, 0);
    let before: Value = serde_json::from_str(&out).unwrap();

    let rules_text = "- description: big\n  conditions: [{op: ge, field: memory_mb, value: 8192}]\n  actions: [{action: set-capability, name: profile, value: control}]\n";
    let rules = write(dir.path(), "rules.yaml", rules_text);
    let (code, _, err) = conductor.kiln(&["node", "rules", "set", arg(&rules)]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = conductor.kiln(&["node", "rules", "show"]);
    let shown: Value = serde_json::from_str(&out).unwrap();
    let want: Value = serde_yaml_ng::from_str(rules_text).unwrap();
    assert_eq!(shown, want);
    assert_ne!(shown, before);

    // A plan naming an image it does not define: refused locally, naming the role.
    let plan = write(
        dir.path(),
        "bad-plan.yaml",
        "name: oc\nimages: {full: overcloud-full.qcow2}\nroles:\n  - {name: Compute, count: 1, image: missing}\n",
    );
    let (code, _, err) = conductor.kiln(&["deploy", arg(&plan)]);
    assert_eq!(code, 1);
    assert!(
        err.contains("bad-plan.yaml") && err.contains("roles[0]"),
        "{err}"
    );

    // A valid plan with no available node: the conductor's words, nothing changed.
    let plan = write(
        dir.path(),
        "plan.yaml",
        "name: oc\nimages: {full: overcloud-full.qcow2}\nroles:\n  - {name: Compute, count: 1, profile: compute, image: full}\n",
    );
    let before = conductor.nodes();
    let (code, _, err) = conductor.kiln(&["deploy", arg(&plan), "--wait"]);
    assert_eq!(code, 1);
    assert!(err.contains("not enough nodes"), "{err}");
    assert_eq!(conductor.nodes(), before);
    let (code, out, _) = conductor.kiln(&["deploy", "list"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "");
}

use common::Agent;

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
}

const IMAGE_SIZE: usize = 16 << 20;

/// A 16 MiB disk image with one GPT partition (sgdisk) full of patterned data,
/// as qcow2 in the conductor's image folder; returns its raw form per qemu-img.
fn make_image(dir: &Path) -> Vec<u8> {
    let raw = dir.join("image.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(IMAGE_SIZE as u64)
        .unwrap();
    run("sgdisk", &["-n", "1:2048:+12M", "-c", "1:root", arg(&raw)]);
    let mut bytes = std::fs::read(&raw).unwrap();
    for (i, chunk) in bytes[1 << 20..13 << 20].chunks_mut(4096).enumerate() {
        if i % 5 == 0 {
            chunk.fill((i % 251) as u8 | 1);
        }
    }
    std::fs::write(&raw, &bytes).unwrap();
    let qcow2 = dir.join("images/overcloud-full.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            arg(&raw),
            arg(&qcow2),
        ],
    );
    let oracle = dir.join("oracle.raw");
    run(
        "qemu-img",
        &["convert", "-O", "raw", arg(&qcow2), arg(&oracle)],
    );
    std::fs::read(&oracle).unwrap()
}

#[test]
fn inspect_provide_deploy_and_undeploy_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path());
    let image = make_image(dir.path());
    let url = conductor.0.url.clone();
    let nodes = write(
        dir.path(),
        "nodes.yaml",
        "nodes:\n  - {name: node-a, pm_type: manual, ports: [{address: '52:54:00:00:01:0a'}]}\n  - {name: node-b, pm_type: manual, ports: [{address: '52:54:00:00:01:0b'}]}\n",
    );
    let rules = write(
        dir.path(),
        "rules.yaml",
        "- conditions: [{op: ge, field: memory_mb, value: 8192}]\n  actions: [{action: set-capability, name: profile, value: control}]\n- conditions: [{op: lt, field: memory_mb, value: 8192}]\n  actions: [{action: set-capability, name: profile, value: compute}]\n",
    );
    let ok = |args: &[&str]| {
        let (code, out, err) = conductor.kiln(args);
        assert_eq!(code, 0, "kiln {args:?}: {out}{err}");
        out
    };
    ok(&["node", "import", arg(&nodes)]);
    ok(&["node", "rules", "set", arg(&rules)]);
    ok(&["node", "manage", "node-a", "node-b", "--wait"]);

    let disk_a = dir.path().join("a.img");
    let disk_b = dir.path().join("b.img");
    {
        // The agents look up (retrying) until the nodes expect them.
        let _a = Agent::start(&url, "52:54:00:00:01:0a", &disk_a, 16384);
        let _b = Agent::start(&url, "52:54:00:00:01:0b", &disk_b, 4096);
        let out = ok(&[
            "node",
            "inspect",
            "node-a",
            "node-b",
            "--wait",
            "--timeout",
            "300",
        ]);
        assert!(out.contains("manageable"), "{out}");
    }
    assert_eq!(
        conductor.node("node-a")["properties"]["capabilities"]["profile"],
        "control"
    );
    assert_eq!(
        conductor.node("node-b")["properties"]["capabilities"]["profile"],
        "compute"
    );
    let page = ok(&["node", "show", "node-b"]);
    assert!(page.contains("memory: 4096 MiB"), "{page}");
    assert!(page.contains("52:54:00:00:01:0b"), "{page}");
    assert!(page.contains("manageable -> inspecting"), "{page}");

    ok(&["node", "provide", "node-a", "node-b", "--wait"]);
    let plan = write(
        dir.path(),
        "plan.yaml",
        "name: overcloud\nimages: {overcloud-full: overcloud-full.qcow2}\nroles:\n  - {name: Controller, count: 1, profile: control, image: overcloud-full, hostname_format: 'overcloud-controller-%index%'}\n  - {name: Compute, count: 1, profile: compute, image: overcloud-full}\n",
    );
    {
        let _a = Agent::start(&url, "52:54:00:00:01:0a", &disk_a, 16384);
        let _b = Agent::start(&url, "52:54:00:00:01:0b", &disk_b, 4096);
        let out = ok(&["deploy", arg(&plan), "--wait", "--timeout", "300"]);
        assert!(out.contains("overcloud-controller-0"), "{out}");
    }
    let out = ok(&["deploy", "status", "overcloud", "--json"]);
    let status: Value = serde_json::from_str(&out).unwrap();
    let deployed = status[0]["nodes"].as_array().unwrap();
    assert_eq!(deployed.len(), 2, "{status}");
    for node in deployed {
        assert_eq!(node["state"], "active", "{node}");
        let want_role = if node["node"] == "node-a" {
            "Controller"
        } else {
            "Compute"
        };
        assert_eq!(node["role"], want_role, "{node}");
    }
    assert_eq!(ok(&["deploy", "list"]).trim(), "overcloud");
    // Oracle: qemu-img's own decoding of the image; compare the partition's data
    // (the GPT at both ends is rewritten for the config drive).
    for disk in [&disk_a, &disk_b] {
        let mut got = vec![0u8; IMAGE_SIZE];
        std::io::Read::read_exact(&mut std::fs::File::open(disk).unwrap(), &mut got).unwrap();
        let data = 1 << 20..13 << 20;
        assert!(
            got[data.clone()] == image[data],
            "{} lacks the image",
            disk.display()
        );
    }

    // A deployed node refuses `provide`, naming what it accepts.
    let (code, _, err) = conductor.kiln(&["node", "provide", "node-a"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("allowed verbs:") && err.contains("undeploy"),
        "{err}"
    );

    ok(&[
        "deploy",
        "undeploy",
        "overcloud",
        "--wait",
        "--timeout",
        "300",
    ]);
    for name in ["node-a", "node-b"] {
        assert_eq!(conductor.node(name)["provision_state"], "available");
    }
}

#[test]
fn a_wait_ends_with_exit_1_on_a_failed_state_or_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let conductor = Conductor::start(dir.path());
    let nodes = write(
        dir.path(),
        "nodes.yaml",
        "- {name: node-c, pm_type: manual, mac: ['52:54:00:00:02:0c']}\n- {name: node-d, pm_type: manual, mac: ['52:54:00:00:02:0d']}\n",
    );
    let rules = write(
        dir.path(),
        "rules.yaml",
        "- conditions: [{op: lt, field: memory_mb, value: 999999}]\n  actions: [{action: fail, message: too small for this cloud}]\n",
    );
    for args in [
        vec!["node", "import", arg(&nodes)],
        vec!["node", "rules", "set", arg(&rules)],
        vec!["node", "manage", "node-c", "node-d"],
    ] {
        let (code, _, err) = conductor.kiln(&args);
        assert_eq!(code, 0, "{err}");
    }

    // No agent ever comes for node-d: the wait gives up and says where it stood.
    let (code, _, err) = conductor.kiln(&["node", "inspect", "node-d", "--wait", "--timeout", "1"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("did not reach a stable state within 1 s") && err.contains("inspecting"),
        "{err}"
    );

    // Abort leads to a failed state on purpose: waiting for it succeeds.
    let (code, out, err) = conductor.kiln(&["node", "abort", "node-d", "--wait"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("inspect failed"), "{out}");

    let disk = dir.path().join("c.img");
    let _agent = Agent::start(&conductor.0.url, "52:54:00:00:02:0c", &disk, 2048);
    let (code, _, err) =
        conductor.kiln(&["node", "inspect", "node-c", "--wait", "--timeout", "300"]);
    assert_eq!(code, 1);
    assert!(err.contains("node node-c is inspect failed"), "{err}");
    assert!(err.contains("too small for this cloud"), "{err}");
    let node = conductor.node("node-c");
    assert_eq!(node["provision_state"], "inspect failed");
    let (_, table, _) = conductor.kiln(&["node", "list"]);
    assert!(table.contains("too small for this cloud"), "{table}");
}
