//! `release verify [ID]`: re-hash an installed release against its manifest
//! (the `release.json` inside it) with the changes `install` recorded in
//! `install.json` applied, and report every difference. The report of the
//! served `static/` (which `statics::verify` checks) is defined here beside
//! the release's, so statics depends on verify and not both ways.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use fs_err as fs;
use serde::Serialize;

use crate::archive;
use crate::error::Result;
use crate::host::layout::installed_mode;
use crate::host::record::{InstallRecord, RECORD_NAME};
use crate::host::release_id::ReleaseId;
use crate::host::releases::Installed;
use crate::manifest::{Entry, EntryType, Invalid, Manifest, MANIFEST_NAME};

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub id: ReleaseId,
    pub ok: bool,
    pub problems: Vec<Problem>,
    /// The served `static/` (host::statics), checked by `verify` without an
    /// ID; absent otherwise.
    #[serde(rename = "static", skip_serializing_if = "Option::is_none")]
    pub served_static: Option<StaticReport>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub problem: String,
}

/// What `release verify` found in the served directory.
#[derive(Debug, Clone, Serialize)]
pub struct StaticReport {
    pub path: PathBuf,
    pub ok: bool,
    /// Regular files served.
    pub files: u64,
    pub problems: Vec<Problem>,
}

impl StaticReport {
    pub fn human(&self) -> String {
        if self.ok {
            return format!(
                "{}: ok, {} file(s), each an installed release's, the current release's all served\n",
                self.path.display(),
                self.files
            );
        }
        let mut text = format!(
            "{}: {} problem(s)\n",
            self.path.display(),
            self.problems.len()
        );
        for p in &self.problems {
            text.push_str(&format!("  {}: {}\n", p.path.escape_debug(), p.problem));
        }
        text
    }
}

impl VerifyReport {
    pub fn human(&self) -> String {
        if self.ok {
            return format!("{}: ok, matches its manifest\n", self.id);
        }
        let mut text = format!("{}: {} problem(s)\n", self.id, self.problems.len());
        for p in &self.problems {
            text.push_str(&format!("  {}: {}\n", p.path.escape_debug(), p.problem));
        }
        text
    }
}

fn kind_of(file_type: std::fs::FileType) -> Option<EntryType> {
    if file_type.is_symlink() {
        Some(EntryType::Symlink)
    } else if file_type.is_dir() {
        Some(EntryType::Dir)
    } else if file_type.is_file() {
        Some(EntryType::File)
    } else {
        None
    }
}

pub fn verify(release: &Installed) -> Result<VerifyReport> {
    let id = release.id.clone();
    let dir = &release.dir;
    let (expected, mut problems) = match expected_tree(dir) {
        Ok(found) => found,
        Err(problem) => {
            return Ok(VerifyReport {
                id,
                ok: false,
                problems: vec![problem],
                served_static: None,
            })
        }
    };
    let walked = walk(dir, &expected)?;
    problems.extend(walked.problems);
    problems.extend(missing(&expected, &walked.seen));
    problems.extend(hash_all(&walked.to_hash, &expected, dir)?);
    problems.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(VerifyReport {
        ok: problems.is_empty(),
        id,
        problems,
        served_static: None,
    })
}

/// The entries the release should hold: its manifest with what install
/// recorded applied, and the problem of an unreadable record. `Err` when the
/// manifest itself cannot be read (nothing else can be checked then).
fn expected_tree(dir: &Path) -> std::result::Result<(Vec<Entry>, Vec<Problem>), Problem> {
    let manifest = fs::read(dir.join(MANIFEST_NAME))
        .map_err(|e| Invalid::Unreadable(e.to_string()))
        .and_then(|bytes| Manifest::from_json(&bytes))
        .map_err(|why| Problem {
            path: MANIFEST_NAME.into(),
            problem: format!("unreadable manifest: {why}"),
        })?;
    let mut problems = Vec::new();
    let record = InstallRecord::read(dir).unwrap_or_else(|e| {
        problems.push(Problem {
            path: RECORD_NAME.into(),
            problem: format!("{e}; checking against the bare manifest"),
        });
        InstallRecord::default()
    });
    Ok((record.expected(&manifest), problems))
}

/// What walking the release's tree found.
struct Walked {
    problems: Vec<Problem>,
    /// Per expected entry: found on disk.
    seen: Vec<bool>,
    /// Files of the right size, to hash.
    to_hash: Vec<(PathBuf, usize)>,
}

