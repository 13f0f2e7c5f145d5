//! Disk layout: diskimage-builder's block-device YAML ([`layout`]), a plan with every
//! offset and identifier fixed before the tree is finished ([`plan`]), and assembly
//! of the partition table and filesystems into a raw disk file ([`assemble`]).

pub mod assemble;
pub mod builtin;
pub mod layout;
pub mod mbr;
pub mod plan;
pub mod size;
pub mod types;

pub use assemble::{AssembleError, AssembledDisk, PartitionInfo, assemble};
pub use builtin::builtin_layout;
pub use layout::{Layout, LayoutError, TableKind};
pub use plan::{DiskPlan, PlanOptions, computed_image_size};
