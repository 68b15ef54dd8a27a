//! Files an install takes from an installed release instead of the artifact.
//!
//! Installed releases are read-only trees whose every file was checked
//! against its manifest when it was installed. A new release usually shares
//! almost all of its files with the live one (the venv and the wheels do not
//! change when only the code does), so `install` hard-links each file whose
//! path, sha256, size and mode equal the live release's, instead of writing
//! it again: the new release costs disk only for what changed, and the
//! install does one `link(2)` where it would create, write and hash a file.
//!
//! The release linked from is the live one (`current`), else the newest
//! installed release. Its tree as installed is its manifest with its install
//! record applied ([`InstallRecord::expected`]), so paths replaced by shared
//! links, a rebuilt venv or a re-pointed interpreter are never linked. Each
//! candidate is `lstat`ed first: it must still be a regular file of the
//! recorded size and read-only mode, so a release changed by hand is not
//! copied from.
//!
//! A delta artifact (`build --delta-from`) does not carry the files its base
//! release has unchanged: [`Reuse::for_delta`] plans to link every one of
//! them from the base release as installed; each is `lstat`ed right before
//! it is linked ([`Reuse::check_base_file`]), refusing unless it is still
//! there as installed (type, size, read-only mode), and [`BaseCheck`] hashes
//! the content of every one whose inode changed (ctime) since the base was
//! installed, on threads of their own once they are linked; the install
//! renames nothing into place before every hash matched the new manifest
//! (docs/host.md, "Delta artifacts").

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::archive::{DeltaBase, DeltaHeader, HashingReader};
use crate::error::{BaseFileProblem, DeltaBaseChanged, DeltaBaseMissing, InstallError, Result};
use crate::host::dirs::{split, DirFds};
use crate::host::layout::installed_mode;
use crate::host::layout::Host;
use crate::host::record::{InstallRecord, RECORD_NAME};
use crate::host::release_id::ReleaseId;
use crate::host::releases::Installed;
use crate::manifest::{Entry, EntryType, Manifest, MANIFEST_NAME};

/// The installed release files are linked from, and which of the new
/// manifest's entries it can supply.
#[derive(Debug)]
pub struct Reuse {
    /// The release directory linked from.
    pub dir: PathBuf,
    /// Its id.
    pub id: ReleaseId,
    /// Per entry of the new manifest: the file can be linked from `dir`.
    pub linkable: Vec<bool>,
    /// How many files and bytes that is.
    pub files: u64,
    pub bytes: u64,
    /// A delta install: the linkable files are exactly those the artifact
    /// leaves out; each must be linked, and a member for one is refused.
    pub delta: bool,
    /// For a delta: when its base release was complete (the ctime of its
    /// install record). A base file whose inode changed since has its
    /// content hashed ([`Reuse::check_base_file`]).
    pub completed: (i64, i64),
}

impl Reuse {
    /// Plan the reuse for `manifest` from the installed releases `list`:
    /// `None` when none shares a file with it (or none is installed).
    pub fn plan(host: &Host, list: &[Installed], manifest: &Manifest) -> Option<Reuse> {
        let current = host.current().ok().and_then(|c| c.id().cloned());
        let source = list
            .iter()
            .filter(|r| r.is_complete())
            .find(|r| current.as_ref() == Some(&r.id))
            .or_else(|| list.iter().find(|r| r.is_complete()))?;
        Reuse::from_release(source, manifest)
    }

    fn from_release(source: &Installed, manifest: &Manifest) -> Option<Reuse> {
        let theirs = AsInstalled::read(&source.dir).ok()?;
        let mut reuse = Reuse {
            dir: source.dir.clone(),
            id: source.id.clone(),
            linkable: vec![false; manifest.files.len()],
            files: 0,
            bytes: 0,
            delta: false,
            completed: (0, 0),
        };
        let mut dirs = DirFds::open(&source.dir).ok()?;
        for (i, entry, listed) in beside(&manifest.files, &theirs.manifest.files) {
            if entry.kind != EntryType::File || !theirs.record.installed_as(listed, entry) {
                continue;
            }
            let Ok(meta) = stat_in(&mut dirs, &entry.path) else {
                continue;
            };
            let intact = is_file(&meta)
                && meta.st_size as u64 == entry.size()
                && meta.st_mode & 0o7777 == installed_mode(entry.kind, entry.mode);
            if intact {
                reuse.linkable[i] = true;
                reuse.files += 1;
                reuse.bytes += entry.size();
            }
        }
        (reuse.files > 0).then_some(reuse)
    }
}

