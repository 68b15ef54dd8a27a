//! `release activate ID` and `release rollback [--to ID]`: one pipeline.
//!
//! 1. **preflight** — the target is installed and complete; if it is already
//!    current, say so and stop.
//! 2. **check** — the `check` hook runs inside the target release; failure
//!    journals `failed` and stops with `current` untouched (exit 1).
//!    **services preflight** — every `[[service]]` pidfile names a live
//!    process of this app (on a first deploy, one that is down may be);
//!    otherwise stop with `current` untouched (exit 1).
//!    **before_activate** — (activate only, not rollback) the hook that
//!    migrates, inside the target release; failure journals `failed` and
//!    stops with `current` and the services untouched (exit 1).
//! 3. **switch** — `current.tmp-*` → `releases/<id>`, `rename(2)` over
//!    `current`, fsync the root; journal `activated` (or `rolled_back`);
//!    the served `static/` takes the new release's version of every path
//!    (host::statics).
//! 4. **reload + health** — [`services::reload_and_check`], the seam for
//!    `[[service]]` and `[health]`. On failure: switch back, reload the old
//!    release (its health check is a 2xx alone: `expect` is for the new
//!    release), journal `failed` with `reverted`, exit 3.
//! 5. **after** — the `after_activate` hook (a failure is a warning: the
//!    release is live) and `notify` (POST the journal event; never fatal).
//!
//! Each step is a function of its own below, in that order.

use std::time::Instant;

use serde::Serialize;

use crate::crashpoint::{crashpoint, CrashPoint};
use crate::error::{
    ActivateError, CheckFailed, Error, FailedStep, NoCurrentFor, ReleaseError, Restored, Result,
    ServicesFailure,
};
use crate::host::config::HostConfig;
use crate::host::hooks;
use crate::host::journal::{Event, EventKind, Journal, What};
use crate::host::layout::{Current, Host};
use crate::host::lock::Lock;
use crate::host::release_id::ReleaseId;
use crate::host::releases::{self, Installed};
use crate::host::services::{self, Reloaded};
use crate::host::state::ReleaseHistory;
use crate::host::statics;
use crate::output::Printer;

/// Why `current` moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    Activate,
    Rollback,
}

impl Switch {
    /// `RELEASE_SWITCH` for the hooks: `activate` or `rollback`.
    fn hook_name(self) -> &'static str {
        match self {
            Switch::Activate => "activate",
            Switch::Rollback => "rollback",
        }
    }

    /// The journal event a finished switch writes.
    pub fn event(self) -> EventKind {
        match self {
            Switch::Activate => EventKind::Activated,
            Switch::Rollback => EventKind::RolledBack,
        }
    }

    /// The crash point of this kind of switch.
    fn point(self, activate: CrashPoint, rollback: CrashPoint) -> CrashPoint {
        match self {
            Switch::Activate => activate,
            Switch::Rollback => rollback,
        }
    }
}

/// What `release activate --json` (and rollback) prints.
#[derive(Debug, Serialize)]
pub struct ActivateReport {
    pub id: ReleaseId,
    pub commit: String,
    /// The release that was current before.
    pub from: Option<ReleaseId>,
    /// [`EventKind::Activated`] or [`EventKind::RolledBack`]: the journal
    /// event written.
    pub event: EventKind,
    pub already_current: bool,
    /// Services left down on a first deploy because `release` cannot start
    /// them (the warning gives their launch lines); empty otherwise.
    pub not_running: Vec<String>,
    pub seconds: f64,
}

impl ActivateReport {
    pub fn human(&self) -> String {
        format!("{}\n", self.id)
    }
}

/// What `release activate --dry-run --json` and `release rollback --dry-run
/// --json` print (and `deploy --dry-run` under `activate`).
#[derive(Debug, Serialize)]
pub struct SwitchPlan {
    pub dry_run: bool,
    /// The release that would become current (null in `deploy --dry-run`
    /// when the artifact is not installed yet: its id is made by the install).
    pub id: Option<ReleaseId>,
    pub commit: String,
    /// The release it would switch from.
    pub from: Option<ReleaseId>,
    /// The journal event the switch would write.
    pub event: EventKind,
    /// True when nothing would change.
    pub already_current: bool,
}

