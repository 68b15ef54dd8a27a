//! What the journal says about releases: which were live in which order, which
//! were rolled back, when each was last activated and by whom — and from that,
//! the rollback target.
//!
//! Rules (docs/host.md):
//! * every `activated` or `rolled_back` event makes its release live;
//! * `rolled_back` marks the release it left (`from`) as rolled back, and a
//!   `failed` event with `reverted` marks the release that failed;
//! * a release that becomes live again loses its mark (`activate C` clears C);
//! * the rollback target is the most recently live release that is not the
//!   current one and not marked rolled back.

use std::collections::{HashMap, HashSet};

use crate::error::Result;
use crate::host::journal::{Event, Journal, What};
use crate::host::layout::Host;
use crate::host::release_id::ReleaseId;
use crate::output::Printer;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    pub at: String,
    pub user: String,
}

#[derive(Debug, Default)]
pub struct ReleaseHistory {
    /// Releases in the order they became live (with repeats).
    live: Vec<ReleaseId>,
    rolled_back: HashSet<ReleaseId>,
    last_activation: HashMap<ReleaseId, Activation>,
    /// The release the journal's last switch left live.
    live_now: Option<ReleaseId>,
}

impl ReleaseHistory {
    /// Read the root's journal once; lines that are not events are skipped
    /// with a warning.
    pub fn read(host: &Host, printer: &Printer) -> Result<ReleaseHistory> {
        let journal = Journal::new(&host.journal).read()?;
        if !journal.bad_lines.is_empty() {
            printer.warn(&format!(
                "{}: ignored line(s) {:?} that are not journal events",
                host.journal.display(),
                journal.bad_lines
            ));
        }
        Ok(ReleaseHistory::from_events(&journal.events))
    }

    pub fn from_events(events: &[Event]) -> ReleaseHistory {
        let mut h = ReleaseHistory::default();
        for e in events {
            match e.what {
                What::Activated | What::RolledBack => {
                    h.make_live(&e.release);
                    h.live_now = Some(e.release.clone());
                    h.last_activation.insert(
                        e.release.clone(),
                        Activation {
                            at: e.at.clone(),
                            user: e.user.clone(),
                        },
                    );
                    if e.what == What::RolledBack {
                        if let Some(from) = &e.from {
                            if from != &e.release {
                                h.rolled_back.insert(from.clone());
                            }
                        }
                    }
                }
                What::Failed { reverted: true, .. } => {
                    h.rolled_back.insert(e.release.clone());
                    if let Some(from) = &e.from {
                        h.make_live(from);
                    }
                    h.live_now = e.from.clone();
                }
                _ => {}
            }
        }
        h
    }

    fn make_live(&mut self, id: &ReleaseId) {
        self.rolled_back.remove(id);
        self.live.push(id.clone());
    }

    /// The release the journal says is live: the last switch's target (or,
    /// after a reverted failure, the release switched back to). It differs
    /// from `current` only when a command died between switching `current`
    /// and journaling it, or when `current` was changed by hand.
    pub fn live_now(&self) -> Option<&ReleaseId> {
        self.live_now.as_ref()
    }

    pub fn is_rolled_back(&self, id: &ReleaseId) -> bool {
        self.rolled_back.contains(id)
    }

    pub fn last_activation(&self, id: &ReleaseId) -> Option<&Activation> {
        self.last_activation.get(id)
    }

    /// The release `rollback` goes to from `current`: the most recently live
    /// one that is neither `current` nor rolled back. Whether it is still
    /// installed is for the caller to check (and refuse if not).
    pub fn rollback_target(&self, current: Option<&ReleaseId>) -> Option<&ReleaseId> {
        self.live
            .iter()
            .rev()
            .find(|id| Some(*id) != current && !self.rolled_back.contains(*id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `A` → `aaaaaaaaaaaa-20260101T000000Z`: one letter names a release.
    fn id(letter: &str) -> ReleaseId {
        let commit = letter.to_lowercase().repeat(12);
        ReleaseId::parse(&format!("{commit}-20260101T000000Z")).unwrap()
    }

    fn ev(what: What, release: &str, from: Option<&str>) -> Event {
        let mut e = Event::new(what, &id(release), from.map(id).as_ref());
        e.at = "t".into();
        e
    }

    fn failed(reverted: bool) -> What {
        What::Failed {
            step: None,
            error: None,
            reverted,
        }
    }

    fn installed() -> What {
        What::Installed {
            commit: None,
            python: None,
            venv_rebuilt: false,
        }
    }

    #[test]
    fn two_rollbacks_go_two_steps_back_and_activate_clears_the_mark() {
        use What::*;
        let mut events = vec![
            ev(Activated, "A", None),
            ev(Activated, "B", Some("A")),
            ev(Activated, "C", Some("B")),
        ];
        let h = ReleaseHistory::from_events(&events);
        assert_eq!(h.rollback_target(Some(&id("C"))), Some(&id("B")));

        events.push(ev(RolledBack, "B", Some("C")));
        let h = ReleaseHistory::from_events(&events);
        assert!(h.is_rolled_back(&id("C")));
        assert_eq!(h.rollback_target(Some(&id("B"))), Some(&id("A")));

        events.push(ev(RolledBack, "A", Some("B")));
        let h = ReleaseHistory::from_events(&events);
        assert_eq!(h.rollback_target(Some(&id("A"))), None);

        events.push(ev(Activated, "C", Some("A")));
        let h = ReleaseHistory::from_events(&events);
        assert!(!h.is_rolled_back(&id("C")));
        assert!(h.is_rolled_back(&id("B")));
        assert_eq!(h.rollback_target(Some(&id("C"))), Some(&id("A")));
    }

    #[test]
    fn a_reverted_failure_marks_the_release_and_restores_the_old_one() {
        use What::*;
        let failed = ev(failed(true), "B", Some("A"));
        let events = vec![
            ev(Activated, "A", None),
            ev(Activated, "B", Some("A")),
            failed,
        ];
        let h = ReleaseHistory::from_events(&events);
        assert!(h.is_rolled_back(&id("B")));
        assert_eq!(h.rollback_target(Some(&id("A"))), None);
        assert_eq!(h.live_now(), Some(&id("A")));
    }

    #[test]
    fn live_now_is_the_last_switch_and_ignores_everything_else() {
        use What::*;
        assert_eq!(ReleaseHistory::from_events(&[]).live_now(), None);
        let mut events = vec![
            ev(installed(), "A", None),
            ev(Activated, "A", None),
            ev(installed(), "B", None),
            ev(Activated, "B", Some("A")),
            ev(RolledBack, "A", Some("B")),
        ];
        assert_eq!(
            ReleaseHistory::from_events(&events).live_now(),
            Some(&id("A"))
        );
        events.push(ev(failed(false), "C", Some("A")));
        events.push(ev(Pruned, "B", None));
        assert_eq!(
            ReleaseHistory::from_events(&events).live_now(),
            Some(&id("A"))
        );
        // A first activation that failed and was reverted leaves nothing live.
        let failed = ev(failed(true), "A", None);
        let events = vec![ev(Activated, "A", None), failed];
        assert_eq!(ReleaseHistory::from_events(&events).live_now(), None);
    }

    #[test]
    fn check_failures_change_nothing() {
        use What::*;
        let events = vec![
            ev(Activated, "A", None),
            ev(failed(false), "B", Some("A")),
            ev(Activated, "C", Some("A")),
        ];
        let h = ReleaseHistory::from_events(&events);
        assert!(!h.is_rolled_back(&id("B")));
        assert_eq!(h.rollback_target(Some(&id("C"))), Some(&id("A")));
    }
}
