//! Unpack an artifact's members into a fresh directory, checking every one
//! against the manifest and the safety rules of docs/design.md §4. The `tar`
//! crate only parses; every rule is enforced here, before anything is written:
//!
//! * paths: no absolute paths, `..`, control characters, empty or `.`
//!   components, nothing outside app/, venv/, wheels/, static/;
//! * types: regular files, directories and symlinks only (no devices, fifos,
//!   hard links or sparse files); no setuid, setgid or sticky bits;
//! * every member is in the manifest, once, with the manifest's type, mode,
//!   size, sha256 (hashed while streaming) or link target, and every manifest
//!   entry is in the archive;
//! * symlinks stay inside the release, except the venv's links to the
//!   interpreter the manifest records;
//! * nothing is written through a symlink: a member's parent must be a
//!   directory this extraction created, and files are created with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW`;
//! * the archive is read in the `tar` crate's raw mode: GNU long names and
//!   PAX headers are read here within `archive::MAX_EXTENSION_BYTES`, never
//!   whole into memory whatever size they declare.
//!
//! With a [`Reuse`] plan, a file identical to the live release's is
//! hard-linked from it instead of written (see `reuse.rs`); its member is
//! still read and checked like any other, so the same artifacts are refused.

use std::io::{Read, Write};
use std::os::fd::BorrowedFd;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::archive::{Extensions, HashingReader};
use crate::crashpoint::CrashPoint;
use crate::error::{ArtifactError, Error, HeaderRefused, Result, UnsafeRule};
use crate::fsutil;
use crate::host::dirs::{split, DirFds};
use crate::host::durable::Writeback;
use crate::host::layout::installed_mode;
use crate::host::reuse::{Reuse, Work};
use crate::manifest::{self, Entry, EntryType, Manifest};

/// Files are copied through a buffer of this size.
const COPY_BUFFER: usize = 256 * 1024;

#[derive(Debug, Default)]
pub struct Extracted {
    /// Regular files written.
    pub files: u64,
    /// Bytes of regular files written.
    pub bytes: u64,
    /// Files hard-linked from the release being reused.
    pub linked: u64,
    /// Bytes of those files.
    pub linked_bytes: u64,
    /// Indices of the manifest's directories, in the order they were created.
    pub dirs: Vec<usize>,
    /// Those directories were created with their installed mode (0555):
    /// this process can still create entries in them (see [`Sealing`]).
    pub sealed: bool,
    /// A delta's base files linked whose inode changed since the base was
    /// installed: their content is still to be hashed ([`BaseCheck`]).
    ///
    /// [`BaseCheck`]: crate::host::reuse::BaseCheck
    pub to_hash: Vec<Work>,
}

pub struct Extractor<'a> {
    artifact: &'a Path,
    manifest: &'a Manifest,
    dest: &'a Path,
    seen: Vec<bool>,
    buffer: Vec<u8>,
    out: Extracted,
    progress: indicatif::ProgressBar,
    reuse: Option<&'a Reuse>,
    /// The destination's directories, and the reused release's (opened
    /// when the first file is linked).
    to: DirFds,
    from: Option<DirFds>,
    /// A delta's linking thread, fed with the files of each directory made.
    feed: Option<Feed>,
    /// Where the search for the next member's entry starts.
    next: usize,
}

impl<'a> Extractor<'a> {
    pub fn new(artifact: &'a Path, manifest: &'a Manifest, dest: &'a Path) -> Result<Self> {
        let to = DirFds::open(dest)?;
        let sealed = Sealing::probe(to.root()) == Sealing::AtCreation;
        Ok(Extractor {
            artifact,
            manifest,
            dest,
            seen: vec![false; manifest.files.len()],
            buffer: vec![0; COPY_BUFFER],
            out: Extracted {
                sealed,
                ..Extracted::default()
            },
            progress: indicatif::ProgressBar::hidden(),
            reuse: None,
            to,
            from: None,
            feed: None,
            next: 0,
        })
    }

    /// Link the files `reuse` can supply instead of writing them.
    pub fn with_reuse(mut self, reuse: Option<&'a Reuse>) -> Self {
        self.reuse = reuse;
        self
    }

    fn linkable(&self, index: usize) -> bool {
        self.reuse.is_some_and(|r| r.linkable[index])
    }

    /// Show progress per archive member on `bar`.
    pub fn with_progress(mut self, bar: indicatif::ProgressBar) -> Self {
        self.progress = bar;
        self
    }

