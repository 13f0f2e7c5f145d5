//! The build sandbox and phase runner against a real busybox root tree:
//! mounts, environment, output, failures, leftovers. Needs root.
//!
//! Each test enters a private mount namespace of its own (a test runs on its
//! own thread, and unshare moves only the calling thread), so the test
//! process's main thread keeps the host's view: /proc/self/mountinfo is the
//! independent witness that nothing reached the host.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln::build::runner::{
    BreakPoints, BuildLog, Echo, RunContext, RunError, ScriptStatus, ScriptToRun, run_phase,
    timing_table,
};
use kiln::build::sandbox::{BuildTmpfs, ChrootMounts, SandboxError, enter_private_mount_namespace};

/// Mount points from a mountinfo file (field 5, octal escapes undone).
fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(mountinfo).unwrap();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .collect()
}

/// Mounts at or below `dir` as the host (the main thread) sees them.
fn host_mounts_under(dir: &Path) -> Vec<PathBuf> {
    mount_points("/proc/self/mountinfo")
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Mounts strictly below `dir` as this test thread's namespace sees them.
fn my_mounts_below(dir: &Path) -> Vec<PathBuf> {
    mount_points("/proc/thread-self/mountinfo")
        .into_iter()
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect()
}

fn write_script(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A root tree with static busybox and a link for each applet in /bin, a
/// resolv.conf of its own, and no /proc, /sys, /dev or /tmp.
fn busybox_tree(base: &Path) -> PathBuf {
    let tree = base.join("tree");
    let bin = tree.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    assert!(list.status.success());
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" && !applet.contains('/') {
            symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/resolv.conf"), "nameserver 192.0.2.53\n").unwrap();
    tree
}

/// A hooks dir in DIB's TMP_HOOKS_PATH layout with two environment.d files,
/// the second using the first's variable (so the order shows).
fn hooks_dir(base: &Path) -> PathBuf {
    let hooks = base.join("hooks");
    std::fs::create_dir_all(hooks.join("environment.d")).unwrap();
    std::fs::create_dir_all(hooks.join("bin")).unwrap();
    std::fs::write(
        hooks.join("environment.d/10-first.bash"),
        "export KILN_FIRST=one\n",
    )
    .unwrap();
    std::fs::write(
        hooks.join("environment.d/20-second.bash"),
        "export KILN_SECOND=\"${KILN_FIRST}-two\"\n",
    )
    .unwrap();
    write_script(
        &hooks.join("bin/kiln-helper"),
        "#!/bin/sh\necho helper-from-bin\n",
    );
    hooks
}

fn dib_env(tree: &Path, hooks: &Path) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("TARGET_ROOT".into(), tree.display().to_string()),
        ("TMP_MOUNT_PATH".into(), tree.display().to_string()),
        ("TMP_HOOKS_PATH".into(), hooks.display().to_string()),
        ("DIB_TEST_VALUE".into(), "from the recipe".into()),
    ])
}

fn script(element: &str, name: &str) -> ScriptToRun {
    ScriptToRun {
        element: element.into(),
        name: name.into(),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    tree: PathBuf,
    hooks: PathBuf,
    log: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let tree = busybox_tree(dir.path());
    let hooks = hooks_dir(dir.path());
    let log = dir.path().join("build.log");
    Fixture {
        tree: std::fs::canonicalize(&tree).unwrap(),
        hooks,
        log,
        _dir: dir,
    }
}

impl Fixture {
    fn context(&self) -> RunContext {
        let mut ctx = RunContext::new(
            &self.tree,
            &self.hooks,
            BuildLog::create(&self.log).unwrap(),
        );
        ctx.echo = Echo::Never;
        ctx
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.tree.join(rel)).unwrap()
    }
}

