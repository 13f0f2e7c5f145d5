//! Role configuration on a deployed node, compatible with TripleO's
//! os-collect-config (collect), os-apply-config (render) and
//! os-refresh-config (refresh).
//!
//! Data flows one way: collectors -> cache (change detection) -> merged
//! metadata -> render (templates to files) -> refresh (phase scripts) ->
//! report.

pub mod apply;
pub mod cache;
pub mod collect;
pub mod drive;
pub mod key;
pub mod lock;
pub mod mustache;
pub mod oac;
pub mod refresh;
pub mod render;
pub mod report;
pub mod value;