/// Walk the tree and compare every path with what is expected of it.
fn walk(dir: &Path, expected: &[Entry]) -> Result<Walked> {
    let mut walked = Walked {
        problems: Vec::new(),
        seen: vec![false; expected.len()],
        to_hash: Vec::new(),
    };
    let mut items = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter();
    while let Some(item) = items.next() {
        let item = item.map_err(|e| crate::fsutil::walk_err(e, dir))?;
        let rel = item
            .path()
            .strip_prefix(dir)
            .expect("under the release")
            .to_string_lossy()
            .into_owned();
        let index = expected
            .binary_search_by(|e| e.path.as_str().cmp(&rel))
            .ok();
        if let Some(index) = index {
            walked.seen[index] = true;
        }
        let found = check_item(&item, &rel, index.map(|i| (i, &expected[i])))?;
        if found.skip_dir {
            items.skip_current_dir();
        }
        walked
            .problems
            .extend(found.problems.into_iter().map(|problem| Problem {
                path: rel.clone(),
                problem,
            }));
        walked
            .to_hash
            .extend(found.hash.map(|i| (item.path().to_path_buf(), i)));
    }
    Ok(walked)
}

/// What one path of the tree showed.
#[derive(Default)]
struct Found {
    problems: Vec<String>,
    /// Do not descend into it (it is not the directory expected there).
    skip_dir: bool,
    /// Its content is to be hashed (the expected entry's index).
    hash: Option<usize>,
}

/// Check one path against its expected entry (`None`: not in the manifest).
fn check_item(item: &walkdir::DirEntry, rel: &str, want: Option<(usize, &Entry)>) -> Result<Found> {
    let meta = item
        .metadata()
        .map_err(|e| crate::fsutil::walk_err(e, item.path()))?;
    let mode = meta.permissions().mode() & 0o7777;
    let actual = kind_of(item.file_type());
    let what = || actual.map_or("special file".to_string(), |k| k.to_string());
    let is_dir = item.file_type().is_dir();
    let problem = |text: String, skip_dir: bool| Found {
        problems: vec![text],
        skip_dir,
        hash: None,
    };
    if rel == MANIFEST_NAME || rel == RECORD_NAME {
        let ok = actual == Some(EntryType::File) && mode == 0o444;
        return Ok(if ok {
            Found::default()
        } else {
            problem(
                format!("expected a read-only file (0444), found mode {mode:04o}"),
                false,
            )
        });
    }
    let Some((index, want)) = want else {
        return Ok(problem(
            format!("extra {}, not in the manifest", what()),
            is_dir,
        ));
    };
    if actual != Some(want.kind) {
        return Ok(problem(
            format!("is a {}, expected a {}", what(), want.kind),
            is_dir,
        ));
    }
    if want.kind == EntryType::Symlink {
        let target = fs::read_link(item.path())?.to_string_lossy().into_owned();
        let expected = want.target.as_deref().unwrap_or_default();
        return Ok(if target == expected {
            Found::default()
        } else {
            problem(
                format!("symlink points to {target:?}, expected {expected:?}"),
                false,
            )
        });
    }
    let mut found = Found::default();
    let want_mode = installed_mode(want.kind, want.mode);
    if mode != want_mode {
        found
            .problems
            .push(format!("mode {mode:04o}, expected {want_mode:04o}"));
    }
    if want.kind == EntryType::File {
        if meta.len() == want.size() {
            found.hash = Some(index);
        } else {
            found.problems.push(format!(
                "content changed: {} bytes, expected {}",
                meta.len(),
                want.size()
            ));
        }
    }
    Ok(found)
}

/// Missing entries; below a missing directory only the directory is named.
fn missing(expected: &[Entry], seen: &[bool]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut gone: Option<&str> = None;
    for (e, _) in expected.iter().zip(seen).filter(|(_, s)| !**s) {
        if gone
            .is_some_and(|g| e.path.starts_with(g) && e.path.as_bytes().get(g.len()) == Some(&b'/'))
        {
            continue;
        }
        problems.push(Problem {
            path: e.path.clone(),
            problem: format!("missing (expected a {})", e.kind),
        });
        gone = Some(&e.path);
    }
    problems
}

/// Hash files on every core and report those whose content changed.
fn hash_all(
    files: &[(PathBuf, usize)],
    expected: &[Entry],
    dir: &std::path::Path,
) -> Result<Vec<Problem>> {
    let next = AtomicUsize::new(0);
    let found = Mutex::new(Vec::new());
    let error = Mutex::new(None);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((path, index)) = files.get(i) else {
                    break;
                };
                let want = &expected[*index];
                match archive::hash_file(path) {
                    Ok((digest, _)) if Some(digest.as_str()) == want.sha256.as_deref() => {}
                    Ok((digest, _)) => found.lock().expect("no panics").push(Problem {
                        path: path
                            .strip_prefix(dir)
                            .unwrap_or(path)
                            .to_string_lossy()
                            .into_owned(),
                        problem: format!(
                            "content changed: sha256 {digest}, expected {}",
                            want.sha256.as_deref().unwrap_or_default()
                        ),
                    }),
                    Err(e) => {
                        *error.lock().expect("no panics") = Some(e);
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = error.into_inner().expect("no panics") {
        return Err(e);
    }
    Ok(found.into_inner().expect("no panics"))
}