/// `key=value` lines of a report file.
fn report(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn chroot_scripts_see_the_kernel_filesystems_resolv_conf_and_dib_environment() {
    enter_private_mount_namespace().unwrap();
    let fx = fixture();
    write_script(
        &fx.hooks.join("install.d/10-report"),
        r#"#!/bin/sh
out=/report
: > $out
[ -r /proc/self/status ] && echo proc=ok >> $out
[ -c /dev/null ] && echo devnull=ok >> $out
[ -c /dev/pts/ptmx ] && echo devpts=ok >> $out
grep -q '^devpts /dev/pts devpts ' /proc/mounts && echo devpts_mounted=ok >> $out
grep -q '^sysfs /sys sysfs ro[,]' /proc/mounts && echo sys=readonly >> $out
echo "pid=$$" >> $out
echo "hooks=$TMP_HOOKS_PATH" >> $out
echo "path=$PATH" >> $out
echo "home=$HOME" >> $out
echo "first=$KILN_FIRST" >> $out
echo "second=$KILN_SECOND" >> $out
echo "dib=$DIB_TEST_VALUE" >> $out
echo "helper=$(kiln-helper)" >> $out
[ -x /tmp/in_target.d/install.d/10-report ] && echo self_visible=ok >> $out
touch /tmp/in_target.d/written 2>/dev/null || echo hooks=readonly-ok >> $out
cp /etc/resolv.conf /resolv.seen
echo "to the log"
"#,
    );
    let mut ctx = fx.context();
    let env = dib_env(&fx.tree, &fx.hooks);
    let timings = run_phase(
        &mut ctx,
        "install.d",
        true,
        &[script("base", "10-report")],
        &env,
    )
    .unwrap();
    assert_eq!(timings.len(), 1);
    assert_eq!(timings[0].element, "base");
    assert_eq!(timings[0].phase, "install");

    let seen = report(&fx.read("report"));
    let get = |k: &str| seen.get(k).map(String::as_str);
    assert_eq!(get("proc"), Some("ok"));
    assert_eq!(get("devnull"), Some("ok"));
    assert_eq!(get("devpts"), Some("ok"));
    assert_eq!(get("devpts_mounted"), Some("ok"));
    assert_eq!(get("sys"), Some("readonly"));
    // The wrapper execs the script, so it is the first child of the
    // namespace's init: pid 2 in a PID namespace of its own.
    assert_eq!(get("pid"), Some("2"));
    // The last `hooks=` line wins in the map: both must be present.
    assert!(fx.read("report").contains("hooks=/tmp/in_target.d\n"));
    assert_eq!(get("hooks"), Some("readonly-ok"));
    assert!(get("path").unwrap().starts_with("/tmp/in_target.d/bin:"));
    assert_eq!(get("home"), Some("/root"));
    assert_eq!(get("first"), Some("one"));
    assert_eq!(get("second"), Some("one-two"));
    assert_eq!(get("dib"), Some("from the recipe"));
    assert_eq!(get("helper"), Some("helper-from-bin"));
    assert_eq!(get("self_visible"), Some("ok"));
    assert!(!fx.hooks.join("written").exists());

    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert_eq!(fx.read("resolv.seen"), host_resolv);
    // Afterwards: the tree's own resolv.conf is back, nothing is mounted,
    // and the mount points kiln had to create are gone again.
    assert_eq!(fx.read("etc/resolv.conf"), "nameserver 192.0.2.53\n");
    assert!(!fx.tree.join("etc/resolv.conf.ORIG").exists());
    assert_eq!(my_mounts_below(&fx.tree), Vec::<PathBuf>::new());
    for dir in ["proc", "sys", "dev", "tmp"] {
        assert!(!fx.tree.join(dir).exists(), "{dir} left in the tree");
    }
    let log = std::fs::read_to_string(&fx.log).unwrap();
    assert!(log.contains("\nto the log\n"), "{log}");
}

#[test]
fn host_scripts_see_the_build_paths_and_run_in_the_given_order() {
    enter_private_mount_namespace().unwrap();
    let fx = fixture();
    for name in ["10-a", "20-b", "30-c"] {
        write_script(
            &fx.hooks.join("root.d").join(name),
            &format!(
                "#!/bin/bash\nset -eu\necho \"{name} $KILN_SECOND $(basename \"$0\")\" >> \"$TARGET_ROOT/order\"\n\
                 echo \"hooks=$TMP_HOOKS_PATH\" > \"$TARGET_ROOT/host-env\"\n\
                 echo \"shell=$BASH_VERSION\" >> \"$TARGET_ROOT/host-env\"\n"
            ),
        );
    }
    let mut ctx = fx.context();
    let env = dib_env(&fx.tree, &fx.hooks);
    // Not in name order: the runner keeps the order it is given.
    let scripts = [
        script("x", "20-b"),
        script("y", "30-c"),
        script("z", "10-a"),
    ];
    let timings = run_phase(&mut ctx, "root", false, &scripts, &env).unwrap();
    assert_eq!(
        fx.read("order"),
        "20-b one-two 20-b\n30-c one-two 30-c\n10-a one-two 10-a\n"
    );
    let seen = report(&fx.read("host-env"));
    assert_eq!(seen["hooks"], fx.hooks.display().to_string());
    assert!(!seen["shell"].is_empty(), "host scripts get bash");
    let names: Vec<&str> = timings.iter().map(|t| t.script.as_str()).collect();
    assert_eq!(names, ["20-b", "30-c", "10-a"]);
    let table = timing_table(&timings);
    assert!(table.contains("root.d"), "{table}");
    assert!(table.contains("x/20-b"), "{table}");
    // Host phases mount nothing.
    assert!(!fx.tree.join("proc").exists());
}

#[test]
fn a_failing_script_is_named_with_its_last_lines_and_stops_the_phase() {
    enter_private_mount_namespace().unwrap();
    let fx = fixture();
    let host_before = mount_points("/proc/self/mountinfo");
    write_script(
        &fx.hooks.join("install.d/10-fails"),
        "#!/bin/sh\nfor i in $(seq 1 50); do echo \"noise $i\"; done\necho 'cannot frobnicate /etc/widget' >&2\nexit 3\n",
    );
    write_script(
        &fx.hooks.join("install.d/20-after"),
        "#!/bin/sh\ntouch /after-ran\n",
    );
    let mut ctx = fx.context();
    let env = dib_env(&fx.tree, &fx.hooks);
    let err = run_phase(
        &mut ctx,
        "install.d",
        true,
        &[script("widgets", "10-fails"), script("widgets", "20-after")],
        &env,
    )
    .unwrap_err();
    let RunError::Script {
        element,
        phase,
        script: name,
        status,
        last_lines,
    } = &err
    else {
        panic!("unexpected error {err}");
    };
    assert_eq!(
        (element.as_str(), phase.as_str(), name.as_str()),
        ("widgets", "install", "10-fails")
    );
    assert_eq!(*status, ScriptStatus::Exited(3));
    assert_eq!(last_lines.len(), 30);
    assert_eq!(last_lines.last().unwrap(), "cannot frobnicate /etc/widget");
    // 50 noise lines and the error: the first 21 fell off.
    assert_eq!(last_lines.first().unwrap(), "noise 22");
    let text = err.to_string();
    for part in [
        "widgets",
        "install.d/10-fails",
        "exit status 3",
        "cannot frobnicate /etc/widget",
    ] {
        assert!(text.contains(part), "{part} missing from: {text}");
    }
    assert!(!fx.tree.join("after-ran").exists());
    assert_eq!(my_mounts_below(&fx.tree), Vec::<PathBuf>::new());
    assert_eq!(fx.read("etc/resolv.conf"), "nameserver 192.0.2.53\n");
    assert_eq!(mount_points("/proc/self/mountinfo"), host_before);
}

#[test]
fn a_missing_environment_file_variable_fails_like_dib() {
    // dib-run-parts sources environment.d with `set -u`.
    enter_private_mount_namespace().unwrap();
    let fx = fixture();
    std::fs::write(
        fx.hooks.join("environment.d/30-broken.bash"),
        "echo \"$KILN_NOT_SET\"\n",
    )
    .unwrap();
    write_script(&fx.hooks.join("install.d/10-ok"), "#!/bin/sh\ntrue\n");
    let mut ctx = fx.context();
    let env = dib_env(&fx.tree, &fx.hooks);
    let err = run_phase(&mut ctx, "install", true, &[script("e", "10-ok")], &env).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("KILN_NOT_SET"), "{text}");
}