    fn refuse(&self, entry: &str, rule: UnsafeRule) -> Error {
        ArtifactError::UnsafeEntry {
            artifact: self.artifact.to_path_buf(),
            entry: shorten(entry),
            rule,
        }
        .into()
    }

    /// Unpack every remaining member of `entries` (raw entries, see
    /// `archive::raw_entries`; the manifest already read), then check that
    /// nothing in the manifest was missing.
    pub fn run<R: Read>(mut self, entries: tar::Entries<'_, R>) -> Result<Extracted> {
        // A delta's unchanged files are linked from its base on a thread of
        // their own while the members (mostly directories) are unpacked:
        // each directory, once created, hands over the files it holds.
        let linked_beside = match self.reuse.filter(|r| r.delta && r.files > 0) {
            None => {
                self.unpack_members(entries)?;
                None
            }
            Some(reuse) => {
                let (artifact, manifest, dest) = (self.artifact, self.manifest, self.dest);
                let (feed, fed) = Feed::new(manifest, reuse);
                std::thread::scope(|scope| {
                    let linker =
                        scope.spawn(move || link_fed(artifact, manifest, dest, reuse, fed));
                    self.feed = Some(feed);
                    let unpacked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.unpack_members(entries)
                    }));
                    // Hands over the last files and closes the feed (also
                    // on a panic: the linker would wait for it forever).
                    self.feed = None;
                    let linked = linker
                        .join()
                        .unwrap_or_else(|_| Err(Error::internal("the linking thread panicked")));
                    let unpacked =
                        unpacked.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    unpacked.map(|()| Some(linked))
                })?
            }
        };
        // A delta leaves out the files its base release supplies.
        let supplied = |i: usize| self.reuse.is_some_and(|r| r.delta && r.linkable[i]);
        let absent = |i: usize| !self.seen[i] && !supplied(i);
        if let Some(i) = (0..self.seen.len()).find(|i| absent(*i)) {
            let missing = (0..self.seen.len()).filter(|i| absent(*i)).count();
            let path = self.manifest.files[i].path.clone();
            return Err(self.refuse(&path, UnsafeRule::Missing { count: missing }));
        }
        if let Some(linked) = linked_beside {
            let linked = linked?;
            for &i in &linked.files {
                self.seen[i] = true;
                self.out.linked += 1;
                self.out.linked_bytes += self.manifest.files[i].size();
            }
            self.out.to_hash.extend(linked.to_hash);
        }
        // What was not handed over (a parent that is not a directory the
        // artifact created): linked here, where its parent is refused.
        let rest: Vec<usize> = (0..self.seen.len()).filter(|&i| !self.seen[i]).collect();
        self.link_rest(&rest)?;
        Ok(self.out)
    }

    /// Unpack every remaining member of `entries`.
    fn unpack_members<R: Read>(&mut self, entries: tar::Entries<'_, R>) -> Result<()> {
        let mut last = String::from("release.json");
        let mut writeback = Writeback::start();
        let mut names = Extensions::default();
        for entry in entries {
            let mut entry = entry.map_err(|e| self.corrupt(&last, &e))?;
            if names
                .absorb(&mut entry)
                .map_err(|why| self.refuse_after(&last, &why.to_string()))?
            {
                continue;
            }
            last = self.one(entry, names.take(), &mut writeback)?;
            self.progress.inc(1);
            if self.out.files + self.out.linked == 100 {
                crate::crashpoint::crashpoint(CrashPoint::InstallMidExtract);
            }
        }
        drop(writeback);
        if names.pending() {
            return Err(self.refuse_after(
                &last,
                "an extension header ends the archive, with no member after it",
            ));
        }
        self.progress.finish_and_clear();
        Ok(())
    }

    /// Link the files a delta left out that were not linked beside the
    /// unpacking (`rest`, indices of the manifest) from its base, each
    /// checked just before (see
    /// [`Reuse::check_base_file`]); when there are many, half of them on a
    /// second thread with its own directories open (ext4 creates entries in
    /// different directories in parallel).
    fn link_rest(&mut self, rest: &[usize]) -> Result<()> {
        const SPLIT_FROM: usize = 512;
        let Some(reuse) = self.reuse else {
            return Ok(());
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let split = if rest.len() >= SPLIT_FROM && cores >= 2 {
            rest.len() / 2
        } else {
            0
        };
        let (theirs, mine) = rest.split_at(split);
        let (artifact, manifest, dest) = (self.artifact, self.manifest, self.dest);
        let link_all = move |from: &mut DirFds, to: &mut DirFds, indices: &[usize]| {
            let mut to_hash = Vec::new();
            for &i in indices {
                to_hash.extend(link_checked(artifact, manifest, reuse, from, to, i)?);
            }
            Ok::<_, Error>(to_hash)
        };
        let from = match &mut self.from {
            Some(from) => from,
            None => self.from.insert(DirFds::open(&reuse.dir)?),
        };
        let to = &mut self.to;
        let (here, there) = std::thread::scope(|scope| {
            let helper = (!theirs.is_empty()).then(|| {
                scope.spawn(move || {
                    let mut from = DirFds::open(&reuse.dir)?;
                    let mut to = DirFds::open(dest)?;
                    link_all(&mut from, &mut to, theirs)
                })
            });
            let here = link_all(from, to, mine);
            let there = helper.map_or(Ok(Vec::new()), |h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::internal("a linking thread panicked")))
            });
            (here, there)
        });
        self.out.to_hash.extend(here?);
        self.out.to_hash.extend(there?);
        self.out.linked += rest.len() as u64;
        self.out.linked_bytes += rest.iter().map(|&i| manifest.files[i].size()).sum::<u64>();
        for &i in rest {
            self.seen[i] = true;
        }
        Ok(())
    }

    /// Refuse at an extension header, which names no member of its own.
    fn refuse_after(&self, last: &str, why: &str) -> Error {
        ArtifactError::UnsafeMemberAfter {
            artifact: self.artifact.to_path_buf(),
            last: shorten(last),
            rule: why.to_string(),
        }
        .into()
    }

    fn corrupt(&self, after: &str, err: &std::io::Error) -> Error {
        ArtifactError::CorruptArchive {
            artifact: self.artifact.to_path_buf(),
            after: after.escape_debug().to_string(),
            error: err.to_string(),
        }
        .into()
    }

    /// Check and unpack one member; returns its path.
    fn one<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        names: Extensions,
        writeback: &mut Writeback,
    ) -> Result<String> {
        let raw = names
            .path
            .unwrap_or_else(|| entry.path_bytes().into_owned());
        let lossy = String::from_utf8_lossy(&raw).into_owned();
        let Ok(name) = std::str::from_utf8(&raw) else {
            return Err(self.refuse(&lossy, UnsafeRule::PathNotUtf8));
        };
        let header_type = entry.header().entry_type();
        let path = if header_type.is_dir() {
            name.strip_suffix('/').unwrap_or(name)
        } else {
            name
        };
        self.check_path(path)?;
        let kind =
            member_kind(header_type).map_err(|why| self.refuse(path, UnsafeRule::Header(why)))?;
        let mode = entry
            .header()
            .mode()
            .map_err(|e| self.refuse(path, UnsafeRule::UnreadableMode(e.to_string())))?;
        check_mode(mode).map_err(|why| self.refuse(path, UnsafeRule::Header(why)))?;
        let index = self.expected_index(path, kind, mode)?;
        self.next = index + 1;
        self.check_parent(path)?;
        let expected = &self.manifest.files[index];
        match kind {
            EntryType::Dir => self.make_dir(path, index)?,
            EntryType::Symlink => {
                let link = names
                    .link
                    .or_else(|| entry.link_name_bytes().map(|l| l.into_owned()))
                    .unwrap_or_default();
                let Ok(link) = String::from_utf8(link) else {
                    return Err(self.refuse(path, UnsafeRule::LinkNotUtf8));
                };
                self.make_symlink(path, &link, expected)?;
            }
            EntryType::File => self.write_file(&mut entry, path, index, writeback)?,
        }
        self.seen[index] = true;
        Ok(path.to_string())
    }

    /// The manifest's entry for a member at `path` of `kind` and `mode`:
    /// listed, not seen before, of that type and (but for a symlink) mode.
    fn expected_index(&self, path: &str, kind: EntryType, mode: u32) -> Result<usize> {
        let Some(index) = self.index_of(path) else {
            return Err(self.refuse(path, UnsafeRule::NotInManifest));
        };
        if self.seen[index] {
            return Err(self.refuse(path, UnsafeRule::Duplicate));
        }
        let expected = &self.manifest.files[index];
        if expected.kind != kind {
            return Err(self.refuse(
                path,
                UnsafeRule::KindDiffers {
                    archive: kind,
                    manifest: expected.kind,
                },
            ));
        }
        if kind != EntryType::Symlink && mode & 0o777 != expected.mode {
            return Err(self.refuse(
                path,
                UnsafeRule::ModeDiffers {
                    archive: mode & 0o777,
                    manifest: expected.mode,
                },
            ));
        }
        Ok(index)
    }

    /// The manifest's index of `path`. Members come in the manifest's order
    /// (a delta's skip the files it leaves out), so the search starts after
    /// the last member found and gallops forward; a path before it is
    /// searched for in the whole list.
    fn index_of(&self, path: &str) -> Option<usize> {
        let files = &self.manifest.files;
        let start = self.next.min(files.len());
        let ahead = &files[start..];
        if ahead.first().is_none_or(|e| e.path.as_str() > path) {
            return files[..start]
                .binary_search_by(|e| e.path.as_str().cmp(path))
                .ok();
        }
        let mut end = 1;
        while end < ahead.len() && ahead[end].path.as_str() <= path {
            end *= 2;
        }
        let (from, to) = (end / 2, (end + 1).min(ahead.len()));
        ahead[from..to]
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .map(|i| start + from + i)
    }

    /// A file member: its size as listed, then linked from the release
    /// being reused (its bytes still checked) or written, never through a
    /// symlink.
    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &str,
        index: usize,
        writeback: &mut Writeback,
    ) -> Result<()> {
        let expected = &self.manifest.files[index];
        let want_size = expected.size();
        let size = entry.size();
        if size > want_size {
            return Err(self.refuse(
                path,
                UnsafeRule::SizeBeyond {
                    size,
                    manifest: want_size,
                },
            ));
        }
        if size != want_size {
            return Err(self.refuse(
                path,
                UnsafeRule::SizeDiffers {
                    size,
                    manifest: want_size,
                },
            ));
        }
        if let Some(reuse) = self.reuse.filter(|r| r.delta && r.linkable[index]) {
            return Err(self.refuse(
                path,
                UnsafeRule::UnchangedInDelta {
                    base: reuse.id.to_string(),
                },
            ));
        }
        if self.linkable(index) {
            // Checked like any member, though its bytes are not used.
            self.copy_checked(entry, path, expected, &mut std::io::sink())?;
            return self.link_file(path, expected);
        }
        let (parent, name) = split(path);
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(installed_mode(EntryType::File, expected.mode));
        let mut file = std::fs::File::from(
            rustix::fs::openat(self.to.dir(parent)?, name, flags, mode)
                .map_err(|e| fsutil::fs_err_io(e.into(), &self.dest.join(path)))?,
        );
        let read = self.copy_checked(entry, path, expected, &mut file)?;
        writeback.written(file, read);
        self.out.files += 1;
        self.out.bytes += read;
        Ok(())
    }

    /// Copy a member's data to `out`, hashing it, and check it is the
    /// manifest's content. Returns the bytes copied.
    fn copy_checked<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &str,
        expected: &Entry,
        out: &mut dyn Write,
    ) -> Result<u64> {
        let want_size = expected.size();
        let target_path = self.dest.join(path);
        let mut reader = HashingReader::new(entry, want_size);
        loop {
            let n = match reader.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.corrupt(path, &e)),
            };
            out.write_all(&self.buffer[..n])
                .map_err(|e| fsutil::fs_err_io(e, &target_path))?;
        }
        let read = reader.bytes_read();
        let digest = reader.digest();
        if read != want_size {
            return Err(self.refuse(
                path,
                UnsafeRule::Truncated {
                    read,
                    manifest: want_size,
                },
            ));
        }
        let want = expected.sha256.as_deref().unwrap_or_default();
        if digest != want {
            return Err(self.refuse(
                path,
                UnsafeRule::ContentDiffers {
                    sha256: digest,
                    manifest: want.to_string(),
                },
            ));
        }
        Ok(read)
    }

    fn make_dir(&mut self, path: &str, index: usize) -> Result<()> {
        let (parent, name) = split(path);
        let mode = if self.out.sealed {
            installed_mode(EntryType::Dir, 0o755)
        } else {
            0o755
        };
        rustix::fs::mkdirat(self.to.dir(parent)?, name, Mode::from_raw_mode(mode))
            .map_err(|e| fsutil::fs_err_io(e.into(), &self.dest.join(path)))?;
        self.out.dirs.push(index);
        if let Some(feed) = &mut self.feed {
            feed.created(index);
        }
        Ok(())
    }

    fn make_symlink(&mut self, path: &str, link: &str, expected: &Entry) -> Result<()> {
        let want = expected.target.as_deref().unwrap_or_default();
        if link != want {
            return Err(self.refuse(
                path,
                UnsafeRule::LinkDiffers {
                    archive: shorten(link),
                    manifest: shorten(want),
                },
            ));
        }
        let interpreter_link =
            path.starts_with("venv/bin/") && link == self.manifest.python.base_executable;
        if !interpreter_link && !manifest::symlink_stays_inside(path, link) {
            return Err(self.refuse(
                path,
                UnsafeRule::LinkLeaves {
                    target: shorten(link),
                },
            ));
        }
        let (parent, name) = split(path);
        rustix::fs::symlinkat(link, self.to.dir(parent)?, name)
            .map_err(|e| fsutil::fs_err_io(e.into(), &self.dest.join(path)))?;
        Ok(())
    }

    /// Hard-link the reused release's copy of a file (checked by the plan).
    fn link_file(&mut self, path: &str, expected: &Entry) -> Result<()> {
        let reuse = self.reuse.expect("linkable implies a reuse plan");
        let from = match &mut self.from {
            Some(from) => from,
            None => self.from.insert(DirFds::open(&reuse.dir)?),
        };
        link_one(reuse, from, &mut self.to, path)?;
        self.out.linked += 1;
        self.out.linked_bytes += expected.size();
        Ok(())
    }

    fn check_path(&self, path: &str) -> Result<()> {
        if path.starts_with('/') {
            return Err(self.refuse(path, UnsafeRule::AbsolutePath));
        }
        if path.chars().any(char::is_control) {
            return Err(self.refuse(path, UnsafeRule::ControlCharacter));
        }
        if path.split('/').any(|c| c == "..") {
            return Err(self.refuse(path, UnsafeRule::DotDot));
        }
        manifest::check_path(path).map_err(|why| self.refuse(path, UnsafeRule::Path(why)))
    }

    /// A member's parent must be a directory member already unpacked (or the
    /// release root): then no path is ever resolved through a symlink.
    fn check_parent(&self, path: &str) -> Result<()> {
        let Some((parent, _)) = path.rsplit_once('/') else {
            return Ok(());
        };
        let ok = self
            .manifest
            .files
            .binary_search_by(|e| e.path.as_str().cmp(parent))
            .is_ok_and(|i| self.seen[i] && self.manifest.files[i].kind == EntryType::Dir);
        if ok {
            Ok(())
        } else {
            Err(self.refuse(
                path,
                UnsafeRule::ParentNotDir {
                    parent: parent.to_string(),
                },
            ))
        }
    }
}