impl SwitchPlan {
    pub fn human(&self) -> String {
        let id = self
            .id
            .as_ref()
            .map_or(self.commit.as_str(), ReleaseId::as_str);
        if self.already_current {
            format!("{id} is already current: nothing would change\n")
        } else {
            format!(
                "would switch current from {} to {id}\n",
                self.from.as_ref().map_or("none", ReleaseId::as_str)
            )
        }
    }
}

/// `activate --dry-run` / `rollback --dry-run`: step 1 and the services
/// preflight of a switch to `target`, with nothing written and no lock
/// taken. The services preflight reads pidfiles and /proc; the check hook is
/// not run (it runs the app's code). What the switch would refuse, this
/// refuses with the same error.
pub fn plan(
    host: &Host,
    config: &HostConfig,
    target: &Installed,
    switch: Switch,
    printer: &Printer,
) -> Result<SwitchPlan> {
    let commit = target.require_complete()?.commit.clone();
    let (from, already_current) = where_from(host, &Journal::new(&host.journal), target, printer)?;
    if !already_current {
        if let Err(failure) = services::preflight(config, host, from.is_none()) {
            return Err(ActivateError::ServicesNotReady {
                failure,
                current: from.as_ref().map(ReleaseId::to_string),
            }
            .into());
        }
    }
    Ok(SwitchPlan {
        dry_run: true,
        id: Some(target.id.clone()),
        commit,
        from,
        event: switch.event(),
        already_current,
    })
}

/// One activation's fixed inputs, shared by its steps.
struct Activation<'a> {
    host: &'a Host,
    lock: &'a Lock,
    config: &'a HostConfig,
    target: &'a Installed,
    switch: Switch,
    printer: &'a Printer,
    journal: Journal,
    /// The release that was live before, by the journal.
    from: Option<ReleaseId>,
}

pub fn activate(
    host: &Host,
    lock: &Lock,
    config: &HostConfig,
    target: &Installed,
    switch: Switch,
    printer: &Printer,
) -> Result<ActivateReport> {
    let started = Instant::now();
    let journal = Journal::new(&host.journal);
    // 1. preflight
    let commit = target.require_complete()?.commit.clone();
    let (from, already) = where_from(host, &journal, target, printer)?;
    let a = Activation {
        host,
        lock,
        config,
        target,
        switch,
        printer,
        journal,
        from,
    };
    let report = |already_current: bool, not_running: Vec<String>| ActivateReport {
        id: target.id.clone(),
        commit: commit.clone(),
        from: a.from.clone(),
        event: switch.event(),
        already_current,
        not_running,
        seconds: started.elapsed().as_secs_f64(),
    };
    if already {
        // A command killed after its switch may not have updated static/.
        a.serve_static(a.name(), statics::Crash::default());
        return Ok(report(true, Vec::new()));
    }
    // No release was live: there is nothing to keep serving, so services
    // that are down do not stop the switch (they are started, or listed).
    let first = a.from.is_none();
    a.check()?; // 2.
    a.services_ready(first)?;
    a.before_activate()?;
    crashpoint(switch.point(CrashPoint::ActivateChecked, CrashPoint::RollbackChecked));
    let event = a.switch_current()?; // 3.
    a.serve_static(a.name(), a.static_crash());
    let reloaded = a.reload(first)?; // 4.
    crashpoint(switch.point(CrashPoint::ActivateReloaded, CrashPoint::RollbackReloaded));
    a.after(&event, &reloaded); // 5.
    Ok(report(false, reloaded.not_running))
}

