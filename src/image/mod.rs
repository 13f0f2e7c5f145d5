//! Image-level operations behind `kiln image`: convert, info, check.

pub mod check;
pub mod convert;
pub mod info;
