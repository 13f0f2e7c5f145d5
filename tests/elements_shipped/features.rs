//! The feature elements on a busybox-static root (chroot phases run with
//! busybox ash), and on a root that only looks like systemd where the script
//! just writes files.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::common::{
    assemble_hooks, assert_fails_with, assert_ok, busybox_root, install_hooks, put, run_chroot,
    run_host, text,
};

/// A test element providing operating-system, so the graph resolves.
fn test_elements(dir: &Path) {
    put(dir, "test-os/element-provides", "operating-system\n", 0o644);
}

struct Busybox {
    _tmp: tempfile::TempDir,
    scratch: std::path::PathBuf,
    root: std::path::PathBuf,
    elements: std::path::PathBuf,
}

fn busybox(extra: impl FnOnce(&Path)) -> Busybox {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    busybox_root(&root);
    let elements = tmp.path().join("elements");
    test_elements(&elements);
    extra(&elements);
    Busybox {
        scratch: tmp.path().to_path_buf(),
        root,
        elements,
        _tmp: tmp,
    }
}

impl Busybox {
    fn hooks(&self, elements: &[&str]) -> std::path::PathBuf {
        let mut all = vec!["test-os"];
        all.extend_from_slice(elements);
        let hooks = assemble_hooks(&self.scratch, Some(&self.elements), &all);
        install_hooks(&hooks, &self.root);
        hooks
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn install_static_copies_as_root_keeps_links_enters_symlinked_dirs_skips_vcs() {
    let bb = busybox(|el| {
        put(el, "motd/static/etc/motd", "welcome\n", 0o644);
        put(
            el,
            "motd/static/usr/local/bin/hello",
            "#!/bin/sh\necho hi\n",
            0o750,
        );
        put(el, "motd/static/lib/kiln/data", "data\n", 0o600);
        put(el, "motd/static/etc/motd~", "backup\n", 0o644);
        put(el, "motd/static/etc/.git/config", "[core]\n", 0o644);
        std::os::unix::fs::symlink("motd", el.join("motd/static/etc/issue")).unwrap();
    });
    // A merged-/usr root: /lib is a link to usr/lib and must stay one.
    fs::create_dir_all(bb.root.join("usr/lib")).unwrap();
    std::os::unix::fs::symlink("usr/lib", bb.root.join("lib")).unwrap();
    // The element's files belong to a user on the build host.
    crate::common::sh(&format!(
        "chown -R 1000:1000 '{}'",
        bb.elements.join("motd").display()
    ));
    bb.hooks(&["install-static", "motd"]);

    let out = run_chroot(&bb.root, "install.d/10-install-static", &[]);
    assert_ok(&out);
    let r = &bb.root;
    assert_eq!(fs::read_to_string(r.join("etc/motd")).unwrap(), "welcome\n");
    assert_eq!(mode(&r.join("usr/local/bin/hello")), 0o750);
    assert_eq!(mode(&r.join("usr/lib/kiln/data")), 0o600);
    assert!(
        fs::symlink_metadata(r.join("lib"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(r.join("etc/issue")).unwrap(),
        Path::new("motd")
    );
    for rel in [
        "etc/motd",
        "usr/local/bin/hello",
        "usr/lib/kiln",
        "etc/issue",
    ] {
        let m = fs::symlink_metadata(r.join(rel)).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0), "{rel} is not owned by root");
    }
    assert!(!r.join("etc/motd~").exists());
    assert!(!r.join("etc/.git").exists());
}

#[test]
fn devuser_on_busybox_with_password_groups_sudo_and_keys() {
    let bb = busybox(|_| {});
    let hooks = bb.hooks(&["devuser"]);
    let keys = bb.scratch.join("id_test.pub");
    fs::write(
        &keys,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiln kiln@test\n",
    )
    .unwrap();
    let out = run_host(
        "devuser",
        "extra-data.d/50-devuser-authorized-keys",
        &[
            ("TMP_HOOKS_PATH", hooks.to_str().unwrap()),
            ("DIB_DEV_USER_AUTHORIZED_KEYS", keys.to_str().unwrap()),
        ],
    );
    assert_ok(&out);
    // The chroot sees the hooks folder as the build leaves it after extra-data.d.
    install_hooks(&hooks, &bb.root);
    let env = [
        ("DIB_DEV_USER_USERNAME", "stack"),
        ("DIB_DEV_USER_SHELL", "/bin/ash"),
        ("DIB_DEV_USER_GROUPS", "disk,wheel"),
        ("DIB_DEV_USER_PASSWORD", "s3cret"),
        ("DIB_DEV_USER_PWDLESS_SUDO", "yes"),
    ];
    let out = run_chroot(&bb.root, "install.d/50-devuser", &env);
    assert_ok(&out);

    let r = &bb.root;
    let passwd = fs::read_to_string(r.join("etc/passwd")).unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("stack:"))
        .expect("no stack user");
    let fields: Vec<&str> = line.split(':').collect();
    assert_eq!(fields[5], "/home/stack");
    assert_eq!(fields[6], "/bin/ash");
    let uid: u32 = fields[2].parse().unwrap();
    let shadow = fs::read_to_string(r.join("etc/shadow")).unwrap();
    let hash = shadow
        .lines()
        .find(|l| l.starts_with("stack:"))
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap();
    assert!(
        hash.starts_with('$') && !hash.contains("s3cret"),
        "password not hashed: {hash}"
    );
    let group = fs::read_to_string(r.join("etc/group")).unwrap();
    for g in ["disk", "wheel"] {
        let members = group
            .lines()
            .find(|l| l.starts_with(&format!("{g}:")))
            .unwrap();
        assert!(
            members.ends_with("stack") || members.contains("stack,"),
            "{members}"
        );
    }
    let sudoers = r.join("etc/sudoers.d/stack");
    assert_eq!(
        fs::read_to_string(&sudoers).unwrap(),
        "stack ALL=(ALL) NOPASSWD:ALL\n"
    );
    assert_eq!(mode(&sudoers), 0o440);
    let ak = r.join("home/stack/.ssh/authorized_keys");
    assert_eq!(fs::read(&ak).unwrap(), fs::read(&keys).unwrap());
    assert_eq!(mode(&ak), 0o600);
    assert_eq!(mode(&r.join("home/stack/.ssh")), 0o700);
    assert_eq!(fs::metadata(&ak).unwrap().uid(), uid);

    // A second run finds the user and says so.
    let out = run_chroot(&bb.root, "install.d/50-devuser", &env);
    assert_fails_with(&out, &["user stack already exists"]);
}

#[test]
fn devuser_defaults_no_password_no_sudo_and_dev_null_keys() {
    let bb = busybox(|_| {});
    let hooks = bb.hooks(&["devuser"]);
    let out = run_host(
        "devuser",
        "extra-data.d/50-devuser-authorized-keys",
        &[
            ("TMP_HOOKS_PATH", hooks.to_str().unwrap()),
            ("DIB_DEV_USER_AUTHORIZED_KEYS", "/dev/null"),
        ],
    );
    assert_ok(&out);
    install_hooks(&hooks, &bb.root);
    let out = run_chroot(
        &bb.root,
        "install.d/50-devuser",
        &[("DIB_DEV_USER_PWDLESS_SUDO", "no")],
    );
    assert_ok(&out);
    let passwd = fs::read_to_string(bb.root.join("etc/passwd")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("devuser:")),
        "{passwd}"
    );
    let shadow = fs::read_to_string(bb.root.join("etc/shadow")).unwrap();
    let hash = shadow
        .lines()
        .find(|l| l.starts_with("devuser:"))
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap();
    assert!(!hash.starts_with('$'), "a password was set: {hash}");
    assert!(!bb.root.join("etc/sudoers.d").exists());
    assert!(!bb.root.join("home/devuser/.ssh").exists());
}

