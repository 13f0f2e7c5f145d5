//! iSCSI (RFC 7143) in pure Rust.

pub mod initiator;
