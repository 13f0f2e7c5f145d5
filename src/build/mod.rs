//! The image build pipeline: root sources, the sandbox its chroot phases run
//! in, the phase script runner, outputs.

pub mod runner;
pub mod sandbox;
