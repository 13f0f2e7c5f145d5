//! The conductor side of deployment: node state machine, state store, node import,
//! introspection rules, deploy plans and power drivers.

pub mod import;
pub mod plan;
pub mod power;
pub mod rules;
pub mod state;
pub mod store;