impl Reuse {
    /// Plan a delta install of `manifest` (read from `artifact`, whose header
    /// is `header`): its base must be installed and complete (the live
    /// release when that is it), and list every file the delta leaves out
    /// as installed. Each of those files is checked as it is linked
    /// ([`Reuse::check_base_file`]); `check_now` (a dry run, which links
    /// nothing) checks them all here instead.
    pub fn for_delta(
        host: &Host,
        list: &[Installed],
        manifest: &Manifest,
        header: &DeltaHeader,
        artifact: &Path,
        check_now: bool,
    ) -> Result<Reuse> {
        let base = &header.base;
        let source = find_base(host, list, base).ok_or_else(|| {
            InstallError::DeltaBaseMissing(Box::new(DeltaBaseMissing {
                artifact: artifact.to_path_buf(),
                release: manifest.release.clone(),
                base_release: base.release.clone(),
                base_commit: base.commit.clone(),
                full: full_artifact_name(artifact, manifest),
            }))
        })?;
        let refused =
            |(path, why): Refusal| base_changed(artifact, manifest, source.name(), path, why);
        let installed = InstalledBase::read(source, base).map_err(refused)?;
        let reuse = installed.link_unchanged(manifest).map_err(refused)?;
        if check_now {
            let mut dirs = DirFds::open(&reuse.dir)
                .map_err(|e| refused((String::new(), BaseFileProblem::Unreadable(e))))?;
            for (i, entry) in manifest.files.iter().enumerate() {
                if reuse.linkable[i] {
                    reuse
                        .check_base_file(&mut dirs, entry)
                        .map_err(|why| refused((entry.path.clone(), why)))?;
                }
            }
        }
        Ok(reuse)
    }

    /// Check the base release's copy of `entry` (in `dirs`, the base's tree)
    /// just before a delta install links it: it must still be a regular
    /// file of its installed mode and listed size. `Ok(true)`: its inode
    /// changed (ctime) since the base was installed, so its content must be
    /// hashed against the manifest ([`BaseCheck`]) before the release is
    /// complete.
    pub fn check_base_file(
        &self,
        dirs: &mut DirFds,
        entry: &Entry,
    ) -> std::result::Result<bool, BaseFileProblem> {
        let meta = stat_in(dirs, &entry.path).map_err(BaseFileProblem::Unreadable)?;
        let installed = installed_mode(entry.kind, entry.mode);
        let mode = meta.st_mode & 0o7777;
        if !is_file(&meta) {
            return Err(BaseFileProblem::NotAFile);
        }
        if mode != installed {
            return Err(BaseFileProblem::ModeChanged { mode, installed });
        }
        let size = meta.st_size as u64;
        if size != entry.size() {
            return Err(BaseFileProblem::SizeChanged {
                size,
                manifest: entry.size(),
            });
        }
        Ok((meta.st_ctime, meta.st_ctime_nsec as i64) > self.completed)
    }

    /// A delta's base file is not as installed: the install stops.
    pub fn base_changed(
        &self,
        artifact: &Path,
        manifest: &Manifest,
        path: &str,
        why: BaseFileProblem,
    ) -> crate::error::Error {
        base_changed(artifact, manifest, self.id.as_str(), path.to_string(), why)
    }
}

/// The delta `artifact` (of `manifest`) cannot take `path` from its
/// installed base release `base`.
fn base_changed(
    artifact: &Path,
    manifest: &Manifest,
    base: &str,
    path: String,
    why: BaseFileProblem,
) -> crate::error::Error {
    InstallError::DeltaBaseChanged(Box::new(DeltaBaseChanged {
        artifact: artifact.to_path_buf(),
        base: base.to_string(),
        path,
        why,
        full: full_artifact_name(artifact, manifest),
    }))
    .into()
}

/// The installed release a delta applies to: a complete one with its
/// commit and tree, the live release when that is it.
fn find_base<'a>(host: &Host, list: &'a [Installed], base: &DeltaBase) -> Option<&'a Installed> {
    let current = host.current().ok().and_then(|c| c.id().cloned());
    let is_base = |r: &&Installed| {
        r.summary
            .as_ref()
            .is_ok_and(|s| s.commit == base.commit && s.tree_sha256 == base.tree_sha256)
    };
    list.iter()
        .filter(is_base)
        .find(|r| current.as_ref() == Some(&r.id))
        .or_else(|| list.iter().find(is_base))
}

/// Why a delta install cannot take a path from its base release.
type Refusal = (String, BaseFileProblem);

