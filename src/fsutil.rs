//! Generic filesystem helpers, for any part of the tool: atomic writes,
//! durable renames, create-only writes, modes, temporary names, and removing
//! read-only trees.

use std::io::Write;
use std::path::Path;

use fs_err as fs;

use crate::error::Result;

/// fsync a directory so that renames and creations inside it survive power loss.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Write `bytes` to `path` through a temporary file in the same directory,
/// fsync it, rename it over `path` and fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_of(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| fs_err_io(e, dir))?;
    tmp.write_all(bytes)?;
    set_mode(tmp.path(), 0o644)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| fs_err_io(e.error, path))?;
    fsync_dir(dir)
}

/// Attach a path to an I/O error that lacks one.
pub fn fs_err_io(err: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

/// A directory walk's error as an I/O error naming the tree walked, of the
/// kind of the underlying I/O error (a walk's loop is `Other`).
pub fn walk_err(err: walkdir::Error, root: &Path) -> std::io::Error {
    let kind = err
        .io_error()
        .map_or(std::io::ErrorKind::Other, |e| e.kind());
    std::io::Error::new(kind, format!("{}: {err}", root.display()))
}

/// Set a path's permission bits.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// A short random hex string for temporary names (the lock already makes
/// them unique; this only avoids clashing with a stale leftover).
pub fn random_suffix() -> String {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:016x}", seed.hash_one((nanos, std::process::id())))
}

/// Remove a directory tree that may be read-only (installed releases are):
/// give every directory u+w first, then remove it all. Does not follow symlinks.
pub fn remove_tree(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if !meta.is_dir() {
        fs::remove_file(path)?;
        return Ok(());
    }
    for entry in walkdir::WalkDir::new(path).follow_links(false) {
        let entry = entry.map_err(|e| walk_err(e, path))?;
        if entry.file_type().is_dir() {
            let mode = entry
                .metadata()
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o700 != 0o700 {
                set_mode(entry.path(), (mode | 0o700) & 0o7777)?;
            }
        }
    }
    fs::remove_dir_all(path)?;
    Ok(())
}

/// Create a file that must not exist yet (never through a symlink).
pub fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use fs_err::os::unix::fs::OpenOptionsExt;
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    file.write_all(bytes)?;
    Ok(())
}
