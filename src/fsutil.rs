//! Small filesystem helpers: atomic writes and durable renames.

use std::io::Write;
use std::path::Path;

use fs_err as fs;

use crate::error::{Error, Result};

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

/// Say plainly that a filesystem filled up: an `ENOSPC` (or `EDQUOT`) while
/// installing into `dir` becomes an error naming the filesystem, the file,
/// what the release needs (`need`: the release and its bytes; `None` once
/// the release is in place, or before anything was written), what is free
/// now, and the fix. Other errors pass through.
pub fn explain_full_disk(err: Error, dir: &Path, need: Option<(String, u64)>) -> Error {
    use std::io::ErrorKind;
    let (Error::Io(io), Some((release, bytes))) = (&err, need) else {
        return err;
    };
    if !matches!(io.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded) {
        return err;
    }
    let mib = |b: u64| b.div_ceil(1024 * 1024);
    let needs = format!("release {release} needs about {} MiB", mib(bytes));
    let free = rustix::fs::statvfs(dir)
        .map(|s| {
            format!(
                "{} MiB are free now",
                mib(s.f_bavail.saturating_mul(s.f_frsize))
            )
        })
        .unwrap_or_else(|_| "free space unknown".to_string());
    Error::failed(format!(
        "the filesystem of {} is full ({io}): {needs}, {free}; the partial copy was removed and nothing was installed\n  fix: free space on that filesystem, e.g. remove old releases with `release prune --keep N`, then install again",
        dir.display()
    ))
}