/// Hands a delta's unchanged files to the thread that links them, in
/// batches, as the directory each is in is created.
struct Feed {
    /// `(parent directory's manifest index, file's index)` of every file the
    /// base supplies, by parent (`None`: the release's root); files whose
    /// parent is not a listed directory are left out (linked after, and
    /// refused there).
    by_parent: Vec<(Option<usize>, usize)>,
    batch: Vec<usize>,
    send: std::sync::mpsc::Sender<Vec<usize>>,
}

impl Feed {
    const BATCH: usize = 64;

    fn new(manifest: &Manifest, reuse: &Reuse) -> (Feed, std::sync::mpsc::Receiver<Vec<usize>>) {
        let files = &manifest.files;
        let dirs: std::collections::HashMap<&str, usize> = (0..files.len())
            .filter(|&i| files[i].kind == EntryType::Dir)
            .map(|i| (files[i].path.as_str(), i))
            .collect();
        let mut by_parent: Vec<(Option<usize>, usize)> = (0..files.len())
            .filter(|&i| reuse.linkable[i])
            .filter_map(|i| match split(&files[i].path).0 {
                "" => Some((None, i)),
                parent => dirs.get(parent).map(|&p| (Some(p), i)),
            })
            .collect();
        by_parent.sort_by_key(|&(parent, _)| parent);
        let (send, fed) = std::sync::mpsc::channel();
        let mut feed = Feed {
            by_parent,
            batch: Vec::with_capacity(Self::BATCH),
            send,
        };
        feed.hand_over(None);
        (feed, fed)
    }

