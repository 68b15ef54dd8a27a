//! `release activate ID` and `release rollback [--to ID]`: one pipeline.
//!
//! 1. **preflight** — the target is installed and complete; if it is already
//!    current, say so and stop.
//! 2. **check** — the `check` hook runs inside the target release; failure
//!    journals `failed` and stops with nothing changed (exit 1).
//!    **services preflight** — every `[[service]]` pidfile names a live
//!    process of this app; otherwise stop with nothing changed (exit 1).
//! 3. **switch** — `current.tmp-*` → `releases/<id>`, `rename(2)` over
//!    `current`, fsync the root; journal `activated` (or `rolled_back`).
//! 4. **reload + health** — [`services::reload_and_check`], the seam for
//!    `[[service]]` and `[health]`. On failure: switch back, reload the old
//!    release, journal `failed` with `reverted`, exit 3.
//! 5. **after** — the `after_activate` hook (a failure is a warning: the
//!    release is live) and `notify` (POST the journal event; never fatal).

use std::time::Instant;

use serde::Serialize;

use crate::crashpoint::{crashpoint, CrashPoint};
use crate::error::{
    ActivateError, CheckFailed, FailedStep, NoCurrentFor, ReleaseError, Restored, Result,
    ServicesFailure,
};
use crate::host::config::HostConfig;
use crate::host::hooks;
use crate::host::journal::{Event, EventKind, Journal, What};
use crate::host::layout::{Current, Host};
use crate::host::lock::Lock;
use crate::host::release_id::ReleaseId;
use crate::host::releases::{self, Installed};
use crate::host::services;
use crate::host::state::ReleaseHistory;
use crate::output::Printer;

/// Why `current` moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    Activate,
    Rollback,
}

/// What `release activate --json` (and rollback) prints.
#[derive(Debug, Serialize)]
pub struct ActivateReport {
    pub id: String,
    pub commit: String,
    /// The release that was current before.
    pub from: Option<String>,
    /// [`EventKind::Activated`] or [`EventKind::RolledBack`]: the journal
    /// event written.
    pub event: EventKind,
    pub already_current: bool,
    pub seconds: f64,
}

impl ActivateReport {
    pub fn human(&self) -> String {
        format!("{}\n", self.id)
    }
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
    let (what, kind) = match switch {
        Switch::Activate => (What::Activated, EventKind::Activated),
        Switch::Rollback => (What::RolledBack, EventKind::RolledBack),
    };

    // The crash point of this kind of switch.
    let point = |activate: CrashPoint, rollback: CrashPoint| match switch {
        Switch::Activate => activate,
        Switch::Rollback => rollback,
    };

