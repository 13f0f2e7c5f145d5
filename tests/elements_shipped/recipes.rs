//! The shipped Debian recipes parse and name shipped elements.

use std::path::Path;

use kiln::build::recipe;
use kiln::element::shipped_elements_dir;

fn load(name: &str) -> recipe::Recipe {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("recipes")
        .join(name);
    let mut all = recipe::load(&path).unwrap();
    assert_eq!(all.len(), 1, "{name} holds one image");
    all.remove(0)
}

/// Elements of this worktree's area must exist; the layout and boot loader
/// elements belong to the build pipeline.
fn assert_elements_shipped(r: &recipe::Recipe, mine: &[&str]) {
    for element in mine {
        assert!(
            r.elements.iter().any(|e| e == element),
            "{} lacks {element}",
            r.imagename
        );
        assert!(
            shipped_elements_dir().join(element).is_dir(),
            "{element} is not shipped"
        );
    }
    let operating_systems: Vec<_> = r
        .elements
        .iter()
        .filter(|e| {
            std::fs::read_to_string(shipped_elements_dir().join(e).join("element-provides"))
                .is_ok_and(|p| p.lines().any(|l| l.trim() == "operating-system"))
        })
        .collect();
    assert_eq!(operating_systems, ["debian-minimal"], "{}", r.imagename);
}

#[test]
fn debian_vm_recipe() {
    let r = load("debian-vm.yaml");
    assert_eq!(r.imagename, "debian-vm");
    assert!(r.elements.iter().any(|e| e == "vm"));
    assert_elements_shipped(&r, &["debian-minimal", "enable-serial-console", "devuser"]);
    assert!(
        r.kernel_cmdline
            .as_deref()
            .unwrap()
            .contains("console=ttyS0")
    );
    assert_eq!(r.types, [recipe::ImageType::Qcow2]);
}

#[test]
fn overcloud_debian_recipe() {
    let r = load("overcloud-debian.yaml");
    assert_elements_shipped(
        &r,
        &[
            "debian-minimal",
            "cloud-init-datasources",
            "growroot",
            "dhcp-all-interfaces",
            "enable-serial-console",
            "install-static",
        ],
    );
    let env = r.dib_environment();
    assert!(!env["DIB_CLOUD_INIT_DATASOURCES"].is_empty());
}
