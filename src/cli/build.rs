//! `kiln image build` (recipes) and `kiln image create` (disk-image-create's flags).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::build::recipe::{self, Recipe};
use crate::build::runner::timing_table;
use crate::build::sandbox::enter_private_mount_namespace;
use crate::build::{BuildOptions, BuildReport, build};

#[derive(Args)]
pub struct BuildArgs {
    /// Recipe file (DIB's YAML front end: one image or a list of them)
    recipe: PathBuf,
    /// Output directory
    #[arg(short = 'o', long = "output", default_value = ".")]
    output: PathBuf,
    /// Output types instead of the recipe's (qcow2,raw,tar,squashfs)
    #[arg(short = 't', value_delimiter = ',')]
    types: Option<Vec<String>>,
    /// Element directories searched before ELEMENTS_PATH and the shipped elements
    #[arg(long = "elements-path")]
    elements_path: Vec<PathBuf>,
    /// Open a shell: before-PHASE, after-PHASE or after-error (DIB's break=)
    #[arg(long = "break")]
    breaks: Vec<String>,
    /// Show every script's output (on a terminal it is shown anyway)
    #[arg(short = 'v', long)]
    verbose: bool,
}

#[derive(Args)]
pub struct CreateArgs {
    /// disk-image-create's arguments: -o NAME -t TYPES -p PKGS -a ARCH -n -x
    /// --image-size N --checksum ... ELEMENT...
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    args: Vec<String>,
}

pub fn run_build(args: BuildArgs) -> Result<u8> {
    let recipes = recipe::load(&args.recipe)?;
    let opts = BuildOptions {
        output_dir: args.output,
        types: args.types,
        elements_path: args.elements_path,
        breaks: args.breaks,
        verbose: args.verbose,
    };
    build_all(&recipes, &opts)
}

pub fn run_create(args: CreateArgs) -> Result<u8> {
    let recipe = Recipe::from_disk_image_create_args(&args.args)?;
    // Like disk-image-create: ELEMENTS_PATH from the environment, -o relative
    // to the current directory.
    let opts = BuildOptions {
        output_dir: PathBuf::from("."),
        ..BuildOptions::default()
    };
    build_all(std::slice::from_ref(&recipe), &opts)
}

fn build_all(recipes: &[Recipe], opts: &BuildOptions) -> Result<u8> {
    if recipes.is_empty() {
        bail!("the recipe file holds no image");
    }
    // Before any helper thread starts: the namespace is per thread.
    enter_private_mount_namespace()
        .context("entering a private mount namespace (kiln image build runs as root)")?;
    for recipe in recipes {
        let report =
            build(recipe, opts).with_context(|| format!("building image {}", recipe.imagename))?;
        print_report(&report);
    }
    Ok(0)
}

fn print_report(report: &BuildReport) {
    eprint!("{}", timing_table(&report.timings));
    for (step, secs) in &report.steps {
        eprintln!("{step:<40} {secs:>8.2}s");
    }
    for path in &report.outputs {
        println!("{}", path.display());
    }
}
