//! Elements, diskimage-builder compatible: finding them ([`search`]), expanding
//! their dependencies ([`graph`]), merging their files into one hooks folder
//! ([`hooks`]), the phases ([`phase`]) and the run-parts rules ([`runparts`]),
//! `pkg-map` files ([`pkgmap`]) and `package-installs` ([`package_installs`]).
//!
//! The shell helpers elements call (install-packages, pkg-map, dib-init-system,
//! dib-run-parts) ship in the `dib-helpers` element, which every build includes
//! ([`HELPERS_ELEMENT`]).

pub mod graph;
pub mod hooks;
pub mod package_installs;
pub mod phase;
pub mod pkgmap;
pub mod runparts;
pub mod search;

pub use graph::{GraphError, ResolveOptions, Resolved, resolve};
pub use hooks::{Hooks, HooksError, Script};
pub use phase::{Phase, RunsIn};
pub use search::{Catalog, Element, SearchError, SearchPath, shipped_elements_dir};

/// The shipped element holding the helper commands; every build includes it.
pub const HELPERS_ELEMENT: &str = "dib-helpers";

/// Where chroot phases see the hooks folder, as in DIB.
pub const IN_TARGET_HOOKS_DIR: &str = "/tmp/in_target.d";
