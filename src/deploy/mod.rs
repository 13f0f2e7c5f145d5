//! Conductor side of the deploy engine.

pub mod images;
