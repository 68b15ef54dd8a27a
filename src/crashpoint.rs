//! Crash points: the named steps of `install`, `activate` and `rollback` (and
//! their updates of the served `static/`) where
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

/// One crash point: a named step of `install`, `activate` or `rollback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrashPoint {
    InstallManifestRead,
    InstallIncomingCreated,
    InstallMidExtract,
    InstallExtracted,
    InstallSharedLinked,
    InstallReadOnly,
    InstallSynced,
    InstallRenamed,
    InstallJournaled,
    InstallStaticAdded,
    ActivateChecked,
    ActivateTmpLink,
    ActivateRenamed,
    ActivateFsynced,
    ActivateJournaled,
    ActivateStaticTmpLink,
    ActivateStaticReplaced,
    ActivateReloaded,
    RollbackChecked,
    RollbackTmpLink,
    RollbackRenamed,
    RollbackFsynced,
    RollbackJournaled,
    RollbackStaticTmpLink,
    RollbackStaticReplaced,
    RollbackReloaded,
    JournalTorn,
}

const INSTALL: &[&str] = &["install"];
const ACTIVATE: &[&str] = &["activate"];
const ROLLBACK: &[&str] = &["rollback"];
const INSTALL_ACTIVATE: &[&str] = &["install", "activate"];

/// Every crash point, in the order a command reaches them.
pub const ALL: &[CrashPoint] = &[
    CrashPoint::InstallManifestRead,
    CrashPoint::InstallIncomingCreated,
    CrashPoint::InstallMidExtract,
    CrashPoint::InstallExtracted,
    CrashPoint::InstallSharedLinked,
    CrashPoint::InstallReadOnly,
    CrashPoint::InstallSynced,
    CrashPoint::InstallRenamed,
    CrashPoint::InstallJournaled,
    CrashPoint::InstallStaticAdded,
    CrashPoint::ActivateChecked,
    CrashPoint::ActivateTmpLink,
    CrashPoint::ActivateRenamed,
    CrashPoint::ActivateFsynced,
    CrashPoint::ActivateJournaled,
    CrashPoint::ActivateStaticTmpLink,
    CrashPoint::ActivateStaticReplaced,
    CrashPoint::ActivateReloaded,
    CrashPoint::RollbackChecked,
    CrashPoint::RollbackTmpLink,
    CrashPoint::RollbackRenamed,
    CrashPoint::RollbackFsynced,
    CrashPoint::RollbackJournaled,
    CrashPoint::RollbackStaticTmpLink,
    CrashPoint::RollbackStaticReplaced,
    CrashPoint::RollbackReloaded,
    CrashPoint::JournalTorn,
];

/// A crash point's name, commands and what it leaves.
struct Described {
    point: CrashPoint,
    name: &'static str,
    commands: &'static [&'static str],
    leaves: &'static str,
}

const fn d(
    point: CrashPoint,
    name: &'static str,
    commands: &'static [&'static str],
    leaves: &'static str,
) -> Described {
    Described {
        point,
        name,
        commands,
        leaves,
    }
}

const TABLE: &[Described] = &[
    d(
        CrashPoint::InstallManifestRead,
        "install:manifest-read",
        INSTALL,
        "nothing new",
    ),
    d(
        CrashPoint::InstallIncomingCreated,
        "install:incoming-created",
        INSTALL,
        "an empty releases/.incoming-*",
    ),
    d(
        CrashPoint::InstallMidExtract,
        "install:mid-extract",
        INSTALL,
        "a half-unpacked releases/.incoming-* (after 100 files)",
    ),
    d(
        CrashPoint::InstallExtracted,
        "install:extracted",
        INSTALL,
        "a fully unpacked releases/.incoming-*",
    ),
    d(
        CrashPoint::InstallSharedLinked,
        "install:shared-linked",
        INSTALL,
        "releases/.incoming-* with shared links; new shared/ targets",
    ),
    d(
        CrashPoint::InstallReadOnly,
        "install:read-only",
        INSTALL,
        "a read-only releases/.incoming-*",
    ),
    d(
        CrashPoint::InstallSynced,
        "install:synced",
        INSTALL,
        "a read-only releases/.incoming-*, on disk",
    ),
    d(
        CrashPoint::InstallRenamed,
        "install:renamed",
        INSTALL,
        "releases/<id> complete, not journaled",
    ),
    d(
        CrashPoint::InstallJournaled,
        "install:journaled",
        INSTALL,
        "releases/<id> complete and journaled",
    ),
    d(
        CrashPoint::InstallStaticAdded,
        "install:static-added",
        INSTALL,
        "the release's first new file linked into static/, the others not yet",
    ),
    d(
        CrashPoint::ActivateChecked,
        "activate:checked",
        ACTIVATE,
        "nothing new (check hook ran)",
    ),
    d(
        CrashPoint::ActivateTmpLink,
        "activate:tmp-link",
        ACTIVATE,
        "a current.tmp-* link",
    ),
    d(
        CrashPoint::ActivateRenamed,
        "activate:renamed",
        ACTIVATE,
        "current switched, not fsynced, not journaled",
    ),
    d(
        CrashPoint::ActivateFsynced,
        "activate:fsynced",
        ACTIVATE,
        "current switched, not journaled",
    ),
    d(
        CrashPoint::ActivateJournaled,
        "activate:journaled",
        ACTIVATE,
        "current switched and journaled, services not reloaded",
    ),
    d(
        CrashPoint::ActivateStaticTmpLink,
        "activate:static-tmp-link",
        ACTIVATE,
        "switched and journaled; a static/.release-tmp-* link to the new release's file",
    ),
    d(
        CrashPoint::ActivateStaticReplaced,
        "activate:static-replaced",
        ACTIVATE,
        "switched and journaled; one static/ file the new release's, the others the old one's",
    ),
    d(
        CrashPoint::ActivateReloaded,
        "activate:reloaded",
        ACTIVATE,
        "done but the after_activate hook and notify",
    ),
    d(
        CrashPoint::RollbackChecked,
        "rollback:checked",
        ROLLBACK,
        "nothing new (check hook ran)",
    ),
    d(
        CrashPoint::RollbackTmpLink,
        "rollback:tmp-link",
        ROLLBACK,
        "a current.tmp-* link",
    ),
    d(
        CrashPoint::RollbackRenamed,
        "rollback:renamed",
        ROLLBACK,
        "current switched back, not fsynced, not journaled",
    ),
    d(
        CrashPoint::RollbackFsynced,
        "rollback:fsynced",
        ROLLBACK,
        "current switched back, not journaled",
    ),
    d(
        CrashPoint::RollbackJournaled,
        "rollback:journaled",
        ROLLBACK,
        "current switched back and journaled, services not reloaded",
    ),
    d(
        CrashPoint::RollbackStaticTmpLink,
        "rollback:static-tmp-link",
        ROLLBACK,
        "switched back and journaled; a static/.release-tmp-* link to the target's file",
    ),
    d(
        CrashPoint::RollbackStaticReplaced,
        "rollback:static-replaced",
        ROLLBACK,
        "switched back and journaled; one static/ file the target's, the others not yet",
    ),
    d(
        CrashPoint::RollbackReloaded,
        "rollback:reloaded",
        ROLLBACK,
        "done but the after_activate hook and notify",
    ),
    d(
        CrashPoint::JournalTorn,
        "journal:torn",
        INSTALL_ACTIVATE,
        "half a journal line (the first append of the command)",
    ),
];