/// The tree's resolv.conf in each form DIB handles, before and after a guard.
#[derive(Debug, PartialEq)]
enum Resolv {
    File(String),
    Link(PathBuf),
    Missing,
}

fn resolv_state(tree: &Path) -> Resolv {
    let path = tree.join("etc/resolv.conf");
    match std::fs::symlink_metadata(&path) {
        Err(_) => Resolv::Missing,
        Ok(m) if m.file_type().is_symlink() => Resolv::Link(std::fs::read_link(&path).unwrap()),
        Ok(_) => Resolv::File(std::fs::read_to_string(&path).unwrap()),
    }
}

#[test]
fn dropping_the_guard_unmounts_everything_and_restores_resolv_conf() {
    enter_private_mount_namespace().unwrap();
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for variant in ["file", "symlink", "missing"] {
        let fx = fixture();
        let resolv = fx.tree.join("etc/resolv.conf");
        match variant {
            "symlink" => {
                std::fs::remove_file(&resolv).unwrap();
                symlink("../run/systemd/resolve/stub-resolv.conf", &resolv).unwrap();
            }
            "missing" => std::fs::remove_file(&resolv).unwrap(),
            _ => {}
        }
        let before = resolv_state(&fx.tree);
        {
            let guard = ChrootMounts::mount(&fx.tree, Some(&fx.hooks)).unwrap();
            assert_eq!(guard.tree(), fx.tree);
            let inside = my_mounts_below(&fx.tree);
            for point in ["proc", "sys", "dev", "dev/pts", "tmp/in_target.d"] {
                assert!(inside.contains(&fx.tree.join(point)), "{point}: {inside:?}");
            }
            assert_eq!(resolv_state(&fx.tree), Resolv::File(host_resolv.clone()));
            // A script's own mount below the tree goes too.
            std::fs::create_dir(fx.tree.join("mnt")).unwrap();
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "scratch"])
                .arg(fx.tree.join("mnt"))
                .status()
                .unwrap();
            assert!(status.success());
            assert!(
                host_mounts_under(&fx.tree).is_empty(),
                "mounts reached the host"
            );
        }
        assert_eq!(
            my_mounts_below(&fx.tree),
            Vec::<PathBuf>::new(),
            "{variant}"
        );
        assert_eq!(resolv_state(&fx.tree), before, "{variant}");
        assert!(!fx.tree.join("etc/resolv.conf.ORIG").exists());
    }
}