/// Step 1: the release that was live before (by the journal), and whether
/// the target is already current (then there is nothing to do). Warns about
/// a switch a killed command left unjournaled and about a foreign `current`.
pub fn where_from(
    host: &Host,
    journal: &Journal,
    target: &Installed,
    printer: &Printer,
) -> Result<(Option<ReleaseId>, bool)> {
    let current = host.current()?;
    // Where we come from is what the journal last recorded as live. It
    // differs from `current` only when a command died after switching
    // `current` but before journaling it (so before any reload): that switch
    // did not finish, and running the command again finishes it.
    let recorded = ReleaseHistory::from_events(&journal.read()?.events)
        .live_now()
        .cloned();
    let name = &target.id;
    let linked = current.id() == Some(name);
    let from = match (recorded.clone(), linked) {
        (Some(r), _) if &r != name => Some(r),
        // The first switch of this root was never journaled.
        (None, true) => None,
        _ => current.id().cloned(),
    };
    if linked && recorded.as_ref() == Some(name) {
        printer.progress(&format!("{name} is already current; nothing changed"));
        return Ok((from, true));
    }
    if linked {
        printer.warn(&format!(
            "{} already points to {name}, but {} does not record that switch (a command was interrupted after it); finishing it",
            host.current.display(),
            host.journal.display()
        ));
    } else if let (Some(link), Some(recorded)) = (current.id(), recorded.as_ref()) {
        if link != recorded {
            printer.warn(&format!(
                "{} points to {link}, but {} last recorded {recorded} as live (an interrupted switch, or a change by hand); switching from {recorded}",
                host.current.display(),
                host.journal.display()
            ));
        }
    }
    if let Current::Foreign(link) = &current {
        printer.warn(&format!(
            "{} points to {} (not a release under releases/); it will be replaced",
            host.current.display(),
            link.display()
        ));
    }
    Ok((from, false))
}