    /// The directory at manifest index `dir` was created.
    fn created(&mut self, dir: usize) {
        self.hand_over(Some(dir));
    }

    fn hand_over(&mut self, parent: Option<usize>) {
        let from = self.by_parent.partition_point(|&(p, _)| p < parent);
        let to = self.by_parent.partition_point(|&(p, _)| p <= parent);
        self.batch
            .extend(self.by_parent[from..to].iter().map(|&(_, i)| i));
        if self.batch.len() >= Self::BATCH {
            // A linker that stopped (on an error it reports) takes no more.
            let _ = self.send.send(std::mem::take(&mut self.batch));
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if !self.batch.is_empty() {
            let _ = self.send.send(std::mem::take(&mut self.batch));
        }
    }
}

/// What the linking thread linked, and which of those files must still be
/// hashed.
struct Linked {
    files: Vec<usize>,
    to_hash: Vec<Work>,
}

/// The linking thread of a delta install: each file handed over is checked
/// ([`Reuse::check_base_file`]) and linked from the base into `dest`.
fn link_fed(
    artifact: &Path,
    manifest: &Manifest,
    dest: &Path,
    reuse: &Reuse,
    fed: std::sync::mpsc::Receiver<Vec<usize>>,
) -> Result<Linked> {
    let mut from = DirFds::open(&reuse.dir)?;
    let mut to = DirFds::open(dest)?;
    let mut linked = Linked {
        files: Vec::with_capacity(reuse.files as usize),
        to_hash: Vec::new(),
    };
    for batch in fed {
        for i in batch {
            let work = link_checked(artifact, manifest, reuse, &mut from, &mut to, i)?;
            linked.to_hash.extend(work);
            linked.files.push(i);
        }
    }
    Ok(linked)
}

/// Check the base release's copy of the manifest's file `i`
/// ([`Reuse::check_base_file`]) and link it from `from` into `to`; its
/// content still to hash when its inode changed since the base was
/// installed.
fn link_checked(
    artifact: &Path,
    manifest: &Manifest,
    reuse: &Reuse,
    from: &mut DirFds,
    to: &mut DirFds,
    i: usize,
) -> Result<Option<Work>> {
    let entry = &manifest.files[i];
    let changed = reuse
        .check_base_file(from, entry)
        .map_err(|why| reuse.base_changed(artifact, manifest, &entry.path, why))?;
    link_one(reuse, from, to, &entry.path)?;
    Ok(changed.then(|| Work::of(reuse, i, entry)))
}

/// Hard-link the file at `path` of the reused release (its tree `from`)
/// into the tree `to`.
fn link_one(reuse: &Reuse, from: &mut DirFds, to: &mut DirFds, path: &str) -> Result<()> {
    let (parent, name) = split(path);
    rustix::fs::linkat(
        from.dir(parent)?,
        name,
        to.dir(parent)?,
        name,
        AtFlags::empty(),
    )
    .map_err(|e| {
        let e = std::io::Error::from(e);
        fsutil::fs_err_io(
            std::io::Error::new(e.kind(), format!("linking from release {}: {e}", reuse.id)),
            &to.path_of(path),
        )
    })?;
    Ok(())
}

/// Whether the directories of a release can be created with their installed
/// mode (0555) while files are still to be created in them: when this process
/// may write into a directory whatever its mode (root, or `CAP_DAC_OVERRIDE`).
/// Then the pass that makes them read-only after unpacking has nothing to
/// do; otherwise they are created 0755 and changed at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealing {
    AtCreation,
    AfterUnpacking,
}

