//! `history.jsonl`: the append-only journal of what happened on this host, one
//! JSON object per line. It is the memory behind `rollback` (which release was
//! live before this one) and behind `list` (last activated, by whom).
//!
//! Writers hold the root's lock, append one line with `O_APPEND` in a single
//! `write(2)` and fsync it. A line torn by a crash mid-write is skipped by
//! readers and cut away by the next writer.

use fs_err::os::unix::fs::OpenOptionsExt;
use std::io::Write;
use std::path::{Path, PathBuf};

use fs_err as fs;
use serde::{Deserialize, Serialize};

use crate::crashpoint::CrashPoint;
use crate::error::{FailedStep, Result};
use crate::fsutil;
use crate::host::lock::Lock;
use crate::host::release_id::ReleaseId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A release was installed into `releases/<id>`.
    Installed,
    /// `current` was switched to the release (activate, deploy).
    Activated,
    /// `current` was switched back to the release by `rollback`; `from` is
    /// the release left, which is marked rolled back.
    RolledBack,
    /// Activating the release failed; `error` says why. With `reverted`, the
    /// switch had happened and `current` was put back to `from`.
    Failed,
    /// The release was removed by `prune`.
    Pruned,
    /// An event written by a newer version; kept, otherwise ignored.
    #[serde(other)]
    Unknown,
}

/// One line of the journal: who did what to which release, and when. What
/// only one kind of event carries is in its [`What`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Line", from = "Line")]
pub struct Event {
    /// The release the event is about.
    pub release: ReleaseId,
    /// The release that was current before (activations), if any.
    pub from: Option<ReleaseId>,
    /// RFC 3339 UTC.
    pub at: String,
    /// `$SUDO_USER`, else `$USER`, else the numeric uid.
    pub user: String,
    /// The host name.
    pub host: String,
    pub what: What,
}

/// The kind of an event, with the fields that kind carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    Installed {
        /// The full commit.
        commit: Option<String>,
        /// The interpreter `venv/bin/python` was re-pointed to (`--python`).
        python: Option<String>,
        /// The venv was recreated from `wheels/` (`--rebuild-venv`).
        venv_rebuilt: bool,
    },
    Activated,
    RolledBack,
    Failed {
        /// The step that failed.
        step: Option<FailedStep>,
        /// Why, as the command reported it.
        error: Option<String>,
        /// The switch had happened and was undone.
        reverted: bool,
    },
    Pruned,
    /// An event written by a newer version; kept, otherwise ignored.
    Unknown,
}

impl What {
    pub fn kind(&self) -> EventKind {
        match self {
            What::Installed { .. } => EventKind::Installed,
            What::Activated => EventKind::Activated,
            What::RolledBack => EventKind::RolledBack,
            What::Failed { .. } => EventKind::Failed,
            What::Pruned => EventKind::Pruned,
            What::Unknown => EventKind::Unknown,
        }
    }
}

/// An event as it is written: one flat JSON object (the on-disk format since
/// the first version; fields that do not belong to the kind are left out).
#[derive(Serialize, Deserialize)]
struct Line {
    event: EventKind,
    release: ReleaseId,
    from: Option<ReleaseId>,
    at: String,
    user: String,
    host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    python: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    venv_rebuilt: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step: Option<FailedStep>,
    #[serde(default, skip_serializing_if = "is_false")]
    reverted: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl From<Line> for Event {
    fn from(line: Line) -> Event {
        let what = match line.event {
            EventKind::Installed => What::Installed {
                commit: line.commit,
                python: line.python,
                venv_rebuilt: line.venv_rebuilt,
            },
            EventKind::Activated => What::Activated,
            EventKind::RolledBack => What::RolledBack,
            EventKind::Failed => What::Failed {
                step: line.step,
                error: line.error,
                reverted: line.reverted,
            },
            EventKind::Pruned => What::Pruned,
            EventKind::Unknown => What::Unknown,
        };
        Event {
            release: line.release,
            from: line.from,
            at: line.at,
            user: line.user,
            host: line.host,
            what,
        }
    }
}

impl From<Event> for Line {
    fn from(event: Event) -> Line {
        let mut line = Line {
            event: event.what.kind(),
            release: event.release,
            from: event.from,
            at: event.at,
            user: event.user,
            host: event.host,
            error: None,
            commit: None,
            python: None,
            venv_rebuilt: false,
            step: None,
            reverted: false,
        };
        match event.what {
            What::Installed {
                commit,
                python,
                venv_rebuilt,
            } => {
                line.commit = commit;
                line.python = python;
                line.venv_rebuilt = venv_rebuilt;
            }
            What::Failed {
                step,
                error,
                reverted,
            } => {
                line.step = step;
                line.error = error;
                line.reverted = reverted;
            }
            What::Activated | What::RolledBack | What::Pruned | What::Unknown => {}
        }
        line
    }
}

impl Event {
    /// A new event stamped with now, this user and this host.
    pub fn new(what: What, release: &ReleaseId, from: Option<&ReleaseId>) -> Event {
        Event {
            release: release.clone(),
            from: from.cloned(),
            // Milliseconds: `status` compares process start times with it.
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            user: current_user(),
            host: host_name(),
            what,
        }
    }