#[test]
fn serial_console_on_busybox_init_writes_inittab_once() {
    let bb = busybox(|_| {});
    bb.hooks(&["enable-serial-console"]);
    // No inittab: one is written with busybox's essentials and the getty.
    let out = run_chroot(
        &bb.root,
        "install.d/20-serial-console",
        &[("DIB_INIT_SYSTEM", "busybox")],
    );
    assert_ok(&out);
    let inittab = fs::read_to_string(bb.root.join("etc/inittab")).unwrap();
    assert!(inittab.contains("::sysinit:/etc/init.d/rcS\n"), "{inittab}");
    assert!(
        inittab.contains("ttyS0::respawn:/sbin/getty -L 115200 ttyS0 vt100\n"),
        "{inittab}"
    );

    // Again with a second port and init detected from /sbin/init: ttyS0 is
    // not duplicated, ttyS1 is added.
    let out = run_chroot(
        &bb.root,
        "install.d/20-serial-console",
        &[("DIB_SERIAL_CONSOLE_PORTS", "ttyS0 ttyS1")],
    );
    assert_ok(&out);
    let inittab = fs::read_to_string(bb.root.join("etc/inittab")).unwrap();
    assert_eq!(inittab.matches("ttyS0::respawn").count(), 1, "{inittab}");
    assert!(
        inittab.contains("ttyS1::respawn:/sbin/getty -L 115200 ttyS1 vt100\n"),
        "{inittab}"
    );
}

