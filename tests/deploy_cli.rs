//! `kiln node` and `kiln deploy` against a real `kiln conductor` on a free loopback
//! port: import and list round-trip the file, a malformed file changes nothing,
//! refused verbs name the allowed ones, an unreachable conductor is a clear error,
//! and the whole inspect -> provide -> deploy -> undeploy flow with simulated
//! agents, driven only through the CLI, puts the image on the disks.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

struct Conductor {
    child: Child,
    url: String,
}

impl Conductor {
    fn start(dir: &Path) -> Conductor {
        std::fs::create_dir_all(dir.join("images")).unwrap();
        let mut child = Command::new(KILN)
            .args([
                "conductor",
                "--listen",
                "127.0.0.1:0",
                "--heartbeat-interval",
                "1",
            ])
            .arg("--state")
            .arg(dir.join("state.db"))
            .arg("--images")
            .arg(dir.join("images"))
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

    /// Runs `kiln ARGS --url URL`: (exit code, stdout, stderr).
    fn kiln(&self, args: &[&str]) -> (i32, String, String) {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--url", &self.url]);
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

impl Drop for Conductor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
