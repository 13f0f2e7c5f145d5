//! Integration tests of disk image formats against the reference tools.

mod gpt;