impl Sealing {
    /// Ask the filesystem: create a 0555 directory in `root` and a directory
    /// in that, then remove both. (Never a manifest path: those all start
    /// with a top-level directory.)
    pub fn probe(root: BorrowedFd<'_>) -> Sealing {
        const PROBE: &str = ".read-only-probe";
        if rustix::fs::mkdirat(root, PROBE, Mode::from_raw_mode(0o555)).is_err() {
            return Sealing::AfterUnpacking;
        }
        let inside = rustix::fs::openat(
            root,
            PROBE,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .filter(|dir| {
            let made = rustix::fs::mkdirat(dir, "x", Mode::from_raw_mode(0o700)).is_ok();
            made && rustix::fs::unlinkat(dir, "x", AtFlags::REMOVEDIR).is_ok()
        });
        let sealing = if inside.is_some() {
            Sealing::AtCreation
        } else {
            Sealing::AfterUnpacking
        };
        let _ = rustix::fs::unlinkat(root, PROBE, AtFlags::REMOVEDIR);
        sealing
    }
}

/// The type of a member from its header: files, directories and symlinks;
/// anything else is refused, with what it is.
pub fn member_kind(header_type: tar::EntryType) -> std::result::Result<EntryType, HeaderRefused> {
    if header_type.is_file() || header_type.is_contiguous() {
        return Ok(EntryType::File);
    }
    if header_type.is_dir() {
        return Ok(EntryType::Dir);
    }
    if header_type.is_symlink() {
        return Ok(EntryType::Symlink);
    }
    Err(if header_type.is_hard_link() {
        HeaderRefused::HardLink
    } else if header_type.is_character_special() || header_type.is_block_special() {
        HeaderRefused::Device
    } else if header_type.is_fifo() {
        HeaderRefused::Fifo
    } else if header_type.is_gnu_sparse() {
        HeaderRefused::Sparse
    } else {
        HeaderRefused::OtherType(header_type.as_byte())
    })
}

/// A member's mode may not carry the setuid, setgid or sticky bit.
pub fn check_mode(mode: u32) -> std::result::Result<(), HeaderRefused> {
    if mode & 0o7000 != 0 {
        return Err(HeaderRefused::SpecialBits(mode & 0o7777));
    }
    Ok(())
}

/// An entry name for a message: escaped, and cut short when it is long (a
/// hostile name can be 64 KiB).
fn shorten(entry: &str) -> String {
    let escaped = entry.escape_debug().to_string();
    if escaped.chars().count() <= 200 {
        return escaped;
    }
    let head: String = escaped.chars().take(120).collect();
    format!("{head}… ({} bytes in all)", entry.len())
}

/// The path, type and mode rules, in process: each test writes a small tar
/// stream with raw headers (names the `tar` crate itself refuses to write),
/// runs the extractor into a fresh directory and checks the rule it names.
/// (tests/it/hostile.rs runs these and the bombs against the real binary.)
#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    const DATA: &[u8] = b"print('ok')\n";

