//! The conductor side of deployment: node state machine, state store, node import,
//! introspection rules, deploy plans, the image server, power drivers, the
//! conductor service and its HTTP API.

pub mod api;
pub mod client;
pub mod conductor;
pub mod images;
pub mod import;
pub mod metadata;
pub mod plan;
pub mod power;
pub mod protocol;
pub mod rules;
pub mod state;
pub mod status_page;
pub mod store;
