//! `release verify [ID]`: re-hash an installed release against its manifest
//! (the `release.json` inside it) with the changes `install` recorded in
//! `install.json` applied, and report every difference.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use fs_err as fs;
use serde::Serialize;

use crate::archive;
use crate::error::Result;
use crate::host::layout::installed_mode;
use crate::host::record::{InstallRecord, RECORD_NAME};
use crate::host::releases::Installed;
use crate::manifest::{Entry, EntryType, Invalid, Manifest, MANIFEST_NAME};

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub id: String,
    pub ok: bool,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub problem: String,
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
    let id = release.name().to_string();
    let dir = &release.dir;
    let mut problems = Vec::new();
    let fail = |problems: Vec<Problem>| VerifyReport {
        id: id.clone(),
        ok: false,
        problems,
    };
    let manifest_path = dir.join(MANIFEST_NAME);
    let manifest = match fs::read(&manifest_path)
        .map_err(|e| Invalid::Unreadable(e.to_string()))
        .and_then(|bytes| Manifest::from_json(&bytes))
    {
        Ok(m) => m,
        Err(why) => {
            return Ok(fail(vec![Problem {
                path: MANIFEST_NAME.into(),
                problem: format!("unreadable manifest: {why}"),
            }]))
        }
    };
    let record = match InstallRecord::read(dir) {
        Ok(r) => r,
        Err(e) => {
            problems.push(Problem {
                path: RECORD_NAME.into(),
                problem: format!("{e}; checking against the bare manifest"),
            });
            InstallRecord::default()
        }
    };
    let expected = record.expected(&manifest);
    let mut seen = vec![false; expected.len()];
    let mut to_hash: Vec<(PathBuf, usize)> = Vec::new();

    let mut walk = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter();
    while let Some(item) = walk.next() {
        let item = item.map_err(|e| std::io::Error::other(format!("{}: {e}", dir.display())))?;
        let rel = item
            .path()
            .strip_prefix(dir)
            .expect("under the release")
            .to_string_lossy()
            .into_owned();
        let mut report = |problem: String| {
            problems.push(Problem {
                path: rel.clone(),
                problem,
            })
        };
        let meta = item
            .metadata()
            .map_err(|e| std::io::Error::other(format!("{}: {e}", item.path().display())))?;
        let mode = meta.permissions().mode() & 0o7777;
        let actual = kind_of(item.file_type());
        if rel == MANIFEST_NAME || rel == RECORD_NAME {
            if actual != Some(EntryType::File) || mode != 0o444 {
                report(format!(
                    "expected a read-only file (0444), found mode {mode:04o}"
                ));
            }
            continue;
        }
        let Ok(index) = expected.binary_search_by(|e| e.path.as_str().cmp(&rel)) else {
            let what = actual.map_or("special file".to_string(), |k| k.to_string());
            report(format!("extra {what}, not in the manifest"));
            if item.file_type().is_dir() {
                walk.skip_current_dir();
            }
            continue;
        };
        seen[index] = true;
        let want = &expected[index];
        let Some(actual) = actual.filter(|k| *k == want.kind) else {
            let what = actual.map_or("special file".to_string(), |k| k.to_string());
            report(format!("is a {what}, expected a {}", want.kind));
            if item.file_type().is_dir() {
                walk.skip_current_dir();
            }
            continue;
        };
        match actual {
            EntryType::Symlink => {
                let target = fs::read_link(item.path())?.to_string_lossy().into_owned();
                if Some(target.as_str()) != want.target.as_deref() {
                    report(format!(
                        "symlink points to {target:?}, expected {:?}",
                        want.target.as_deref().unwrap_or_default()
                    ));
                }
            }
            EntryType::Dir | EntryType::File => {
                let want_mode = installed_mode(want.kind, want.mode);
                if mode != want_mode {
                    report(format!("mode {mode:04o}, expected {want_mode:04o}"));
                }
                if actual == EntryType::File {
                    if meta.len() != want.size() {
                        report(format!(
                            "content changed: {} bytes, expected {}",
                            meta.len(),
                            want.size()
                        ));
                    } else {
                        to_hash.push((item.path().to_path_buf(), index));
                    }
                }
            }
        }
    }

    // Missing entries; below a missing directory only the directory is named.
    let mut gone: Option<&str> = None;
    for (e, _) in expected.iter().zip(&seen).filter(|(_, s)| !**s) {
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

    problems.extend(hash_all(&to_hash, &expected, dir)?);
    problems.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(VerifyReport {
        ok: problems.is_empty(),
        id,
        problems,
    })
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