    pub fn kind(&self) -> EventKind {
        self.what.kind()
    }
}

/// Who runs this command: the user behind sudo, else `$USER`, else the name
/// of the uid in /etc/passwd, else the uid.
pub fn current_user() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|u| !u.is_empty())
        .unwrap_or_else(|| {
            let uid = rustix::process::getuid().as_raw().to_string();
            std::fs::read_to_string("/etc/passwd")
                .ok()
                .and_then(|passwd| {
                    passwd.lines().find_map(|line| {
                        let fields: Vec<&str> = line.split(':').collect();
                        (fields.get(2) == Some(&uid.as_str())).then(|| fields[0].to_string())
                    })
                })
                .unwrap_or(uid)
        })
}

pub fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// What reading the journal found.
#[derive(Debug, Default)]
pub struct History {
    pub events: Vec<Event>,
    /// The file ends in a partial line (a crash mid-append).
    pub torn: bool,
    /// Complete lines that are not events (1-based line numbers).
    pub bad_lines: Vec<usize>,
}

pub struct Journal {
    path: PathBuf,
}

impl Journal {
    pub fn new(path: &Path) -> Journal {
        Journal {
            path: path.to_path_buf(),
        }
    }

    /// Read every event, in order. A missing journal is an empty history.
    pub fn read(&self) -> Result<History> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(History::default()),
            Err(e) => return Err(e.into()),
        };
        Ok(parse(&bytes))
    }

    /// Append one event durably. Needs the lock: it also cuts away a torn
    /// last line left by a crashed writer.
    pub fn append(&self, _lock: &Lock, event: &Event) -> Result<()> {
        let mut line = serde_json::to_vec(event).expect("events serialise");
        line.push(b'\n');
        let created = !self.path.exists();
        let mut file = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o644)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&self.path)?;
        repair_torn_tail(&mut file)?;
        if crate::crashpoint::armed(CrashPoint::JournalTorn) {
            // Half the line reaches the disk, then the writer dies.
            file.write_all(&line[..line.len() / 2])?;
            file.sync_data()?;
            crate::crashpoint::crashpoint(CrashPoint::JournalTorn);
        }
        file.write_all(&line)?;
        file.sync_data()?;
        if created {
            if let Some(dir) = self.path.parent() {
                fsutil::fsync_dir(dir)?;
            }
        }
        Ok(())
    }
}

/// If the file does not end with a newline, cut it back to its last newline.
fn repair_torn_tail(file: &mut fs::File) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Look back in chunks for the last newline.
    let mut end = len;
    let mut buf = vec![0u8; 4096];
    let mut first = true;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if first && chunk.last() == Some(&b'\n') {
            return Ok(());
        }
        first = false;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            file.set_len(start + i as u64 + 1)?;
            return Ok(());
        }
        end = start;
    }
    file.set_len(0)?;
    Ok(())
}