    fn manifest(files: Vec<Entry>) -> Manifest {
        crate::manifest::for_tests(files)
    }

    /// `app/` and `app/a.py`, as a manifest lists them.
    fn listed() -> Vec<Entry> {
        vec![
            Entry::dir("app".into()),
            Entry::file(
                "app/a.py".into(),
                false,
                DATA.len() as u64,
                hex::encode(Sha256::digest(DATA)),
            ),
        ]
    }

    /// One raw member: any name bytes, type, mode and data.
    fn member(out: &mut Vec<u8>, kind: tar::EntryType, name: &[u8], mode: u32, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    /// The healthy members, then `extra`.
    fn archive(extra: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        member(&mut out, tar::EntryType::Directory, b"app/", 0o755, b"");
        member(&mut out, tar::EntryType::Regular, b"app/a.py", 0o644, DATA);
        extra(&mut out);
        out.extend_from_slice(&[0; 1024]);
        out
    }

    fn extract(manifest: &Manifest, bytes: &[u8]) -> (tempfile::TempDir, Result<Extracted>) {
        let dest = tempfile::tempdir().unwrap();
        let mut archive = tar::Archive::new(bytes);
        let entries = crate::archive::raw_entries(&mut archive).unwrap();
        let result = Extractor::new(Path::new("a.tar.zst"), manifest, dest.path())
            .and_then(|x| x.run(entries));
        (dest, result)
    }

    /// Extract `extra` after the healthy members; it must be refused naming
    /// `entry` and `rule`, and nothing may be written outside the destination.
    fn refused(files: Vec<Entry>, extra: impl FnOnce(&mut Vec<u8>), entry: &str, rule: &str) {
        let (_dest, result) = extract(&manifest(files), &archive(extra));
        let err = result.expect_err("refused").to_string();
        assert!(err.contains(&format!("entry `{entry}` refused")), "{err}");
        assert!(err.contains(rule), "{err}");
    }

    #[test]
    fn a_healthy_archive_unpacks_read_only() {
        let (dest, result) = extract(&manifest(listed()), &archive(|_| {}));
        let out = result.unwrap();
        assert_eq!((out.files, out.bytes), (1, DATA.len() as u64));
        let file = dest.path().join("app/a.py");
        assert_eq!(std::fs::read(&file).unwrap(), DATA);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o444);
    }

