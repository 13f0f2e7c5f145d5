//! The conductor side of deployment: node state machine, state store, node import,
//! introspection rules, deploy plans and the image server.

pub mod images;
pub mod import;
pub mod plan;
pub mod rules;
pub mod state;
pub mod store;
