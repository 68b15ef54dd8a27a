//! Making an unpacked release durable before it is renamed into place
//! (docs/host.md, "Durability").
//!
//! Two ways, both correct on any Linux filesystem; only their speed differs:
//!
//! * [`Strategy::Syncfs`]: one `syncfs(2)` of the filesystem. One journal
//!   commit and one disk flush for the whole tree, but it also writes out,
//!   and waits for, every other process's dirty data on that filesystem.
//! * [`Strategy::EachFile`]: `fsync(2)` of every file and directory of the
//!   tree, from [`FSYNC_THREADS`] threads. It writes nothing but the
//!   release's own data, but costs a disk flush per file (concurrent
//!   flushes are merged by the block layer).
//!
//! [`choose`] takes `syncfs` unless more data than the install itself wrote
//! waits to be written, by more than [`OTHERS_DIRTY_PER_ENTRY`] for each
//! entry of the tree, i.e. unless something else is writing: on ext4, the
//! data of the release's filesystem not yet allocated (delayed
//! allocation); elsewhere, the dirty data of the whole page cache.
//!
//! While unpacking, [`Writeback`] starts the disk writes of each file soon
//! after it is written, so either way finds the release's data on its way
//! to the disk.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::fsutil;

/// The environment variable that forces a strategy: `syncfs`, `fsync` or
/// `auto` (the default).
pub const ENV: &str = "RELEASE_DURABILITY";

/// Threads that `fsync` the files of [`Strategy::EachFile`]: an `fsync`
/// mostly waits for the disk's flush, and flushes that wait together are
/// sent as one (for the mysite artifact's 9,064 entries on the bench's
/// loop filesystem: 410–560 flushes from 32 threads, 140–230 from 128,
/// no fewer from 512).
pub const FSYNC_THREADS: usize = 128;

/// Their stacks: each only opens, fsyncs and closes.
const FSYNC_STACK: usize = 128 << 10;

/// Dirty data not the install's that `syncfs` would write in the time
/// the fsync of one more entry takes (measured on the bench's loop
/// filesystem: 15–30 µs an entry from 128 threads, against 0.6–0.8 GB/s
/// for the writes of a `syncfs`; docs/host.md).
pub const OTHERS_DIRTY_PER_ENTRY: u64 = 16 << 10;

/// Below this much dirty data not the install's, `syncfs` always.
pub const OTHERS_DIRTY_FLOOR: u64 = 16 << 20;

/// Batches of files handed to the writeback thread and not yet started.
const WRITEBACK_QUEUE: usize = 4;

/// Files, or bytes, in one batch for the writeback thread.
const WRITEBACK_BATCH: usize = 32;
const WRITEBACK_BATCH_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Syncfs,
    EachFile,
}

impl Strategy {
    pub fn describe(self) -> &'static str {
        match self {
            Strategy::Syncfs => "one syncfs of the filesystem",
            Strategy::EachFile => "an fsync of each file and directory",
        }
    }
}

/// The strategy [`ENV`] forces, if any; an error for a value it does not
/// take (checked before an install changes anything).
pub fn forced() -> Result<Option<Strategy>> {
    match std::env::var_os(ENV) {
        None => Ok(None),
        Some(v) if v == "auto" || v.is_empty() => Ok(None),
        Some(v) if v == "syncfs" => Ok(Some(Strategy::Syncfs)),
        Some(v) if v == "fsync" => Ok(Some(Strategy::EachFile)),
        Some(v) => Err(Error::Usage(format!(
            "{ENV}={}: not a durability strategy; use auto (the default), syncfs or fsync",
            v.to_string_lossy()
        ))),
    }
}

/// The strategy for the tree at `dir`, of `entries` files and directories
/// holding `ours` bytes, and why.
pub fn choose(dir: &Path, entries: usize, ours: u64) -> Result<(Strategy, String)> {
    if let Some(strategy) = forced()? {
        return Ok((strategy, format!("{ENV} asks for it")));
    }
    if let Some((device, dirty)) = ext4_delayed_bytes(dir) {
        let why = format!(
            "{} MiB written to {device} and not yet allocated on it; this install wrote {} MiB",
            dirty >> 20,
            ours >> 20
        );
        return Ok((decide(entries, ours, dirty), why));
    }
    let Some(dirty) = dirty_bytes() else {
        return Ok((Strategy::Syncfs, "/proc/meminfo unreadable".into()));
    };
    let why = format!(
        "{} MiB dirty or being written back in the page cache; this install wrote {} MiB",
        dirty >> 20,
        ours >> 20
    );
    Ok((decide(entries, ours, dirty), why))
}

/// `syncfs` unless writing out the dirty data that is not the install's
/// would take longer than the per-file flushes of its `entries`.
fn decide(entries: usize, ours: u64, dirty: u64) -> Strategy {
    let others = dirty.saturating_sub(ours);
    let limit = OTHERS_DIRTY_FLOOR.max(entries as u64 * OTHERS_DIRTY_PER_ENTRY);
    if others > limit {
        Strategy::EachFile
    } else {
        Strategy::Syncfs
    }
}

/// On ext4, the data written to `dir`'s filesystem whose blocks are not
/// allocated yet (delayed allocation: written by a process, not yet
/// written back), in bytes, and the filesystem's device name: what a
/// `syncfs` of it would write, but for overwrites of allocated blocks.
/// `None` on other filesystems.
fn ext4_delayed_bytes(dir: &Path) -> Option<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let link = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let device = link.file_name()?.to_str()?.to_string();
    let blocks: u64 =
        std::fs::read_to_string(format!("/sys/fs/ext4/{device}/delayed_allocation_blocks"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
    let block = rustix::fs::statvfs(dir).ok()?.f_bsize;
    Some((device, blocks * block))
}

/// `Dirty` + `Writeback` of /proc/meminfo, in bytes: data written by any
/// process, to any filesystem, not yet on disk.
fn dirty_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let mut total = 0;
    let mut found = 0;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key == "Dirty" || key == "Writeback" {
            let kb: u64 = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
            total += kb * 1024;
            found += 1;
        }
    }
    (found == 2).then_some(total)
}

