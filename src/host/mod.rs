//! The host side: install artifacts into `releases/<id>`, switch `current`
//! atomically, roll back by the journal, list, prune and verify (docs/design.md §2,
//! docs/host.md).
//!
//! Modules follow the data flow: `layout` (the root and its checks) → `lock`
//! → `install` (with `extract`, `reuse`, `python`, `record`) → `activate`
//! (with `hooks`, and `services`, which drives `reload` for each service) →
//! `journal` / `state` (what happened, what is live) → `list`, `status`,
//! `prune`, `verify`; `statics` keeps the served `<root>/static/` in step
//! with install, the switches and prune. `procs` is the one reader of `/proc` (reloads, status, prune);
//! `config` is release.toml; `releases` and `release_id` name what is installed.
//!
//! Mutating commands (install, activate, deploy, rollback, prune) hold the
//! root's lock for their whole run and first remove what a killed command left
//! behind; read-only commands (list, status, verify) take no lock.

pub mod activate;
pub mod config;
pub mod dirs;
pub mod dry_run;
pub mod durable;
pub mod extract;
pub mod fetch;
pub mod hooks;
mod init;
pub mod install;
pub mod journal;
pub mod layout;
pub mod list;
pub mod lock;
pub mod procs;
pub mod prune;
pub mod python;
pub mod record;
pub mod release_id;
pub mod releases;
pub mod reload;
pub mod reuse;
pub mod services;
pub mod source;
pub mod state;
pub mod statics;
pub mod status;
pub mod verify;

use std::path::Path;

use serde::Serialize;

use crate::cli::{DeployArgs, HostCommand, InitArgs, InstallArgs};
use crate::error::{
    ActivateError, Error, ForeignCurrentFor, NoCurrentFor, ReleaseError, Result, RootError,
};
use crate::exit_codes::ExitCode;
use crate::output::Printer;

use self::activate::Switch;
use self::config::HostConfig;
use self::install::InstallOptions;
use self::layout::Host;
use self::lock::Lock;

impl InstallArgs {
    fn options(&self) -> InstallOptions {
        InstallOptions {
            artifact: self.artifact.clone(),
            sha256: self.sha256.clone(),
            python: self.python.clone(),
            rebuild_venv: self.rebuild_venv,
            signature: self.signature.clone(),
            fetch_timeout: self.fetch_timeout.map(std::time::Duration::from_secs_f64),
        }
    }
}

impl InitArgs {
    fn options(&self) -> init::InitOptions {
        init::InitOptions {
            wsgi: self.wsgi.clone(),
            celery: self.celery.clone(),
            run_dir: self.run_dir.clone(),
            bind: self.bind.clone(),
            workers: self.workers,
            health: self.health.clone(),
            name: self.name.clone(),
            user: self.user.clone(),
            systemd: self.systemd.clone(),
        }
    }
}

/// What `release deploy --json` prints: the three steps' reports.
#[derive(Debug, Serialize)]
pub struct DeployReport {
    pub install: install::InstallReport,
    pub activate: activate::ActivateReport,
    pub prune: prune::PruneReport,
}

/// A deploy whose activation was refused before the switch (exit 1) did
/// install (or find) its release: say so, since "current was not touched" is
/// not "nothing changed".
fn installed_but_refused(err: Error, installed: &install::InstallReport) -> Error {
    match err {
        Error::Activate(
            refused @ (ActivateError::CheckFailed(_)
            | ActivateError::BeforeActivateFailed(_)
            | ActivateError::ServicesNotReady { .. }),
        ) => ActivateError::RefusedAfterInstall {
            refused: Box::new(refused),
            release: installed.id.to_string(),
            already_installed: installed.already_installed,
        }
        .into(),
        other => other,
    }
}

/// An open root for a mutating command: checked, configured, locked, and
/// cleaned of what an interrupted command left.
struct Session {
    host: Host,
    config: HostConfig,
    lock: Lock,
}

impl Session {
    fn open(host: Host, create: bool, wait: Option<f64>, printer: &Printer) -> Result<Session> {
        if create {
            host.create()?;
        } else {
            host.check_exists()?;
        }
        host.check_current_is_ours()?;
        let config = HostConfig::load(&host.config)?;
        let lock = Lock::acquire(&host.lock, wait, printer)?;
        host.remove_leftovers(&lock, printer)?;
        Ok(Session { host, config, lock })
    }

    /// `--skip-before-activate`: this run does without the hook.
    fn skip_before_activate(&mut self, skip: bool, printer: &Printer) {
        if skip {
            if let Some(hook) = self.config.hooks.before_activate.take() {
                printer.progress(&format!(
                    "not running the before_activate hook `{hook}` (--skip-before-activate)"
                ));
            }
        }
    }
}

