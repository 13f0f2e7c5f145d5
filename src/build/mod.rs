//! `kiln image build`: recipes, the build pipeline and its outputs.

pub mod output;
pub mod recipe;
