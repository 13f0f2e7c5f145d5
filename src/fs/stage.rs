//! A view of a tree without some of its subtrees, for tools that copy a whole
//! directory (`mke2fs -d`). Files are hard links to the originals (same inodes, so
//! owners, modes, xattrs and hard links between them carry over); directories are
//! recreated with the original mode, owner, xattrs and mtime. The excluded
//! subtrees stay as empty directories: they are mount points.
//! The view lives next to the tree (hard links need the same filesystem) and is
//! removed when dropped.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{FsError, xattr};

pub struct StagedTree {
    dir: tempfile::TempDir,
}

impl StagedTree {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// `tree` itself when nothing is excluded, else a staged view without `exclude`.
pub enum TreeView<'a> {
    Whole(&'a Path),
    Staged(StagedTree),
}

impl TreeView<'_> {
    pub fn path(&self) -> &Path {
        match self {
            TreeView::Whole(p) => p,
            TreeView::Staged(s) => s.path(),
        }
    }
}

/// The view of `tree` a filesystem is made from: the tree, or a staged copy
/// without `exclude` (removed when the view is dropped).
pub fn view_without<'a>(tree: &'a Path, exclude: &[PathBuf]) -> Result<TreeView<'a>, FsError> {
    if exclude.is_empty() {
        Ok(TreeView::Whole(tree))
    } else {
        Ok(TreeView::Staged(stage_without(tree, exclude)?))
    }
}

/// True when `rel` (relative to the tree) is one of `exclude`.
fn excluded(rel: &Path, exclude: &[PathBuf]) -> bool {
    exclude.iter().any(|e| e == rel)
}

/// Build the view of `tree` without the contents of `exclude` (relative paths).
pub fn stage_without(tree: &Path, exclude: &[PathBuf]) -> Result<StagedTree, FsError> {
    let parent = tree.parent().unwrap_or(Path::new("/"));
    let dir = tempfile::Builder::new()
        .prefix(".kiln-stage-")
        .tempdir_in(parent)
        .map_err(FsError::io(parent))?;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let src_dir = tree.join(&rel);
        for entry in std::fs::read_dir(&src_dir).map_err(FsError::io(&src_dir))? {
            let entry = entry.map_err(FsError::io(&src_dir))?;
            let rel_child = rel.join(entry.file_name());
            let src = tree.join(&rel_child);
            let dst = dir.path().join(&rel_child);
            let meta = std::fs::symlink_metadata(&src).map_err(FsError::io(&src))?;
            if meta.is_dir() {
                std::fs::create_dir(&dst).map_err(FsError::io(&dst))?;
                if !excluded(&rel_child, exclude) {
                    stack.push(rel_child);
                }
            } else {
                std::fs::hard_link(&src, &dst).map_err(FsError::io(&dst))?;
            }
        }
    }
    // Attributes last: a read-only directory could not be filled, and filling
    // it would move its mtime.
    fix_dir_attrs(tree, dir.path(), Path::new(""), exclude)?;
    copy_dir_attrs(tree, dir.path())?;
    Ok(StagedTree { dir })
}

fn fix_dir_attrs(
    tree: &Path,
    stage: &Path,
    rel: &Path,
    exclude: &[PathBuf],
) -> Result<(), FsError> {
    let dst_dir = stage.join(rel);
    for entry in std::fs::read_dir(&dst_dir).map_err(FsError::io(&dst_dir))? {
        let entry = entry.map_err(FsError::io(&dst_dir))?;
        let rel_child = rel.join(entry.file_name());
        if entry
            .file_type()
            .map_err(FsError::io(entry.path()))?
            .is_dir()
        {
            if !excluded(&rel_child, exclude) {
                fix_dir_attrs(tree, stage, &rel_child, exclude)?;
            }
            copy_dir_attrs(&tree.join(&rel_child), &stage.join(&rel_child))?;
        }
    }
    Ok(())
}

/// Give directory `dst` the owner, mode, xattrs and times of `src`.
fn copy_dir_attrs(src: &Path, dst: &Path) -> Result<(), FsError> {
    let meta = std::fs::symlink_metadata(src).map_err(FsError::io(src))?;
    for (name, value) in xattr::list(src).map_err(FsError::io(src))? {
        xattr::set(dst, &name, &value).map_err(FsError::io(dst))?;
    }
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid())).map_err(FsError::io(dst))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(FsError::io(dst))?;
    let times = [
        libc::timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec(),
        },
        libc::timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec(),
        },
    ];
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dst.as_os_str()))
        .map_err(|_| FsError::io(dst)(std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: c is NUL-terminated and times has two elements.
    if unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(FsError::io(dst)(std::io::Error::last_os_error()));
    }
    Ok(())
}
