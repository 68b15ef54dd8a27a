//! Files the static step leaves in the app tree.
//!
//! `app/` holds the tracked files of the commit and nothing else. A static
//! step whose settings hard-code `STATIC_ROOT` (e.g. `BASE_DIR /
//! "collect_static"`) writes the collected files there instead of into
//! `$STATIC_ROOT`: they would ship in `app/` while `static/` stays empty. The
//! build compares the app tree before and after the step and refuses, or,
//! with `untracked = "move-to-static"`, moves them into `static/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fs_err as fs;

use super::settings::Untracked;
use crate::error::{BuildError, Result};

/// The paths (relative, files and directories) of the app tree before the step.
pub struct Snapshot {
    files: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
}

fn skipped(rel: &Path) -> bool {
    // The build's own byte-compiling may run beside the static step.
    rel.components().any(|c| c.as_os_str() == "__pycache__")
}

fn walk(app_dir: &Path) -> Result<(BTreeSet<PathBuf>, BTreeSet<PathBuf>)> {
    let mut files = BTreeSet::new();
    let mut dirs = BTreeSet::new();
    for item in walkdir::WalkDir::new(app_dir).min_depth(1) {
        let item = item.map_err(|e| crate::fsutil::walk_err(e, app_dir))?;
        let rel = item
            .path()
            .strip_prefix(app_dir)
            .expect("under app dir")
            .to_path_buf();
        if skipped(&rel) {
            continue;
        }
        if item.file_type().is_dir() {
            dirs.insert(rel);
        } else {
            files.insert(rel);
        }
    }
    Ok((files, dirs))
}

pub fn snapshot(app_dir: &Path) -> Result<Snapshot> {
    let (files, dirs) = walk(app_dir)?;
    Ok(Snapshot { files, dirs })
}

/// After the step: refuse or move what appeared.
pub fn settle(
    before: &Snapshot,
    app_dir: &Path,
    static_dir: &Path,
    mode: Untracked,
    command: &str,
    settings_source: &str,
) -> Result<()> {
    let (files, _) = walk(app_dir)?;
    let new: Vec<PathBuf> = files.difference(&before.files).cloned().collect();
    if new.is_empty() {
        return Ok(());
    }
    let root = new_root(before, &new);
    match (mode, &root) {
        (Untracked::MoveToStatic, Some(root)) => move_into(app_dir, root, static_dir),
        _ => {
            let mut named: Vec<String> = new
                .iter()
                .take(5)
                .map(|p| format!("    app/{}", p.display()))
                .collect();
            if new.len() > 5 {
                named.push(format!("    ... and {} more", new.len() - 5));
            }
            let place = match &root {
                Some(root) => format!("app/{}/", root.display()),
                None => "several places in app/".into(),
            };
            Err(BuildError::StaticWroteIntoApp {
                command: command.to_string(),
                count: new.len(),
                named,
                place,
                settings: root.is_some().then(|| settings_source.to_string()),
            }
            .into())
        }
    }
}

/// The directory the new files were written into: the one new directory
/// holding them all, else the deepest directory (existing before) holding
/// them all; None when that is the app root itself.
fn new_root(before: &Snapshot, new: &[PathBuf]) -> Option<PathBuf> {
    // For each new file, its highest ancestor that did not exist before (or
    // the file itself).
    let tops: BTreeSet<PathBuf> = new
        .iter()
        .map(|file| {
            let mut top = file.clone();
            for ancestor in file.ancestors().skip(1) {
                if ancestor.as_os_str().is_empty() || before.dirs.contains(ancestor) {
                    break;
                }
                top = ancestor.to_path_buf();
            }
            top
        })
        .collect();
    if tops.len() == 1 {
        let top = tops.iter().next().expect("one");
        if !new.contains(top) {
            return Some(top.clone());
        }
    }
    // The common parent of the tops.
    let mut parents = tops.iter().map(|t| t.parent().unwrap_or(Path::new("")));
    let mut common = parents.next()?.to_path_buf();
    for p in parents {
        while !p.starts_with(&common) {
            common = common.parent().unwrap_or(Path::new("")).to_path_buf();
        }
    }
    (!common.as_os_str().is_empty()).then_some(common)
}

/// Move everything under `app_dir/root` into `static_dir`, then drop `root`
/// if it is left empty (it did not exist at the commit then).
fn move_into(app_dir: &Path, root: &Path, static_dir: &Path) -> Result<()> {
    let from = app_dir.join(root);
    let mut moves = Vec::new();
    for item in walkdir::WalkDir::new(&from).min_depth(1) {
        let item = item.map_err(|e| crate::fsutil::walk_err(e, &from))?;
        if item.file_type().is_dir() || skipped(item.path()) {
            continue;
        }
        let rel = item
            .path()
            .strip_prefix(&from)
            .expect("under root")
            .to_path_buf();
        moves.push((item.path().to_path_buf(), static_dir.join(rel)));
    }
    for (src, dest) in moves {
        if dest.symlink_metadata().is_ok() {
            return Err(BuildError::StaticMoveClash {
                path: dest.strip_prefix(static_dir).unwrap_or(&dest).to_path_buf(),
            }
            .into());
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::rename(&src, &dest)?;
    }
    for item in walkdir::WalkDir::new(&from).contents_first(true) {
        let item = item.map_err(|e| std::io::Error::other(e.to_string()))?;
        if item.file_type().is_dir() && fs::read_dir(item.path())?.next().is_none() {
            fs::remove_dir(item.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(files: &[&str], dirs: &[&str]) -> Snapshot {
        Snapshot {
            files: files.iter().map(PathBuf::from).collect(),
            dirs: dirs.iter().map(PathBuf::from).collect(),
        }
    }

    #[test]
    fn finds_the_directory_the_step_wrote_to() {
        let before = snap(&["manage.py", "bakery/settings.py"], &["bakery"]);
        let new = [
            PathBuf::from("bakery/collect_static/admin/css/base.css"),
            PathBuf::from("bakery/collect_static/css/site.css"),
        ];
        assert_eq!(
            new_root(&before, &new),
            Some(PathBuf::from("bakery/collect_static"))
        );
        // The directory existed (a tracked .gitkeep): its files are the new part.
        let before = snap(
            &["manage.py", "bakery/collect_static/.gitkeep"],
            &["bakery", "bakery/collect_static"],
        );
        assert_eq!(
            new_root(&before, &new),
            Some(PathBuf::from("bakery/collect_static"))
        );
        // Files spread over the top level: no single place.
        let new = [PathBuf::from("a.css"), PathBuf::from("admin/b.css")];
        assert_eq!(new_root(&before, &new), None);
    }
}
