//! Running the host's `grub-mkimage` to build core.img or BOOTX64.EFI from a GRUB
//! platform folder, with the early config built in.

use std::path::Path;
use std::process::{Command, Stdio};

use super::BootError;
use super::sources::GrubPlatform;
use super::tree_files::io_err;

/// The grub-mkimage program (from grub-common), looked up in PATH.
pub const GRUB_MKIMAGE: &str = "grub-mkimage";

/// Build the GRUB image for `platform` from the modules in `dir`. The output is a
/// pure function of its inputs (grub-mkimage stamps no time), so images are
/// reproducible.
pub fn build_image(
    platform: GrubPlatform,
    dir: &Path,
    early_config: &str,
    modules: &[&str],
) -> Result<Vec<u8>, BootError> {
    let work = tempfile::tempdir().map_err(io_err(&std::env::temp_dir()))?;
    let config = work.path().join("early.cfg");
    std::fs::write(&config, early_config).map_err(io_err(&config))?;
    let out = work.path().join("image");
    let mut cmd = Command::new(GRUB_MKIMAGE);
    cmd.arg("-O")
        .arg(platform.name())
        .arg("-d")
        .arg(dir)
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg("/boot/grub")
        .arg("-o")
        .arg(&out)
        .args(modules)
        .stdin(Stdio::null());
    let output = cmd.output().map_err(|source| BootError::ToolStart {
        tool: GRUB_MKIMAGE,
        source,
    })?;
    if !output.status.success() {
        return Err(BootError::ToolFailed {
            tool: GRUB_MKIMAGE,
            what: format!("building the {platform} image from {}", dir.display()),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    std::fs::read(&out).map_err(io_err(&out))
}