/// An installed release's manifest and install record, and when it was
/// complete.
struct AsInstalled {
    manifest: Manifest,
    record: InstallRecord,
    /// The ctime of its install record, written when it was complete: a
    /// file changed since (written, chmod-ed, or linked into a later
    /// release) has a later ctime, which nothing but the clock can set back.
    completed: (i64, i64),
}

impl AsInstalled {
    /// Read the release at `dir`. Its manifest was checked in full
    /// ([`Manifest::from_json`]: paths, fields, tree digest) when the release
    /// was installed; unless it changed since (ctime), its fields are only
    /// parsed now, which takes a third of the time.
    fn read(dir: &Path) -> std::result::Result<AsInstalled, Refusal> {
        let refuse = |path: &str, why| (path.to_string(), why);
        let completed = std::fs::symlink_metadata(dir.join(RECORD_NAME))
            .map(|m| (m.ctime(), m.ctime_nsec()))
            .map_err(|e| refuse(RECORD_NAME, BaseFileProblem::Unreadable(e)))?;
        let unreadable = |e| refuse(MANIFEST_NAME, BaseFileProblem::Unreadable(e));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(dir.join(MANIFEST_NAME))
            .map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        let mut json = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut json).map_err(unreadable)?;
        let unchanged = (meta.ctime(), meta.ctime_nsec()) <= completed;
        let manifest = if unchanged {
            Manifest::from_installed_json(&json)
        } else {
            Manifest::from_json(&json)
        }
        .map_err(|e| refuse(MANIFEST_NAME, BaseFileProblem::NotAManifest(e)))?;
        let record = InstallRecord::read(dir)
            .map_err(|e| refuse(RECORD_NAME, BaseFileProblem::RecordUnreadable(Box::new(e))))?;
        Ok(AsInstalled {
            manifest,
            record,
            completed,
        })
    }
}

/// Each of `ours` (sorted by path) with its index and the entry of `theirs`
/// (sorted by path) at the same path, if any: one walk of both lists.
fn beside<'a>(
    ours: &'a [Entry],
    theirs: &'a [Entry],
) -> impl Iterator<Item = (usize, &'a Entry, Option<&'a Entry>)> {
    let mut j = 0;
    ours.iter().enumerate().map(move |(i, entry)| {
        while theirs
            .get(j)
            .is_some_and(|t| t.path.as_str() < entry.path.as_str())
        {
            j += 1;
        }
        let listed = theirs.get(j).filter(|t| t.path == entry.path);
        (i, entry, listed)
    })
}

/// A delta's base release as this host installed it.
struct InstalledBase<'a> {
    release: &'a Installed,
    base: AsInstalled,
}

impl<'a> InstalledBase<'a> {
    /// Read `release`'s manifest (which must be `base`'s) and install record.
    fn read(
        release: &'a Installed,
        base: &DeltaBase,
    ) -> std::result::Result<InstalledBase<'a>, Refusal> {
        let installed = AsInstalled::read(&release.dir)?;
        let manifest = &installed.manifest;
        if manifest.commit != base.commit || manifest.tree_sha256 != base.tree_sha256 {
            return Err((MANIFEST_NAME.to_string(), BaseFileProblem::NotTheBase));
        }
        Ok(InstalledBase {
            release,
            base: installed,
        })
    }

    /// Plan to link every file of `manifest` this base has unchanged; each
    /// must be one the host installed as listed.
    fn link_unchanged(&self, manifest: &Manifest) -> std::result::Result<Reuse, Refusal> {
        let mut reuse = Reuse {
            dir: self.release.dir.clone(),
            id: self.release.id.clone(),
            linkable: vec![false; manifest.files.len()],
            files: 0,
            bytes: 0,
            delta: true,
            completed: self.base.completed,
        };
        for (i, entry, listed) in beside(&manifest.files, &self.base.manifest.files) {
            // A file the base's manifest lists the same: the delta leaves
            // it out, and the base must have it as listed.
            if entry.kind != EntryType::File || listed != Some(entry) {
                continue;
            }
            if !self.base.record.installed_as(listed, entry) {
                return Err((entry.path.clone(), BaseFileProblem::InstalledDifferently));
            }
            reuse.linkable[i] = true;
            reuse.files += 1;
            reuse.bytes += entry.size();
        }
        Ok(reuse)
    }
}

/// `lstat` of `path` in the tree `dirs` (never through a symlink).
fn stat_in(dirs: &mut DirFds, path: &str) -> std::io::Result<rustix::fs::Stat> {
    let (parent, name) = split(path);
    rustix::fs::statat(
        dirs.dir(parent)?,
        name,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| crate::fsutil::fs_err_io(e.into(), &dirs.path_of(path)))
}

