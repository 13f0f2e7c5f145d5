//! Node side of the deploy engine: the agent that runs in the deploy ramdisk.

pub mod stream;
