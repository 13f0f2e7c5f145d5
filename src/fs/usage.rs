//! Disk usage of a tree, counted like `du -a -c -x`: allocated blocks, each inode
//! once however many links it has, not crossing into other filesystems.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::FsError;

/// Bytes allocated to `tree` and everything below it.
pub fn disk_usage(tree: &Path) -> Result<u64, FsError> {
    let root = std::fs::symlink_metadata(tree).map_err(FsError::io(tree))?;
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![tree.to_path_buf()];
    total += root.blocks() * 512;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(FsError::io(&dir))? {
            let entry = entry.map_err(FsError::io(&dir))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(FsError::io(&path))?;
            if meta.dev() != root.dev() {
                continue;
            }
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(total)
}