fn is_file(meta: &rustix::fs::Stat) -> bool {
    rustix::fs::FileType::from_raw_mode(meta.st_mode) == rustix::fs::FileType::RegularFile
}

/// The name of the full artifact a delta stands for: the delta's own name
/// without its `.delta-<base12>`, else `<app>-<release>.tar.zst`.
pub fn full_artifact_name(artifact: &Path, manifest: &Manifest) -> String {
    let name = artifact
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.split_once(".delta-") {
        Some((head, tail)) if tail.len() > 12 => format!("{head}{}", &tail[12..]),
        _ => format!("{}-{}.tar.zst", manifest.app, manifest.release),
    }
}

/// One file to hash: the index of its manifest entry, where it is, what it
/// must be.
#[derive(Debug)]
pub struct Work {
    index: usize,
    path: PathBuf,
    size: u64,
    sha256: String,
}

impl Work {
    /// The base release `reuse`'s copy of the manifest's entry `index`.
    pub fn of(reuse: &Reuse, index: usize, entry: &Entry) -> Work {
        Work {
            index,
            path: reuse.dir.join(&entry.path),
            size: entry.size(),
            sha256: entry.sha256.clone().unwrap_or_default(),
        }
    }
}

/// The content check of a delta's unchanged files whose inode changed since
/// the base was installed: threads hash the base release's copies (largest
/// first, shared out as each thread is free). The first mismatch stops them.
pub struct BaseCheck {
    threads: Vec<std::thread::JoinHandle<()>>,
    failure: Arc<Mutex<Option<(usize, BaseFileProblem)>>>,
}

impl BaseCheck {
    pub fn start(mut work: Vec<Work>) -> BaseCheck {
        work.sort_by_key(|w| std::cmp::Reverse(w.size));
        let work = Arc::new(work);
        let next = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(Mutex::new(None));
        let n = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(work.len().max(1));
        let threads = (0..n)
            .map(|_| {
                let (work, next, stop, failure) =
                    (work.clone(), next.clone(), stop.clone(), failure.clone());
                std::thread::spawn(move || {
                    let mut buffer = vec![0u8; 256 * 1024];
                    while !stop.load(Ordering::Relaxed) {
                        let Some(item) = work.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        if let Err(why) = check_one(item, &mut buffer) {
                            stop.store(true, Ordering::Relaxed);
                            let mut first = failure.lock().unwrap_or_else(|p| p.into_inner());
                            first.get_or_insert((item.index, why));
                        }
                    }
                })
            })
            .collect();
        BaseCheck { threads, failure }
    }

    /// Wait for the check: `Err((index, why))` names the first file of the
    /// new manifest whose base copy is not what it lists.
    pub fn finish(self) -> std::result::Result<(), (usize, BaseFileProblem)> {
        for thread in self.threads {
            if thread.join().is_err() {
                return Err((0, BaseFileProblem::HashPanicked));
            }
        }
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        failure.map_or(Ok(()), Err)
    }
}

/// Hash one base file (never through a symlink) against its entry.
fn check_one(item: &Work, buffer: &mut [u8]) -> std::result::Result<(), BaseFileProblem> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&item.path)
        .map_err(BaseFileProblem::Unreadable)?;
    let mut reader = HashingReader::new(file, item.size);
    loop {
        match reader.read(buffer) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BaseFileProblem::ReadFailed(e)),
        }
    }
    let read = reader.bytes_read();
    let digest = reader.digest();
    if read != item.size {
        return Err(BaseFileProblem::SizeChanged {
            size: read,
            manifest: item.size,
        });
    }
    if digest != item.sha256 {
        return Err(BaseFileProblem::ContentChanged {
            sha256: digest,
            manifest: item.sha256.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beside_pairs_each_entry_with_the_other_lists_entry_at_its_path() {
        let list = |paths: &[&str]| -> Vec<Entry> {
            paths.iter().map(|p| Entry::dir(p.to_string())).collect()
        };
        let ours = list(&["app", "app/a", "app/a.py", "app/a/b", "venv"]);
        let theirs = list(&["app", "app/a.py", "app/a/b", "app/z", "static"]);
        let paired: Vec<(usize, &str, Option<&str>)> = beside(&ours, &theirs)
            .map(|(i, e, t)| (i, e.path.as_str(), t.map(|t| t.path.as_str())))
            .collect();
        assert_eq!(
            paired,
            vec![
                (0, "app", Some("app")),
                (1, "app/a", None),
                (2, "app/a.py", Some("app/a.py")),
                (3, "app/a/b", Some("app/a/b")),
                (4, "venv", None),
            ]
        );
    }
}