    // 1. preflight
    let summary = target.require_complete()?;
    let current = host.current()?;
    // Where we come from is what the journal last recorded as live. It
    // differs from `current` only when a command died after switching
    // `current` but before journaling it (so before any reload): that switch
    // did not finish, and running the command again finishes it.
    let recorded = ReleaseHistory::from_events(&journal.read()?.events)
        .live_now()
        .map(str::to_string);
    let linked = current.id() == Some(target.name.as_str());
    let from = match (recorded.clone(), linked) {
        (Some(r), _) if r != target.name => Some(r),
        // The first switch of this root was never journaled.
        (None, true) => None,
        _ => current.id().map(str::to_string),
    };
    let report = |already_current: bool| ActivateReport {
        id: target.name.clone(),
        commit: summary.commit.clone(),
        from: from.clone(),
        event: kind,
        already_current,
        seconds: started.elapsed().as_secs_f64(),
    };
    if linked && recorded.as_deref() == Some(target.name.as_str()) {
        printer.progress(&format!(
            "{} is already current; nothing changed",
            target.name
        ));
        return Ok(report(true));
    }
    if linked {
        printer.warn(&format!(
            "{} already points to {}, but {} does not record that switch (a command was interrupted after it); finishing it",
            host.current.display(),
            target.name,
            host.journal.display()
        ));
    } else if let (Some(link), Some(recorded)) = (current.id(), recorded.as_deref()) {
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

    // 2. check, inside the new release, before anything changes
    if let Some(check) = &config.hooks.check {
        printer.progress(&format!("check ({}): {check}", target.name));
        if let Err(failure) = hooks::run(check, &target.dir, &target.name) {
            let failed = What::Failed {
                step: Some(FailedStep::Check),
                error: Some(format!("check hook `{check}` failed ({})", failure.status)),
                reverted: false,
            };
            journal.append(lock, &Event::new(failed, &target.name, from.as_deref()))?;
            return Err(ActivateError::CheckFailed(Box::new(CheckFailed {
                hook: check.clone(),
                release: target.name.clone(),
                status: failure.status,
                tail: failure.tail,
                current: from,
                dir: target.dir.clone(),
                config: host.config.clone(),
            }))
            .into());
        }
    }

    // 2b. every service can be reloaded (live pidfile of this app), before
    //     anything changes
    if let Err(failure) = services::preflight(config, host) {
        let event = Event::new(failed(&failure, false), &target.name, from.as_deref());
        journal.append(lock, &event)?;
        hooks::notify(config, &event, printer);
        return Err(ActivateError::ServicesNotReady {
            failure,
            current: from,
        }
        .into());
    }
    crashpoint(point(
        CrashPoint::ActivateChecked,
        CrashPoint::RollbackChecked,
    ));

    // 3. switch
    let crash = match switch {
        _ if !cfg!(feature = "crashpoints") => None,
        Switch::Activate => Some((CrashPoint::ActivateTmpLink, CrashPoint::ActivateRenamed)),
        Switch::Rollback => Some((CrashPoint::RollbackTmpLink, CrashPoint::RollbackRenamed)),
    };
    host.switch_current_at(lock, &target.name, crash)?;
    crashpoint(point(
        CrashPoint::ActivateFsynced,
        CrashPoint::RollbackFsynced,
    ));
    let event = Event::new(what, &target.name, from.as_deref());
    journal.append(lock, &event)?;
    crashpoint(point(
        CrashPoint::ActivateJournaled,
        CrashPoint::RollbackJournaled,
    ));
    printer.progress(&format!(
        "{} {} (was {})",
        if switch == Switch::Activate {
            "activated"
        } else {
            "rolled back to"
        },
        target.name,
        from.as_deref().unwrap_or("none")
    ));

    // 4. reload services + health check; on failure switch back (exit 3)
    if let Err(failure) = services::reload_and_check(config, host, &target.id, printer) {
        printer.warn(&format!(
            "{} failed on {}: {}; switching back",
            failure.step, target.name, failure.cause
        ));
        let restored = match &from {
            Some(previous) => {
                host.switch_current(lock, previous)?;
                let again = match ReleaseId::parse(previous) {
                    Some(id) => services::reload_and_check(config, host, &id, printer).err(),
                    None => None,
                };
                match again {
                    None => Restored::Previous(previous.clone()),
                    Some(failure) => Restored::PreviousFailed {
                        previous: previous.clone(),
                        failure,
                    },
                }
            }
            None => {
                let _ = fs_err::remove_file(&host.current);
                crate::fsutil::fsync_dir(&host.root)?;
                Restored::Removed
            }
        };
        let event = Event::new(failed(&failure, true), &target.name, from.as_deref());
        journal.append(lock, &event)?;
        hooks::notify(config, &event, printer);
        return Err(ActivateError::ActivationFailed {
            release: target.name.clone(),
            failure,
            restored,
        }
        .into());
    }
    crashpoint(point(
        CrashPoint::ActivateReloaded,
        CrashPoint::RollbackReloaded,
    ));

    // 5. after_activate (a failure is reported, the release stays live) and notify
    if let Some(after) = &config.hooks.after_activate {
        if let Err(failure) = hooks::run(after, &target.dir, &target.name) {
            printer.warn(&format!(
                "after_activate hook `{after}` failed ({}); {} stays live:\n{}",
                failure.status, target.name, failure.tail
            ));
        }
    }
    hooks::notify(config, &event, printer);
    Ok(report(false))
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
        Some(query) => releases::resolve(host, &list, query)?,
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
            match list.iter().find(|r| r.name == target) {
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
            target: target.name.clone(),
            why: why.to_string(),
        }
        .into());
    }
    activate(host, lock, config, target, Switch::Rollback, printer)
}
