//! One service's reload and the health check: what went wrong, with the pid,
//! pidfile or URL it concerns.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::pid::{Pid, PidfileProblem};

/// A reload that did not happen or could not be confirmed.
#[derive(Debug, Clone)]
pub struct ReloadError {
    pub service: String,
    pub problem: ReloadProblem,
}

/// What went wrong with one service's reload.
#[derive(Debug, Clone)]
pub enum ReloadProblem {
    /// `hup` and `gunicorn-upgrade` signal the pid in the pidfile.
    NeedsPidfile {
        strategy: String,
    },
    Pidfile {
        path: PathBuf,
        problem: PidfileProblem,
    },
    /// The pidfile's pid is not a process of this root.
    NotOurs {
        pid: Pid,
        pidfile: PathBuf,
        cmdline: String,
        root: PathBuf,
    },
    Signal {
        signal: &'static str,
        pid: Pid,
        error: String,
    },
    TriggerNotRunnable {
        command: String,
        error: String,
    },
    TriggerFailed {
        command: String,
        status: String,
        tail: String,
    },
    /// Neither workers nor a working directory in a release to watch.
    Unconfirmable {
        pid: Pid,
    },
    Exited {
        pid: Pid,
    },
    NotShown {
        workers: Vec<Pid>,
        before: Vec<Pid>,
        cwd_release: Option<String>,
    },
    OldMasterExited {
        old: Pid,
    },
    NoNewMaster {
        pidfile: PathBuf,
    },
    NewMasterDied {
        new: Pid,
    },
    NoWorkersOnRelease {
        new: Pid,
        release: String,
    },
    HealthDuringUpgrade(HealthError),
    /// A gunicorn upgrade failed before the old master was told to stop: the
    /// new master was stopped and the old one serves on.
    Abandoned {
        why: Box<ReloadProblem>,
        old: Pid,
    },
    OldMasterStuck {
        old: Pid,
        new: Pid,
        pidfile: PathBuf,
    },
    NewMasterExitedLate {
        new: Pid,
    },
    /// Down on a first deploy, with no `start` and no unit or program.
    CannotStart,
    /// A start or stop command that did not return.
    TriggerTimedOut {
        command: String,
    },
    /// Started, but its processes did not show the release in time.
    StartNotShown {
        command: String,
        timeout: Duration,
        last: Box<StartSeen>,
    },
    /// A service to stop again has no pidfile.
    NothingToStop,
    DidNotStop {
        pid: Pid,
    },
}

/// What the last look at a started service saw.
#[derive(Debug, Clone)]
pub enum StartSeen {
    Pidfile {
        path: PathBuf,
        problem: PidfileProblem,
    },
    /// Its master works outside the release.
    Elsewhere {
        pid: Pid,
        pidfile: PathBuf,
        cwd_release: Option<String>,
        release: String,
    },
}

impl fmt::Display for StartSeen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartSeen::Pidfile { path, problem } => {
                write!(f, "pidfile {} {problem}", path.display())
            }
            StartSeen::Elsewhere {
                pid,
                pidfile,
                cwd_release,
                release,
            } => write!(
                f,
                "pid {pid} from {} works in {}, not in release {release}; start it with its working directory through current (gunicorn --chdir, celery --workdir)",
                pidfile.display(),
                cwd_release.as_deref().unwrap_or("no release")
            ),
        }
    }
}

