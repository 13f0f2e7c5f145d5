//! Image-level operations behind `kiln image`: convert, info, check.
