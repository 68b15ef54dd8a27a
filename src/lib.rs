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
pub mod pid;
pub mod python;
pub mod signature;
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

/// `release help [TOPIC]`: a command's help, or the release.toml reference.
fn help(topic: Option<&str>) -> Result<()> {
    use std::io::Write;
    let mut command = <Cli as clap::CommandFactory>::command();
    let text = match topic {
        None => command.render_long_help().to_string(),
        Some("config" | "release.toml") => host::config::REFERENCE.to_string(),
        Some(name) if command.find_subcommand(name).is_some() => {
            // Exactly what `release NAME --help` prints.
            match command.try_get_matches_from_mut(["release", name, "--help"]) {
                Err(help) => help.render().to_string(),
                Ok(_) => unreachable!("--help always ends parsing"),
            }
        }
        Some(name) => {
            return Err(error::Error::Usage(format!(
                "no help topic {name:?}\n  fix: `release help config` (the release.toml reference) or `release help COMMAND`; `release --help` lists the commands"
            )))
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    Ok(())
}

fn dispatch(cli: &Cli, printer: &Printer) -> Result<ExitCode> {
    match &cli.command {
        Command::Build(flags) => {
            let report = build::run(flags, printer)?;
            printer.data(&report, || match &report.delta {
                Some(delta) => format!(
                    "{}\n{}\n",
                    report.artifact.display(),
                    delta.artifact.display()
                ),
                None => format!("{}\n", report.artifact.display()),
            });
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
        Command::Help { topic } => help(topic.as_deref())?,
    }
    Ok(ExitCode::Success)
}
