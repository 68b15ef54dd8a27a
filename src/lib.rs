//! `release`: reproducible artifacts of Python web apps (CI side) and atomic,
//! journaled deploys with graceful reloads (host side). See docs/design.md.

pub mod archive;
pub mod build;
pub mod cli;
pub mod crashpoint;
pub mod error;
pub mod exit_codes;
pub mod fsutil;
pub mod host;
pub mod inspect;
pub mod manifest;
pub mod output;
pub mod python;
pub mod tree;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::Result;
use crate::exit_codes::ExitCode;
use crate::output::Printer;

/// Parse the command line, run the command, report errors; the exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let printer = Printer {
        json: cli.json,
        quiet: cli.quiet,
        verbose: cli.verbose,
        color: cli.color.enabled(),
    };
    match dispatch(&cli, &printer) {
        Ok(code) => code,
        Err(err) => {
            let code = err.exit_code();
            if cli.json {
                let body = serde_json::json!({
                    "error": err.to_string(),
                    "exit_code": code as u8,
                });
                eprintln!("{body}");
            } else {
                eprintln!("error: {err}");
            }
            code
        }
    }
}

fn dispatch(cli: &Cli, printer: &Printer) -> Result<ExitCode> {
    match &cli.command {
        Command::Build(flags) => {
            let report = build::run(flags, printer)?;
            printer.data(&report, || format!("{}\n", report.artifact.display()));
        }
        Command::Inspect { artifact } => {
            let inspection = inspect::inspect(artifact)?;
            printer.data(&inspection, || inspection.human());
        }
        Command::Host(command) => {
            return host::run(command, cli.root.as_deref(), cli.wait, printer);
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "release", &mut std::io::stdout());
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
        }
    }
    Ok(ExitCode::Success)
}
