use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln::element::package_installs::lists_for_build;
use kiln::element::pkgmap::{Mapping, PkgMap};
use kiln::element::{Hooks, Phase, ResolveOptions, SearchPath, resolve, shipped_elements_dir};

/// A shell to run the helpers with, and the PATH it gets.
struct Shell {
    label: &'static str,
    program: Vec<String>,
    path: String,
}

/// bash with the host PATH, and busybox ash with a folder of busybox applet links
/// as its only PATH.
fn shells(scratch: &Path) -> Vec<Shell> {
    let applets = scratch.join("busybox-applets");
    fs::create_dir_all(&applets).unwrap();
    let busybox = which("busybox");
    let list = Command::new(&busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        let _ = std::os::unix::fs::symlink(&busybox, applets.join(applet));
    }
    vec![
        Shell {
            label: "bash",
            program: vec!["bash".into()],
            path: std::env::var("PATH").unwrap(),
        },
        Shell {
            label: "busybox ash",
            program: vec![busybox.display().to_string(), "ash".into()],
            path: applets.display().to_string(),
        },
    ]
}

fn which(program: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap().split(':') {
        let candidate = Path::new(dir).join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{program} is not installed");
}

impl Shell {
    fn run(
        &self,
        script: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        extra_path: Option<&Path>,
    ) -> Output {
        let path = match extra_path {
            Some(dir) => format!("{}:{}", dir.display(), self.path),
            None => self.path.clone(),
        };
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..])
            .arg(script)
            .args(args)
            .env_clear()
            .env("PATH", path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

fn put(root: &Path, rel: &str, text: &str, mode: u32) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Assemble hooks from the shipped elements plus a test element folder.
fn assemble(tmp: &Path, elements: &Path, request: &[&str]) -> Hooks {
    let catalog = SearchPath::new(
        &[elements.to_path_buf()],
        None,
        Some(shipped_elements_dir()),
    )
    .scan()
    .unwrap();
    let request: Vec<String> = request.iter().map(|s| s.to_string()).collect();
    let options = ResolveOptions::for_build(true, "amd64");
    let resolved = resolve(&catalog, &request, &options).unwrap();
    assert!(resolved.contains("dib-helpers"));
    Hooks::assemble(&resolved, &tmp.join("hooks")).unwrap()
}

const PKG_MAP: &str = r#"{
  "release": {"fedora": {"23": {"nova_package": "foo bar"}}},
  "distro": {"fedora": {"nova_package": "openstack-compute", "glance_package": "openstack-image"}},
  "family": {"redhat": {"nova_package": "openstack-nova", "glance_package": "openstack-glance"},
             "suse": {"nova_package": ""}},
  "default": {"nova_package": "nova", "glance_package": "glance"}
}"#;

#[test]
fn pkg_map_agrees_with_the_json_semantics_in_both_shells() {
    let tmp = tempfile::tempdir().unwrap();
    let el = tmp.path().join("elements");
    put(&el, "os/element-provides", "operating-system\n", 0o644);
    put(&el, "nova/pkg-map", PKG_MAP, 0o644);
    let hooks = assemble(tmp.path(), &el, &["os", "nova"]);
    let pkg_map = hooks.bin_dir().join("pkg-map");
    let json = PkgMap::parse(Path::new("pkg-map"), PKG_MAP).unwrap();

    for shell in shells(tmp.path()) {
        for (distro, release) in [
            ("fedora", "23"),
            ("fedora", "40"),
            ("centos", "9"),
            ("ubuntu", "noble"),
            ("opensuse", "15"),
            ("arch", "x"),
        ] {
            let names = ["nova_package", "glance_package"];
            let out = shell.run(
                &pkg_map,
                &[
                    "--element",
                    "nova",
                    "--release",
                    release,
                    "--prefix",
                    "-",
                    names[0],
                    names[1],
                ],
                &[("DISTRO_NAME", distro)],
                None,
            );
            assert!(out.status.success(), "{}: {}", shell.label, stderr(&out));
            // The Rust reading of the JSON file is the oracle.
            let resolved = json.resolve(distro, Some(release));
            let mut expected = String::new();
            for name in names {
                if let Mapping::To(v) = PkgMap::map(&resolved, name) {
                    expected.push_str(&format!("-{}\n", v.join(" ")));
                }
            }
            assert_eq!(stdout(&out), expected, "{} {distro} {release}", shell.label);
        }
        let fedora23 = shell.run(
            &pkg_map,
            &[
                "--element",
                "nova",
                "--distro",
                "fedora",
                "--release",
                "23",
                "nova_package",
            ],
            &[],
            None,
        );
        assert_eq!(stdout(&fedora23), "foo bar\n", "{}", shell.label);

        let unmapped = shell.run(
            &pkg_map,
            &["--element", "nova", "--distro", "debian", "other"],
            &[],
            None,
        );
        assert_eq!(unmapped.status.code(), Some(1), "{}", shell.label);
        assert!(stderr(&unmapped).contains("no valid mapping for package other"));
        let passed = shell.run(
            &pkg_map,
            &[
                "--element",
                "nova",
                "--distro",
                "debian",
                "--missing-ok",
                "other",
            ],
            &[],
            None,
        );
        assert_eq!(stdout(&passed), "other\n", "{}", shell.label);

        let no_map = shell.run(
            &pkg_map,
            &["--element", "os", "--distro", "debian", "x"],
            &[],
            None,
        );
        assert_eq!(no_map.status.code(), Some(2), "{}", shell.label);
        let no_map_ok = shell.run(
            &pkg_map,
            &[
                "--element",
                "os",
                "--distro",
                "debian",
                "--missing-ok",
                "x",
                "y",
            ],
            &[],
            None,
        );
        assert_eq!(stdout(&no_map_ok), "x\ny\n", "{}", shell.label);
        let no_distro = shell.run(&pkg_map, &["--element", "nova", "x"], &[], None);
        assert_eq!(no_distro.status.code(), Some(1), "{}", shell.label);
        assert!(stderr(&no_distro).contains("--distro"));
    }
}

#[test]
fn dib_run_parts_order_environment_and_failure_in_both_shells() {
    let tmp = tempfile::tempdir().unwrap();
    let el = tmp.path().join("elements");
    put(&el, "os/element-provides", "operating-system\n", 0o644);
    let log_script = |name: &str| format!("#!/bin/sh\necho \"{name} X=$X\" >> \"$LOG\"\n");
    for name in ["50-b", "9-a", "100-c", "abc"] {
        put(
            &el,
            &format!("os/install.d/{name}"),
            &log_script(name),
            0o755,
        );
    }
    put(
        &el,
        "os/install.d/20-not-executable",
        &log_script("20-not-executable"),
        0o644,
    );
    put(
        &el,
        "os/install.d/30-bad.name",
        &log_script("30-bad.name"),
        0o755,
    );
    // Sourced in byte order of names: "10-a.bash" before "9-b".
    put(&el, "os/environment.d/9-b", "export X=\"$X nine\"\n", 0o644);
    put(&el, "os/environment.d/10-a.bash", "export X=ten\n", 0o644);
    put(&el, "os/environment.d/bad~", "export X=broken\n", 0o644);
    put(
        &el,
        "other/finalise.d/10-ok",
        "#!/bin/sh\necho ok >> \"$LOG\"\n",
        0o755,
    );
    put(
        &el,
        "other/finalise.d/20-fails",
        "#!/bin/sh\necho fails >> \"$LOG\"\nexit 3\n",
        0o755,
    );
    put(
        &el,
        "other/finalise.d/30-never",
        "#!/bin/sh\necho never >> \"$LOG\"\n",
        0o755,
    );
    let hooks = assemble(tmp.path(), &el, &["os", "other"]);
    let run_parts = hooks.bin_dir().join("dib-run-parts");
    let install_d = hooks.root().join("install.d");

    // kiln's own ordering is the reference the shell must match.
    let expected: Vec<String> = hooks
        .scripts(Phase::Install)
        .unwrap()
        .into_iter()
        .filter(|s| s.element.as_deref() == Some("os"))
        .map(|s| s.name)
        .collect();
    assert_eq!(expected, ["abc", "9-a", "50-b", "100-c"]);

    for shell in shells(tmp.path()) {
        let listed = shell.run(
            &run_parts,
            &["--list", install_d.to_str().unwrap()],
            &[],
            None,
        );
        assert!(
            listed.status.success(),
            "{}: {}",
            shell.label,
            stderr(&listed)
        );
        let listed: Vec<String> = stdout(&listed)
            .lines()
            .map(|l| l.rsplit('/').next().unwrap().to_string())
            .filter(|n| expected.contains(n))
            .collect();
        assert_eq!(listed, expected, "{}", shell.label);

        // Only the test element's scripts: run a copy of its folder.
        let phase = tmp
            .path()
            .join(format!("run-{}", shell.label.replace(' ', "-")));
        let scripts = phase.join("install.d");
        fs::create_dir_all(&scripts).unwrap();
        for entry in fs::read_dir(el.join("os/install.d")).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), scripts.join(entry.file_name())).unwrap();
        }
        copy_dir(
            &hooks.root().join("environment.d"),
            &phase.join("environment.d"),
        );
        let log = phase.join("log");
        let out = shell.run(
            &run_parts,
            &[scripts.to_str().unwrap()],
            &[("LOG", log.to_str().unwrap())],
            None,
        );
        assert!(out.status.success(), "{}: {}", shell.label, stderr(&out));
        let lines: Vec<String> = fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let want: Vec<String> = expected.iter().map(|n| format!("{n} X=ten nine")).collect();
        assert_eq!(lines, want, "{}", shell.label);

        let fail_log = phase.join("fail-log");
        let out = shell.run(
            &run_parts,
            &[hooks.root().join("finalise.d").to_str().unwrap()],
            &[("LOG", fail_log.to_str().unwrap())],
            None,
        );
        assert!(!out.status.success(), "{}", shell.label);
        assert_eq!(
            fs::read_to_string(&fail_log).unwrap(),
            "ok\nfails\n",
            "{}",
            shell.label
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn dib_init_system_detects_roots_in_both_shells() {
    let tmp = tempfile::tempdir().unwrap();
    let root = |name: &str, links: &[(&str, &str)], files: &[&str]| {
        let r = tmp.path().join("roots").join(name);
        fs::create_dir_all(&r).unwrap();
        for (link, target) in links {
            let p = r.join(link.trim_start_matches('/'));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            // Absolute targets that do not exist on the host: must not matter.
            std::os::unix::fs::symlink(target, p).unwrap();
        }
        for f in files {
            put(&r, f.trim_start_matches('/'), "", 0o755);
        }
        r
    };
    let systemd = root(
        "systemd",
        &[("/sbin/init", "/lib/systemd/systemd-not-on-host")],
        &["/usr/bin/systemctl"],
    );
    let busybox = root(
        "busybox",
        &[("/sbin/init", "/bin/busybox-not-on-host")],
        &["/bin/busybox"],
    );
    let upstart = root("upstart", &[], &["/sbin/initctl", "/sbin/init"]);
    let empty = root("empty", &[], &[]);
    let script = shipped_elements_dir().join("dib-helpers/bin/dib-init-system");
    for shell in shells(tmp.path()) {
        for (dir, want) in [
            (&systemd, "systemd"),
            (&busybox, "sysv"),
            (&upstart, "upstart"),
        ] {
            let out = shell.run(&script, &[dir.to_str().unwrap()], &[], None);
            assert_eq!(
                stdout(&out),
                format!("{want}\n"),
                "{} {}",
                shell.label,
                dir.display()
            );
        }
        let out = shell.run(&script, &[empty.to_str().unwrap()], &[], None);
        assert!(!out.status.success(), "{}", shell.label);
        assert!(stderr(&out).contains("Unknown init system"));
        let forced = shell.run(
            &script,
            &[empty.to_str().unwrap()],
            &[("DIB_INIT_SYSTEM", "openrc")],
            None,
        );
        assert_eq!(stdout(&forced), "openrc\n", "{}", shell.label);
    }
}

#[test]
fn install_packages_and_package_lists_drive_apt_get_in_both_shells() {
    let tmp = tempfile::tempdir().unwrap();
    let el = tmp.path().join("elements");
    put(&el, "os/element-provides", "operating-system\n", 0o644);
    put(&el, "nova/pkg-map", PKG_MAP, 0o644);
    put(
        &el,
        "nova/package-installs.yaml",
        "nova_package:\nbuild-tool:\n  build-only: true\n",
        0o644,
    );
    let hooks = assemble(tmp.path(), &el, &["os", "nova"]);
    let catalog = SearchPath::new(
        std::slice::from_ref(&el),
        None,
        Some(shipped_elements_dir()),
    )
    .scan()
    .unwrap();
    let resolved = resolve(
        &catalog,
        &["os".into(), "nova".into()],
        &ResolveOptions::for_build(true, "amd64"),
    )
    .unwrap();
    let mut lists = lists_for_build(&resolved, &|_| None, "debian", Some("bookworm")).unwrap();
    lists.add_recipe_packages(&["vim".into(), "curl".into()]);
    hooks.write_package_lists(&lists).unwrap();

    // apt-get stand-in that records its arguments; the real one runs in the
    // Debian image build.
    let fake = tmp.path().join("fake-bin");
    let calls = tmp.path().join("apt-calls");
    put(
        &fake,
        "apt-get",
        &format!(
            "#!/bin/sh\necho \"$DEBIAN_FRONTEND $*\" >> {}\n",
            calls.display()
        ),
        0o755,
    );
    let install = hooks.bin_dir().join("install-packages");
    let record = |shell: &Shell, script: &Path, args: &[&str]| -> String {
        let _ = fs::remove_file(&calls);
        let out = shell.run(script, args, &[("DISTRO_NAME", "fedora")], Some(&fake));
        assert!(out.status.success(), "{}: {}", shell.label, stderr(&out));
        fs::read_to_string(&calls).unwrap_or_default()
    };
    let apt = "noninteractive --option Dpkg::Options::=--force-confold --option Dpkg::Options::=--force-confdef --assume-yes";
    for shell in shells(tmp.path()) {
        assert_eq!(
            record(&shell, &install, &["a", "b"]),
            format!("{apt} install a b\n"),
            "{}",
            shell.label
        );
        assert_eq!(
            record(&shell, &install, &["-e", "a"]),
            format!("{apt} remove a\n"),
            "{}",
            shell.label
        );
        assert_eq!(
            record(
                &shell,
                &install,
                &["-m", "nova", "nova_package", "glance_package"]
            ),
            format!("{apt} install openstack-compute openstack-image\n"),
            "{}",
            shell.label
        );
        assert_eq!(
            record(&shell, &install, &["-u"]),
            format!("{apt} dist-upgrade\n"),
            "{}",
            shell.label
        );
        assert_eq!(record(&shell, &install, &[]), "", "{}", shell.label);
        let phase_script = hooks.root().join("install.d/01-package-installs");
        assert_eq!(
            record(&shell, &phase_script, &[]),
            format!("{apt} install nova build-tool vim curl\n"),
            "{}",
            shell.label
        );
        let removal = hooks.root().join("install.d/99-package-uninstalls");
        assert_eq!(
            record(&shell, &removal, &[]),
            format!("{apt} remove build-tool\n"),
            "{}",
            shell.label
        );
        let nothing = hooks.root().join("post-install.d/00-package-installs");
        assert_eq!(record(&shell, &nothing, &[]), "", "{}", shell.label);
    }
    // Without apt-get the failure says so.
    let shell = &shells(tmp.path())[1];
    let out = shell.run(&install, &["a"], &[], None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no apt-get"), "{}", stderr(&out));
}
