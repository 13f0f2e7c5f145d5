//! ext4 from a tree: `mke2fs -t ext4 -d TREE` written straight into the partition's
//! region of the image (`-E offset=`), then the inode times made reproducible.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{FsError, FsJob, ext4_times, run_tool, stage};

/// Make the ext4 filesystem of `job` at `job.offset` of the image from `tree`
/// without the `exclude` subtrees.
pub fn make_ext4(
    image: &File,
    image_path: &Path,
    tree: &Path,
    exclude: &[PathBuf],
    job: &FsJob,
) -> Result<(), FsError> {
    let staged = stage::view_without(tree, exclude)?;
    let source = staged.path();
    let mut cmd = Command::new("mke2fs");
    cmd.args(["-q", "-F", "-t", "ext4"])
        .arg("-d")
        .arg(source)
        .args(["-U", &job.uuid.hyphenated().to_string()])
        .args(["-L", &job.label])
        .arg("-E")
        .arg(format!(
            "offset={},hash_seed={},root_owner=0:0,nodiscard",
            job.offset,
            job.hash_seed.hyphenated()
        ))
        .args(&job.opts)
        .arg(image_path)
        .arg(format!("{}k", job.size / 1024))
        // mke2fs stamps the superblock and the inodes it makes itself with this time.
        .env("E2FSPROGS_FAKE_TIME", job.timestamp.to_string())
        // Never prompt, never read a user's mke2fs.conf override.
        .env_remove("MKE2FS_CONFIG");
    run_tool(cmd, job)?;
    drop(staged);
    ext4_times::normalise_times(image, job.offset, &job.label, job.timestamp)?;
    image.sync_data().map_err(FsError::io(image_path))?;
    Ok(())
}