#[test]
fn release_reports_success_and_keeps_a_resolv_conf_symlink_an_element_made() {
    enter_private_mount_namespace().unwrap();
    let fx = fixture();
    let guard = ChrootMounts::mount(&fx.tree, None).unwrap();
    // As the resolvconf package does: resolv.conf becomes a symlink.
    std::fs::remove_file(fx.tree.join("etc/resolv.conf")).unwrap();
    symlink(
        "/run/resolvconf/resolv.conf",
        fx.tree.join("etc/resolv.conf"),
    )
    .unwrap();
    guard.release().unwrap();
    assert_eq!(
        resolv_state(&fx.tree),
        Resolv::Link("/run/resolvconf/resolv.conf".into())
    );
    assert!(!fx.tree.join("etc/resolv.conf.ORIG").exists());
    assert_eq!(my_mounts_below(&fx.tree), Vec::<PathBuf>::new());
}

#[test]
fn symlinks_in_the_tree_never_redirect_a_mount_to_the_host() {
    enter_private_mount_namespace().unwrap();
    for (name, target) in [
        ("proc", "/etc"),
        ("tmp", "/"),
        ("dev", "../../dev"),
        ("etc", "/etc"),
    ] {
        let fx = fixture();
        let link = fx.tree.join(name);
        if link.exists() {
            std::fs::remove_dir_all(&link).unwrap();
        }
        symlink(target, &link).unwrap();
        let mine_before = mount_points("/proc/thread-self/mountinfo");
        let host_before = mount_points("/proc/self/mountinfo");
        let err = ChrootMounts::mount(&fx.tree, Some(&fx.hooks))
            .err()
            .unwrap();
        match &err {
            SandboxError::SymlinkInTree { path } => assert_eq!(path, &link, "{name}"),
            other => panic!("{name} -> {target}: unexpected {other}"),
        }
        assert!(err.to_string().contains(&link.display().to_string()));
        // Everything mounted before the refusal is gone again; nothing
        // landed on the host or on the symlink's target.
        assert_eq!(
            mount_points("/proc/thread-self/mountinfo"),
            mine_before,
            "{name}"
        );
        assert_eq!(mount_points("/proc/self/mountinfo"), host_before, "{name}");
    }
    assert!(!Path::new("/etc/in_target.d").exists());
    assert!(!Path::new("/in_target.d").exists());
}

