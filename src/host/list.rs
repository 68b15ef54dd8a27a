//! `release list`: the installed releases as rows (id, commit, times, size,
//! state), built from the release directories (each one's `release.json`
//! header, never its tree), the `current` link and one read of the journal.

use serde::Serialize;

use crate::error::Result;
use crate::host::layout::Host;
use crate::host::release_id::ReleaseId;
use crate::host::releases;
use crate::host::state::ReleaseHistory;
use crate::output::{paint, Printer, Style};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// `current` points at it.
    Current,
    /// `rollback` (without --to) would go to it.
    RollbackTarget,
    /// Left by a rollback (or a reverted activation); skipped by `rollback`.
    RolledBack,
    /// Anything else, including never activated.
    Inactive,
    /// No readable `release.json`: cannot be activated.
    Incomplete,
}

impl State {
    fn label(self) -> &'static str {
        match self {
            State::Current => "current",
            State::RollbackTarget => "rollback-target",
            State::RolledBack => "rolled-back",
            State::Inactive => "inactive",
            State::Incomplete => "incomplete",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub id: ReleaseId,
    pub commit: String,
    pub installed_at: String,
    pub last_activated_at: Option<String>,
    pub activated_by: Option<String>,
    /// Bytes of regular files, from the manifest.
    pub bytes: u64,
    pub state: State,
}

pub fn list(host: &Host, printer: &Printer) -> Result<Vec<Row>> {
    let installed = releases::installed(host)?;
    let current = host.current()?;
    let history = ReleaseHistory::read(host, printer)?;
    let target = history.rollback_target(current.id());
    Ok(installed
        .into_iter()
        .map(|r| {
            let state = if current.id() == Some(&r.id) {
                State::Current
            } else if !r.is_complete() {
                State::Incomplete
            } else if target == Some(&r.id) {
                State::RollbackTarget
            } else if history.is_rolled_back(&r.id) {
                State::RolledBack
            } else {
                State::Inactive
            };
            let activation = history.last_activation(&r.id);
            Row {
                commit: r.commit().to_string(),
                installed_at: r.id.installed_rfc3339(),
                last_activated_at: activation.map(|a| to_seconds(&a.at)),
                activated_by: activation.map(|a| a.user.clone()),
                bytes: r.summary.as_ref().map_or(0, |s| s.bytes),
                state,
                id: r.id.clone(),
            }
        })
        .collect())
}

/// A journal time (milliseconds) to the second, as install times are, so
/// the columns of `list` have one precision.
fn to_seconds(at: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(at)
        .map(|t| crate::host::release_id::rfc3339(t.with_timezone(&chrono::Utc)))
        .unwrap_or_else(|_| at.to_string())
}

/// Sizes as `66.6M`: short, and readable in a table.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// An aligned table, no colour needed.
pub fn table(rows: &[Row], color: bool) -> String {
    if rows.is_empty() {
        return "no releases installed\n".into();
    }
    let header = [
        "ID",
        "COMMIT",
        "INSTALLED",
        "ACTIVATED",
        "BY",
        "SIZE",
        "STATE",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.commit.chars().take(12).collect(),
                r.installed_at.clone(),
                r.last_activated_at.clone().unwrap_or_else(|| "-".into()),
                r.activated_by.clone().unwrap_or_else(|| "-".into()),
                human_size(r.bytes),
                r.state.label().to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |row: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                // The last column is not padded, so colour cannot upset alignment.
                let style = match cell.as_str() {
                    "current" => Some(Style::Good),
                    "rollback-target" => Some(Style::Note),
                    "rolled-back" => Some(Style::Warn),
                    _ => None,
                };
                match style {
                    Some(style) if color && i > 0 && cell != "STATE" => {
                        text.push_str(&paint(true, style, cell))
                    }
                    _ => text.push_str(cell),
                }
            } else if i == 5 {
                // Sizes right-aligned.
                text.push_str(&format!("{cell:>w$}  "));
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        text.push('\n');
        text
    };
    let mut text = line(&header.map(String::from));
    for row in &cells {
        text.push_str(&line(row));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_short() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(66_619_006), "63.5M");
    }

    #[test]
    fn the_table_is_aligned() {
        let rows = vec![
            Row {
                id: ReleaseId::parse("aaaaaaaaaaaa-20260101T000000Z").unwrap(),
                commit: "a".repeat(40),
                installed_at: "2026-01-01T00:00:00Z".into(),
                last_activated_at: None,
                activated_by: None,
                bytes: 1,
                state: State::Inactive,
            },
            Row {
                id: ReleaseId::parse("bbbbbbbbbbbb-20260101T000001Z").unwrap(),
                commit: "b".repeat(40),
                installed_at: "2026-01-01T00:00:01Z".into(),
                last_activated_at: Some("2026-01-01T00:00:02Z".into()),
                activated_by: Some("deploy".into()),
                bytes: 66_619_006,
                state: State::Current,
            },
        ];
        let text = table(&rows, false);
        // With colour only the last column gains escapes; the rest is identical.
        let coloured = table(&rows, true);
        assert!(coloured.contains("\u{1b}[1;32mcurrent\u{1b}[0m"));
        assert_eq!(
            coloured
                .replace("\u{1b}[1;32m", "")
                .replace("\u{1b}[0m", ""),
            text
        );
        let lines: Vec<&str> = text.lines().collect();
        let col = |line: &str| {
            line.find("STATE")
                .or_else(|| line.rfind("inactive"))
                .or_else(|| line.rfind("current"))
        };
        assert_eq!(col(lines[0]), col(lines[1]));
        assert_eq!(col(lines[1]), col(lines[2]));
    }
}
