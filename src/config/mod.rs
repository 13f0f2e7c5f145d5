//! Role configuration on a deployed node, compatible with TripleO's
//! os-collect-config (collect), os-apply-config (render) and
//! os-refresh-config (refresh).

pub mod mustache;
pub mod value;
pub mod oac;
pub mod key;
pub mod render;
pub mod cache;
pub mod lock;
pub mod refresh;
pub mod apply;
pub mod collect;