/// Run one host command.
pub fn run(
    command: &HostCommand,
    root: Option<&Path>,
    wait: Option<f64>,
    printer: &Printer,
) -> Result<ExitCode> {
    let host = Host::at(root)?;
    // Every file a host command creates (journal, lock, shared targets, a
    // release's tree) gets the mode we ask for, whatever the caller's umask:
    // check_safe refuses the root's own files group-writable. Set here once.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    if dry_run::run(command, &host, printer)? {
        return Ok(ExitCode::Success);
    }
    match command {
        HostCommand::Install(args) => {
            let s = Session::open(host, true, wait, printer)?;
            let report = install::install(&s.host, &s.lock, &s.config, &args.options(), printer)?;
            printer.data(&report, || format!("{}\n", report.id));
        }
        HostCommand::Activate {
            id,
            skip_before_activate,
            ..
        } => {
            let mut s = Session::open(host, false, wait, printer)?;
            s.skip_before_activate(*skip_before_activate, printer);
            let list = releases::installed(&s.host)?;
            let target = releases::resolve(&s.host, &list, id)?;
            let report = activate::activate(
                &s.host,
                &s.lock,
                &s.config,
                target,
                Switch::Activate,
                printer,
            )?;
            printer.data(&report, || report.human());
        }
        HostCommand::Deploy(args) => deploy(host, args, wait, printer)?,
        HostCommand::Rollback { to, .. } => {
            let s = Session::open(host, false, wait, printer)?;
            let report = activate::rollback(&s.host, &s.lock, &s.config, to.as_deref(), printer)?;
            printer.data(&report, || report.human());
        }
        HostCommand::Init(args) => {
            let report = init::init(&host, &args.options(), printer)?;
            printer.data(&report, || report.human());
        }
        HostCommand::List => {
            host.check_exists()?;
            let rows = list::list(&host, printer)?;
            let served = statics::served(&host);
            printer.data(&rows, || {
                let mut text = list::table(&rows, printer.color);
                if let Some(served) = &served {
                    text.push_str(&served.human());
                }
                text
            });
        }
        HostCommand::Status => {
            host.check_exists()?;
            let config = HostConfig::load(&host.config)?;
            let report = status::status(&host, &config, printer)?;
            printer.data(&report, || report.human(printer.color));
        }
        HostCommand::Prune { keep, dry_run } => prune(host, *keep, *dry_run, wait, printer)?,
        HostCommand::Verify { id } => return verify(&host, id.as_deref(), printer),
    }
    Ok(ExitCode::Success)
}

/// `release deploy`: install, activate, prune, under one lock.
fn deploy(host: Host, args: &DeployArgs, wait: Option<f64>, printer: &Printer) -> Result<()> {
    let mut s = Session::open(host, true, wait, printer)?;
    s.skip_before_activate(args.skip_before_activate, printer);
    let installed = install::install(
        &s.host,
        &s.lock,
        &s.config,
        &args.install.options(),
        printer,
    )?;
    let list = releases::installed(&s.host)?;
    let target = releases::resolve(&s.host, &list, installed.id.as_str())?;
    let activated = activate::activate(
        &s.host,
        &s.lock,
        &s.config,
        target,
        Switch::Activate,
        printer,
    )
    .map_err(|e| installed_but_refused(e, &installed))?;
    let pruned = prune::prune(&s.host, &s.lock, &s.config, s.config.keep, printer)?;
    let report = DeployReport {
        install: installed,
        activate: activated,
        prune: pruned,
    };
    printer.data(&report, || format!("{}\n", report.activate.id));
    Ok(())
}

/// `release prune [--keep N] [--dry-run]`; a dry run takes no lock.
fn prune(
    host: Host,
    keep: Option<usize>,
    dry_run: bool,
    wait: Option<f64>,
    printer: &Printer,
) -> Result<()> {
    if dry_run {
        host.check_exists()?;
        let config = HostConfig::load(&host.config)?;
        let report = prune::dry_run(&host, keep.unwrap_or(config.keep))?;
        printer.data(&report, || report.human());
    } else {
        let s = Session::open(host, false, wait, printer)?;
        let report = prune::prune(
            &s.host,
            &s.lock,
            &s.config,
            keep.unwrap_or(s.config.keep),
            printer,
        )?;
        printer.data(&report, || report.human());
    }
    Ok(())
}

/// `release verify [ID]`: the current release unless one is named; exit 1
/// when it differs from its manifest.
fn verify(host: &Host, id: Option<&str>, printer: &Printer) -> Result<ExitCode> {
    host.check_exists()?;
    let list = releases::installed(host)?;
    let target = match id {
        Some(id) => releases::resolve(host, &list, id)?,
        None => {
            let current = host.current()?;
            if let layout::Current::Foreign(target) = &current {
                return Err(RootError::ForeignCurrent {
                    link: host.current.clone(),
                    target: target.clone(),
                    releases: host.releases.clone(),
                    command: ForeignCurrentFor::Verify,
                }
                .into());
            }
            let Some(current) = current.id() else {
                return Err(ReleaseError::NoCurrent {
                    root: host.root.clone(),
                    command: NoCurrentFor::Verify,
                }
                .into());
            };
            releases::resolve(host, &list, current.as_str())?
        }
    };
    let mut report = verify::verify(target)?;
    if id.is_none() {
        // The current release is checked: so is what is served beside it.
        report.served_static = statics::verify(host, &HostConfig::load(&host.config)?)?;
    }
    printer.data(&report, || {
        let mut text = report.human();
        if let Some(served) = &report.served_static {
            text.push_str(&served.human());
        }
        text
    });
    let mut code = ExitCode::Success;
    if !report.ok {
        eprintln!(
            "error: release {} differs from its manifest ({} problem(s))\n  fix: find out who changed it; then install its artifact again (a fresh copy) and activate that",
            report.id,
            report.problems.len()
        );
        code = ExitCode::Failed;
    }
    if let Some(served) = report.served_static.as_ref().filter(|s| !s.ok) {
        eprintln!(
            "error: {} differs from the installed releases ({} problem(s))\n  fix: run `release activate {}` (it is already current: it puts static/ right and changes nothing else)",
            served.path.display(),
            served.problems.len(),
            report.id
        );
        code = ExitCode::Failed;
    }
    Ok(code)
}
