//! The command line, as clap parses it. Nothing here acts; `lib.rs` dispatches.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::build::BuildFlags;

/// Build reproducible release artifacts of Python web apps, and deploy them
/// atomically with graceful reloads and one-step rollback.
#[derive(Debug, Parser)]
#[command(name = "release", version, max_term_width = 100)]
pub struct Cli {
    /// Host root holding releases/, current and history.jsonl.
    #[arg(long, global = true, env = "RELEASE_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing but data and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Say more about what happens.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Wait up to SECS for another command's lock on the root instead of exiting 4.
    #[arg(long, global = true, value_name = "SECS")]
    pub wait: Option<f64>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the artifact of an app at a git commit (CI side).
    Build(BuildFlags),
    /// Show an artifact's manifest summary without unpacking it.
    Inspect {
        /// The .tar.zst or .tar.gz artifact.
        artifact: PathBuf,
    },
}
