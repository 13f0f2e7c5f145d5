//! The prototype file `mkfs.xfs -p` reads: one token-separated entry per file,
//! directories closed by `$`. The format has no way to say a name with white space
//! or a colon, a sticky bit, a hard link, an xattr or a time; see [`Protofile`] for
//! what kiln does about each.

use std::fmt::Write as _;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{FsError, xattr};

/// A protofile and what it could not express.
#[derive(Debug, Default)]
pub struct Protofile {
    pub text: String,
    /// Directories (relative, with `/` prefix) whose sticky bit mkfs.xfs cannot set;
    /// the caller sets it afterwards with xfs_db.
    pub sticky_dirs: Vec<String>,
    /// Extra names of hard-linked files, stored as separate copies.
    pub hardlink_copies: u64,
    /// Paths whose extended attributes are not stored.
    pub dropped_xattrs: Vec<PathBuf>,
}

/// Can this name be one protofile token?
fn check_name(name: &str, path: &Path) -> Result<(), FsError> {
    if name.is_empty()
        || name == "$"
        || name
            .chars()
            .any(|c| c.is_whitespace() || c == ':' || c.is_control())
    {
        return Err(FsError::Unsupported {
            path: path.to_path_buf(),
            problem: "an xfs protofile cannot hold a name with white space, a colon or a lone $"
                .into(),
        });
    }
    Ok(())
}

/// The 6-character mode token: type, setuid, setgid, three octal digits.
fn mode_token(kind: char, mode: u32) -> String {
    format!(
        "{kind}{}{}{:03o}",
        if mode & 0o4000 != 0 { 'u' } else { '-' },
        if mode & 0o2000 != 0 { 'g' } else { '-' },
        mode & 0o777
    )
}

/// Describe `tree` (without the `exclude` subtrees, which stay empty directories).
/// Regular files are named relative to `tree`, so mkfs.xfs must run in `tree`.
pub fn protofile(tree: &Path, exclude: &[PathBuf]) -> Result<Protofile, FsError> {
    let mut proto = Protofile::default();
    let root = std::fs::symlink_metadata(tree).map_err(FsError::io(tree))?;
    proto.text.push_str("kiln\n0 0\n");
    let _ = writeln!(proto.text, "{} 0 0", mode_token('d', root.mode()));
    if root.mode() & 0o1000 != 0 {
        proto.sticky_dirs.push("/".into());
    }
    let mut seen_inodes = std::collections::HashSet::new();
    walk(
        tree,
        Path::new(""),
        exclude,
        1,
        &mut proto,
        &mut seen_inodes,
    )?;
    proto.text.push_str("$\n");
    Ok(proto)
}

fn walk(
    tree: &Path,
    rel: &Path,
    exclude: &[PathBuf],
    depth: usize,
    proto: &mut Protofile,
    seen: &mut std::collections::HashSet<(u64, u64)>,
) -> Result<(), FsError> {
    let dir = tree.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map_err(FsError::io(&dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(FsError::io(&dir))?;
    names.sort();
    let indent = "\t".repeat(depth);
    for name in names {
        let rel_child = rel.join(&name);
        let path = tree.join(&rel_child);
        let name = name.to_str().ok_or_else(|| FsError::Unsupported {
            path: path.clone(),
            problem: "name is not UTF-8".into(),
        })?;
        check_name(name, &path)?;
        let meta = std::fs::symlink_metadata(&path).map_err(FsError::io(&path))?;
        let (uid, gid, mode) = (meta.uid(), meta.gid(), meta.mode());
        let ft = meta.file_type();
        if !xattr::list(&path).map_err(FsError::io(&path))?.is_empty() {
            proto.dropped_xattrs.push(path.clone());
        }
        if !ft.is_dir() && meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
            proto.hardlink_copies += 1;
        }
        let _ = write!(proto.text, "{indent}{name} ");
        if ft.is_dir() {
            let _ = writeln!(proto.text, "{} {uid} {gid}", mode_token('d', mode));
            if mode & 0o1000 != 0 {
                proto.sticky_dirs.push(format!("/{}", rel_child.display()));
            }
            if !exclude.contains(&rel_child) {
                walk(tree, &rel_child, exclude, depth + 1, proto, seen)?;
            }
            let _ = writeln!(proto.text, "{indent}$");
        } else if ft.is_file() {
            let _ = writeln!(
                proto.text,
                "{} {uid} {gid} ./{}",
                mode_token('-', mode),
                rel_child.display()
            );
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(FsError::io(&path))?;
            let target = target.to_str().unwrap_or_default();
            if target.is_empty()
                || target
                    .chars()
                    .any(|c| c.is_whitespace() || c == ':' || c.is_control())
            {
                return Err(FsError::Unsupported {
                    path,
                    problem:
                        "an xfs protofile cannot hold a symlink target with white space or a colon"
                            .into(),
                });
            }
            let _ = writeln!(proto.text, "{} {uid} {gid} {target}", mode_token('l', mode));
        } else if ft.is_block_device() || ft.is_char_device() {
            let kind = if ft.is_block_device() { 'b' } else { 'c' };
            let rdev = meta.rdev();
            let _ = writeln!(
                proto.text,
                "{} {uid} {gid} {} {}",
                mode_token(kind, mode),
                libc::major(rdev),
                libc::minor(rdev)
            );
        } else if ft.is_fifo() {
            let _ = writeln!(proto.text, "{} {uid} {gid}", mode_token('p', mode));
        } else {
            return Err(FsError::Unsupported {
                path,
                problem: "sockets cannot be stored by an xfs protofile".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_tokens() {
        assert_eq!(mode_token('-', 0o104755), "-u-755");
        assert_eq!(mode_token('d', 0o42775), "d-g775");
        assert_eq!(mode_token('d', 0o41777), "d--777");
    }
}
