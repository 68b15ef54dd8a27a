//! Crash points: the named steps of `install`, `activate` and `rollback` where
//! the fault tests (tests/it/faults.rs) kill the real binary with SIGKILL, to
//! prove that every step leaves a root the next command repairs
//! (docs/host.md, "Crash safety").
//!
//! They exist only with the `crashpoints` cargo feature, which is off by
//! default: without it [`crashpoint`] is an empty inline function and
//! [`armed`] is the constant `false`, so a release build has none of this.
//! With it:
//!
//! * `RELEASE_CRASHPOINT=NAME`: the process sends itself SIGKILL when it
//!   reaches NAME (a real kill: no destructors, no atexit, no flush; the
//!   kernel only closes the files and releases the lock);
//! * `RELEASE_STOPPOINT=NAME`: the process sends itself SIGSTOP there, once,
//!   so a test can change the world at that moment (fill the disk) and let it
//!   go on with SIGCONT.

/// One crash point: its name and the commands that pass through it.
#[derive(Debug, Clone, Copy)]
pub struct CrashPoint {
    pub name: &'static str,
    /// `install`, `activate` or `rollback`.
    pub commands: &'static [&'static str],
    /// What the root holds when the process dies there.
    pub leaves: &'static str,
}

const fn point(
    name: &'static str,
    commands: &'static [&'static str],
    leaves: &'static str,
) -> CrashPoint {
    CrashPoint {
        name,
        commands,
        leaves,
    }
}

const INSTALL: &[&str] = &["install"];
const ACTIVATE: &[&str] = &["activate"];
const ROLLBACK: &[&str] = &["rollback"];

/// Every crash point, in the order a command reaches them.
pub const ALL: &[CrashPoint] = &[
    point("install:manifest-read", INSTALL, "nothing new"),
    point(
        "install:incoming-created",
        INSTALL,
        "an empty releases/.incoming-*",
    ),
    point(
        "install:mid-extract",
        INSTALL,
        "a half-unpacked releases/.incoming-* (after 100 files)",
    ),
    point(
        "install:extracted",
        INSTALL,
        "a fully unpacked releases/.incoming-*",
    ),
    point(
        "install:shared-linked",
        INSTALL,
        "releases/.incoming-* with shared links; new shared/ targets",
    ),
    point(
        "install:read-only",
        INSTALL,
        "a read-only releases/.incoming-*",
    ),
    point(
        "install:synced",
        INSTALL,
        "a read-only releases/.incoming-*, on disk",
    ),
    point(
        "install:renamed",
        INSTALL,
        "releases/<id> complete, not journaled",
    ),
    point(
        "install:journaled",
        INSTALL,
        "releases/<id> complete and journaled",
    ),
    point("activate:checked", ACTIVATE, "nothing new (check hook ran)"),
    point("activate:tmp-link", ACTIVATE, "a current.tmp-* link"),
    point(
        "activate:renamed",
        ACTIVATE,
        "current switched, not fsynced, not journaled",
    ),
    point(
        "activate:fsynced",
        ACTIVATE,
        "current switched, not journaled",
    ),
    point(
        "activate:journaled",
        ACTIVATE,
        "current switched and journaled, services not reloaded",
    ),
    point(
        "activate:reloaded",
        ACTIVATE,
        "done but the after_activate hook and notify",
    ),
    point("rollback:checked", ROLLBACK, "nothing new (check hook ran)"),
    point("rollback:tmp-link", ROLLBACK, "a current.tmp-* link"),
    point(
        "rollback:renamed",
        ROLLBACK,
        "current switched back, not fsynced, not journaled",
    ),
    point(
        "rollback:fsynced",
        ROLLBACK,
        "current switched back, not journaled",
    ),
    point(
        "rollback:journaled",
        ROLLBACK,
        "current switched back and journaled, services not reloaded",
    ),
    point(
        "rollback:reloaded",
        ROLLBACK,
        "done but the after_activate hook and notify",
    ),
    point(
        "journal:torn",
        &["install", "activate"],
        "half a journal line (the first append of the command)",
    ),
];

/// Die here (SIGKILL) or stop here (SIGSTOP) when the environment names this
/// point.
#[cfg(feature = "crashpoints")]
pub fn crashpoint(name: &'static str) {
    imp::hit(name);
}

/// Nothing at all: the `crashpoints` feature is off.
#[cfg(not(feature = "crashpoints"))]
#[inline(always)]
pub fn crashpoint(_name: &'static str) {}

/// Whether `RELEASE_CRASHPOINT` names this point (to prepare a torn write
/// before [`crashpoint`]).
#[cfg(feature = "crashpoints")]
pub fn armed(name: &'static str) -> bool {
    imp::armed(name)
}

/// Always `false`: the `crashpoints` feature is off.
#[cfg(not(feature = "crashpoints"))]
#[inline(always)]
pub fn armed(_name: &'static str) -> bool {
    false
}

#[cfg(feature = "crashpoints")]
mod imp {
    use std::sync::atomic::{AtomicBool, Ordering};

    use rustix::process::{getpid, kill_process, Signal};

    fn named(var: &str, name: &str) -> bool {
        debug_assert!(
            super::ALL.iter().any(|p| p.name == name),
            "crash point {name} is not in crashpoint::ALL"
        );
        std::env::var_os(var).is_some_and(|v| v == name)
    }

    pub fn armed(name: &str) -> bool {
        named("RELEASE_CRASHPOINT", name)
    }

    pub fn hit(name: &str) {
        if armed(name) {
            let _ = kill_process(getpid(), Signal::KILL);
            // SIGKILL cannot be caught; it is delivered before kill returns.
            unreachable!("SIGKILL at crash point {name} did not kill the process");
        }
        static STOPPED: AtomicBool = AtomicBool::new(false);
        if named("RELEASE_STOPPOINT", name) && !STOPPED.swap(true, Ordering::SeqCst) {
            let _ = kill_process(getpid(), Signal::STOP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ALL;

    fn sources() -> Vec<(String, String)> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        walkdir::WalkDir::new(&src)
            .into_iter()
            .map(Result::unwrap)
            .filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
            .filter(|e| !e.path().ends_with("crashpoint.rs"))
            .map(|e| {
                (
                    e.path().display().to_string(),
                    std::fs::read_to_string(e.path()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn every_crash_point_is_used_in_the_source_and_every_use_is_listed() {
        let sources = sources();
        for point in ALL {
            let quoted = format!("\"{}\"", point.name);
            assert!(
                sources.iter().any(|(_, text)| text.contains(&quoted)),
                "crash point {} is listed but no source file names it",
                point.name
            );
            assert!(
                ALL.iter().filter(|p| p.name == point.name).count() == 1,
                "{} listed twice",
                point.name
            );
            assert!(!point.commands.is_empty());
        }
        // The other way round: each name passed to crashpoint()/armed() (or
        // a switch's crash points) is listed.
        for (path, text) in &sources {
            for piece in text.split('"').skip(1).step_by(2) {
                let looks_like_point = ["install:", "activate:", "rollback:", "journal:"]
                    .iter()
                    .any(|p| piece.starts_with(p))
                    && !piece.contains(' ');
                if looks_like_point {
                    assert!(
                        ALL.iter().any(|p| p.name == piece),
                        "{path} names crash point {piece:?}, which is not in crashpoint::ALL"
                    );
                }
            }
        }
    }
}
