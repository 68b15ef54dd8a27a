//! The command line, as clap parses it. Nothing here acts; `lib.rs` dispatches.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::build::BuildFlags;

/// Build reproducible release artifacts of Python web apps, and deploy them
/// atomically with graceful reloads and one-step rollback.
#[derive(Debug, Parser)]
#[command(
    name = "release",
    version,
    max_term_width = 100,
    disable_help_subcommand = true,
    after_help = "`release help config` prints the release.toml reference."
)]
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
    /// Colour in human output: auto = when stdout is a terminal and NO_COLOR is unset.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the artifact of an app at a git commit (CI side).
    Build(Box<BuildFlags>),
    /// Show an artifact's manifest summary without unpacking it.
    Inspect {
        /// The .tar.zst or .tar.gz artifact.
        artifact: PathBuf,
    },
    #[command(flatten)]
    Host(HostCommand),
    /// Print a shell completion script: `release completions bash > /etc/bash_completion.d/release`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), generated from this command line: `release man > release.1`.
    Man,
    /// Print the help of a command, or a topic: `release help config` (the release.toml reference).
    Help {
        /// A command name, or `config`.
        topic: Option<String>,
    },
}

/// The host-side commands (docs/host.md). All need --root or $RELEASE_ROOT.
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Create the host layout (root, releases/, shared/) and a commented release.toml; with
    /// --wsgi/--celery, the services and their systemd units too.
    Init(InitArgs),
    /// Verify an artifact and install it into releases/<id>, read-only (host side).
    Install(InstallArgs),
    /// Switch `current` to an installed release (ID: unique prefix of a release id or commit).
    Activate {
        /// Release id or commit, or a unique prefix of one.
        id: String,
        /// Do not run the before_activate hook (e.g. on every host but the first of a fleet).
        #[arg(long)]
        skip_before_activate: bool,
        /// Only say what would happen (the preflight, without the check hook); change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Install an artifact (or reuse it when installed), activate it and prune, under one lock.
    Deploy(DeployArgs),
    /// Switch back to the release that was live before the current one (by the journal).
    Rollback {
        /// Go to this release instead (id or commit prefix).
        #[arg(long, value_name = "ID")]
        to: Option<String>,
        /// Only say where it would go; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List installed releases, newest install first, with their state.
    List,
    /// Show the current release (since when, by whom) and each service's processes with the release each really runs.
    Status,
    /// Remove old releases; keeps the newest, the current, the rollback target and any in use.
    Prune {
        /// How many of the newest installs to keep (default: `keep` in release.toml, else 5).
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-hash an installed release (default: the current one) against its manifest.
    Verify {
        /// Release id or commit prefix; default: the current release.
        id: Option<String>,
    },
}

/// `release init`: with `--wsgi` and/or `--celery`, release.toml gets a `web`
/// (gunicorn) and/or `worker` (celery) service with its launch line through
/// `current`, and the systemd units that run those lines are printed (or
/// written with --systemd DIR).
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The WSGI app gunicorn serves, e.g. mysite.wsgi:application: adds the `web` service.
    #[arg(long, value_name = "MODULE:APP")]
    pub wsgi: Option<String>,
    /// The celery app (`celery -A APP`), e.g. mysite: adds the `worker` service.
    #[arg(long, value_name = "APP")]
    pub celery: Option<String>,
    /// Directory of the pidfiles [default: /run/NAME].
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Address gunicorn listens on.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8000")]
    pub bind: String,
    /// gunicorn worker processes.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub workers: u32,
    /// URL path polled after every deploy (e.g. /healthz): writes [health] for the bind address.
    #[arg(long, value_name = "PATH")]
    pub health: Option<String>,
    /// Prefix of the unit names and the default run directory [default: the root's directory name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// User= of the systemd units.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Write the systemd units into DIR (e.g. /etc/systemd/system) instead of printing them;
    /// release.toml then starts the services with `systemctl start` on the first deploy.
    #[arg(long, value_name = "DIR")]
    pub systemd: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The .tar.zst or .tar.gz artifact written by `release build`.
    pub artifact: PathBuf,
    /// Expected sha256 of the artifact file (also checked: ARTIFACT.sha256 beside it).
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Re-point the venv to this interpreter (same version and ABI as the build's);
    /// with --rebuild-venv, the interpreter to rebuild with.
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Recreate the venv offline from the release's wheels/ with this host's python3.
    #[arg(long)]
    pub rebuild_venv: bool,
    /// Only say what would happen (digest, manifest, interpreter and space checks); change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub install: InstallArgs,
    /// Do not run the before_activate hook (e.g. on every host but the first of a fleet).
    #[arg(long)]
    pub skip_before_activate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to colour stdout: `always`/`never` win; `auto` colours a
    /// terminal unless NO_COLOR is set to anything non-empty.
    pub fn enabled(self) -> bool {
        use std::io::IsTerminal;
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}
