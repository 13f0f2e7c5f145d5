//! Node side of the deploy engine: the agent that runs in the deploy ramdisk.

pub mod client;
pub mod run;
pub mod simulate;
pub mod stream;
