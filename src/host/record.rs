//! `install.json`: what `install` changed in a release on purpose, next to the
//! untouched `release.json`. `verify` compares the tree against the manifest
//! with these changes applied, so they are expected, not drift:
//! * `shared`: release paths replaced by links into `<root>/shared/`;
//! * `replaced`: paths whose manifest entries no longer apply (the venv after
//!   `--rebuild-venv`);
//! * `entries`: entries as installed where they differ from the manifest
//!   (interpreter links and `pyvenv.cfg` after `--python`, the rebuilt venv).

use std::path::Path;

use fs_err as fs;
use serde::{Deserialize, Serialize};

use crate::error::{ReleaseError, Result};
use crate::manifest::{Entry, Manifest};

pub const RECORD_NAME: &str = "install.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstallRecord {
    pub installed_at: String,
    pub user: String,
    /// sha256 of the artifact file the release was installed from.
    pub artifact_sha256: String,
    /// Release paths linked into `<root>/shared/`, with the link targets.
    #[serde(default)]
    pub shared: Vec<SharedLink>,
    /// Manifest paths (with everything under them) replaced wholesale.
    #[serde(default)]
    pub replaced: Vec<String>,
    /// Entries that differ from the manifest by design, sorted by path.
    #[serde(default)]
    pub entries: Vec<Entry>,
    /// The interpreter the venv was re-pointed to (`--python`).
    #[serde(default)]
    pub python: Option<String>,
    /// The venv was recreated from `wheels/` (`--rebuild-venv`).
    #[serde(default)]
    pub venv_rebuilt: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SharedLink {
    pub path: String,
    pub target: String,
}

fn under(path: &str, prefix: &str) -> bool {
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl InstallRecord {
    pub fn read(release_dir: &Path) -> Result<InstallRecord> {
        let path = release_dir.join(RECORD_NAME);
        let bytes = fs::read(&path)?;
        let record =
            serde_json::from_slice(&bytes).map_err(|e| ReleaseError::BadInstallRecord {
                reason: e.to_string(),
                path,
            })?;
        Ok(record)
    }

    /// Record an entry as installed, replacing any earlier record of its path.
    pub fn set_entry(&mut self, entry: Entry) {
        match self.entries.binary_search_by(|e| e.path.cmp(&entry.path)) {
            Ok(i) => self.entries[i] = entry,
            Err(i) => self.entries.insert(i, entry),
        }
    }

    /// The tree the release should have: the manifest's entries with the
    /// recorded changes applied, sorted by path.
    pub fn expected(&self, manifest: &Manifest) -> Vec<Entry> {
        let gone = |path: &str| {
            self.replaced.iter().any(|p| under(path, p))
                || self.shared.iter().any(|s| under(path, &s.path))
        };
        let mut tree: Vec<Entry> = manifest
            .files
            .iter()
            .filter(|e| !gone(&e.path))
            .filter(|e| {
                self.entries
                    .binary_search_by(|r| r.path.cmp(&e.path))
                    .is_err()
            })
            .cloned()
            .collect();
        tree.extend(
            self.entries
                .iter()
                .filter(|e| !self.shared.iter().any(|s| under(&e.path, &s.path)))
                .cloned(),
        );
        tree.extend(
            self.shared
                .iter()
                .map(|s| Entry::symlink(s.path.clone(), s.target.clone())),
        );
        tree.sort_by(|a, b| a.path.cmp(&b.path));
        tree
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_matches_whole_components() {
        assert!(under("venv", "venv"));
        assert!(under("venv/bin/python", "venv"));
        assert!(!under("venvs/x", "venv"));
        assert!(!under("app", "app/media"));
    }
}
