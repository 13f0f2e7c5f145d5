//! The node side of deployment: what runs inside the deploy ramdisk as `kiln agent`.
//!
//! * [`inventory`] describes the machine from /proc and /sys (IPA's inventory fields).
//! * [`hints`] picks the root disk from Ironic-style root device hints.
//! * [`configdrive`] writes the config-2 partition at the end of the deployed disk.
//! * [`stream`] streams an image from the conductor onto the disk.
//! * [`client`], [`run`] and [`simulate`]: the agent loop talking to the conductor.

pub mod client;
pub mod configdrive;
pub mod export;
pub mod hints;
pub mod inventory;
pub mod run;
pub mod simulate;
pub mod stream;