    #[test]
    fn paths_that_leave_or_respell_the_tree_are_refused() {
        use tar::EntryType::Regular;
        for (name, rule) in [
            ("app/../../x", "`..` component"),
            ("../x", "`..` component"),
            ("/etc/x", "absolute path"),
            ("app/a\u{1}b", "control character"),
            ("app//a.py", "empty path component"),
            ("app/./a.py", "`.` or `..` component"),
            ("etc/x", "outside app/"),
        ] {
            let shown = name.escape_debug().to_string();
            refused(
                listed(),
                |out| member(out, Regular, name.as_bytes(), 0o644, b"x"),
                &shown,
                rule,
            );
        }
        refused(
            listed(),
            |out| member(out, Regular, b"app/\xff", 0o644, b"x"),
            "app/\u{fffd}",
            "not UTF-8",
        );
    }

    #[test]
    fn members_other_than_files_dirs_and_symlinks_are_refused() {
        use tar::EntryType::*;
        for (kind, what) in [
            (Char, "a device node"),
            (Block, "a device node"),
            (Fifo, "a fifo"),
            (Link, "a hard link"),
            (GNUSparse, "a sparse file"),
        ] {
            refused(
                listed(),
                |out| member(out, kind, b"app/x", 0o644, b""),
                "app/x",
                what,
            );
        }
        assert_eq!(member_kind(Char), Err(HeaderRefused::Device));
        assert_eq!(member_kind(Regular), Ok(EntryType::File));
        assert_eq!(member_kind(Symlink), Ok(EntryType::Symlink));
    }