impl Activation<'_> {
    fn name(&self) -> &str {
        self.target.name()
    }

    fn event(&self, what: What) -> Event {
        Event::new(what, &self.target.id, self.from.as_ref())
    }

    /// The release that was live before, as errors name it.
    fn previous_name(&self) -> Option<String> {
        self.from.as_ref().map(ReleaseId::to_string)
    }

    /// Step 2: the `check` hook, inside the new release, before anything
    /// changes.
    fn check(&self) -> Result<()> {
        let Some(check) = &self.config.hooks.check else {
            return Ok(());
        };
        let (target, name) = (self.target, self.name());
        self.printer.progress(&format!("check ({name}): {check}"));
        let Err(failure) = hooks::run(check, &target.dir, name, self.switch.hook_name()) else {
            return Ok(());
        };
        let failed = What::Failed {
            step: Some(FailedStep::Check),
            error: Some(format!("check hook `{check}` failed ({})", failure.status)),
            reverted: false,
        };
        self.journal.append(self.lock, &self.event(failed))?;
        Err(ActivateError::CheckFailed(Box::new(CheckFailed {
            hook: check.clone(),
            release: name.to_string(),
            status: failure.status,
            tail: failure.tail,
            current: self.previous_name(),
            dir: target.dir.clone(),
            config: self.host.config.clone(),
        }))
        .into())
    }

    /// Step 2c: the `before_activate` hook (migrations), inside the new
    /// release while the old one serves, last before the switch; never on
    /// a rollback. A failure leaves `current` and the services untouched.
    fn before_activate(&self) -> Result<()> {
        let (Some(before), Switch::Activate) = (&self.config.hooks.before_activate, self.switch)
        else {
            return Ok(());
        };
        let (target, name) = (self.target, self.name());
        self.printer
            .progress(&format!("before_activate ({name}): {before}"));
        let Err(failure) = hooks::run(before, &target.dir, name, self.switch.hook_name()) else {
            return Ok(());
        };
        let failed = What::Failed {
            step: Some(FailedStep::BeforeActivate),
            error: Some(format!(
                "before_activate hook `{before}` failed ({})",
                failure.status
            )),
            reverted: false,
        };
        let event = self.event(failed);
        self.journal.append(self.lock, &event)?;
        hooks::notify(self.config, &event, self.printer);
        Err(ActivateError::BeforeActivateFailed(Box::new(CheckFailed {
            hook: before.clone(),
            release: name.to_string(),
            status: failure.status,
            tail: failure.tail,
            current: self.previous_name(),
            dir: target.dir.clone(),
            config: self.host.config.clone(),
        }))
        .into())
    }

    /// Step 2b: every service can be reloaded (live pidfile of this app),
    /// before anything changes.
    fn services_ready(&self, first: bool) -> Result<()> {
        let Err(failure) = services::preflight(self.config, self.host, first) else {
            return Ok(());
        };
        let event = self.event(failed(&failure, false));
        self.journal.append(self.lock, &event)?;
        hooks::notify(self.config, &event, self.printer);
        Err(ActivateError::ServicesNotReady {
            failure,
            current: self.previous_name(),
        }
        .into())
    }

    /// Step 3b: the served `static/` follows the live release `live`: its
    /// version of every path replaces a differing one (host::statics). A
    /// failure only warns: the switch is done, and the next command retries.
    fn serve_static(&self, live: &str, crash: statics::Crash) {
        if let Err(e) =
            statics::after_switch(self.host, self.lock, self.config, live, crash, self.printer)
        {
            self.printer.warn(&format!(
                "{live} is live, but {} could not be updated to its static files: {e}\n  fix: the next install, activate or prune tries again; `release verify` shows what differs",
                statics::dir(self.host).display()
            ));
        }
    }

    /// The crash points of step 3b.
    fn static_crash(&self) -> statics::Crash {
        let (tmp_link, replaced) = match self.switch {
            Switch::Activate => (
                CrashPoint::ActivateStaticTmpLink,
                CrashPoint::ActivateStaticReplaced,
            ),
            Switch::Rollback => (
                CrashPoint::RollbackStaticTmpLink,
                CrashPoint::RollbackStaticReplaced,
            ),
        };
        statics::Crash {
            added: None,
            tmp_link: Some(tmp_link),
            replaced: Some(replaced),
        }
    }

    /// Step 3: switch `current` and journal it; the event written.
    fn switch_current(&self) -> Result<Event> {
        let switch = self.switch;
        let crash = match switch {
            _ if !cfg!(feature = "crashpoints") => None,
            Switch::Activate => Some((CrashPoint::ActivateTmpLink, CrashPoint::ActivateRenamed)),
            Switch::Rollback => Some((CrashPoint::RollbackTmpLink, CrashPoint::RollbackRenamed)),
        };
        self.host.switch_current_at(self.lock, self.name(), crash)?;
        crashpoint(switch.point(CrashPoint::ActivateFsynced, CrashPoint::RollbackFsynced));
        let what = match switch {
            Switch::Activate => What::Activated,
            Switch::Rollback => What::RolledBack,
        };
        let event = self.event(what);
        self.journal.append(self.lock, &event)?;
        crashpoint(switch.point(CrashPoint::ActivateJournaled, CrashPoint::RollbackJournaled));
        self.printer.progress(&format!(
            "{} {} (was {})",
            match switch {
                Switch::Activate => "activated",
                Switch::Rollback => "rolled back to",
            },
            self.name(),
            self.from.as_ref().map_or("none", ReleaseId::as_str)
        ));
        Ok(event)
    }

    /// Step 4: reload the services and check health; on failure switch back
    /// (exit 3).
    fn reload(&self, first: bool) -> Result<Reloaded> {
        match services::reload_and_check(
            self.config,
            self.host,
            &self.target.id,
            first,
            self.printer,
        ) {
            Ok(reloaded) => Ok(reloaded),
            Err(failure) => Err(self.revert(failure)?),
        }
    }

    /// Step 4 failed after the switch: put `current` back where it was (or
    /// remove it when no release was live, stopping what this attempt
    /// started), reload the previous release, journal `failed` with
    /// `reverted`; the exit-3 error.
    fn revert(&self, failure: ServicesFailure) -> Result<Error> {
        let (host, name) = (self.host, self.name());
        self.printer.warn(&format!(
            "{} failed on {name}: {}; switching back",
            failure.step, failure.cause
        ));
        let restored = match &self.from {
            Some(previous) => {
                host.switch_current(self.lock, previous.as_str())?;
                self.serve_static(previous.as_str(), statics::Crash::default());
                // The previous release was serving before this switch: it
                // need not pass the text check `expect` asks of a new release.
                let mut back = self.config.clone();
                if let Some(health) = &mut back.health {
                    health.expect = None;
                }
                let again =
                    services::reload_and_check(&back, host, previous, false, self.printer).err();
                match again {
                    None => Restored::Previous(previous.to_string()),
                    Some(failure) => Restored::PreviousFailed {
                        previous: previous.to_string(),
                        failure,
                    },
                }
            }
            None => {
                let _ = fs_err::remove_file(&host.current);
                crate::fsutil::fsync_dir(&host.root)?;
                let id = &self.target.id;
                services::stop_started(self.config, host, id, &failure.started, self.printer);
                Restored::Removed
            }
        };
        let event = self.event(failed(&failure, true));
        self.journal.append(self.lock, &event)?;
        hooks::notify(self.config, &event, self.printer);
        Ok(ActivateError::ActivationFailed {
            release: name.to_string(),
            failure: Box::new(failure),
            restored: Box::new(restored),
        }
        .into())
    }

    /// Step 5: the `after_activate` hook (a failure is reported, the release
    /// stays live), `notify`, and what was left down on a first deploy.
    fn after(&self, event: &Event, reloaded: &Reloaded) {
        let (target, name) = (self.target, self.name());
        if let Some(after) = &self.config.hooks.after_activate {
            if let Err(failure) = hooks::run(after, &target.dir, name, self.switch.hook_name()) {
                self.printer.warn(&format!(
                    "after_activate hook `{after}` failed ({}); {name} stays live:\n{}",
                    failure.status, failure.tail
                ));
            }
        }
        hooks::notify(self.config, event, self.printer);
        let down = &reloaded.not_running;
        if !down.is_empty() {
            let (verb, them) = if down.len() == 1 {
                ("is", "it")
            } else {
                ("are", "them")
            };
            self.printer.warn(&format!(
                "{name} is live, but {} {verb} not running: start {them} as shown above",
                down.join(", ")
            ));
        }
    }
}

