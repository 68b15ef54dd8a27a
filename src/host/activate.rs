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
//!    `current`, fsync the root; journal `activated` (or `rolled_back`).
//! 4. **reload + health** — [`services::reload_and_check`], the seam for
//!    `[[service]]` and `[health]`. On failure: switch back, reload the old
//!    release (its health check is a 2xx alone: `expect` is for the new
//!    release), journal `failed` with `reverted`, exit 3.
//! 5. **after** — the `after_activate` hook (a failure is a warning: the
//!    release is live) and `notify` (POST the journal event; never fatal).

use std::time::Instant;

use serde::Serialize;

use crate::crashpoint::crashpoint;
use crate::error::{Error, Result};
use crate::host::config::HostConfig;
use crate::host::hooks;
use crate::host::journal::{Event, EventKind, Journal};
use crate::host::layout::{Current, Host};
use crate::host::lock::Lock;
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
    /// `activated` or `rolled_back` (the journal event written).
    pub event: &'static str,
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
    let (kind, event_name) = match switch {
        Switch::Activate => (EventKind::Activated, "activated"),
        Switch::Rollback => (EventKind::RolledBack, "rolled_back"),
    };

    // Crash point names for this kind of switch.
    let point = |activate: &'static str, rollback: &'static str| match switch {
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
    // No release was live: there is nothing to keep serving, so services
    // that are down do not stop the switch (they are started, or listed).
    let first = from.is_none();
    let report = |already_current: bool, not_running: Vec<String>| ActivateReport {
        id: target.name.clone(),
        commit: summary.commit.clone(),
        from: from.clone(),
        event: event_name,
        already_current,
        not_running,
        seconds: started.elapsed().as_secs_f64(),
    };
    if linked && recorded.as_deref() == Some(target.name.as_str()) {
        printer.progress(&format!(
            "{} is already current; nothing changed",
            target.name
        ));
        return Ok(report(true, Vec::new()));
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
        if let Err(failure) = hooks::run(check, &target.dir, &target.name, switch.hook_name()) {
            let mut event = Event::new(EventKind::Failed, &target.name, from.as_deref());
            event.step = Some("check".into());
            event.error = Some(format!("check hook `{check}` failed ({})", failure.status));
            journal.append(lock, &event)?;
            let still = from
                .as_deref()
                .map(|f| format!("{f} is still current"))
                .unwrap_or_else(|| "no release is current".into());
            return Err(Error::failed(format!(
                "the check hook `{check}` failed in {} ({}); current was not touched: {still}\n  last lines of its output:\n{}\n  fix: run it yourself in {}/app to see why (PATH={}/venv/bin:$PATH), or change [hooks] check in {}",
                target.name,
                failure.status,
                failure.tail,
                target.dir.display(),
                target.dir.display(),
                host.config.display()
            )));
        }
    }

    // 2b. every service can be reloaded (live pidfile of this app), before
    //     anything changes
    if let Err(failure) = services::preflight(config, host, first) {
        let mut event = Event::new(EventKind::Failed, &target.name, from.as_deref());
        event.step = Some(failure.step.into());
        event.error = Some(failure.reason.clone());
        journal.append(lock, &event)?;
        hooks::notify(config, &event, printer);
        return Err(Error::failed(format!(
            "{}\n  current was not touched: {} is still current",
            failure.reason,
            from.as_deref().unwrap_or("no release")
        )));
    }

    // 2c. before_activate (migrations), inside the new release, last before
    //     the switch: a failure leaves current and the services as they are
    if let (Some(before), Switch::Activate) = (&config.hooks.before_activate, switch) {
        printer.progress(&format!("before_activate ({}): {before}", target.name));
        if let Err(failure) = hooks::run(before, &target.dir, &target.name, switch.hook_name()) {
            let mut event = Event::new(EventKind::Failed, &target.name, from.as_deref());
            event.step = Some("before_activate".into());
            event.error = Some(format!(
                "before_activate hook `{before}` failed ({})",
                failure.status
            ));
            journal.append(lock, &event)?;
            hooks::notify(config, &event, printer);
            let still = from
                .as_deref()
                .map(|f| format!("{f} is still current"))
                .unwrap_or_else(|| "no release is current".into());
            return Err(Error::failed(format!(
                "the before_activate hook `{before}` failed in {} ({}); current and the services were not touched, {still}\n  last lines of its output:\n{}\n  fix: run it yourself in {} to see why, fix the release and deploy again; what the hook changed before it failed (e.g. migrations applied before the failing one) stays: see \"Migrations\" in the README",
                target.name,
                failure.status,
                failure.tail,
                target.dir.display()
            )));
        }
    }
    crashpoint(point("activate:checked", "rollback:checked"));

    // 3. switch
    let crash = match switch {
        _ if !cfg!(feature = "crashpoints") => None,
        Switch::Activate => Some(("activate:tmp-link", "activate:renamed")),
        Switch::Rollback => Some(("rollback:tmp-link", "rollback:renamed")),
    };
    host.switch_current_at(lock, &target.name, crash)?;
    crashpoint(point("activate:fsynced", "rollback:fsynced"));
    let event = Event::new(kind, &target.name, from.as_deref());
    journal.append(lock, &event)?;
    crashpoint(point("activate:journaled", "rollback:journaled"));
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
    let reloaded = match services::reload_and_check(config, host, &target.name, first, printer) {
        Ok(reloaded) => reloaded,
        Err(failure) => {
            return Err(revert(
                host, lock, config, target, &from, &failure, printer, &journal,
            )?)
        }
    };
    crashpoint(point("activate:reloaded", "rollback:reloaded"));

    // 5. after_activate (a failure is reported, the release stays live) and notify
    if let Some(after) = &config.hooks.after_activate {
        if let Err(failure) = hooks::run(after, &target.dir, &target.name, switch.hook_name()) {
            printer.warn(&format!(
                "after_activate hook `{after}` failed ({}); {} stays live:\n{}",
                failure.status, target.name, failure.tail
            ));
        }
    }
    hooks::notify(config, &event, printer);
    if !reloaded.not_running.is_empty() {
        printer.warn(&format!(
            "{} is live, but {} {} not running: start {} as shown above",
            target.name,
            reloaded.not_running.join(", "),
            if reloaded.not_running.len() == 1 {
                "is"
            } else {
                "are"
            },
            if reloaded.not_running.len() == 1 {
                "it"
            } else {
                "them"
            }
        ));
    }
    Ok(report(false, reloaded.not_running))
}

