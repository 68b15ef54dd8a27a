//! `--dry-run` of `install`, `activate`, `deploy` and `rollback` (`prune
//! --dry-run` is prune's own): each says what the command would do, from the
//! checks the command makes before it changes anything, and changes nothing
//! and takes no lock. The fleet playbooks' check mode runs these
//! (ansible/README.md); docs/host.md pins their JSON.

use serde::Serialize;

use crate::cli::HostCommand;
use crate::error::Result;
use crate::host::activate::{self, Switch, SwitchPlan};
use crate::host::config::HostConfig;
use crate::host::install::{self, InstallPlan};
use crate::host::journal::Journal;
use crate::host::layout::Host;
use crate::host::prune::{self, PruneReport};
use crate::host::release_id::ReleaseId;
use crate::host::releases;
use crate::host::state::ReleaseHistory;
use crate::output::Printer;

/// What `release deploy --dry-run --json` prints.
#[derive(Debug, Serialize)]
pub struct DeployPlan {
    pub install: InstallPlan,
    pub activate: SwitchPlan,
    /// What prune would remove as the root is now (before the install);
    /// null when the root does not exist yet.
    pub prune: Option<PruneReport>,
}

/// Run `command` as a dry run when it asks for one; false when it does not.
pub fn run(command: &HostCommand, host: &Host, printer: &Printer) -> Result<bool> {
    match command {
        HostCommand::Install(args) if args.dry_run => {
            check_if_exists(host)?;
            let plan = install::plan(host, &args.options(), printer)?;
            printer.data(&plan, || plan.human());
        }
        HostCommand::Deploy(args) if args.install.dry_run => {
            let exists = check_if_exists(host)?;
            let config = HostConfig::load(&host.config)?;
            let install = install::plan(host, &args.install.options(), printer)?;
            let activate = match &install.id {
                Some(id) => {
                    let list = releases::installed(host)?;
                    let target = releases::resolve(host, &list, id.as_str())?;
                    activate::plan(host, &config, target, Switch::Activate, printer)?
                }
                None => SwitchPlan {
                    dry_run: true,
                    id: None,
                    commit: install.commit.clone(),
                    from: live_release(host)?,
                    event: Switch::Activate.event(),
                    already_current: false,
                },
            };
            let prune = if exists {
                Some(prune::dry_run(host, config.keep)?)
            } else {
                None
            };
            let plan = DeployPlan {
                install,
                activate,
                prune,
            };
            printer.data(&plan, || plan.activate.human());
        }
        HostCommand::Activate {
            id, dry_run: true, ..
        } => {
            host.check_exists()?;
            host.check_current_is_ours()?;
            let config = HostConfig::load(&host.config)?;
            let list = releases::installed(host)?;
            let target = releases::resolve(host, &list, id)?;
            let plan = activate::plan(host, &config, target, Switch::Activate, printer)?;
            printer.data(&plan, || plan.human());
        }
        HostCommand::Rollback { to, dry_run: true } => {
            host.check_exists()?;
            host.check_current_is_ours()?;
            let config = HostConfig::load(&host.config)?;
            let list = releases::installed(host)?;
            let target = activate::rollback_target(host, &list, to.as_deref())?;
            let plan = activate::plan(host, &config, target, Switch::Rollback, printer)?;
            printer.data(&plan, || plan.human());
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// The release a switch would start from: the one the journal last
/// recorded as live, else where `current` points.
fn live_release(host: &Host) -> Result<Option<ReleaseId>> {
    let events = Journal::new(&host.journal).read()?.events;
    match ReleaseHistory::from_events(&events).live_now() {
        Some(live) => Ok(Some(live.clone())),
        None => Ok(host.current()?.id().cloned()),
    }
}

/// The root's safety checks when it exists (a dry run creates nothing, so a
/// root that does not exist yet counts as empty); whether it exists.
fn check_if_exists(host: &Host) -> Result<bool> {
    if std::fs::symlink_metadata(&host.root).is_err() {
        return Ok(false);
    }
    host.check_exists()?;
    host.check_current_is_ours()?;
    Ok(true)
}