#[test]
fn mounting_outside_a_private_namespace_is_refused() {
    // This test never enters a namespace.
    let fx = fixture();
    let err = ChrootMounts::mount(&fx.tree, None).err().unwrap();
    assert!(matches!(err, SandboxError::NotPrivate { .. }), "{err}");
    assert!(my_mounts_below(&fx.tree).is_empty());
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) {
                found.push(format!("{name}: {cmdline}"));
            }
        }
    }
    found
}

#[test]
fn daemons_a_script_leaves_behind_die_with_the_phase() {
    enter_private_mount_namespace().unwrap();
    let fx = fixture();
    // Distinct markers per place, so parallel tests cannot confuse them.
    write_script(
        &fx.hooks.join("install.d/10-daemon"),
        "#!/bin/sh\nsleep 987651 &\nsetsid sleep 987652 &\necho started $!\n",
    );
    write_script(
        &fx.hooks.join("extra-data.d/10-daemon"),
        "#!/bin/bash\nsleep 987653 &\necho started $!\n",
    );
    let mut ctx = fx.context();
    let env = dib_env(&fx.tree, &fx.hooks);
    run_phase(&mut ctx, "install", true, &[script("d", "10-daemon")], &env).unwrap();
    run_phase(
        &mut ctx,
        "extra-data",
        false,
        &[script("d", "10-daemon")],
        &env,
    )
    .unwrap();
    let log = std::fs::read_to_string(&fx.log).unwrap();
    assert_eq!(log.matches("started ").count(), 2, "{log}");
    for marker in ["987651", "987652", "987653"] {
        assert_eq!(
            processes_with(&format!("sleep {marker}")),
            Vec::<String>::new()
        );
    }
    assert_eq!(my_mounts_below(&fx.tree), Vec::<PathBuf>::new());
}

#[test]
fn held_mounts_serve_several_phases_and_go_on_release() {
    enter_private_mount_namespace().unwrap();
    let fx = fixture();
    write_script(
        &fx.hooks.join("pre-install.d/10-mark"),
        "#!/bin/sh\necho pre > /tmp/kept-between-phases\n",
    );
    write_script(
        &fx.hooks.join("post-root.d/10-look"),
        "#!/bin/bash\nset -e\ntest -c \"$TARGET_ROOT/dev/null\"\nchroot \"$TARGET_ROOT\" /bin/cat /tmp/kept-between-phases > \"$TARGET_ROOT/seen\"\n",
    );
    let mut ctx = fx.context();
    let env = dib_env(&fx.tree, &fx.hooks);
    ctx.hold_chroot_mounts().unwrap();
    run_phase(
        &mut ctx,
        "pre-install",
        true,
        &[script("a", "10-mark")],
        &env,
    )
    .unwrap();
    // A host phase finds the chroot filesystems still there.
    run_phase(
        &mut ctx,
        "post-root",
        false,
        &[script("a", "10-look")],
        &env,
    )
    .unwrap();
    assert_eq!(fx.read("seen"), "pre\n");
    assert!(!my_mounts_below(&fx.tree).is_empty());
    ctx.release_chroot_mounts().unwrap();
    assert_eq!(my_mounts_below(&fx.tree), Vec::<PathBuf>::new());
}

