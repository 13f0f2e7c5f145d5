//! kiln: build, customize and deploy the golden disk images of a bare-metal cloud.
//!
//! The binary (`src/main.rs`) is a thin clap front end; everything it does is a
//! library call so tests and benches can use the same code.

pub mod agent;
pub mod boot;
pub mod build;
pub mod cli;
pub mod config;
pub mod customize;
pub mod deploy;
pub mod disk;
pub mod element;
pub mod format;
pub mod fs;
pub mod guest;
pub mod image;
pub mod initrd;
pub mod iscsi;
pub mod util;
