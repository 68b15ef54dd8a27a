//! Release ids: `<commit12>-<YYYYMMDDTHHMMSSZ>`, the commit's first 12 hex
//! digits and the UTC install time. Sorting ids by their time part sorts
//! releases by install time.

use chrono::{DateTime, NaiveDateTime, Utc};

const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseId {
    pub commit12: String,
    pub installed: DateTime<Utc>,
}

impl ReleaseId {
    pub fn new(commit12: &str, installed: DateTime<Utc>) -> ReleaseId {
        ReleaseId {
            commit12: commit12.to_string(),
            installed,
        }
    }

    /// Parse a directory name; `None` when it is not a release id.
    pub fn parse(name: &str) -> Option<ReleaseId> {
        let (commit, time) = name.split_once('-')?;
        if commit.len() != 12
            || !commit
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        if time.len() != 16 {
            return None;
        }
        let naive = NaiveDateTime::parse_from_str(time, TIME_FORMAT).ok()?;
        Some(ReleaseId {
            commit12: commit.to_string(),
            installed: naive.and_utc(),
        })
    }

    /// The install time as RFC 3339 (`2026-01-01T00:00:00Z`).
    pub fn installed_rfc3339(&self) -> String {
        rfc3339(self.installed)
    }
}

impl std::fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-{}",
            self.commit12,
            self.installed.format(TIME_FORMAT)
        )
    }
}

/// A UTC time in the journal's RFC 3339 form, to the second.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = ReleaseId::parse("0123456789ab-20260102T030405Z").unwrap();
        assert_eq!(id.commit12, "0123456789ab");
        assert_eq!(id.installed_rfc3339(), "2026-01-02T03:04:05Z");
        assert_eq!(id.to_string(), "0123456789ab-20260102T030405Z");
    }

    #[test]
    fn rejects_other_names() {
        for name in [
            ".incoming-abc",
            "0123456789ab",
            "0123456789AB-20260102T030405Z",
            "0123456789ab-20261302T030405Z",
            "0123456789ab-20260102T030405",
            "xyz",
        ] {
            assert!(ReleaseId::parse(name).is_none(), "{name}");
        }
    }
}