#[test]
fn a_break_without_a_terminal_is_an_error_naming_the_break_point() {
    let out = helper("break-without-tty", None);
    assert!(
        out.contains("RESULT: --break before-install needs a terminal"),
        "{out}"
    );
}

#[test]
fn a_break_shell_runs_in_the_chroot_with_the_phase_environment() {
    // `script` gives the helper a pseudo-terminal as stdin; what we write to
    // its stdin is typed into the break shell.
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let command = format!(
        "{} --exact helper_process --nocapture --test-threads=1",
        exe.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("KILN_SANDBOX_HELPER", "break-shell")
        .env("KILN_SANDBOX_HELPER_DIR", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut transcript = String::new();
    let mut lines = BufReader::new(stdout).lines();
    let mut read_until = |marker: &str, transcript: &mut String| {
        for line in lines.by_ref() {
            let line = line.unwrap();
            transcript.push_str(&line);
            transcript.push('\n');
            if line.contains(marker) {
                return;
            }
        }
    };
    // Type only once each shell announced itself.
    read_until("break point before-install", &mut transcript);
    stdin
        .write_all(b"echo \"break $KILN_SECOND $TMP_HOOKS_PATH $$\" > /break-seen; exit\n")
        .unwrap();
    read_until("break point after-error", &mut transcript);
    stdin
        .write_all(b"cp /failed-here /after-error-seen; exit\n")
        .unwrap();
    read_until("RESULT finalise", &mut transcript);
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "{transcript}");
    assert!(transcript.contains("RESULT install: ok"), "{transcript}");
    assert!(
        transcript
            .contains("RESULT finalise: finalise.d/10-fails of element e failed (exit status 4)"),
        "{transcript}"
    );
    let seen = std::fs::read_to_string(dir.path().join("tree/break-seen")).unwrap();
    assert_eq!(seen, "break one-two /tmp/in_target.d 2\n");
    // The phase went on after the shell.
    assert!(dir.path().join("tree/phase-ran").exists());
    // The after-error shell ran after the failing script, in the chroot.
    let seen = std::fs::read_to_string(dir.path().join("tree/after-error-seen")).unwrap();
    assert_eq!(seen, "failed\n");
}

#[test]
fn an_interrupt_kills_the_running_script_and_fails_the_phase() {
    let out = helper("interrupt", None);
    assert!(
        out.contains("RESULT: interrupted at install.d/10-slow of element slowpoke"),
        "{out}"
    );
    assert!(out.contains("MOUNTS-LEFT: 0"), "{out}");
    assert_eq!(processes_with("sleep 987654"), Vec::<String>::new());
}

#[test]
fn a_killed_sandbox_leaves_no_mount_and_no_temp_tree() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let work = std::fs::canonicalize(&work).unwrap();
    let mut child = KillOnDrop(
        helper_command("mount-and-wait", Some(&work))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut inside = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // libtest's "test helper_process ... " may precede it on the line.
        if let Some((_, n)) = line.split_once("MOUNTED: ") {
            inside = Some(n.trim().parse::<usize>().unwrap());
        }
        if line == "READY" {
            break;
        }
    }
    // The helper saw its tmpfs and the chroot mounts...
    assert!(inside.unwrap() >= 6, "{inside:?}");
    // ... which never reached the host, even while it lives: the host sees
    // the empty directory below the private tmpfs.
    assert_eq!(host_mounts_under(&work), Vec::<PathBuf>::new());
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    assert_eq!(host_mounts_under(&work), Vec::<PathBuf>::new());
    assert_eq!(
        std::fs::read_dir(&work).unwrap().count(),
        0,
        "temp tree left"
    );
}

/// A helper process that must not outlive a failed assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn helper_command(mode: &str, dir: Option<&Path>) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "helper_process",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("KILN_SANDBOX_HELPER", mode)
    .stdin(Stdio::null());
    if let Some(dir) = dir {
        cmd.env("KILN_SANDBOX_HELPER_DIR", dir);
    }
    cmd
}