/// The journal's `failed` event for a failure of the services.
fn failed(failure: &ServicesFailure, reverted: bool) -> What {
    What::Failed {
        step: Some(failure.step),
        error: Some(failure.cause.to_string()),
        reverted,
    }
}

/// `release rollback [--to ID]`: back to the release that was live before the
/// current one according to the journal (skipping rolled-back releases).
pub fn rollback(
    host: &Host,
    lock: &Lock,
    config: &HostConfig,
    to: Option<&str>,
    printer: &Printer,
) -> Result<ActivateReport> {
    let list = releases::installed(host)?;
    let target = rollback_target(host, &list, to)?;
    activate(host, lock, config, target, Switch::Rollback, printer)
}

/// The release `release rollback [--to ID]` goes to; refused (nothing
/// changed) when there is none, or it is not installed and complete.
pub fn rollback_target<'a>(
    host: &Host,
    list: &'a [Installed],
    to: Option<&str>,
) -> Result<&'a Installed> {
    let current = host.current()?;
    let Current::Release(current_id) = &current else {
        return Err(ReleaseError::NoCurrent {
            root: host.root.clone(),
            command: NoCurrentFor::Rollback(match &current {
                Current::Foreign(t) => Some(t.clone()),
                _ => None,
            }),
        }
        .into());
    };
    let target = match to {
        Some(query) => releases::resolve(host, list, query)?,
        None => {
            let history = ReleaseHistory::from_events(&Journal::new(&host.journal).read()?.events);
            // From what the journal last recorded as live: after a rollback
            // killed between its switch and its journal line, running it
            // again finishes that rollback instead of going back again.
            let current_id = history.live_now().unwrap_or(current_id);
            let Some(target) = history.rollback_target(Some(current_id)) else {
                return Err(ActivateError::NothingToRollBack {
                    current: current_id.to_string(),
                    journal: host.journal.clone(),
                }
                .into());
            };
            match list.iter().find(|r| &r.id == target) {
                Some(release) => release,
                None => {
                    return Err(ActivateError::RollbackTargetGone {
                        current: current_id.to_string(),
                        target: target.to_string(),
                    }
                    .into())
                }
            }
        }
    };
    if let Err(why) = &target.summary {
        return Err(ActivateError::RollbackTargetIncomplete {
            target: target.name().to_string(),
            why: why.to_string(),
        }
        .into());
    }
    Ok(target)
}
