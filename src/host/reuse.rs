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
//! them from the base release as installed, refusing unless each is still
//! there as installed (type, size, read-only mode), and [`BaseCheck`] hashes
//! the content of every one whose inode changed (ctime) since the base was
//! installed, on threads of their own while the delta's members are
//! unpacked; the install renames nothing into place before every hash
//! matched the new manifest (docs/host.md, "Delta artifacts").

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::archive::{DeltaBase, DeltaHeader, HashingReader};
use crate::error::{BaseFileProblem, DeltaBaseChanged, DeltaBaseMissing, InstallError, Result};
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
        let json = std::fs::read(source.dir.join(MANIFEST_NAME)).ok()?;
        let theirs = Manifest::from_json(&json).ok()?;
        let record = InstallRecord::read(&source.dir).ok()?;
        let tree = record.expected(&theirs);
        let mut reuse = Reuse {
            dir: source.dir.clone(),
            id: source.id.clone(),
            linkable: vec![false; manifest.files.len()],
            files: 0,
            bytes: 0,
            delta: false,
        };
        for (i, entry) in manifest.files.iter().enumerate() {
            if entry.kind != EntryType::File {
                continue;
            }
            let Ok(j) = tree.binary_search_by(|e| e.path.cmp(&entry.path)) else {
                continue;
            };
            let old = &tree[j];
            let same = old.kind == EntryType::File
                && old.mode == entry.mode
                && old.size == entry.size
                && old.sha256 == entry.sha256;
            if !same {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(source.dir.join(&entry.path)) else {
                continue;
            };
            let intact = meta.file_type().is_file()
                && meta.size() == entry.size()
                && meta.permissions().mode() & 0o7777 == installed_mode(entry.kind, entry.mode);
            if intact {
                reuse.linkable[i] = true;
                reuse.files += 1;
                reuse.bytes += entry.size();
            }
        }
        (reuse.files > 0).then_some(reuse)
    }
}

/// Where a delta install takes its unchanged files from, and the check of
/// their content running beside the unpacking.
pub struct DeltaPlan {
    pub reuse: Reuse,
    pub check: Option<BaseCheck>,
    /// Files whose content is hashed: those changed (ctime) since the base
    /// release was installed.
    pub hashed: u64,
}

impl Reuse {
    /// Plan a delta install of `manifest` (read from `artifact`, whose header
    /// is `header`): its base must be installed and complete (the live
    /// release when that is it), and every file the delta leaves out must be
    /// in it as installed. `hash`: start checking their content now.
    pub fn for_delta(
        host: &Host,
        list: &[Installed],
        manifest: &Manifest,
        header: &DeltaHeader,
        artifact: &Path,
        hash: bool,
    ) -> Result<DeltaPlan> {
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
        let refused = |(path, why): Refusal| {
            InstallError::DeltaBaseChanged(Box::new(DeltaBaseChanged {
                artifact: artifact.to_path_buf(),
                base: source.name().to_string(),
                path,
                why,
                full: full_artifact_name(artifact, manifest),
            }))
        };
        let installed = InstalledBase::read(source, base).map_err(refused)?;
        let (reuse, work) = installed.link_unchanged(manifest).map_err(refused)?;
        let hashed = work.len() as u64;
        let check = (hash && !work.is_empty()).then(|| BaseCheck::start(work));
        Ok(DeltaPlan {
            reuse,
            check,
            hashed,
        })
    }
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

/// A delta's base release as this host installed it.
struct InstalledBase<'a> {
    release: &'a Installed,
    /// Its manifest.
    manifest: Manifest,
    /// Its tree as installed: the manifest with the install record applied.
    tree: Vec<Entry>,
    /// The ctime of its install record, written when it was complete.
    completed: (i64, i64),
}

