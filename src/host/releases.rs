//! The installed releases: `releases/<id>/` directories with their manifest
//! summaries, newest install first, and resolving a user's ID prefix.

use std::cmp::Reverse;
use std::io::Read;
use std::path::{Path, PathBuf};

use fs_err as fs;

use crate::error::{Error, ReleaseError, Result};
use crate::host::layout::Host;
use crate::host::record::RECORD_NAME;
use crate::host::release_id::ReleaseId;
use crate::manifest::{Invalid, Summary, MANIFEST_NAME};

/// How much of `release.json` is read to find its header.
const SUMMARY_PREFIX: u64 = 16 * 1024;

#[derive(Debug, Clone)]
pub struct Installed {
    pub id: ReleaseId,
    pub dir: PathBuf,
    /// The manifest header, or why the release is incomplete.
    pub summary: std::result::Result<Summary, Incomplete>,
}

impl Installed {
    /// The id as text: the directory name.
    pub fn name(&self) -> &str {
        self.id.as_str()
    }

    pub fn is_complete(&self) -> bool {
        self.summary.is_ok()
    }

    pub fn commit(&self) -> &str {
        match &self.summary {
            Ok(s) => &s.commit,
            Err(_) => &self.id.commit12,
        }
    }

    /// Fail unless the release has a readable manifest.
    pub fn require_complete(&self) -> Result<&Summary> {
        let summary = self
            .summary
            .as_ref()
            .map_err(|why| ReleaseError::ReleaseIncomplete {
                release: self.name().to_string(),
                dir: self.dir.clone(),
                why: why.to_string(),
            })?;
        Ok(summary)
    }
}

/// Read the header of `<dir>/release.json`.
pub fn read_summary(dir: &Path) -> std::result::Result<Summary, Incomplete> {
    let path = dir.join(MANIFEST_NAME);
    let unreadable = |e: std::io::Error| Incomplete::Manifest {
        path: path.clone(),
        why: Invalid::Unreadable(e.to_string()),
    };
    let mut file = std::fs::File::open(&path).map_err(unreadable)?;
    let mut prefix = Vec::with_capacity(SUMMARY_PREFIX as usize);
    (&mut file)
        .take(SUMMARY_PREFIX)
        .read_to_end(&mut prefix)
        .map_err(unreadable)?;
    let summary = Summary::parse(&prefix, || {
        let mut rest = prefix.clone();
        file.read_to_end(&mut rest)?;
        Ok(rest)
    })
    .map_err(|why| Incomplete::Manifest {
        path: path.clone(),
        why,
    })?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if !name.starts_with(&summary.release) {
        return Err(Incomplete::OtherRelease {
            path,
            release: summary.release,
        });
    }
    Ok(summary)
}

/// Why an installed release is incomplete.
#[derive(Debug, Clone)]
pub enum Incomplete {
    /// Its `release.json` is missing or unreadable.
    Manifest { path: PathBuf, why: Invalid },
    /// Its `release.json` belongs to another release.
    OtherRelease { path: PathBuf, release: String },
}

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Incomplete::Manifest { path, why } => write!(f, "{}: {why}", path.display()),
            Incomplete::OtherRelease { path, release } => write!(
                f,
                "{} is the manifest of {release}, not of this directory",
                path.display()
            ),
        }
    }
}

/// Every installed release, newest install first. Names that are not release
/// ids (and the hidden temporary directories) are ignored.
pub fn installed(host: &Host) -> Result<Vec<Installed>> {
    let mut list = Vec::new();
    let entries = match fs::read_dir(&host.releases) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(list),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = ReleaseId::parse(&name) else {
            continue;
        };
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let dir = entry.path();
        list.push(Installed {
            summary: read_summary(&dir),
            id,
            dir,
        });
    }
    list.sort_by_key(|r| Reverse(r.id.installed));
    order_same_second(&mut list);
    Ok(list)
}

/// Release ids carry the install time to the second, so two installs in the
/// same second (quick on a fast disk, and routine in scripts) need another
/// order: the time their `install.json` was written, the last file an install
/// writes before the release appears under its name. Only releases that share
/// a second are looked at, so `list` stays one `read_dir` for most hosts; the
/// name decides when even that is equal or unreadable.
fn order_same_second(list: &mut [Installed]) {
    let record_written = |r: &Installed| {
        std::fs::symlink_metadata(r.dir.join(RECORD_NAME))
            .and_then(|m| m.modified())
            .ok()
    };
    let mut start = 0;
    while start < list.len() {
        let second = list[start].id.installed;
        let end = start
            + list[start..]
                .iter()
                .take_while(|r| r.id.installed == second)
                .count();
        list[start..end].sort_by_cached_key(|r| Reverse((record_written(r), r.name().to_owned())));
        start = end;
    }
}

/// The release a user means by `query`: an exact id, or a unique prefix of an
/// id or of a full commit hash. Unknown and ambiguous queries list candidates.
pub fn resolve<'a>(host: &Host, list: &'a [Installed], query: &str) -> Result<&'a Installed> {
    let query = query.trim();
    if query.is_empty() {
        return Err(Error::Usage("empty release ID".into()));
    }
    if let Some(exact) = list.iter().find(|r| r.name() == query) {
        return Ok(exact);
    }
    let matches: Vec<&Installed> = list
        .iter()
        .filter(|r| r.name().starts_with(query) || r.commit().starts_with(query))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => {
            let installed: Vec<String> = list.iter().take(10).map(describe).collect();
            Err(ReleaseError::NoSuchRelease {
                query: query.to_string(),
                releases: host.releases.clone(),
                more: list.len() - installed.len(),
                installed,
            }
            .into())
        }
        many => Err(ReleaseError::AmbiguousRelease {
            query: query.to_string(),
            matches: many.iter().map(|r| describe(r)).collect(),
        }
        .into()),
    }
}

fn describe(r: &Installed) -> String {
    format!("    {}  (commit {})", r.name(), r.commit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// Two releases installed in the same second: the one whose install.json
    /// was written last is the newest, whatever their names or the order the
    /// directory lists them in (both ways round).
    #[test]
    fn installs_in_the_same_second_are_ordered_by_their_install_record() {
        let second = "20261130T065900Z";
        let written = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        for (older, newer) in [
            ("fffffffffff0", "aaaaaaaaaaa0"),
            ("aaaaaaaaaaa0", "fffffffffff0"),
        ] {
            let root = tempfile::tempdir().unwrap();
            let host = Host::at(Some(root.path())).unwrap();
            for (commit, nanos) in [(older, 100), (newer, 900)] {
                let dir = host.releases.join(format!("{commit}-{second}"));
                std::fs::create_dir_all(&dir).unwrap();
                let record = std::fs::File::create(dir.join(RECORD_NAME)).unwrap();
                record
                    .set_modified(written + Duration::from_nanos(nanos))
                    .unwrap();
            }
            let names: Vec<String> = installed(&host)
                .unwrap()
                .iter()
                .map(|r| r.name().to_owned())
                .collect();
            assert_eq!(
                names,
                [format!("{newer}-{second}"), format!("{older}-{second}")]
            );
        }
    }
}
