//! `--tar-in TARFILE:REMOTEDIR`: unpack a tarball (plain, gzip, xz, zstd or
//! bzip2) into a guest directory, every entry written through the confined
//! guest root, so a hostile member name or link cannot reach the host.

use std::io::Read;
use std::path::{Component, Path};

use super::guest::Kind;
use super::{CustomizeError, GuestRoot};
use crate::format::pkgarchive::{self, Compression};

/// Decompressed bytes a tarball may expand to before kiln calls it a bomb.
const MAX_EXPANDED: u64 = 64 << 30;

pub fn tar_in(root: &GuestRoot, local: &Path, remote_dir: &str) -> Result<(), CustomizeError> {
    if root.kind_followed(remote_dir)? != Some(Kind::Dir) {
        return Err(CustomizeError::NotADirectory(remote_dir.to_string()));
    }
    let local_err = |source| CustomizeError::Local {
        path: local.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(local).map_err(local_err)?;
    let (head, stream) = pkgarchive::peek::<_, 8>(file).map_err(local_err)?;
    let compression = Compression::sniff(&head).unwrap_or(Compression::None);
    let reader = pkgarchive::decoder(compression, stream, MAX_EXPANDED).map_err(local_err)?;
    let mut archive = tar::Archive::new(reader);
    let bad = |what: String| CustomizeError::BadGuestFile {
        file: local.display().to_string(),
        reason: what,
    };
    for entry in archive.entries().map_err(local_err)? {
        let mut entry = entry.map_err(local_err)?;
        let name = entry.path().map_err(local_err)?.into_owned();
        let Some(rel) = relative_member(&name) else {
            return Err(bad(format!(
                "member {} leaves the target directory",
                name.display()
            )));
        };
        if rel.is_empty() {
            continue; // "./": the target directory itself
        }
        let dest = format!("{}/{rel}", remote_dir.trim_end_matches('/'));
        let header = entry.header();
        let mode = header.mode().map_err(local_err)? & 0o7777;
        let (uid, gid) = (
            header.uid().map_err(local_err)? as u32,
            header.gid().map_err(local_err)? as u32,
        );
        let kind = header.entry_type();
        if let Some(parent) = dest
            .rsplit_once('/')
            .map(|(p, _)| p)
            .filter(|p| !p.is_empty())
        {
            root.mkdir_all(parent, 0o755)?;
        }
        if kind.is_dir() {
            root.mkdir_all(&dest, mode)?;
            root.chmod(&dest, mode)?;
        } else if kind.is_file() {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(local_err)?;
            replace_non_dir(root, &dest)?;
            root.write(&dest, &bytes, mode)?;
            root.chmod(&dest, mode)?;
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(local_err)?
                .ok_or_else(|| bad(format!("symlink {} has no target", name.display())))?;
            replace_non_dir(root, &dest)?;
            // The link is stored as it is; resolving it later stays confined.
            root.symlink(&target.to_string_lossy(), &dest)?;
            continue; // no chown through a link
        } else if kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(local_err)?
                .and_then(|t| relative_member(&t))
                .ok_or_else(|| bad(format!("hard link {} leaves the target", name.display())))?;
            let source = format!("{}/{target}", remote_dir.trim_end_matches('/'));
            let bytes = root.read(&source)?;
            replace_non_dir(root, &dest)?;
            root.write(&dest, &bytes, mode)?;
        } else {
            return Err(CustomizeError::Unsupported {
                path: dest,
                what: "a device, fifo or other special file in --tar-in",
            });
        }
        root.chown(&dest, uid, gid)?;
    }
    Ok(())
}

/// A member name relative to the target ("./a/b" -> "a/b"), or None when it is
/// absolute or climbs out with "..".
fn relative_member(name: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// Remove what is at `path` unless it is a directory (a file replaces a file or a
/// link, as tar does).
fn replace_non_dir(root: &GuestRoot, path: &str) -> Result<(), CustomizeError> {
    match root.kind(path)? {
        Some(Kind::Dir) => Err(CustomizeError::Unsupported {
            path: path.to_string(),
            what: "replacing a directory with a file in --tar-in",
        }),
        Some(_) => Ok(root.remove_all(path)?),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_stay_below_the_target() {
        assert_eq!(
            relative_member(Path::new("./etc/x")).as_deref(),
            Some("etc/x")
        );
        assert_eq!(relative_member(Path::new("./")).as_deref(), Some(""));
        assert_eq!(relative_member(Path::new("/etc/passwd")), None);
        assert_eq!(relative_member(Path::new("a/../../b")), None);
    }
}