impl<'a> InstalledBase<'a> {
    /// Read `release`'s manifest (which must be `base`'s) and install record.
    fn read(
        release: &'a Installed,
        base: &DeltaBase,
    ) -> std::result::Result<InstalledBase<'a>, Refusal> {
        let refuse = |path: &str, why| (path.to_string(), why);
        let json = std::fs::read(release.dir.join(MANIFEST_NAME))
            .map_err(|e| refuse(MANIFEST_NAME, BaseFileProblem::Unreadable(e)))?;
        let manifest = Manifest::from_json(&json)
            .map_err(|e| refuse(MANIFEST_NAME, BaseFileProblem::NotAManifest(e)))?;
        if manifest.commit != base.commit || manifest.tree_sha256 != base.tree_sha256 {
            return Err(refuse(MANIFEST_NAME, BaseFileProblem::NotTheBase));
        }
        let record = InstallRecord::read(&release.dir)
            .map_err(|e| refuse(RECORD_NAME, BaseFileProblem::RecordUnreadable(Box::new(e))))?;
        let tree = record.expected(&manifest);
        // The base was complete when its install.json was written: a file
        // changed since (written, chmod-ed, or linked into a later release)
        // has a later ctime, which nothing but the clock can set back.
        let completed = std::fs::symlink_metadata(release.dir.join(RECORD_NAME))
            .map(|m| (m.ctime(), m.ctime_nsec()))
            .map_err(|e| refuse(RECORD_NAME, BaseFileProblem::Unreadable(e)))?;
        Ok(InstalledBase {
            release,
            manifest,
            tree,
            completed,
        })
    }

    /// Plan to link every file of `manifest` this base has unchanged, each
    /// checked as installed; those changed (ctime) since the base was
    /// installed are returned to have their content hashed.
    fn link_unchanged(
        &self,
        manifest: &Manifest,
    ) -> std::result::Result<(Reuse, Vec<Work>), Refusal> {
        let mut reuse = Reuse {
            dir: self.release.dir.clone(),
            id: self.release.id.clone(),
            linkable: vec![false; manifest.files.len()],
            files: 0,
            bytes: 0,
            delta: true,
        };
        let mut work = Vec::new();
        for (i, entry) in manifest.files.iter().enumerate() {
            if !self.has_unchanged(entry) {
                continue;
            }
            let path = self.release.dir.join(&entry.path);
            let meta = self
                .as_installed(entry, &path)
                .map_err(|why| (entry.path.clone(), why))?;
            reuse.linkable[i] = true;
            reuse.files += 1;
            reuse.bytes += entry.size();
            if (meta.ctime(), meta.ctime_nsec()) > self.completed {
                work.push(Work {
                    index: i,
                    path,
                    size: entry.size(),
                    sha256: entry.sha256.clone().unwrap_or_default(),
                });
            }
        }
        Ok((reuse, work))
    }

    /// `entry` is a file the base's manifest lists the same: the delta
    /// leaves it out.
    fn has_unchanged(&self, entry: &Entry) -> bool {
        let files = &self.manifest.files;
        entry.kind == EntryType::File
            && files
                .binary_search_by(|b| b.path.cmp(&entry.path))
                .is_ok_and(|j| files[j] == *entry)
    }

    /// The metadata of the base's copy of `entry` (at `path`), refused
    /// unless the host installed it as listed and it is still a regular
    /// file of its installed mode and listed size.
    fn as_installed(
        &self,
        entry: &Entry,
        path: &Path,
    ) -> std::result::Result<std::fs::Metadata, BaseFileProblem> {
        let tree = &self.tree;
        let as_installed = tree
            .binary_search_by(|e| e.path.cmp(&entry.path))
            .is_ok_and(|j| tree[j] == *entry);
        if !as_installed {
            return Err(BaseFileProblem::InstalledDifferently);
        }
        let meta = std::fs::symlink_metadata(path).map_err(BaseFileProblem::Unreadable)?;
        let installed = installed_mode(entry.kind, entry.mode);
        let mode = meta.permissions().mode() & 0o7777;
        if !meta.file_type().is_file() {
            return Err(BaseFileProblem::NotAFile);
        }
        if mode != installed {
            return Err(BaseFileProblem::ModeChanged { mode, installed });
        }
        if meta.size() != entry.size() {
            return Err(BaseFileProblem::SizeChanged {
                size: meta.size(),
                manifest: entry.size(),
            });
        }
        Ok(meta)
    }
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
struct Work {
    index: usize,
    path: PathBuf,
    size: u64,
    sha256: String,
}

/// The content check of a delta's unchanged files: threads hash the base
/// release's copies (largest first, shared out as each thread is free)
/// beside the unpacking. The first mismatch stops them.
pub struct BaseCheck {
    threads: Vec<std::thread::JoinHandle<()>>,
    failure: Arc<Mutex<Option<(usize, BaseFileProblem)>>>,
}

impl BaseCheck {
    fn start(mut work: Vec<Work>) -> BaseCheck {
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
