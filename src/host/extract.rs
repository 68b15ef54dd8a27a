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
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::archive::{Extensions, HashingReader};
use crate::crashpoint::CrashPoint;
use crate::error::{ArtifactError, Error, Result};
use crate::fsutil;
use crate::host::layout::installed_mode;
use crate::host::reuse::Reuse;
use crate::manifest::{self, Entry, EntryType, Manifest};

/// Files are copied through a buffer of this size.
const COPY_BUFFER: usize = 256 * 1024;

/// Start writing back to disk after every this many bytes unpacked.
const WRITEBACK_EVERY: u64 = 16 * 1024 * 1024;

/// Starts the disk writes of what was unpacked so far while unpacking goes
/// on: a thread calls `syncfs(2)` each time another [`WRITEBACK_EVERY`]
/// bytes were written, so the `syncfs` that makes the release durable before
/// its rename finds little left to do. Signals that come while a sync runs
/// are dropped (the running one covers them).
struct Writeback {
    signal: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    since: u64,
}

impl Writeback {
    fn start(dir: &Path) -> Writeback {
        let Ok(handle) = std::fs::File::open(dir) else {
            return Writeback {
                signal: None,
                thread: None,
                since: 0,
            };
        };
        let (signal, signals) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::spawn(move || {
            for () in signals {
                // Only a head start: the final syncfs reports errors.
                let _ = rustix::fs::syncfs(&handle);
            }
        });
        Writeback {
            signal: Some(signal),
            thread: Some(thread),
            since: 0,
        }
    }

    fn wrote(&mut self, bytes: u64) {
        self.since += bytes;
        if self.since >= WRITEBACK_EVERY {
            self.since = 0;
            if let Some(signal) = &self.signal {
                let _ = signal.try_send(());
            }
        }
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.signal = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

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
}

impl<'a> Extractor<'a> {
    pub fn new(artifact: &'a Path, manifest: &'a Manifest, dest: &'a Path) -> Self {
        Extractor {
            artifact,
            manifest,
            dest,
            seen: vec![false; manifest.files.len()],
            buffer: vec![0; COPY_BUFFER],
            out: Extracted::default(),
            progress: indicatif::ProgressBar::hidden(),
            reuse: None,
        }
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

    fn refuse(&self, entry: &str, rule: impl Into<String>) -> Error {
        ArtifactError::UnsafeEntry {
            artifact: self.artifact.to_path_buf(),
            entry: shorten(entry),
            rule: rule.into(),
        }
        .into()
    }

    /// Unpack every remaining member of `entries` (raw entries, see
    /// `archive::raw_entries`; the manifest already read), then check that
    /// nothing in the manifest was missing.
    pub fn run<R: Read>(mut self, entries: tar::Entries<'_, R>) -> Result<Extracted> {
        let mut last = String::from("release.json");
        let mut writeback = Writeback::start(self.dest);
        let mut names = Extensions::default();
        for entry in entries {
            let mut entry = entry.map_err(|e| self.corrupt(&last, &e))?;
            if names
                .absorb(&mut entry)
                .map_err(|why| self.refuse_after(&last, &why.to_string()))?
            {
                continue;
            }
            let before = self.out.bytes;
            last = self.one(entry, names.take())?;
            writeback.wrote(self.out.bytes - before);
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
        if let Some(i) = self.seen.iter().position(|s| !s) {
            let missing = self.seen.iter().filter(|s| !**s).count();
            let path = self.manifest.files[i].path.clone();
            let more = if missing > 1 {
                format!(" ({} manifest entries are missing in all)", missing)
            } else {
                String::new()
            };
            return Err(self.refuse(
                &path,
                format!("listed in the manifest but missing from the archive{more}"),
            ));
        }
        Ok(self.out)
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
    fn one<R: Read>(&mut self, mut entry: tar::Entry<'_, R>, names: Extensions) -> Result<String> {
        let raw = names
            .path
            .unwrap_or_else(|| entry.path_bytes().into_owned());
        let lossy = String::from_utf8_lossy(&raw).into_owned();
        let Ok(name) = std::str::from_utf8(&raw) else {
            return Err(self.refuse(&lossy, "path is not UTF-8"));
        };
        let header_type = entry.header().entry_type();
        let path = if header_type.is_dir() {
            name.strip_suffix('/').unwrap_or(name)
        } else {
            name
        };
        self.check_path(path)?;

        let kind = if header_type.is_file() || header_type.is_contiguous() {
            EntryType::File
        } else if header_type.is_dir() {
            EntryType::Dir
        } else if header_type.is_symlink() {
            EntryType::Symlink
        } else {
            let what = if header_type.is_hard_link() {
                "a hard link (artifacts have none; the manifest cannot describe one)".to_string()
            } else if header_type.is_character_special() || header_type.is_block_special() {
                "a device node".to_string()
            } else if header_type.is_fifo() {
                "a fifo".to_string()
            } else if header_type.is_gnu_sparse() {
                "a sparse file".to_string()
            } else {
                format!(
                    "an unsupported member type ({:?})",
                    header_type.as_byte() as char
                )
            };
            return Err(self.refuse(
                path,
                format!("is {what}; only files, directories and symlinks are allowed"),
            ));
        };
        let mode = entry
            .header()
            .mode()
            .map_err(|e| self.refuse(path, format!("unreadable mode: {e}")))?;
        if mode & 0o7000 != 0 {
            return Err(self.refuse(
                path,
                format!(
                    "has the setuid, setgid or sticky bit (mode {:04o})",
                    mode & 0o7777
                ),
            ));
        }

        let Ok(index) = self
            .manifest
            .files
            .binary_search_by(|e| e.path.as_str().cmp(path))
        else {
            return Err(self.refuse(path, "is not in the manifest"));
        };
        if self.seen[index] {
            return Err(self.refuse(path, "appears twice in the archive (duplicate path)"));
        }
        let expected = &self.manifest.files[index];
        if expected.kind != kind {
            return Err(self.refuse(
                path,
                format!(
                    "is a {kind} in the archive but a {} in the manifest",
                    expected.kind
                ),
            ));
        }
        if kind != EntryType::Symlink && mode & 0o777 != expected.mode {
            return Err(self.refuse(
                path,
                format!(
                    "has mode {:04o}, the manifest says {:04o}",
                    mode & 0o777,
                    expected.mode
                ),
            ));
        }
        self.check_parent(path)?;

        match kind {
            EntryType::Dir => self.make_dir(path, index)?,
            EntryType::Symlink => {
                let link = names
                    .link
                    .or_else(|| entry.link_name_bytes().map(|l| l.into_owned()))
                    .unwrap_or_default();
                let Ok(link) = String::from_utf8(link) else {
                    return Err(self.refuse(path, "symlink target is not UTF-8"));
                };
                self.make_symlink(path, &link, expected)?;
            }
            EntryType::File => {
                let want_size = expected.size();
                let size = entry.size();
                if size > want_size {
                    return Err(self.refuse(
                        path,
                        format!("is {size} bytes, beyond the {want_size} bytes the manifest lists"),
                    ));
                }
                if size != want_size {
                    return Err(self.refuse(
                        path,
                        format!("is {size} bytes, the manifest lists {want_size}"),
                    ));
                }
                if self.linkable(index) {
                    // Checked like any member, though its bytes are not used.
                    self.copy_checked(&mut entry, path, expected, &mut std::io::sink())?;
                    self.link_file(path, expected)?;
                } else {
                    let target_path = self.dest.join(path);
                    let mut file = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(installed_mode(kind, expected.mode))
                        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                        .open(&target_path)
                        .map_err(|e| fsutil::fs_err_io(e, &target_path))?;
                    let read = self.copy_checked(&mut entry, path, expected, &mut file)?;
                    self.out.files += 1;
                    self.out.bytes += read;
                }
            }
        }
        self.seen[index] = true;
        Ok(path.to_string())
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
                format!("ended after {read} of {want_size} bytes: the archive is truncated"),
            ));
        }
        let want = expected.sha256.as_deref().unwrap_or_default();
        if digest != want {
            return Err(self.refuse(
                path,
                format!(
                    "content differs from the manifest (sha256 {digest}, the manifest says {want})"
                ),
            ));
        }
        Ok(read)
    }

