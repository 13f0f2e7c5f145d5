//! `kiln image customize / sysprep / inspect` on guest root directories.
//! Effects are read back with independent tools (stat, python3's crypt,
//! dpkg-query) and the tree's files.

#[path = "customize/roots.rs"]
mod roots;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use kiln::customize::{self, CustomizeError, parse_args};
use roots::{busybox_root, debian_root, run};

fn apply(root: &Path, args: &[&str]) -> Result<(), CustomizeError> {
    let custom = parse_args(args).expect("arguments parse");
    customize::customize(root, &custom, &mut |_| {})
}

fn private_ns() {
    kiln::build::sandbox::enter_private_mount_namespace().expect("private mount namespace");
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap()
}

fn stat(root: &Path, rel: &str, fmt: &str) -> String {
    run(Command::new("stat").arg("-c").arg(fmt).arg(root.join(rel)))
        .trim()
        .to_string()
}

#[test]
fn parser_keeps_order_and_names_bad_arguments() {
    let c = parse_args(&[
        "--mkdir",
        "/a",
        "--write=/a/f:x",
        "--run-command",
        "true",
        "--delete",
        "/a",
    ])
    .unwrap();
    let names: Vec<String> = c.ops.iter().map(customize::describe).collect();
    assert_eq!(names[0], "--mkdir /a");
    assert_eq!(names[1], "--write /a/f");
    assert_eq!(names[2], "--run-command true");
    assert_eq!(names[3], "--delete /a");
    let e = parse_args(&["--chmod", "rwx:/f"]).unwrap_err().to_string();
    assert!(e.contains("--chmod") && e.contains("rwx:/f"), "{e}");
    let e = parse_args(&["--root-password", "hunter2"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--root-password") && e.contains("hunter2"),
        "{e}"
    );
    let e = parse_args(&["--edit", "/f:s/(/x/"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--edit") && e.contains("regular expression"),
        "{e}"
    );
    let e = parse_args(&["--hostname"]).unwrap_err().to_string();
    assert!(e.contains("--hostname needs an argument"), "{e}");
    assert!(
        parse_args(&["--frobnicate", "x"])
            .unwrap_err()
            .to_string()
            .contains("--frobnicate")
    );
    assert!(parse_args(&["--sm-register"]).is_err());
    assert!(parse_args(&["--install", "vim;rm -rf /"]).is_err());
}

#[test]
fn commands_from_file_expands_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cmds");
    std::fs::write(
        &f,
        "# comment\nmkdir /x\n\nwrite /x/a:hello \\\nworld\nbogus-op 1\n",
    )
    .unwrap();
    let e = parse_args(&["--touch", "/t", "--commands-from-file", f.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 6") && e.contains("bogus-op"), "{e}");
    std::fs::write(&f, "# comment\nmkdir /x\n\nwrite /x/a:hello \\\nworld\n").unwrap();
    let c = parse_args(&[
        "--touch",
        "/t",
        "--commands-from-file",
        f.to_str().unwrap(),
        "--delete",
        "/t",
    ])
    .unwrap();
    assert_eq!(c.ops.len(), 4);
    assert_eq!(
        c.ops[2],
        customize::Op::Write {
            file: "/x/a".into(),
            content: "hello \nworld".into()
        }
    );
}

#[test]
fn file_operations_apply_in_order() {
    let g = busybox_root();
    let r = g.path();
    let host = tempfile::tempdir().unwrap();
    let up = host.path().join("up.sh");
    std::fs::write(&up, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&up, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    std::fs::create_dir_all(host.path().join("tree/sub")).unwrap();
    std::fs::write(host.path().join("tree/sub/f"), "deep").unwrap();
    let trunc_dir = r.join("var/log/app");
    std::fs::create_dir_all(&trunc_dir).unwrap();
    std::fs::write(trunc_dir.join("a.log"), "aaaa").unwrap();
    std::fs::write(r.join("etc/conf"), "Key=one\nkey=two\nother\n").unwrap();
    std::fs::write(r.join("etc/secret"), "top secret").unwrap();
    apply(
        r,
        &[
            "--mkdir",
            "/opt/app/conf",
            "--write",
            "/opt/app/conf/a:first",
            "--append-line",
            "/opt/app/conf/a:second",
            "--append-line",
            "/opt/app/conf/new:only",
            "--copy",
            "/opt/app/conf/a:/opt/app/b",
            "--move",
            "/opt/app/b:/opt/app/c",
            "--chmod",
            "0600:/opt/app/c",
            "--chown",
            "1000.1000:/opt/app/c",
            "--link",
            "/opt/app/c:/l1:/opt/l2",
            "--touch",
            "/opt/app/empty",
            "--upload",
            &format!("{}:/usr/bin", up.display()),
            "--copy-in",
            &format!("{}:/opt", host.path().join("tree").display()),
            "--truncate-recursive",
            "/var/log/app",
            "--edit",
            "/etc/conf:s/^key=(\\w+)$/KEY=$1/i",
            "--scrub",
            "/etc/secret",
            "--write",
            "/opt/gone:x",
            "--delete",
            "/opt/gone",
        ],
    )
    .unwrap();
    assert_eq!(
        read(r, "opt/app/conf/a"),
        "firstsecond\n".replace("firstsecond", "first\nsecond")
    );
    assert_eq!(read(r, "opt/app/conf/new"), "only\n");
    assert!(!r.join("opt/app/b").exists());
    assert_eq!(read(r, "opt/app/c"), "first\nsecond\n");
    assert_eq!(stat(r, "opt/app/c", "%a %u %g"), "600 1000 1000");
    assert_eq!(
        std::fs::read_link(r.join("l1")).unwrap(),
        Path::new("/opt/app/c")
    );
    assert_eq!(
        std::fs::read_link(r.join("opt/l2")).unwrap(),
        Path::new("/opt/app/c")
    );
    assert_eq!(stat(r, "opt/app/empty", "%s %F"), "0 regular empty file");
    assert_eq!(stat(r, "usr/bin/up.sh", "%a"), "750");
    assert_eq!(read(r, "opt/tree/sub/f"), "deep");
    assert_eq!(stat(r, "var/log/app/a.log", "%s"), "0");
    assert_eq!(read(r, "etc/conf"), "KEY=one\nKEY=two\nother\n");
    assert!(!r.join("etc/secret").exists());
    assert!(!r.join("opt/gone").exists());
}

#[test]
fn guest_symlinks_never_reach_the_host() {
    let g = busybox_root();
    let r = g.path();
    let host = tempfile::tempdir().unwrap();
    let victim = host.path().join("victim");
    std::fs::write(&victim, "host data").unwrap();
    std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // Relative escape, absolute link to a host path, and a dangling absolute link.
    std::fs::remove_dir_all(r.join("home/alice")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../..", r.join("home/alice")).unwrap();
    std::os::unix::fs::symlink(host.path(), r.join("abs")).unwrap();
    std::os::unix::fs::symlink(&victim, r.join("vlink")).unwrap();
    let hp = host.path().display().to_string();
    let before = std::fs::read_dir(host.path()).unwrap().count();
    for args in [
        vec!["--write".to_string(), "/abs/victim:pwned".to_string()],
        vec!["--write".into(), format!("/home/alice/{hp}/victim:pwned")],
        vec!["--chmod".into(), "0777:/vlink".into()],
        vec!["--delete".into(), "/abs/victim".into()],
        vec!["--delete".into(), format!("/home/alice{hp}/victim")],
        vec!["--truncate".into(), "/vlink".into()],
        vec!["--edit".into(), "/vlink:s/host/evil/".into()],
        vec!["--scrub".into(), "/vlink".into()],
        vec!["--mkdir".into(), "/abs/newdir".into()],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = apply(r, &args);
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "host data",
            "{args:?}"
        );
        assert_eq!(victim.metadata().unwrap().mode() & 0o777, 0o644, "{args:?}");
        assert_eq!(
            std::fs::read_dir(host.path()).unwrap().count(),
            before,
            "{args:?}"
        );
    }
    // What the guest sees through its own links lands inside the guest.
    std::fs::create_dir_all(r.join(hp.trim_start_matches('/'))).unwrap();
    apply(r, &["--write", "/abs/victim:inside"]).unwrap();
    assert_eq!(
        read(r, &format!("{}/victim", hp.trim_start_matches('/'))),
        "inside"
    );
}

fn check_hash(password: &str, hash: &str) {
    let out = run(Command::new("python3").args([
        "-W",
        "ignore",
        "-c",
        "import crypt,sys; print(crypt.crypt(sys.argv[1], sys.argv[2]) == sys.argv[2])",
        password,
        hash,
    ]));
    assert_eq!(out.trim(), "True", "{hash}");
}

fn shadow_hash(root: &Path, user: &str) -> String {
    read(root, "etc/shadow")
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn passwords_are_crypt_compatible() {
    let g = busybox_root();
    let r = g.path();
    let pwfile = r.join("../pw-file");
    std::fs::write(&pwfile, "from-file\nignored\n").unwrap();
    apply(
        r,
        &[
            "--password-crypto",
            "sha512",
            "--root-password",
            "password:s3cret",
        ],
    )
    .unwrap();
    let h = shadow_hash(r, "root");
    assert!(h.starts_with("$6$"), "{h}");
    check_hash("s3cret", &h);
    apply(
        r,
        &[
            "--password-crypto",
            "yescrypt",
            "--password",
            &format!("alice:file:{}", pwfile.display()),
        ],
    )
    .unwrap();
    let h = shadow_hash(r, "alice");
    assert!(h.starts_with("$y$"), "{h}");
    check_hash("from-file", &h);
    apply(r, &["--password", "alice:locked"]).unwrap();
    assert_eq!(shadow_hash(r, "alice"), format!("!{h}"));
    apply(r, &["--root-password", "disabled"]).unwrap();
    assert_eq!(shadow_hash(r, "root"), "*");
    // Other fields survive.
    assert!(read(r, "etc/shadow").contains(":19000:0:99999:7:::"));
    let e = apply(r, &["--password", "bob:password:x"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("user bob does not exist"), "{e}");
    let _ = std::fs::remove_file(pwfile);
}

#[test]
fn run_command_runs_in_the_guest_and_failures_name_the_command() {
    private_ns();
    let g = busybox_root();
    let r = g.path();
    apply(
        r,
        &[
            "--run-command",
            "echo in-guest > /marker; test -d /proc/self && test -f /etc/resolv.conf",
        ],
    )
    .unwrap();
    assert_eq!(read(r, "marker"), "in-guest\n");
    // Nothing of the sandbox is left in the guest.
    assert!(!r.join("tmp/in_target.d").exists());
    let err = apply(r, &["--run-command", "echo about-to-fail; exit 3"]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("echo about-to-fail; exit 3"), "{text}");
    assert!(
        text.contains("exit status 3") && text.contains("about-to-fail"),
        "{text}"
    );
}

#[test]
fn busybox_firstboot_runs_scripts_once_in_order() {
    private_ns();
    let g = busybox_root();
    let r = g.path();
    apply(
        r,
        &[
            "--firstboot-command",
            "echo one >> /fb.log",
            "--firstboot-command",
            "echo two >> /fb.log",
        ],
    )
    .unwrap();
    assert!(r.join("etc/rc.d/S99kiln-firstboot").exists());
    assert!(!r.join("etc/systemd").exists());
    // Boot twice, as init would: run the rc script.
    apply(r, &["--run-command", "/etc/rc.d/S99kiln-firstboot start"]).unwrap();
    apply(r, &["--run-command", "/etc/rc.d/S99kiln-firstboot start"]).unwrap();
    assert_eq!(read(r, "fb.log"), "one\ntwo\n");
    assert_eq!(
        std::fs::read_dir(r.join("usr/lib/kiln-firstboot/scripts-done"))
            .unwrap()
            .count(),
        2
    );
}

#[test]
fn systemd_firstboot_installs_an_enabled_unit() {
    let g = busybox_root();
    let r = g.path();
    std::fs::create_dir_all(r.join("lib/systemd")).unwrap();
    std::fs::write(r.join("lib/systemd/systemd"), "").unwrap();
    apply(r, &["--firstboot-command", "echo hi"]).unwrap();
    let wants = r.join("etc/systemd/system/multi-user.target.wants/kiln-firstboot.service");
    assert_eq!(
        std::fs::read_link(&wants).unwrap(),
        Path::new("/etc/systemd/system/kiln-firstboot.service")
    );
    let unit = read(r, "etc/systemd/system/kiln-firstboot.service");
    assert!(unit.contains("ExecStart=/usr/lib/kiln-firstboot/firstboot.sh"));
    assert!(!r.join("etc/rc.d/S99kiln-firstboot").exists());
}

#[test]
fn sysprep_resets_machine_identity() {
    let g = busybox_root();
    let r = g.path();
    std::fs::create_dir_all(r.join("etc/ssh")).unwrap();
    std::fs::write(r.join("etc/ssh/ssh_host_ed25519_key"), "k").unwrap();
    std::fs::write(r.join("etc/ssh/sshd_config"), "c").unwrap();
    std::fs::write(
        r.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    std::fs::write(r.join("root/.bash_history"), "ls").unwrap();
    std::fs::write(r.join("tmp/junk"), "j").unwrap();
    std::fs::write(r.join("var/log/syslog"), "log").unwrap();
    std::fs::write(r.join("var/log/syslog.1"), "old").unwrap();
    std::fs::create_dir_all(r.join("home/alice/.ssh")).unwrap();
    let ops = customize::sysprep::select("defaults,-bash-history").unwrap();
    assert!(!ops.contains(&"bash-history") && ops.contains(&"machine-id"));
    assert!(!ops.contains(&"ssh-userdir"));
    customize::sysprep::sysprep(r, &ops).unwrap();
    assert_eq!(stat(r, "etc/machine-id", "%s %F"), "0 regular empty file");
    assert!(!r.join("etc/ssh/ssh_host_ed25519_key").exists());
    assert!(r.join("etc/ssh/sshd_config").exists());
    assert!(r.join("root/.bash_history").exists());
    assert!(!r.join("tmp/junk").exists() && r.join("tmp").is_dir());
    assert_eq!(stat(r, "var/log/syslog", "%s"), "0");
    assert!(!r.join("var/log/syslog.1").exists());
    assert!(r.join("home/alice/.ssh").exists());
    let e = customize::sysprep::select("defaults,-nope")
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
    let list = customize::sysprep::list_operations();
    assert!(
        list.contains("machine-id *") && list.contains("ssh-userdir  "),
        "{list}"
    );
}

#[test]
fn debian_root_customize_and_inspect() {
    private_ns();
    let g = debian_root();
    let r = g.path();
    apply(
        r,
        &[
            "--root-password",
            "password:debpw",
            "--hostname",
            "node1.example.com",
            "--run-command",
            "dpkg-query -W dpkg > /dpkg-version",
        ],
    )
    .unwrap();
    let h = shadow_hash(r, "root");
    assert!(h.starts_with("$y$"), "Debian 12 defaults to yescrypt: {h}");
    check_hash("debpw", &h);
    assert_eq!(read(r, "etc/hostname"), "node1.example.com\n");
    assert!(read(r, "etc/hosts").contains("127.0.1.1\tnode1.example.com node1"));
    assert!(read(r, "dpkg-version").starts_with("dpkg\t"));
    // minbase has no init system: firstboot says so.
    let e = apply(r, &["--firstboot-command", "true"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("systemd or busybox-init"), "{e}");

    let fs = vec![customize::inspect::Filesystem {
        device: "/dev/sda1".into(),
        fstype: "ext4".into(),
        label: Some("root".into()),
        uuid: None,
    }];
    let info = customize::inspect::inspect(r, "/dev/sda1", &fs).unwrap();
    let os_release = read(r, "etc/os-release");
    assert_eq!(info.distro, "debian");
    // Debian's point release (12.x) is in /etc/debian_version, os-release
    // has the major version only.
    let debian_version = read(r, "etc/debian_version");
    assert_eq!(info.version, debian_version.trim(), "{debian_version}");
    let major = info.major_version.expect("a major version");
    assert!(os_release.contains(&format!("VERSION_ID=\"{major}\"")));
    assert!(os_release.contains(&format!("PRETTY_NAME=\"{}\"", info.product_name)));
    assert_eq!(info.arch.as_deref(), Some(std::env::consts::ARCH));
    assert_eq!(info.hostname.as_deref(), Some("node1.example.com"));
    assert_eq!(info.package_format.as_deref(), Some("deb"));
    assert_eq!(info.package_management.as_deref(), Some("apt"));
    let oracle = run(Command::new("dpkg-query")
        .arg("--admindir")
        .arg(r.join("var/lib/dpkg"))
        .args([
            "-W",
            "-f",
            "${db:Status-Status} ${Package} ${Version} ${Architecture}\\n",
        ]));
    let mut expected: Vec<String> = oracle
        .lines()
        .filter_map(|l| l.strip_prefix("installed "))
        .map(String::from)
        .collect();
    expected.sort();
    let mut got: Vec<String> = info
        .packages
        .iter()
        .map(|p| format!("{} {} {}", p.name, p.version, p.arch))
        .collect();
    got.sort();
    assert!(got.len() > 50);
    assert_eq!(got, expected);
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["filesystems"][0]["label"], "root");
}

/// Build an empty noarch rpm with rpmbuild; returns its path.
fn build_rpm(top: &Path, name: &str, version: &str, release: &str) -> std::path::PathBuf {
    let spec = top.join(format!("{name}.spec"));
    std::fs::write(
        &spec,
        format!(
            "Name: {name}\nVersion: {version}\nRelease: {release}\nSummary: test\nLicense: MIT\n\
             BuildArch: noarch\n%description\ntest\n%files\n"
        ),
    )
    .unwrap();
    run(Command::new("rpmbuild")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .arg("-bb")
        .arg(&spec));
    top.join(format!("RPMS/noarch/{name}-{version}-{release}.noarch.rpm"))
}

#[test]
fn inspect_reads_the_sqlite_rpmdb() {
    if Command::new("rpmbuild").arg("--version").output().is_err() {
        eprintln!("rpmbuild missing (apt-get install rpm): skipped");
        return;
    }
    let g = busybox_root();
    let r = g.path();
    std::fs::write(
        r.join("etc/os-release"),
        "ID=\"rhel\"\nVERSION_ID=\"9.4\"\nNAME=\"Red Hat Enterprise Linux\"\n",
    )
    .unwrap();
    let top = tempfile::tempdir().unwrap();
    let a = build_rpm(top.path(), "kiln-alpha", "1.2", "3.el9");
    let b = build_rpm(top.path(), "kiln-beta", "0.9~rc1", "1");
    let db = r.join("var/lib/rpm");
    std::fs::create_dir_all(&db).unwrap();
    let dbpath = format!("_dbpath {}", db.display());
    run(Command::new("rpm").args([
        "--define",
        &dbpath,
        "--define",
        "_db_backend sqlite",
        "--initdb",
    ]));
    run(Command::new("rpm")
        .args([
            "--define",
            &dbpath,
            "--define",
            "_db_backend sqlite",
            "-i",
            "--justdb",
            "--nodeps",
        ])
        .arg(&a)
        .arg(&b));
    assert!(db.join("rpmdb.sqlite").exists());
    let oracle = run(Command::new("rpm").args([
        "--define",
        &dbpath,
        "-qa",
        "--qf",
        "%{NAME} %{VERSION} %{RELEASE} %{ARCH}\\n",
    ]));
    let mut expected: Vec<&str> = oracle.lines().collect();
    expected.sort();
    let info = customize::inspect::inspect(r, "/dev/vda3", &[]).unwrap();
    assert_eq!(info.package_format.as_deref(), Some("rpm"));
    assert_eq!(
        (info.distro.as_str(), info.major_version, info.minor_version),
        ("rhel", Some(9), Some(4))
    );
    let got: Vec<String> = info
        .packages
        .iter()
        .map(|p| {
            format!(
                "{} {} {} {}",
                p.name,
                p.version,
                p.release.clone().unwrap_or_default(),
                p.arch
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(got.len(), 2);
    // EL9 defaults to yescrypt, like virt-customize.
    apply(r, &["--root-password", "password:x"]).unwrap();
    assert!(shadow_hash(r, "root").starts_with("$y$"));
}

#[test]
fn ssh_inject_timezone_and_run_script() {
    private_ns();
    let g = busybox_root();
    let r = g.path();
    std::fs::create_dir_all(r.join("usr/share/zoneinfo/Europe")).unwrap();
    std::fs::write(r.join("usr/share/zoneinfo/Europe/Paris"), "TZif").unwrap();
    let host = tempfile::tempdir().unwrap();
    let script = host.path().join("setup.sh");
    std::fs::write(&script, "#!/bin/sh\nid -u > /whoami\n").unwrap();
    apply(
        r,
        &[
            "--ssh-inject",
            "alice:string:ssh-ed25519 AAAAC3Nza alice@host",
            "--ssh-inject",
            "alice:string:ssh-ed25519 AAAAC3Nza alice@host",
            "--timezone",
            "Europe/Paris",
            "--run",
            script.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(
        read(r, "home/alice/.ssh/authorized_keys"),
        "ssh-ed25519 AAAAC3Nza alice@host\n"
    );
    assert_eq!(stat(r, "home/alice/.ssh", "%a %u %g"), "700 1000 1000");
    assert_eq!(
        stat(r, "home/alice/.ssh/authorized_keys", "%a %u %g"),
        "600 1000 1000"
    );
    assert_eq!(
        std::fs::read_link(r.join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Europe/Paris")
    );
    assert_eq!(read(r, "whoami"), "0\n");
    let e = apply(r, &["--timezone", "Mars/Olympus"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("/usr/share/zoneinfo/Mars/Olympus"), "{e}");
    let e = apply(r, &["--install", "vim"]).unwrap_err().to_string();
    assert!(e.contains("no package manager"), "{e}");
    let e = apply(r, &["--sm-unregister"]).unwrap_err().to_string();
    assert!(e.contains("subscription-manager is not installed"), "{e}");
}