impl ReloadProblem {
    fn what(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ReloadProblem::*;
        match self {
            NeedsPidfile { strategy } => write!(f, "reload = \"{strategy}\" needs `pidfile`; add the master's pidfile to this [[service]] in release.toml"),
            Pidfile { path, problem } => write!(f, "pidfile {} {problem}", path.display()),
            NotOurs { pid, pidfile, cmdline, root } => write!(
                f,
                "pid {pid} from {} is `{cmdline}`, which does not use {} (not in its command line, working directory or memory maps); the pidfile is probably stale and the pid reused",
                pidfile.display(),
                root.display()
            ),
            Signal { signal, pid, error } => write!(f, "cannot send {signal} to pid {pid}: {error}"),
            TriggerNotRunnable { command, error } => write!(f, "cannot run {command}: {error}"),
            TriggerFailed { command, status, tail } => write!(f, "{command} failed ({status}):\n{tail}"),
            Unconfirmable { pid } => write!(f, "pid {pid} has no worker processes and its working directory is not in a release, so a reload cannot be confirmed"),
            Exited { pid } => write!(f, "pid {pid} exited during the reload (see the service's log)"),
            NotShown { workers, before, cwd_release } => write!(
                f,
                "the reload did not show within the timeout: workers now {workers:?} (before {before:?}), working directory in {}",
                cwd_release.as_deref().unwrap_or("no release")
            ),
            OldMasterExited { old } => write!(f, "the old master (pid {old}) exited after USR2"),
            NoNewMaster { pidfile } => write!(f, "no new master wrote {} within the timeout", pidfile.display()),
            NewMasterDied { new } => write!(f, "the new master (pid {new}) exited: its workers failed to boot (see gunicorn's log)"),
            NoWorkersOnRelease { new, release } => write!(f, "the new master (pid {new}) has no workers on release {release} within the timeout"),
            HealthDuringUpgrade(why) => write!(f, "health check during the upgrade failed: {why}"),
            Abandoned { why, old } => {
                why.what(f)?;
                write!(f, "; the old master (pid {old}) keeps serving")
            }
            OldMasterStuck { old, new, pidfile } => write!(
                f,
                "the old master (pid {old}) did not stop, or the new one (pid {new}) did not take over {}, within the timeout",
                pidfile.display()
            ),
            NewMasterExitedLate { new } => write!(f, "the new master (pid {new}) exited while the old one stopped"),
            CannotStart => f.write_str("release does not know how to start it"),
            TriggerTimedOut { command } => write!(f, "{command} did not return within the timeout and was killed (a start command must start the service and return, as `systemctl start` does)"),
            StartNotShown { command, timeout, last } => write!(f, "started with `{command}`, but within {timeout:?}: {last}"),
            NothingToStop => f.write_str("it has no pidfile, so release cannot tell what to stop"),
            DidNotStop { pid } => write!(f, "pid {pid} did not exit after TERM"),
        }
    }

    /// What to do next, when there is something to say.
    pub fn fix(&self) -> Option<&'static str> {
        use ReloadProblem::*;
        match self {
            Pidfile { .. } => Some("start the service (it picks up `current` when it starts), correct `pidfile`, or set `required = false` on it to deploy while it is down"),
            NotOurs { .. } => Some("restart the service so it rewrites its pidfile, or correct `pidfile`"),
            Unconfirmable { .. } => Some("start it with its working directory through current (gunicorn --chdir, celery --workdir)"),
            NotShown { .. } | StartNotShown { .. } => Some("check the service's log; raise `timeout` on the [[service]] if it is just slow"),
            Abandoned { why, .. } => why.fix(),
            _ => None,
        }
    }
}

impl fmt::Display for ReloadProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.what(f)
    }
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "service {}: ", self.service)?;
        self.problem.what(f)?;
        match self.problem.fix() {
            Some(fix) => write!(f, "\n  fix: {fix}"),
            None => Ok(()),
        }
    }
}

/// The health check never saw the new release.
#[derive(Debug, Clone)]
pub struct HealthError {
    /// What the last attempt saw.
    pub last: HealthAnswer,
    pub waited: Duration,
}

#[derive(Debug, Clone)]
pub enum HealthAnswer {
    Unexpected {
        url: String,
        status: u16,
        body: String,
        /// `expect` of [health], when set.
        expected: Option<String>,
    },
    Unreachable {
        url: String,
        error: String,
    },
}

impl fmt::Display for HealthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.last {
            HealthAnswer::Unexpected {
                url,
                status,
                body,
                expected,
            } => {
                write!(f, "{url} answered {status} with {body:?}, expected a 2xx")?;
                if let Some(expected) = expected {
                    write!(f, " containing {expected:?} (`expect` in [health])")?;
                }
            }
            HealthAnswer::Unreachable { url, error } => write!(f, "{url}: {error}")?,
        }
        write!(f, " (gave up after {:?})", self.waited)
    }
}