#[test]
fn serial_console_on_systemd_enables_serial_getty() {
    let bb = busybox(|_| {});
    put(
        &bb.root,
        "usr/lib/systemd/system/serial-getty@.service",
        "[Unit]\n",
        0o644,
    );
    bb.hooks(&["enable-serial-console"]);
    let out = run_chroot(
        &bb.root,
        "install.d/20-serial-console",
        &[
            ("DIB_INIT_SYSTEM", "systemd"),
            ("DIB_SERIAL_CONSOLE_PORTS", "ttyS0 hvc0"),
        ],
    );
    assert_ok(&out);
    for port in ["ttyS0", "hvc0"] {
        let link = bb.root.join(format!(
            "etc/systemd/system/getty.target.wants/serial-getty@{port}.service"
        ));
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("/usr/lib/systemd/system/serial-getty@.service")
        );
    }
    assert!(!bb.root.join("etc/inittab").exists());
}

#[test]
fn network_and_growroot_leave_busybox_roots_alone() {
    let bb = busybox(|_| {});
    bb.hooks(&["dhcp-all-interfaces", "growroot"]);
    let before = crate::common::snapshot(&bb.root, &["tmp"]);
    for script in ["install.d/50-dhcp-all-interfaces", "install.d/50-growroot"] {
        let out = run_chroot(&bb.root, script, &[("DIB_INIT_SYSTEM", "busybox")]);
        assert_ok(&out);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("nothing to do"),
            "{}",
            text(&out)
        );
    }
    crate::common::assert_same_tree(&before, &crate::common::snapshot(&bb.root, &["tmp"]));

    let out = run_chroot(
        &bb.root,
        "install.d/50-dhcp-all-interfaces",
        &[("DIB_INIT_SYSTEM", "systemd"), ("DIB_DHCP_TIMEOUT", "soon")],
    );
    assert_fails_with(&out, &["DIB_DHCP_TIMEOUT=soon"]);
}

#[test]
fn cloud_init_datasources_list_and_missing_variable() {
    let bb = busybox(|_| {});
    bb.hooks(&["cloud-init-datasources"]);
    let out = run_host(
        "cloud-init-datasources",
        "root.d/01-cloud-init-datasources-check",
        &[],
    );
    assert_fails_with(&out, &["DIB_CLOUD_INIT_DATASOURCES is not set"]);
    let out = run_host(
        "cloud-init-datasources",
        "root.d/01-cloud-init-datasources-check",
        &[("DIB_CLOUD_INIT_DATASOURCES", "Ec2")],
    );
    assert_ok(&out);

    let out = run_chroot(
        &bb.root,
        "install.d/60-cloud-init-datasources",
        &[(
            "DIB_CLOUD_INIT_DATASOURCES",
            " ConfigDrive,OpenStack ,  None",
        )],
    );
    assert_ok(&out);
    let cfg = fs::read_to_string(
        bb.root
            .join("etc/cloud/cloud.cfg.d/91-dib-cloud-init-datasources.cfg"),
    )
    .unwrap();
    assert!(
        cfg.contains("\ndatasource_list: [ ConfigDrive, OpenStack, None ]\n"),
        "{cfg}"
    );
    // What cloud-init will read is YAML with that list.
    let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&cfg).unwrap();
    let list: Vec<&str> = parsed["datasource_list"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(list, ["ConfigDrive", "OpenStack", "None"]);

    let out = run_chroot(
        &bb.root,
        "install.d/60-cloud-init-datasources",
        &[("DIB_CLOUD_INIT_DATASOURCES", "Ec2, Open Stack")],
    );
    assert_fails_with(&out, &["'Open Stack' is not a data source name"]);
    assert_eq!(
        fs::metadata(bb.root.join("etc/cloud/cloud.cfg.d"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
}
