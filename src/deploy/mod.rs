//! The conductor side of deployment (issue 6).

pub mod power;