/// Run the helper in `mode` to its end and return its stdout and stderr.
fn helper(mode: &str, dir: Option<&Path>) -> String {
    let out = helper_command(mode, dir).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Not a test of its own: the body of the helper processes above, run when
/// this test binary is re-executed with KILN_SANDBOX_HELPER set.
#[test]
fn helper_process() {
    let Ok(mode) = std::env::var("KILN_SANDBOX_HELPER") else {
        return;
    };
    enter_private_mount_namespace().unwrap();
    match mode.as_str() {
        "mount-and-wait" => {
            let work = PathBuf::from(std::env::var("KILN_SANDBOX_HELPER_DIR").unwrap());
            let _tmpfs = BuildTmpfs::mount(&work, Some(64 << 20)).unwrap();
            let tree = busybox_tree(&work);
            let hooks = hooks_dir(&work);
            let _mounts = ChrootMounts::mount(&tree, Some(&hooks)).unwrap();
            let n = mount_points("/proc/thread-self/mountinfo")
                .iter()
                .filter(|p| p.starts_with(&work))
                .count();
            println!("MOUNTED: {n}");
            println!("READY");
            std::io::stdout().flush().unwrap();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
        }
        "break-without-tty" => {
            let fx = fixture();
            write_script(&fx.hooks.join("install.d/10-x"), "#!/bin/sh\ntrue\n");
            let mut ctx = fx.context();
            ctx.breaks = BreakPoints::parse(&["before-install"]).unwrap();
            let env = dib_env(&fx.tree, &fx.hooks);
            let err =
                run_phase(&mut ctx, "install", true, &[script("e", "10-x")], &env).unwrap_err();
            println!("RESULT: {err}");
        }
        "break-shell" => {
            let base = PathBuf::from(std::env::var("KILN_SANDBOX_HELPER_DIR").unwrap());
            let tree = busybox_tree(&base);
            let hooks = hooks_dir(&base);
            write_script(
                &hooks.join("install.d/10-x"),
                "#!/bin/sh\ntouch /phase-ran\n",
            );
            write_script(
                &hooks.join("finalise.d/10-fails"),
                "#!/bin/sh\necho failed > /failed-here\nexit 4\n",
            );
            let mut ctx = RunContext::new(&tree, &hooks, BuildLog::discard());
            ctx.echo = Echo::Never;
            ctx.breaks = BreakPoints::parse(&["before-install,after-error"]).unwrap();
            let env = dib_env(&tree, &hooks);
            for (phase, name) in [("install", "10-x"), ("finalise", "10-fails")] {
                match run_phase(&mut ctx, phase, true, &[script("e", name)], &env) {
                    Ok(_) => println!("RESULT {phase}: ok"),
                    Err(e) => println!("RESULT {phase}: {e}"),
                }
            }
        }
        "interrupt" => {
            kiln::util::interrupt::install();
            let fx = fixture();
            write_script(
                &fx.hooks.join("install.d/10-slow"),
                "#!/bin/sh\necho sleeping\nexec sleep 987654\n",
            );
            let mut ctx = fx.context();
            let env = dib_env(&fx.tree, &fx.hooks);
            // Interrupt once the script is running: the helper signals
            // itself the way a Ctrl-C would, from a watcher thread.
            let log = fx.log.clone();
            std::thread::spawn(move || {
                loop {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.contains("sleeping") {
                        // SAFETY: sending a signal to ourselves.
                        unsafe { libc::kill(libc::getpid(), libc::SIGINT) };
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            });
            let err = run_phase(
                &mut ctx,
                "install",
                true,
                &[script("slowpoke", "10-slow")],
                &env,
            )
            .unwrap_err();
            println!("RESULT: {err}");
            println!("MOUNTS-LEFT: {}", my_mounts_below(&fx.tree).len());
        }
        other => panic!("unknown helper mode {other}"),
    }
}
