//! The image-level commands: open IMAGE as a guest session (FUSE + loop, see
//! crate::guest), run the tree-level work on its root, then commit the changes
//! into IMAGE only when everything succeeded. A failure or `--dry-run` leaves
//! IMAGE byte-identical. The caller must be in a private mount namespace.

use std::path::{Path, PathBuf};

use super::guest::Kind;
use super::{Customization, CustomizeError, GuestRoot, inspect, sysprep};
use crate::format::ImageFormat;
use crate::guest::{GuestError as SessionError, GuestSession};

#[derive(Debug, thiserror::Error)]
pub enum ImageOpError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Customize(#[from] CustomizeError),
    #[error(transparent)]
    Sysprep(#[from] sysprep::SysprepError),
    #[error(transparent)]
    Inspect(#[from] inspect::InspectError),
    #[error(transparent)]
    Guest(#[from] super::GuestError),
    #[error("{}: {source}", path.display())]
    Local {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} does not exist in the guest")]
    Missing(String),
}

/// What a writing command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Changes written into the image (bytes of the disk that changed).
    Committed(u64),
    /// `--dry-run`: everything ran, nothing was written.
    DryRun,
}

/// Run `work` on the guest root of `image` opened writable; commit only when it
/// succeeds and `dry_run` is false.
fn change<F>(
    image: &Path,
    format: Option<ImageFormat>,
    dry_run: bool,
    work: F,
) -> Result<Outcome, ImageOpError>
where
    F: FnOnce(&Path) -> Result<(), ImageOpError>,
{
    let session = GuestSession::open(image, format, true)?;
    // On error the session is dropped, which discards the overlay.
    work(session.root())?;
    if dry_run {
        session.discard()?;
        Ok(Outcome::DryRun)
    } else {
        Ok(Outcome::Committed(session.commit()?))
    }
}

/// `kiln image customize`.
pub fn customize_image(
    image: &Path,
    format: Option<ImageFormat>,
    custom: &Customization,
    dry_run: bool,
    log: &mut dyn FnMut(&str),
) -> Result<Outcome, ImageOpError> {
    change(image, format, dry_run, |root| {
        Ok(super::customize(root, custom, log)?)
    })
}

/// `kiln image sysprep` with the operations `names`.
pub fn sysprep_image(
    image: &Path,
    format: Option<ImageFormat>,
    names: &[&str],
    dry_run: bool,
) -> Result<Outcome, ImageOpError> {
    change(image, format, dry_run, |root| {
        Ok(sysprep::sysprep(root, names)?)
    })
}

/// `kiln image inspect`: the operating system on `image`.
pub fn inspect_image(
    image: &Path,
    format: Option<ImageFormat>,
) -> Result<inspect::OsInfo, ImageOpError> {
    let session = GuestSession::open(image, format, false)?;
    let filesystems: Vec<inspect::Filesystem> = session
        .filesystems()
        .iter()
        .filter_map(|f| {
            Some(inspect::Filesystem {
                device: guest_device(&f.name),
                fstype: f.fstype.clone()?,
                label: f.label.clone(),
                uuid: f.uuid.clone(),
            })
        })
        .collect();
    let root_device = session
        .filesystems()
        .iter()
        .find(|f| f.mountpoint.as_deref() == Some(Path::new("/")))
        .map(|f| guest_device(&f.name))
        .unwrap_or_else(|| "/dev/sda".into());
    let info = inspect::inspect(session.root(), &root_device, &filesystems)?;
    session.discard()?;
    Ok(info)
}

/// The device name the guest would see for a session's filesystem name
/// ("p2" -> /dev/sda2, "vg/root" -> /dev/vg/root, "disk" -> /dev/sda).
fn guest_device(name: &str) -> String {
    match name.strip_prefix('p') {
        Some(n) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => format!("/dev/sda{n}"),
        _ if name == "disk" => "/dev/sda".into(),
        _ => format!("/dev/{name}"),
    }
}

/// `kiln image ls`: the names in a guest directory, sorted.
pub fn list_dir(
    image: &Path,
    format: Option<ImageFormat>,
    dir: &str,
) -> Result<Vec<String>, ImageOpError> {
    read_only(image, format, |g| {
        // GuestRoot::list_dir reads a missing directory as empty (what the
        // cleanup operations want); `ls` of a path that is not there, or not a
        // directory, is a mistake of the caller and must say so.
        match g.kind_followed(dir)? {
            None => return Err(ImageOpError::Missing(dir.to_string())),
            Some(Kind::Dir) => {}
            Some(_) => return Err(CustomizeError::NotADirectory(dir.to_string()).into()),
        }
        let mut names = g.list_dir(dir)?;
        names.sort();
        Ok(names)
    })
}

/// `kiln image cat`: a guest file's bytes.
pub fn read_file(
    image: &Path,
    format: Option<ImageFormat>,
    path: &str,
) -> Result<Vec<u8>, ImageOpError> {
    read_only(image, format, |g| Ok(g.read(path)?))
}

/// `kiln image copy-out`: copy the guest file or directory `path` into the host
/// directory `dest` (symlinks are copied as links, never followed).
pub fn copy_out(
    image: &Path,
    format: Option<ImageFormat>,
    path: &str,
    dest: &Path,
) -> Result<(), ImageOpError> {
    read_only(image, format, |g| copy_tree_out(g, path, dest))
}

fn read_only<T, F>(image: &Path, format: Option<ImageFormat>, work: F) -> Result<T, ImageOpError>
where
    F: FnOnce(&GuestRoot) -> Result<T, ImageOpError>,
{
    let session = GuestSession::open(image, format, false)?;
    let guest = GuestRoot::open(session.root())?;
    let result = work(&guest);
    drop(guest);
    session.discard()?;
    result
}

fn copy_tree_out(g: &GuestRoot, path: &str, dest: &Path) -> Result<(), ImageOpError> {
    let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let name = if name.is_empty() { "root" } else { name };
    let target = dest.join(name);
    let local = |source| ImageOpError::Local {
        path: target.clone(),
        source,
    };
    match g.kind(path)? {
        None => Err(ImageOpError::Missing(path.to_string())),
        Some(Kind::Dir) => {
            std::fs::create_dir_all(&target).map_err(local)?;
            for child in g.list_dir(path)? {
                copy_tree_out(
                    g,
                    &format!("{}/{child}", path.trim_end_matches('/')),
                    &target,
                )?;
            }
            Ok(())
        }
        Some(Kind::File) => {
            let bytes = g.read(path)?;
            std::fs::write(&target, bytes).map_err(local)
        }
        Some(Kind::Symlink) => {
            let link = g.read_link(path)?;
            std::os::unix::fs::symlink(link, &target).map_err(local)
        }
        // Devices, sockets, fifos: not copied out, like virt-copy-out.
        Some(Kind::Other) => Ok(()),
    }
}
