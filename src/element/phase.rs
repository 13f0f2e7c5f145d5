//! The build phases and where each one runs, in diskimage-builder's order.

use std::fmt;

/// Where a phase's scripts execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunsIn {
    /// On the build host, with TARGET_ROOT / TMP_MOUNT_PATH naming the image root.
    Host,
    /// Inside the image root (chroot), with the hooks at [`super::IN_TARGET_HOOKS_DIR`].
    Chroot,
}

/// A phase folder of an element (`install.d`, ...). `ALL` lists them in the order
/// a build runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Root,
    ExtraData,
    PreInstall,
    Install,
    PostInstall,
    PostRoot,
    BlockDevice,
    PreFinalise,
    Finalise,
    Cleanup,
}

impl Phase {
    pub const ALL: [Phase; 10] = [
        Phase::Root,
        Phase::ExtraData,
        Phase::PreInstall,
        Phase::Install,
        Phase::PostInstall,
        Phase::PostRoot,
        Phase::BlockDevice,
        Phase::PreFinalise,
        Phase::Finalise,
        Phase::Cleanup,
    ];

    /// The phase name without `.d`, as used by DIB's `break=before-NAME`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Root => "root",
            Phase::ExtraData => "extra-data",
            Phase::PreInstall => "pre-install",
            Phase::Install => "install",
            Phase::PostInstall => "post-install",
            Phase::PostRoot => "post-root",
            Phase::BlockDevice => "block-device",
            Phase::PreFinalise => "pre-finalise",
            Phase::Finalise => "finalise",
            Phase::Cleanup => "cleanup",
        }
    }

    /// The folder name inside an element and inside the hooks directory.
    pub fn dir_name(self) -> &'static str {
        match self {
            Phase::Root => "root.d",
            Phase::ExtraData => "extra-data.d",
            Phase::PreInstall => "pre-install.d",
            Phase::Install => "install.d",
            Phase::PostInstall => "post-install.d",
            Phase::PostRoot => "post-root.d",
            Phase::BlockDevice => "block-device.d",
            Phase::PreFinalise => "pre-finalise.d",
            Phase::Finalise => "finalise.d",
            Phase::Cleanup => "cleanup.d",
        }
    }

    pub fn runs_in(self) -> RunsIn {
        match self {
            Phase::PreInstall | Phase::Install | Phase::PostInstall | Phase::Finalise => {
                RunsIn::Chroot
            }
            _ => RunsIn::Host,
        }
    }

    /// Accepts both `install` and `install.d`.
    pub fn from_name(name: &str) -> Option<Phase> {
        let bare = name.strip_suffix(".d").unwrap_or(name);
        Phase::ALL.into_iter().find(|p| p.name() == bare)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_chroot_split_follows_dib() {
        let chroot: Vec<&str> = Phase::ALL
            .iter()
            .filter(|p| p.runs_in() == RunsIn::Chroot)
            .map(|p| p.dir_name())
            .collect();
        assert_eq!(
            chroot,
            ["pre-install.d", "install.d", "post-install.d", "finalise.d"]
        );
    }

    #[test]
    fn names_round_trip() {
        for p in Phase::ALL {
            assert_eq!(Phase::from_name(p.name()), Some(p));
            assert_eq!(Phase::from_name(p.dir_name()), Some(p));
        }
        assert_eq!(Phase::from_name("environment.d"), None);
        assert!(Phase::ALL.windows(2).all(|w| w[0] < w[1]));
    }
}
