//! `release activate` and `rollback`: the check hook, the services, the way back.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::reload::{HealthError, ReloadError};

use super::Explain;

#[derive(Debug)]
pub enum ActivateError {
    /// `deploy` installed the release, then its activation was refused
    /// before the switch (a check or services refusal).
    RefusedAfterInstall {
        refused: Box<ActivateError>,
        release: String,
        already_installed: bool,
    },
    CheckFailed(Box<CheckFailed>),
    /// The `before_activate` hook failed; `current` and the services were
    /// not touched (what the hook itself changed is its own).
    BeforeActivateFailed(Box<CheckFailed>),
    /// A service cannot be reloaded; found before anything changed.
    ServicesNotReady {
        failure: ServicesFailure,
        current: Option<String>,
    },
    /// Activation switched `current`, then failed; the previous release was
    /// switched back (exit 3).
    ActivationFailed {
        release: String,
        failure: Box<ServicesFailure>,
        restored: Box<Restored>,
    },
    NothingToRollBack {
        current: String,
        journal: PathBuf,
    },
    RollbackTargetGone {
        current: String,
        target: String,
    },
    RollbackTargetIncomplete {
        target: String,
        why: String,
    },
}

/// The `check` (or `before_activate`) hook failed in the release about to
/// be activated.
#[derive(Debug)]
pub struct CheckFailed {
    pub hook: String,
    pub release: String,
    pub status: String,
    pub tail: String,
    /// The release that stays current.
    pub current: Option<String>,
    /// The release's directory.
    pub dir: PathBuf,
    /// release.toml.
    pub config: PathBuf,
}

/// What an activation that failed after the switch put back.
#[derive(Debug)]
pub enum Restored {
    /// `current` is back on the previous release, which reloaded.
    Previous(String),
    /// `current` is back on the previous release, whose reload failed too.
    PreviousFailed {
        previous: String,
        failure: ServicesFailure,
    },
    /// There was no previous release; `current` was removed again.
    Removed,
}

impl fmt::Display for Restored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Restored::Previous(previous) => {
                write!(f, "switched current back: {previous} is live again")
            }
            Restored::PreviousFailed { previous, failure } => write!(
                f,
                "switched current back to {previous}, but reloading it failed too ({}: {})",
                failure.step, failure.cause
            ),
            Restored::Removed => f.write_str(
                "removed current again: no release was live before this one, and none is now",
            ),
        }
    }
}

/// The step of an activation that failed (journaled as `step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailedStep {
    /// The `check` hook, before the switch.
    Check,
    /// The `before_activate` hook, last before the switch.
    BeforeActivate,
    /// A service cannot be reloaded, found before the switch.
    Preflight,
    /// A service that was down on a first deploy did not start.
    Start,
    /// A service's reload failed or did not show, after the switch.
    Reload,
    /// The health check, after the reloads.
    Health,
    /// A step named by a newer version, read from the journal.
    #[serde(other)]
    Unknown,
}

impl FailedStep {
    pub fn as_str(self) -> &'static str {
        match self {
            FailedStep::Check => "check",
            FailedStep::BeforeActivate => "before_activate",
            FailedStep::Preflight => "preflight",
            FailedStep::Start => "start",
            FailedStep::Reload => "reload",
            FailedStep::Health => "health",
            FailedStep::Unknown => "unknown",
        }
    }
}

impl fmt::Display for FailedStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the services did not come up on a release.
#[derive(Debug, Clone)]
pub struct ServicesFailure {
    /// [`FailedStep::Preflight`], [`FailedStep::Reload`] or [`FailedStep::Health`].
    pub step: FailedStep,
    pub cause: ServicesCause,
    /// Services this attempt started (first deploy), to stop if it is undone.
    pub started: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum ServicesCause {
    Reload(Box<ReloadError>),
    Health(Box<HealthError>),
}

impl fmt::Display for ServicesCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServicesCause::Reload(e) => e.fmt(f),
            ServicesCause::Health(e) => e.fmt(f),
        }
    }
}

impl CheckFailed {
    /// The `{hook}` hook failed: what it left untouched, and its output.
    fn what(&self, f: &mut fmt::Formatter<'_>, hook: &str, untouched: &str) -> fmt::Result {
        write!(
            f,
            "the {hook} hook `{}` failed in {} ({}); {untouched}: ",
            self.hook, self.release, self.status
        )?;
        match &self.current {
            Some(current) => write!(f, "{current} is still current")?,
            None => f.write_str("no release is current")?,
        }
        write!(f, "\n  last lines of its output:\n{}", self.tail)
    }
}

impl Explain for ActivateError {
    fn what(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ActivateError::*;
        match self {
            RefusedAfterInstall {
                refused,
                release,
                already_installed,
            } => write!(
                f,
                "{refused}\n  release {release} {} and stays inactive; once fixed: `release activate {release}`",
                if *already_installed {
                    "was already installed"
                } else {
                    "is installed"
                }
            ),
            CheckFailed(check) => check.what(f, "check", "current was not touched"),
            BeforeActivateFailed(hook) => hook.what(
                f,
                "before_activate",
                "current and the services were not touched",
            ),
            ServicesNotReady { failure, current } => write!(
                f,
                "{}\n  current was not touched: {} is still current",
                failure.cause,
                current.as_deref().unwrap_or("no release")
            ),
            ActivationFailed {
                release,
                failure,
                restored,
            } => write!(
                f,
                "activating {release} failed after the switch: {} failed: {}\n  {restored}",
                failure.step, failure.cause
            ),
            NothingToRollBack { current, journal } => write!(
                f,
                "nothing to roll back to from {current}: {} records no earlier live release that was not rolled back; nothing changed",
                journal.display()
            ),
            RollbackTargetGone { current, target } => write!(
                f,
                "the release before {current} was {target}, which is no longer installed (pruned or removed); nothing changed"
            ),
            RollbackTargetIncomplete { target, why } => {
                write!(f, "rollback target {target} is incomplete ({why}); nothing changed")
            }
        }
    }

    fn fix(&self) -> Option<String> {
        use ActivateError::*;
        let fix = match self {
            RefusedAfterInstall { .. } => return None,
            ServicesNotReady { .. } => return None,
            CheckFailed(check) => format!(
                "run it yourself in {0}/app to see why (PATH={0}/venv/bin:$PATH), or change [hooks] check in {1}",
                check.dir.display(),
                check.config.display()
            ),
            BeforeActivateFailed(hook) => format!(
                "run it yourself in {} to see why, fix the release and deploy again; what the hook changed before it failed (e.g. migrations applied before the failing one) stays: see \"Migrations\" in the README",
                hook.dir.display()
            ),
            ActivationFailed { .. } => "see `release status` and the service logs; the release is marked rolled back".into(),
            NothingToRollBack { .. } => "pick one with `release rollback --to ID` or `release activate ID` (see `release list`)".into(),
            RollbackTargetGone { .. } => "pick an installed one with `release rollback --to ID` (see `release list`), or install its artifact again".into(),
            RollbackTargetIncomplete { .. } => "pick another with `release rollback --to ID`, or install its artifact again".into(),
        };
        Some(fix)
    }
}
