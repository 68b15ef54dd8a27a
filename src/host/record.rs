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

    /// Whether the release's tree as installed has `entry`, where its
    /// manifest lists `listed` at that path: [`InstallRecord::expected`]
    /// holds `entry`, asked of one path without building the whole tree.
    pub fn installed_as(&self, listed: Option<&Entry>, entry: &Entry) -> bool {
        let path = entry.path.as_str();
        if self.shared.iter().any(|s| under(path, &s.path)) {
            // Replaced by a link into shared/ (or under one): never a file
            // of the release, and only the link itself an entry of its tree.
            return self.shared.iter().any(|s| {
                s.path == path && Entry::symlink(s.path.clone(), s.target.clone()) == *entry
            });
        }
        match self.entries.binary_search_by(|r| r.path.as_str().cmp(path)) {
            Ok(j) => self.entries[j] == *entry,
            Err(_) => !self.replaced.iter().any(|p| under(path, p)) && listed == Some(entry),
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

    /// `installed_as` answers for one path what `expected` answers for all:
    /// shared links, a replaced venv and entries of the record's own.
    #[test]
    fn installed_as_agrees_with_the_expected_tree() {
        let file = |path: &str, digest: &str| Entry::file(path.into(), false, 1, digest.repeat(64));
        let manifest = crate::manifest::for_tests(vec![
            Entry::dir("app".into()),
            file("app/a.py", "a"),
            Entry::dir("app/media".into()),
            file("app/media/x", "b"),
            file("app/settings.py", "c"),
            Entry::dir("venv".into()),
            file("venv/pyvenv.cfg", "d"),
            file("venv/lib.py", "e"),
        ]);
        let record = InstallRecord {
            shared: vec![SharedLink {
                path: "app/media".into(),
                target: "../../../shared/app/media".into(),
            }],
            replaced: vec!["venv".into()],
            entries: vec![file("venv/new.py", "f"), file("venv/pyvenv.cfg", "9")],
            ..InstallRecord::default()
        };
        let expected = record.expected(&manifest);
        let mut candidates: Vec<Entry> = manifest.files.clone();
        candidates.extend(record.entries.iter().cloned());
        candidates.push(file("app/settings.py", "0"));
        candidates.push(Entry::symlink(
            "app/media".into(),
            "../../../shared/app/media".into(),
        ));
        for entry in &candidates {
            let listed = manifest.entry(&entry.path);
            assert_eq!(
                record.installed_as(listed, entry),
                expected.contains(entry),
                "{entry:?}"
            );
        }
    }

    #[test]
    fn under_matches_whole_components() {
        assert!(under("venv", "venv"));
        assert!(under("venv/bin/python", "venv"));
        assert!(!under("venvs/x", "venv"));
        assert!(!under("app", "app/media"));
    }
}
