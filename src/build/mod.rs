//! `kiln image build`: recipes, the sandbox chroot phases run in, the phase
//! script runner, the pipeline that drives them, disk assembly and outputs.

pub mod disk_image;
pub mod output;
pub mod pipeline;
pub mod ramdisk;
pub mod recipe;
pub mod runner;
pub mod sandbox;
pub mod workspace;

pub use pipeline::{BuildError, BuildOptions, BuildReport, build};