    fn make_dir(&mut self, path: &str, index: usize) -> Result<()> {
        let target_path = self.dest.join(path);
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&target_path)
            .map_err(|e| fsutil::fs_err_io(e, &target_path))?;
        self.out.dirs.push(index);
        Ok(())
    }

    fn make_symlink(&self, path: &str, link: &str, expected: &Entry) -> Result<()> {
        let want = expected.target.as_deref().unwrap_or_default();
        if link != want {
            return Err(self.refuse(
                path,
                format!(
                    "symlink points to \"{}\", the manifest says \"{}\"",
                    shorten(link),
                    shorten(want)
                ),
            ));
        }
        let interpreter_link =
            path.starts_with("venv/bin/") && link == self.manifest.python.base_executable;
        if !interpreter_link && !manifest::symlink_stays_inside(path, link) {
            return Err(self.refuse(
                path,
                format!("symlink to \"{}\" leaves the release (only venv/bin links to the manifest's interpreter may)", shorten(link)),
            ));
        }
        let target_path = self.dest.join(path);
        std::os::unix::fs::symlink(link, &target_path)
            .map_err(|e| fsutil::fs_err_io(e, &target_path))?;
        Ok(())
    }

    /// Hard-link the reused release's copy of a file (checked by the plan).
    fn link_file(&mut self, path: &str, expected: &Entry) -> Result<()> {
        let reuse = self.reuse.expect("linkable implies a reuse plan");
        let from = reuse.dir.join(path);
        let target_path = self.dest.join(path);
        std::fs::hard_link(&from, &target_path).map_err(|e| {
            fsutil::fs_err_io(
                std::io::Error::new(
                    e.kind(),
                    format!("linking from release {}: {e}", reuse.name),
                ),
                &target_path,
            )
        })?;
        self.out.linked += 1;
        self.out.linked_bytes += expected.size();
        Ok(())
    }

    fn check_path(&self, path: &str) -> Result<()> {
        if path.starts_with('/') {
            return Err(self.refuse(path, "absolute path"));
        }
        if path.chars().any(char::is_control) {
            return Err(self.refuse(path, "control character in the path"));
        }
        if path.split('/').any(|c| c == "..") {
            return Err(self.refuse(path, "`..` component in the path"));
        }
        manifest::check_path(path).map_err(|why| self.refuse(path, why))
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
                format!("its parent `{parent}` is not a directory unpacked before it"),
            ))
        }
    }
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
