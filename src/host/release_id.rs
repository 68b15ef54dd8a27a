//! Release ids: `<commit12>-<YYYYMMDDTHHMMSSZ>`, the commit's first 12 hex
//! digits and the UTC install time. Sorting ids by their time part sorts
//! releases by install time.

use chrono::{DateTime, NaiveDateTime, Utc};

const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// A release's id, which is also its directory name under `releases/`.
/// Equal, hashed and borrowed as its text, so maps keyed by ids can be
/// looked up with a `&str`.
#[derive(Debug, Clone)]
pub struct ReleaseId {
    pub commit12: String,
    pub installed: DateTime<Utc>,
    /// `<commit12>-<time>`, kept so the id reads as a `&str`.
    name: String,
}

impl ReleaseId {
    pub fn new(commit12: &str, installed: DateTime<Utc>) -> ReleaseId {
        ReleaseId {
            commit12: commit12.to_string(),
            installed,
            name: format!("{commit12}-{}", installed.format(TIME_FORMAT)),
        }
    }

    /// The id as text: the directory name.
    pub fn as_str(&self) -> &str {
        &self.name
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
        let id = ReleaseId::new(commit, naive.and_utc());
        // Only the canonical spelling is an id (chrono accepts a few others).
        (id.name == name).then_some(id)
    }

    /// The install time as RFC 3339 (`2026-01-01T00:00:00Z`).
    pub fn installed_rfc3339(&self) -> String {
        rfc3339(self.installed)
    }
}

impl std::fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// In `--json` output an id is its text.
impl serde::Serialize for ReleaseId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

/// In the journal, an id is its text; a line whose id is not one is not an
/// event of ours.
impl<'de> serde::Deserialize<'de> for ReleaseId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        ReleaseId::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("{name:?} is not a release id")))
    }
}

impl PartialEq for ReleaseId {
    fn eq(&self, other: &ReleaseId) -> bool {
        self.name == other.name
    }
}

impl Eq for ReleaseId {}

impl std::hash::Hash for ReleaseId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl std::borrow::Borrow<str> for ReleaseId {
    fn borrow(&self) -> &str {
        &self.name
    }
}

impl PartialEq<str> for ReleaseId {
    fn eq(&self, other: &str) -> bool {
        self.name == other
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
