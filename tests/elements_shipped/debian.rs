//! debian-minimal with Debian's archive (needs network for the first build;
//! about two minutes): a root with kernel and initramfs, the feature elements
//! run in it with its own tools (dash, useradd, systemctl), and a second build
//! from the package cache in a network namespace without any network.

use std::fs;
use std::path::Path;

use crate::common::{
    assemble_hooks, assert_ok, install_hooks, run_chroot, run_host, run_host_wrapped, text,
};

const MMDEBSTRAP: &str = "root.d/10-debian-mmdebstrap";

fn only(dir: &Path, prefix: &str) -> String {
    let names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    assert_eq!(names.len(), 1, "{prefix}* in {}: {names:?}", dir.display());
    names.into_iter().next().unwrap()
}

/// The kernel and initramfs pair the boot loader needs.
fn assert_bootable_pair(root: &Path) {
    let boot = root.join("boot");
    let kernel = only(&boot, "vmlinuz-");
    let version = kernel.trim_start_matches("vmlinuz-");
    let initrd = boot.join(format!("initrd.img-{version}"));
    assert!(
        fs::metadata(&initrd).unwrap().len() > 1 << 20,
        "{} is too small",
        initrd.display()
    );
    assert!(
        root.join("lib/modules")
            .join(version)
            .join("modules.dep")
            .is_file()
    );
    // A bzImage: "HdrS" at offset 0x202.
    let image = fs::read(boot.join(&kernel)).unwrap();
    assert_eq!(&image[0x202..0x206], b"HdrS");
}

#[test]
fn debian_minimal_root_features_and_offline_rebuild_from_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let env = |target: &Path| {
        vec![
            ("TARGET_ROOT", target.to_str().unwrap().to_string()),
            ("DIB_IMAGE_CACHE", cache.to_str().unwrap().to_string()),
            ("ARCH", "amd64".to_string()),
            ("SOURCE_DATE_EPOCH", "1700000000".to_string()),
        ]
    };
    let cold = env(&root);
    let cold: Vec<(&str, &str)> = cold.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = run_host("debian-minimal", MMDEBSTRAP, &cold);
    assert_ok(&out);

    assert_bootable_pair(&root);
    let os_release = fs::read_to_string(root.join("usr/lib/os-release")).unwrap();
    assert!(
        os_release.contains("VERSION_CODENAME=bookworm"),
        "{os_release}"
    );
    assert_eq!(
        fs::read_link(root.join("sbin/init")).unwrap(),
        Path::new("/lib/systemd/systemd")
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/hostname")).unwrap(),
        "debian\n"
    );
    assert!(!root.join("etc/resolv.conf").exists());
    let archives = cache.join("debian-minimal/bookworm-amd64/archives");
    only(&archives, "linux-image-6");
    let root_archives = root.join("var/cache/apt/archives");
    assert!(root_archives.join(only(&archives, "systemd_")).is_file());

    // The feature elements in the Debian root, with its own shell and tools.
    let hooks = assemble_hooks(
        tmp.path(),
        None,
        &[
            "debian-minimal",
            "enable-serial-console",
            "dhcp-all-interfaces",
            "devuser",
            "cloud-init-datasources",
        ],
    );
    let out = run_host(
        "devuser",
        "extra-data.d/50-devuser-authorized-keys",
        &[
            ("TMP_HOOKS_PATH", hooks.to_str().unwrap()),
            ("DIB_DEV_USER_AUTHORIZED_KEYS", "/dev/null"),
        ],
    );
    assert_ok(&out);
    install_hooks(&hooks, &root);
    for script in [
        "install.d/20-serial-console",
        "install.d/50-dhcp-all-interfaces",
        "install.d/50-devuser",
        "install.d/60-cloud-init-datasources",
    ] {
        let out = run_chroot(
            &root,
            script,
            &[
                ("DIB_DEV_USER_SHELL", "/bin/bash"),
                ("DIB_DEV_USER_PASSWORD", "devuser"),
                ("DIB_CLOUD_INIT_DATASOURCES", "ConfigDrive, OpenStack"),
            ],
        );
        assert!(out.status.success(), "{script}: {}", text(&out));
    }
    let wants = root.join("etc/systemd/system");
    let getty = fs::read_link(wants.join("getty.target.wants/serial-getty@ttyS0.service")).unwrap();
    assert!(
        getty.ends_with("systemd/system/serial-getty@.service"),
        "{}",
        getty.display()
    );
    assert!(root.join(getty.strip_prefix("/").unwrap()).is_file());
    assert!(
        wants
            .join("multi-user.target.wants/systemd-networkd.service")
            .exists()
    );
    let network =
        fs::read_to_string(root.join("etc/systemd/network/80-dhcp-all-interfaces.network"))
            .unwrap();
    assert!(network.contains("DHCP=yes"));
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("devuser:") && l.ends_with(":/home/devuser:/bin/bash")),
        "{passwd}"
    );
    assert!(root.join("home/devuser").is_dir());
    assert!(
        root.join("etc/cloud/cloud.cfg.d/91-dib-cloud-init-datasources.cfg")
            .is_file()
    );

    // cleanup.d stores what the chroot phases fetched and empties apt's folders.
    let out = run_host("debian-minimal", "cleanup.d/90-debian-apt-cache", &cold);
    assert_ok(&out);
    assert!(
        !fs::read_dir(&root_archives).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".deb"))
    );
    let mut lists: Vec<String> = fs::read_dir(root.join("var/lib/apt/lists"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    lists.sort();
    assert_eq!(lists, ["lock", "partial"]);

    // Second build: offline, in a network namespace with no network at all.
    let warm_root = tmp.path().join("warm");
    fs::create_dir(&warm_root).unwrap();
    let mut warm = env(&warm_root);
    warm.push(("DIB_OFFLINE", "1".into()));
    warm.push(("DIB_DEBUG_TRACE", "1".into()));
    let warm: Vec<(&str, &str)> = warm.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = run_host_wrapped(&["unshare", "--net"], "debian-minimal", MMDEBSTRAP, &warm);
    assert_ok(&out);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        log.contains("Need to get 0 B/"),
        "apt downloaded packages:\n{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("Get:")),
        "apt fetched something:\n{log}"
    );
    assert_bootable_pair(&warm_root);
    // The same packages as the first build.
    assert_eq!(
        fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap(),
        fs::read_to_string(warm_root.join("var/lib/dpkg/status")).unwrap()
    );
}