impl CrashPoint {
    /// The name `RELEASE_CRASHPOINT` and `RELEASE_STOPPOINT` take.
    pub fn name(self) -> &'static str {
        self.describe().name
    }

    /// The commands that pass through it.
    pub fn commands(self) -> &'static [&'static str] {
        self.describe().commands
    }

    /// What the root holds when the process dies there.
    pub fn leaves(self) -> &'static str {
        self.describe().leaves
    }

    fn describe(self) -> &'static Described {
        TABLE
            .iter()
            .find(|d| d.point == self)
            .expect("every crash point is in TABLE")
    }

    /// The crash point named `name`.
    pub fn named(name: &str) -> Option<CrashPoint> {
        ALL.iter().copied().find(|p| p.name() == name)
    }
}

/// Die here (SIGKILL) or stop here (SIGSTOP) when the environment names this
/// point.
#[cfg(feature = "crashpoints")]
pub fn crashpoint(point: CrashPoint) {
    imp::hit(point);
}

/// Nothing at all: the `crashpoints` feature is off.
#[cfg(not(feature = "crashpoints"))]
#[inline(always)]
pub fn crashpoint(_point: CrashPoint) {}

/// Whether `RELEASE_CRASHPOINT` names this point (to prepare a torn write
/// before [`crashpoint`]).
#[cfg(feature = "crashpoints")]
pub fn armed(point: CrashPoint) -> bool {
    imp::armed(point)
}

/// Always `false`: the `crashpoints` feature is off.
#[cfg(not(feature = "crashpoints"))]
#[inline(always)]
pub fn armed(_point: CrashPoint) -> bool {
    false
}

#[cfg(feature = "crashpoints")]
mod imp {
    use std::sync::atomic::{AtomicBool, Ordering};

    use rustix::process::{getpid, kill_process, Signal};

    use super::CrashPoint;

    fn named(var: &str, point: CrashPoint) -> bool {
        std::env::var_os(var).is_some_and(|v| v == point.name())
    }

    pub fn armed(point: CrashPoint) -> bool {
        named("RELEASE_CRASHPOINT", point)
    }

    pub fn hit(point: CrashPoint) {
        if armed(point) {
            let _ = kill_process(getpid(), Signal::KILL);
            // SIGKILL cannot be caught; it is delivered before kill returns.
            unreachable!(
                "SIGKILL at crash point {} did not kill the process",
                point.name()
            );
        }
        static STOPPED: AtomicBool = AtomicBool::new(false);
        if named("RELEASE_STOPPOINT", point) && !STOPPED.swap(true, Ordering::SeqCst) {
            let _ = kill_process(getpid(), Signal::STOP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CrashPoint, ALL, TABLE};

    #[test]
    fn every_crash_point_has_one_name_and_a_command() {
        let described: Vec<CrashPoint> = TABLE.iter().map(|d| d.point).collect();
        assert_eq!(described, ALL, "TABLE describes ALL, in order");
        for point in ALL {
            assert_eq!(CrashPoint::named(point.name()), Some(*point));
            assert!(!point.commands().is_empty());
            let command = point.name().split(':').next().unwrap();
            assert!(
                point.commands().contains(&command) || command == "journal",
                "{point:?}"
            );
        }
        assert_eq!(CrashPoint::named("install:nowhere"), None);
    }
}
