//! `release prune [--keep N] [--dry-run]`: remove old releases. Kept: the N
//! newest installs, the current release, the rollback target, and any release
//! a running process still uses (`/proc`).

use serde::Serialize;

use crate::error::Result;
use crate::fsutil;
use crate::fsutil::{random_suffix, remove_tree};
use crate::host::config::HostConfig;
use crate::host::journal::{Event, Journal, What};
use crate::host::layout::{Host, REMOVING_PREFIX};
use crate::host::lock::Lock;
use crate::host::procs;
use crate::host::release_id::ReleaseId;
use crate::host::releases::{self, Installed};
use crate::host::state::ReleaseHistory;
use crate::host::statics;
use crate::output::Printer;

#[derive(Debug, Serialize)]
pub struct PruneReport {
    pub keep: usize,
    pub dry_run: bool,
    /// Removed (or, with --dry-run, to be removed), oldest last.
    pub removed: Vec<ReleaseId>,
    /// Kept, with why.
    pub kept: Vec<Kept>,
}

#[derive(Debug, Serialize)]
pub struct Kept {
    pub id: ReleaseId,
    pub reason: String,
}

impl PruneReport {
    pub fn human(&self) -> String {
        let mut text = String::new();
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        for id in &self.removed {
            text.push_str(&format!("{verb} {id}\n"));
        }
        for k in &self.kept {
            text.push_str(&format!("kept    {}  ({})\n", k.id, k.reason));
        }
        text
    }
}

/// Decide what goes; nothing is changed.
fn plan(host: &Host, keep: usize) -> Result<(Vec<Installed>, Vec<Kept>)> {
    let list = releases::installed(host)?;
    let current = host.current()?;
    let current_id = current.id();
    let history = ReleaseHistory::from_events(&Journal::new(&host.journal).read()?.events);
    let target = history.rollback_target(current_id);
    let in_use = procs::releases_in_use(&host.releases);
    let mut remove = Vec::new();
    let mut kept = Vec::new();
    for (i, release) in list.into_iter().enumerate() {
        let mut reasons = Vec::new();
        if current_id == Some(&release.id) {
            reasons.push("current".to_string());
        }
        if target == Some(&release.id) {
            reasons.push("rollback target".to_string());
        }
        if i < keep {
            reasons.push(format!("one of the {keep} newest"));
        }
        if let Some(pids) = in_use.get(release.name()) {
            let pids: Vec<String> = pids.iter().map(i32::to_string).collect();
            reasons.push(format!("in use by pid {}", pids.join(", ")));
        }
        if reasons.is_empty() {
            remove.push(release);
        } else {
            kept.push(Kept {
                id: release.id.clone(),
                reason: reasons.join(", "),
            });
        }
    }
    Ok((remove, kept))
}

/// What would go, without the lock.
pub fn dry_run(host: &Host, keep: usize) -> Result<PruneReport> {
    let (remove, kept) = plan(host, keep)?;
    Ok(PruneReport {
        keep,
        dry_run: true,
        removed: remove.into_iter().map(|r| r.id).collect(),
        kept,
    })
}

/// Remove old releases under the lock. Each goes in one rename to
/// `releases/.removing-*` first, so a half-deleted release never looks
/// installed; a leftover is finished by the next mutating command.
pub fn prune(
    host: &Host,
    lock: &Lock,
    config: &HostConfig,
    keep: usize,
    printer: &Printer,
) -> Result<PruneReport> {
    let (remove, kept) = plan(host, keep)?;
    // First the served static files: what only the releases that go have
    // leaves static/ before they do.
    let going: Vec<String> = remove.iter().map(|r| r.name().to_string()).collect();
    statics::before_prune(host, lock, config, &going, printer)?;
    let journal = Journal::new(&host.journal);
    let mut removed = Vec::new();
    for release in remove {
        let trash = host.releases.join(format!(
            "{REMOVING_PREFIX}{}-{}",
            release.name(),
            random_suffix()
        ));
        fs_err::rename(&release.dir, &trash)?;
        fsutil::fsync_dir(&host.releases)?;
        journal.append(lock, &Event::new(What::Pruned, &release.id, None))?;
        remove_tree(&trash)?;
        printer.progress(&format!("removed {}", release.id));
        removed.push(release.id);
    }
    Ok(PruneReport {
        keep,
        dry_run: false,
        removed,
        kept,
    })
}