    #[test]
    fn setuid_setgid_and_sticky_bits_are_refused() {
        for mode in [0o4755, 0o2755, 0o1755] {
            let mut files = listed();
            files.push(Entry::file(
                "app/x".into(),
                true,
                DATA.len() as u64,
                hex::encode(Sha256::digest(DATA)),
            ));
            refused(
                files,
                |out| member(out, tar::EntryType::Regular, b"app/x", mode, DATA),
                "app/x",
                "setuid, setgid or sticky",
            );
            assert_eq!(check_mode(mode), Err(HeaderRefused::SpecialBits(mode)));
        }
        assert_eq!(check_mode(0o755), Ok(()));
    }

    #[test]
    fn members_must_match_the_manifest_once() {
        use tar::EntryType::*;
        refused(
            listed(),
            |out| member(out, Regular, b"app/b.py", 0o644, DATA),
            "app/b.py",
            "is not in the manifest",
        );
        refused(
            listed(),
            |out| member(out, Regular, b"app/a.py", 0o644, DATA),
            "app/a.py",
            "duplicate path",
        );
        let mut files = listed();
        files.push(Entry::dir("app/d".into()));
        refused(
            files,
            |out| member(out, Regular, b"app/d", 0o644, b""),
            "app/d",
            "is a file in the archive but a dir in the manifest",
        );
        let mut files = listed();
        files.push(Entry::file(
            "app/m".into(),
            false,
            DATA.len() as u64,
            hex::encode(Sha256::digest(DATA)),
        ));
        refused(
            files,
            |out| member(out, Regular, b"app/m", 0o755, DATA),
            "app/m",
            "has mode 0755, the manifest says 0644",
        );
    }

    /// The galloping search finds every entry, from any starting point,
    /// and nothing that is not listed.
    #[test]
    fn members_are_found_from_the_last_one_on() {
        let mut files: Vec<Entry> = (0..100)
            .map(|i| Entry::dir(format!("app/d{i:03}")))
            .collect();
        files.push(Entry::dir("app".into()));
        let manifest = manifest(files);
        let dest = tempfile::tempdir().unwrap();
        let mut x = Extractor::new(Path::new("a.tar.zst"), &manifest, dest.path()).unwrap();
        for next in [0, 1, 2, 7, 50, 99, 100, 101, 500] {
            x.next = next;
            for (i, e) in manifest.files.iter().enumerate() {
                assert_eq!(x.index_of(&e.path), Some(i), "{} from {next}", e.path);
            }
            for missing in ["a", "app/d", "app/d0005", "app/d999", "zzz"] {
                assert_eq!(x.index_of(missing), None, "{missing} from {next}");
            }
        }
    }

    #[test]
    fn a_manifest_entry_missing_from_the_archive_is_refused() {
        let mut files = listed();
        files.push(Entry::dir("app/gone".into()));
        let (_dest, result) = extract(&manifest(files), &archive(|_| {}));
        let err = result.expect_err("refused").to_string();
        assert!(
            err.contains("listed in the manifest but missing from the archive"),
            "{err}"
        );
    }
}
