//! Small filesystem helpers: atomic writes and durable renames.

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

/// Set a path's permission bits.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}
