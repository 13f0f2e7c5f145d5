//! Where the boot loader files come from: the image's own packages when it has
//! them (an image that installed grub-pc-bin boots the GRUB it ships), else the
//! host's. Both are looked up under their usual Debian paths.

use std::path::{Path, PathBuf};

use super::BootError;
use super::tree_files::resolve;

/// A GRUB target platform (a folder of /usr/lib/grub).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrubPlatform {
    /// BIOS: core.img in the embedding area, boot.img in the MBR.
    I386Pc,
    /// UEFI: one PE image on the ESP.
    X86_64Efi,
}

impl GrubPlatform {
    /// Folder name under /usr/lib/grub and /boot/grub, and grub-mkimage's -O.
    pub fn name(self) -> &'static str {
        match self {
            GrubPlatform::I386Pc => "i386-pc",
            GrubPlatform::X86_64Efi => "x86_64-efi",
        }
    }

    /// Files a usable platform folder must hold.
    fn required(self) -> &'static [&'static str] {
        match self {
            GrubPlatform::I386Pc => &["kernel.img", "boot.img", "diskboot.img", "moddep.lst"],
            GrubPlatform::X86_64Efi => &["kernel.img", "moddep.lst"],
        }
    }

    /// Modules built into the image: everything the early config and grub.cfg use,
    /// so booting never depends on the copied module folder. grub-mkimage adds
    /// their dependencies from moddep.lst.
    pub fn embedded_modules(self) -> Vec<&'static str> {
        const COMMON: &[&str] = &[
            "part_gpt",
            "part_msdos",
            "ext2",
            "xfs",
            "fat",
            "search",
            "normal",
            "configfile",
            "linux",
            "boot",
            "serial",
            "terminal",
            "echo",
            "test",
        ];
        let (before, after): (&[&str], &[&str]) = match self {
            GrubPlatform::I386Pc => (&["biosdisk"], &[]),
            GrubPlatform::X86_64Efi => (&[], &["efi_gop"]),
        };
        [before, COMMON, after].concat()
    }
}

impl std::fmt::Display for GrubPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which system a file was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Tree,
    Host,
}

/// GRUB's folder for `platform`: `tree`/usr/lib/grub/PLATFORM when complete, else
/// `host_root`/usr/lib/grub/PLATFORM.
pub fn grub_dir(
    tree: &Path,
    host_root: &Path,
    platform: GrubPlatform,
) -> Result<(PathBuf, Origin), BootError> {
    let inner = format!("/usr/lib/grub/{}", platform.name());
    if let Some(dir) = resolve(tree, &inner)?
        && has_all(&dir, platform.required())
    {
        return Ok((dir, Origin::Tree));
    }
    let host = host_root.join(inner.trim_start_matches('/'));
    if has_all(&host, platform.required()) {
        return Ok((host, Origin::Host));
    }
    Err(BootError::LoaderMissing {
        loader: format!("GRUB {platform}"),
        looked_for: format!(
            "{} in {} and in {}",
            platform.required().join(", "),
            tree.join(inner.trim_start_matches('/')).display(),
            host.display()
        ),
        package: match platform {
            GrubPlatform::I386Pc => "grub-pc-bin",
            GrubPlatform::X86_64Efi => "grub-efi-amd64-bin",
        },
    })
}

/// Inside the tree or the host root, where systemd-boot-efi installs it.
const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// systemd-boot's EFI binary, from the tree when present, else the host.
pub fn systemd_boot(tree: &Path, host_root: &Path) -> Result<(PathBuf, Origin), BootError> {
    if let Some(file) = resolve(tree, SYSTEMD_BOOT)?
        && file.is_file()
    {
        return Ok((file, Origin::Tree));
    }
    let host = host_root.join(SYSTEMD_BOOT.trim_start_matches('/'));
    if host.is_file() {
        return Ok((host, Origin::Host));
    }
    Err(BootError::LoaderMissing {
        loader: "systemd-boot".into(),
        looked_for: format!(
            "{} and {}",
            tree.join(SYSTEMD_BOOT.trim_start_matches('/')).display(),
            host.display()
        ),
        package: "systemd-boot-efi",
    })
}

fn has_all(dir: &Path, files: &[&str]) -> bool {
    files.iter().all(|f| dir.join(f).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn platform_dir(root: &Path, platform: GrubPlatform) -> PathBuf {
        let dir = root.join("usr/lib/grub").join(platform.name());
        fs::create_dir_all(&dir).unwrap();
        for f in platform.required() {
            fs::write(dir.join(f), b"x").unwrap();
        }
        dir
    }

    #[test]
    fn the_tree_wins_when_its_folder_is_complete() {
        let tree = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let host_dir = platform_dir(host.path(), GrubPlatform::I386Pc);
        let tree_dir = platform_dir(tree.path(), GrubPlatform::I386Pc);
        assert_eq!(
            grub_dir(tree.path(), host.path(), GrubPlatform::I386Pc).unwrap(),
            (tree_dir.clone(), Origin::Tree)
        );
        // An incomplete folder in the tree (no boot.img) falls back to the host.
        fs::remove_file(tree_dir.join("boot.img")).unwrap();
        assert_eq!(
            grub_dir(tree.path(), host.path(), GrubPlatform::I386Pc).unwrap(),
            (host_dir, Origin::Host)
        );
    }

    #[test]
    fn missing_everywhere_names_the_package() {
        let tree = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let err = grub_dir(tree.path(), host.path(), GrubPlatform::X86_64Efi).unwrap_err();
        assert!(err.to_string().contains("grub-efi-amd64-bin"), "{err}");
        let err = systemd_boot(tree.path(), host.path()).unwrap_err();
        assert!(err.to_string().contains("systemd-boot-efi"), "{err}");
    }
}