/// Make the tree at `dir` durable with `strategy`, and the paths an install
/// created outside it (`outside`, each a file or a tree) with an fsync of
/// each and of its parent directory, whatever the strategy: they may be on
/// another filesystem.
pub fn make_durable(dir: &Path, outside: &[PathBuf], strategy: Strategy) -> Result<()> {
    let mut paths = Vec::new();
    for path in outside {
        walk(path, &mut paths)?;
        if let Some(parent) = path.parent() {
            paths.push(parent.to_path_buf());
        }
    }
    match strategy {
        Strategy::Syncfs => {
            let handle = File::open(dir).map_err(|e| fsutil::fs_err_io(e, dir))?;
            rustix::fs::syncfs(&handle).map_err(|e| fsutil::fs_err_io(e.into(), dir))?;
        }
        Strategy::EachFile => walk(dir, &mut paths)?,
    }
    fsync_all(&paths)
}

/// Every regular file and directory of the tree at `root` (symlinks are
/// made durable by their directory's fsync).
fn walk(root: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for item in walkdir::WalkDir::new(root).follow_links(false) {
        let item = item.map_err(|e| crate::fsutil::walk_err(e, root))?;
        let kind = item.file_type();
        if kind.is_file() || kind.is_dir() {
            out.push(item.into_path());
        }
    }
    Ok(())
}

/// fsync each path from up to [`FSYNC_THREADS`] threads; the first error.
fn fsync_all(paths: &[PathBuf]) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<std::io::Error>> = Mutex::new(None);
    let threads = FSYNC_THREADS.min(paths.len().div_ceil(64)).max(1);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(path) = paths.get(i) else { break };
        if let Err(e) = fsync_path(path) {
            failed.lock().expect("no panics hold it").get_or_insert(e);
            next.store(paths.len(), Ordering::Relaxed);
            break;
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            let spawned = std::thread::Builder::new()
                .stack_size(FSYNC_STACK)
                .spawn_scoped(scope, work);
            if spawned.is_err() {
                // Fewer threads are only slower: this one works too.
                break;
            }
        }
        work();
    });
    match failed.into_inner().expect("no panics hold it") {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn fsync_path(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| fsutil::fs_err_io(e, path))
}

/// Starts the disk writes of each file soon after it is written, on a
/// thread of its own: `posix_fadvise(POSIX_FADV_DONTNEED)` writes back the
/// file's dirty pages without waiting for them (and then drops those
/// already clean from the page cache), and only this file's, whatever else
/// the host is writing. It also closes the files, off the unpacking thread.
/// Files go to the thread in batches of [`WRITEBACK_BATCH`] files or
/// [`WRITEBACK_BATCH_BYTES`], whichever comes first.
pub struct Writeback {
    queue: Option<SyncSender<Vec<File>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    batch: Vec<File>,
    batch_bytes: u64,
}

impl Writeback {
    pub fn start() -> Writeback {
        let (queue, batches) = std::sync::mpsc::sync_channel::<Vec<File>>(WRITEBACK_QUEUE);
        let thread = std::thread::spawn(move || {
            for file in batches.into_iter().flatten() {
                // Only a head start: the durability step reports errors.
                let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
            }
        });
        Writeback {
            queue: Some(queue),
            thread: Some(thread),
            batch: Vec::with_capacity(WRITEBACK_BATCH),
            batch_bytes: 0,
        }
    }

    /// `file`, of `bytes`, was written: start writing it back soon, then
    /// close it.
    pub fn written(&mut self, file: File, bytes: u64) {
        self.batch.push(file);
        self.batch_bytes += bytes;
        if self.batch.len() >= WRITEBACK_BATCH || self.batch_bytes >= WRITEBACK_BATCH_BYTES {
            self.send();
        }
    }

    fn send(&mut self) {
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(WRITEBACK_BATCH));
        self.batch_bytes = 0;
        if let Some(queue) = &self.queue {
            let _ = queue.send(batch);
        }
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        if !self.batch.is_empty() {
            self.send();
        }
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncfs_unless_others_have_more_dirty_data_than_the_fsyncs_cost() {
        let mib = 1 << 20;
        // 9,000 entries: the line is at about 140 MiB of others' data.
        assert_eq!(decide(9000, 60 * mib, 60 * mib), Strategy::Syncfs);
        assert_eq!(decide(9000, 60 * mib, 190 * mib), Strategy::Syncfs);
        assert_eq!(decide(9000, 60 * mib, 220 * mib), Strategy::EachFile);
        assert_eq!(decide(9000, 60 * mib, 1100 * mib), Strategy::EachFile);
        // A small tree: the floor.
        assert_eq!(decide(10, 0, 10 * mib), Strategy::Syncfs);
        assert_eq!(decide(10, 0, 20 * mib), Strategy::EachFile);
    }

    #[test]
    fn meminfo_has_dirty_and_writeback() {
        assert!(dirty_bytes().is_some());
    }

    #[test]
    fn each_file_fsyncs_a_tree_and_reports_a_missing_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("a/l")).unwrap();
        make_durable(dir.path(), &[], Strategy::EachFile).unwrap();
        let gone = dir.path().join("gone");
        let err = fsync_all(std::slice::from_ref(&gone))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&gone.display().to_string()), "{err}");
    }
}
