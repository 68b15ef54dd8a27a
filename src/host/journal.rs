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

use crate::error::Result;
use crate::fsutil;
use crate::host::lock::Lock;

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub event: EventKind,
    /// The release id the event is about.
    pub release: String,
    /// The release that was current before (activations), if any.
    pub from: Option<String>,
    /// RFC 3339 UTC.
    pub at: String,
    /// `$SUDO_USER`, else `$USER`, else the numeric uid.
    pub user: String,
    /// The host name.
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `installed`: the full commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// `installed`: the interpreter `venv/bin/python` was re-pointed to (`--python`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// `installed`: the venv was recreated from `wheels/` (`--rebuild-venv`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub venv_rebuilt: bool,
    /// `failed`: the step that failed (`check`, `reload`, `health`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// `failed`: the switch had happened and was undone.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reverted: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Event {
    /// A new event stamped with now, this user and this host.
    pub fn new(event: EventKind, release: &str, from: Option<&str>) -> Event {
        Event {
            event,
            release: release.to_string(),
            from: from.map(str::to_string),
            // Milliseconds: `status` compares process start times with it.
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            user: current_user(),
            host: host_name(),
            error: None,
            commit: None,
            python: None,
            venv_rebuilt: false,
            step: None,
            reverted: false,
        }
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
        if crate::crashpoint::armed("journal:torn") {
            // Half the line reaches the disk, then the writer dies.
            file.write_all(&line[..line.len() / 2])?;
            file.sync_data()?;
            crate::crashpoint::crashpoint("journal:torn");
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

    fn line(kind: &str, release: &str) -> String {
        format!(
            "{{\"event\":\"{kind}\",\"release\":\"{release}\",\"from\":null,\"at\":\"2026-01-01T00:00:00Z\",\"user\":\"u\",\"host\":\"h\"}}\n"
        )
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let text = line("installed", "a") + &line("activated", "a") + "{\"event\":\"activ";
        let h = parse(text.as_bytes());
        assert_eq!(h.events.len(), 2);
        assert!(h.torn);
        assert!(h.bad_lines.is_empty());
        assert_eq!(h.events[1].event, EventKind::Activated);
    }

    #[test]
    fn unknown_events_and_fields_are_tolerated() {
        let text = "{\"event\":\"reloaded\",\"release\":\"a\",\"from\":null,\"at\":\"t\",\"user\":\"u\",\"host\":\"h\",\"new\":1}\nnot json\n";
        let h = parse(text.as_bytes());
        assert_eq!(h.events[0].event, EventKind::Unknown);
        assert_eq!(h.bad_lines, vec![2]);
        assert!(!h.torn);
    }

    #[test]
    fn repair_cuts_back_to_the_last_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let whole = line("installed", "a");
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
        let mut e = Event::new(EventKind::Activated, "r", Some("q"));
        e.at = "2026-01-01T00:00:00Z".into();
        e.user = "u".into();
        e.host = "h".into();
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            "{\"event\":\"activated\",\"release\":\"r\",\"from\":\"q\",\"at\":\"2026-01-01T00:00:00Z\",\"user\":\"u\",\"host\":\"h\"}"
        );
    }
}