impl Switch {
    /// `RELEASE_SWITCH` for the hooks: `activate` or `rollback`.
    fn hook_name(self) -> &'static str {
        match self {
            Switch::Activate => "activate",
            Switch::Rollback => "rollback",
        }
    }
}

/// Step 4 failed after the switch: put `current` back where it was (or remove
/// it when no release was live, stopping what this attempt started), reload
/// the previous release, journal `failed` with `reverted`; the exit-3 error.
#[allow(clippy::too_many_arguments)]
fn revert(
    host: &Host,
    lock: &Lock,
    config: &HostConfig,
    target: &Installed,
    from: &Option<String>,
    failure: &services::ReloadFailure,
    printer: &Printer,
    journal: &Journal,
) -> Result<Error> {
    printer.warn(&format!(
        "{} failed on {}: {}; switching back",
        failure.step, target.name, failure.reason
    ));
    let restored = match &from {
        Some(previous) => {
            host.switch_current(lock, previous)?;
            // The previous release was serving before this switch: it need
            // not pass the text check `expect` asks of a new release.
            let mut back = config.clone();
            if let Some(health) = &mut back.health {
                health.expect = None;
            }
            let again = services::reload_and_check(&back, host, previous, false, printer);
            match again {
                Ok(_) => format!("switched current back: {previous} is live again"),
                Err(f) => format!(
                    "switched current back to {previous}, but reloading it failed too ({}: {})",
                    f.step, f.reason
                ),
            }
        }
        None => {
            let _ = fs_err::remove_file(&host.current);
            crate::fsutil::fsync_dir(&host.root)?;
            services::stop_started(config, host, &target.name, &failure.started, printer);
            "removed current again: no release was live before this one, and none is now"
                .to_string()
        }
    };
    let mut event = Event::new(EventKind::Failed, &target.name, from.as_deref());
    event.step = Some(failure.step.into());
    event.error = Some(failure.reason.clone());
    event.reverted = true;
    journal.append(lock, &event)?;
    hooks::notify(config, &event, printer);
    Ok(Error::ActivationFailed {
        release: target.name.clone(),
        reason: format!("{} failed: {}", failure.step, failure.reason),
        restored,
        fix: "see `release status` and the service logs; the release is marked rolled back".into(),
    })
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
        return Err(Error::failed(format!(
            "no release is current under {} ({}), so there is nothing to roll back\n  fix: activate one with `release activate ID` (see `release list`)",
            host.root.display(),
            match &current {
                Current::Foreign(t) => format!("current points to {}", t.display()),
                _ => "current does not exist".into(),
            }
        )));
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
                return Err(Error::failed(format!(
                    "nothing to roll back to from {current_id}: {} records no earlier live release that was not rolled back; nothing changed\n  fix: pick one with `release rollback --to ID` or `release activate ID` (see `release list`)",
                    host.journal.display()
                )));
            };
            match list.iter().find(|r| r.name == target) {
                Some(release) => release,
                None => {
                    return Err(Error::failed(format!(
                        "the release before {current_id} was {target}, which is no longer installed (pruned or removed); nothing changed\n  fix: pick an installed one with `release rollback --to ID` (see `release list`), or install its artifact again"
                    )))
                }
            }
        }
    };
    if let Err(why) = &target.summary {
        return Err(Error::failed(format!(
            "rollback target {} is incomplete ({why}); nothing changed\n  fix: pick another with `release rollback --to ID`, or install its artifact again",
            target.name
        )));
    }
    activate(host, lock, config, target, Switch::Rollback, printer)
}