fn parse(bytes: &[u8]) -> History {
    let mut history = History::default();
    let complete = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(i) => {
            history.torn = i + 1 < bytes.len();
            &bytes[..i + 1]
        }
        None => {
            history.torn = !bytes.is_empty();
            &[][..]
        }
    };
    for (n, line) in complete.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Event>(line) {
            Ok(event) => history.events.push(event),
            Err(_) => history.bad_lines.push(n + 1),
        }
    }
    history
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789ab-20260101T000000Z";
    const B: &str = "ba9876543210-20260102T000000Z";

    fn id(name: &str) -> ReleaseId {
        ReleaseId::parse(name).unwrap()
    }

    fn line(kind: &str, release: &str) -> String {
        format!(
            "{{\"event\":\"{kind}\",\"release\":\"{release}\",\"from\":null,\"at\":\"2026-01-01T00:00:00Z\",\"user\":\"u\",\"host\":\"h\"}}\n"
        )
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let text = line("installed", A) + &line("activated", A) + "{\"event\":\"activ";
        let h = parse(text.as_bytes());
        assert_eq!(h.events.len(), 2);
        assert!(h.torn);
        assert!(h.bad_lines.is_empty());
        assert_eq!(h.events[1].kind(), EventKind::Activated);
    }

    #[test]
    fn unknown_events_and_fields_are_tolerated() {
        let text = format!("{{\"event\":\"reloaded\",\"release\":\"{A}\",\"from\":null,\"at\":\"t\",\"user\":\"u\",\"host\":\"h\",\"new\":1}}\nnot json\n");
        let h = parse(text.as_bytes());
        assert_eq!(h.events[0].kind(), EventKind::Unknown);
        assert_eq!(h.bad_lines, vec![2]);
        assert!(!h.torn);
    }

    #[test]
    fn repair_cuts_back_to_the_last_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let whole = line("installed", A);
        std::fs::write(&path, format!("{whole}{{\"event\":\"act")).unwrap();
        let mut file = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        repair_torn_tail(&mut file).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), whole);
        std::fs::write(&path, "no newline at all").unwrap();
        let mut file = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        repair_torn_tail(&mut file).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    #[test]
    fn events_serialise_without_empty_extras() {
        let mut e = Event::new(What::Activated, &id(A), Some(&id(B)));
        e.at = "2026-01-01T00:00:00Z".into();
        e.user = "u".into();
        e.host = "h".into();
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            format!("{{\"event\":\"activated\",\"release\":\"{A}\",\"from\":\"{B}\",\"at\":\"2026-01-01T00:00:00Z\",\"user\":\"u\",\"host\":\"h\"}}")
        );
    }

    /// The release an event is about is a release id; a line that names
    /// something else is not an event of ours, whatever else it holds.
    #[test]
    fn a_line_whose_release_is_not_an_id_is_a_bad_line() {
        let text = line("installed", A)
            + &line("activated", "../../etc")
            + &line("activated", "0123456789AB-20260101T000000Z")
            + &line("activated", A).replace("\"from\":null", "\"from\":\"x\"");
        let h = parse(text.as_bytes());
        assert_eq!(h.events.len(), 1);
        assert_eq!(h.bad_lines, vec![2, 3, 4]);
    }

    /// A journal written by the binary before events became an enum of
    /// kinds (fixtures/journal/history.jsonl: installs, activations, a
    /// rollback, a failed check, a reverted reload, an install with
    /// `--python`, prunes) reads into the same events and writes back byte
    /// for byte.
    #[test]
    fn a_journal_of_the_flat_format_reads_and_writes_back_unchanged() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/journal/history.jsonl");
        let bytes = std::fs::read(&path).unwrap();
        let h = parse(&bytes);
        assert!(!h.torn);
        assert!(h.bad_lines.is_empty());
        let kinds: Vec<EventKind> = h.events.iter().map(Event::kind).collect();
        use EventKind::*;
        assert_eq!(
            kinds,
            [
                Installed, Installed, Activated, Activated, RolledBack, Failed, Activated, Failed,
                Installed, Pruned, Pruned
            ]
        );
        assert!(matches!(
            &h.events[5].what,
            What::Failed { step: Some(FailedStep::Check), reverted: false, error: Some(e) } if e.contains("check hook")
        ));
        assert!(matches!(
            &h.events[7].what,
            What::Failed {
                step: Some(FailedStep::Reload),
                reverted: true,
                ..
            }
        ));
        assert!(matches!(
            &h.events[8].what,
            What::Installed { python: Some(_), commit: Some(c), venv_rebuilt: false } if c.len() == 40
        ));
        assert_eq!(h.events[4].from.as_ref(), Some(&h.events[3].release));
        let mut written = String::new();
        for event in &h.events {
            written.push_str(&serde_json::to_string(event).unwrap());
            written.push('\n');
        }
        assert_eq!(written, String::from_utf8(bytes).unwrap());
    }
}
