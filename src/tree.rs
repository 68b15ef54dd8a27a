//! A directory on disk as manifest entries: what `build` records for the
//! app, venv and static trees, and what `install --rebuild-venv` records for
//! the venv it made. Shared by both sides, so neither imports the other.

use std::path::Path;

use fs_err as fs;

use crate::archive;
use crate::error::{BuildError, Result, Unpackable};
use crate::manifest::{self, Entry};

/// Manifest entries for everything under `root`, with paths under `prefix`.
pub fn scan_tree(root: &Path, prefix: &str) -> Result<Vec<Entry>> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries = Vec::new();
    for item in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let item = item.map_err(|e| crate::fsutil::walk_err(e, root))?;
        let rel = item.path().strip_prefix(root).expect("under root");
        let rel = rel.to_str().ok_or_else(|| BuildError::Unpackable {
            path: item.path().to_path_buf(),
            why: Unpackable::NameNotUtf8,
        })?;
        let path = if rel.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}/{rel}")
        };
        if let Err(why) = manifest::check_path(&path) {
            return Err(BuildError::Unpackable {
                path: item.path().to_path_buf(),
                why: Unpackable::BadPath(why),
            }
            .into());
        }
        let kind = item.file_type();
        let entry = if kind.is_dir() {
            Entry::dir(path)
        } else if kind.is_symlink() {
            let target = fs::read_link(item.path())?;
            Entry::symlink(path, target.to_string_lossy().into_owned())
        } else if kind.is_file() {
            let meta = item
                .metadata()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let (sha256, size) = archive::hash_file(item.path())?;
            Entry::file(path, meta.permissions().mode() & 0o111 != 0, size, sha256)
        } else {
            return Err(BuildError::Unpackable {
                path: item.path().to_path_buf(),
                why: Unpackable::NotAFileDirOrLink,
            }
            .into());
        };
        entries.push(entry);
    }
    Ok(entries)
}
