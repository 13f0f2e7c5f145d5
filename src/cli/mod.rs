//! Command-line definitions (clap). Each command calls one library function.

use std::process::ExitCode;

pub fn main() -> ExitCode {
    ExitCode::SUCCESS
}
