//! `<root>/static/`: the served union of the installed releases' static
//! files (docs/host.md, "Static files").
//!
//! A page rendered by one release references its hashed assets
//! (`app.3f2a.css`); a browser, a CDN or another host of a fleet may ask for
//! them after `current` moved on. So nginx serves `<root>/static/`, which
//! holds every file of every installed release's `static/`, and where two
//! releases have different content at one path, the live release's.
//!
//! There is no bookkeeping of its own: the installed releases are the truth
//! (read-only trees, each checked against its manifest when installed and by
//! `verify`). Every file in the served directory is a hard link to a file of
//! an installed release, so "which release is this from" is an inode
//! comparison, and content never needs to be copied or hashed on the hot
//! path. [`sync`] puts the directory right from the releases as they are:
//!
//! * a path no release provides is removed (prune, or a crash's leftover);
//! * a path the live release provides with another inode is replaced by the
//!   live release's file: a link under a temporary name in the same
//!   directory, `rename(2)`d over the old one (a reader sees the old or the
//!   new file, never none);
//! * a path served from a release that is not live stays (nothing is
//!   overwritten but by the live release), unless its file belongs to no
//!   installed release: then the preferred release's file replaces it;
//! * a path missing is linked from the preferred release that has it.
//!
//! Install, activate, rollback and prune each call [`sync`] once, under the
//! lock; since it works from the releases alone, the next command after a
//! killed one repairs whatever the kill left.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fs_err as fs;
use serde::Serialize;

use crate::crashpoint::{crashpoint, CrashPoint};
use crate::error::Result;
use crate::fsutil;
use crate::host::config::HostConfig;
use crate::host::layout::Host;
use crate::host::lock::Lock;
use crate::host::releases::{self, Installed};
pub use crate::host::verify::{Problem, StaticReport};
use crate::output::Printer;

pub use crate::host::layout::STATIC_DIR;
/// Names of the temporary links of a replacement (removed by the next sync).
pub const TMP_PREFIX: &str = ".release-tmp-";

/// Crash points of one kind of [`sync`] (src/crashpoint.rs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Crash {
    /// After the first file was added.
    pub added: Option<CrashPoint>,
    /// After the first replacement's temporary link was made.
    pub tmp_link: Option<CrashPoint>,
    /// After the first replacement's rename.
    pub replaced: Option<CrashPoint>,
}

/// What one [`sync`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Synced {
    pub added: u64,
    pub replaced: u64,
    pub removed: u64,
    /// Paths that could not be served (a file in one release where another
    /// has a directory, or something that is not ours in the way).
    pub skipped: Vec<String>,
}

impl Synced {
    fn changed(&self) -> bool {
        self.added + self.replaced + self.removed > 0
    }
}

/// The file count and bytes of the served directory (`list`, `status`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Served {
    pub path: PathBuf,
    pub files: u64,
    pub bytes: u64,
}

impl Served {
    /// One line: `static/  N files, SIZE  (the union of the installed releases)`.
    pub fn human(&self) -> String {
        format!(
            "static    {} files, {}  ({}: the installed releases' static files)\n",
            self.files,
            crate::host::list::human_size(self.bytes),
            self.path.display()
        )
    }
}

/// A regular file of a release's `static/`.
#[derive(Debug, Clone)]
struct Source {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Source {
    fn is(&self, meta: &std::fs::Metadata) -> bool {
        self.dev == meta.dev() && self.ino == meta.ino()
    }
}

/// The served directory of `host`.
pub fn dir(host: &Host) -> PathBuf {
    host.root.join(STATIC_DIR)
}

/// The regular files under `<release>/static/`, by path relative to it.
/// Symlinks are not served (a shared path under `static/` is one; its
/// target is the app's data, not a release's file).
fn release_files(release: &Path) -> Result<Vec<(String, Source)>> {
    let top = release.join(STATIC_DIR);
    let mut files = Vec::new();
    match fs::symlink_metadata(&top) {
        Ok(meta) if meta.is_dir() => {}
        _ => return Ok(files),
    }
    for item in walkdir::WalkDir::new(&top).follow_links(false).min_depth(1) {
        let item = item.map_err(|e| crate::fsutil::walk_err(e, &top))?;
        if !item.file_type().is_file() {
            continue;
        }
        let meta = item
            .metadata()
            .map_err(|e| crate::fsutil::walk_err(e, item.path()))?;
        let rel = item
            .path()
            .strip_prefix(&top)
            .expect("under static/")
            .to_string_lossy()
            .into_owned();
        files.push((
            rel,
            Source {
                path: item.path().to_path_buf(),
                dev: meta.dev(),
                ino: meta.ino(),
            },
        ));
    }
    Ok(files)
}

/// Every served path and its candidates, the preferred first: the live
/// release's, then the others' in the order given (newest install first).
fn wanted(releases: &[&Installed], live: Option<&str>) -> Result<BTreeMap<String, Vec<Source>>> {
    let mut ordered: Vec<&Installed> = Vec::with_capacity(releases.len());
    ordered.extend(releases.iter().filter(|r| Some(r.name()) == live));
    ordered.extend(releases.iter().filter(|r| Some(r.name()) != live));
    let mut want: BTreeMap<String, Vec<Source>> = BTreeMap::new();
    for release in ordered {
        for (rel, source) in release_files(&release.dir)? {
            want.entry(rel).or_default().push(source);
        }
    }
    Ok(want)
}

/// The wanted paths, and the live release among the releases served.
struct Plan<'a> {
    want: &'a BTreeMap<String, Vec<Source>>,
    live: Option<&'a Installed>,
}

impl Plan<'_> {
    /// The live release has this path (its file is the first candidate).
    fn live_has(&self, cands: &[Source]) -> bool {
        self.live
            .is_some_and(|l| cands.first().is_some_and(|c| c.path.starts_with(&l.dir)))
    }
}

/// Put `<root>/static/` right for the installed releases `kept` (complete
/// ones; others are ignored), with `live` (a release id) winning where
/// releases differ. `lock` proves the root's lock is held. Nothing is done
/// (and no directory is created) when no release has static files and
/// there is no served directory.
pub fn sync(
    host: &Host,
    _lock: &Lock,
    kept: &[Installed],
    live: Option<&str>,
    crash: Crash,
) -> Result<Synced> {
    let complete: Vec<&Installed> = kept.iter().filter(|r| r.is_complete()).collect();
    let want = wanted(&complete, live)?;
    let served = dir(host);
    let mut synced = Synced::default();
    if !ensure_served_dir(&served, !want.is_empty())? {
        return Ok(synced);
    }
    let plan = Plan {
        want: &want,
        live: complete.iter().copied().find(|r| Some(r.name()) == live),
    };
    let mut state = Progress {
        crash,
        synced: &mut synced,
    };
    let seen = state.correct_served(&served, &plan)?;
    state.add_missing(&served, &plan, &seen)?;
    if synced.removed > 0 {
        remove_empty_dirs(&served)?;
    }
    // Not fsynced: after a power cut the next command puts it right from
    // the releases, as after a kill (the switch itself is durable).
    Ok(synced)
}

/// Make the served directory (0755) if it is missing and there is
/// something to serve; `false` when it is missing and there is nothing to
/// serve (then nothing is created).
fn ensure_served_dir(served: &Path, anything: bool) -> Result<bool> {
    match fs::symlink_metadata(served) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if !anything {
                return Ok(false);
            }
            fs::create_dir(served)?;
            fsutil::set_mode(served, 0o755)?;
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

/// A sync's counters and crash points.
struct Progress<'a> {
    crash: Crash,
    synced: &'a mut Synced,
}

impl Progress<'_> {
    /// Walk the served directory and put each path in it right: remove
    /// temporary leftovers and what no release provides, replace what is
    /// not the right release's file. Returns the wanted paths found there.
    fn correct_served<'w>(&mut self, served: &Path, plan: &Plan<'w>) -> Result<BTreeSet<&'w str>> {
        let mut seen = BTreeSet::new();
        let mut items = walkdir::WalkDir::new(served)
            .follow_links(false)
            .sort_by_file_name()
            .min_depth(1)
            .into_iter();
        while let Some(item) = items.next() {
            let item = item.map_err(|e| crate::fsutil::walk_err(e, served))?;
            let is_dir = item.file_type().is_dir();
            if item.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                remove_any(item.path(), is_dir)?;
                if is_dir {
                    items.skip_current_dir();
                }
                continue;
            }
            let rel = item
                .path()
                .strip_prefix(served)
                .expect("under static/")
                .to_string_lossy()
                .into_owned();
            let cands = plan.want.get_key_value(rel.as_str()).map(|(key, cands)| {
                seen.insert(key.as_str());
                cands.as_slice()
            });
            if is_dir {
                if cands.is_some() {
                    // A release has a file where this directory is: the
                    // directory's files are served, this one cannot be.
                    self.synced.skipped.push(rel);
                }
                continue;
            }
            self.correct_file(item.path(), cands, plan)?;
        }
        Ok(seen)
    }

    /// Remove a served file no release provides (`cands` is `None`), or
    /// replace it by the preferred candidate unless it is one the plan
    /// keeps: the live release's where it has the path, else any release's.
    fn correct_file(&mut self, path: &Path, cands: Option<&[Source]>, plan: &Plan) -> Result<()> {
        let Some(cands) = cands else {
            fs::remove_file(path)?;
            self.synced.removed += 1;
            return Ok(());
        };
        let meta = fs::symlink_metadata(path)?;
        let ours = meta.file_type().is_file();
        let keep = ours
            && if plan.live_has(cands) {
                cands[0].is(&meta)
            } else {
                cands.iter().any(|c| c.is(&meta))
            };
        if !keep {
            self.replace(&cands[0].path, path)?;
        }
        Ok(())
    }

    /// Link every wanted path the walk did not find from its preferred
    /// release.
    fn add_missing(&mut self, served: &Path, plan: &Plan, seen: &BTreeSet<&str>) -> Result<()> {
        for (rel, cands) in plan.want {
            if !seen.contains(rel.as_str()) {
                self.add(&cands[0].path, served, rel)?;
            }
        }
        Ok(())
    }

    /// Replace `target` by a link to `source`: the link is made under a
    /// temporary name in the same directory and renamed over `target`.
    fn replace(&mut self, source: &Path, target: &Path) -> Result<()> {
        let parent = target.parent().expect("a served path has a parent");
        let tmp = parent.join(format!("{TMP_PREFIX}{}", fsutil::random_suffix()));
        fs::hard_link(source, &tmp)?;
        if self.synced.replaced == 0 {
            if let Some(point) = self.crash.tmp_link {
                crashpoint(point);
            }
        }
        if let Err(e) = fs::rename(&tmp, target) {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        self.synced.replaced += 1;
        if self.synced.replaced == 1 {
            if let Some(point) = self.crash.replaced {
                crashpoint(point);
            }
        }
        Ok(())
    }

    /// Link `source` at `served/rel`, making its directories (0755). A path
    /// whose parent is a file in the served directory is skipped.
    fn add(&mut self, source: &Path, served: &Path, rel: &str) -> Result<()> {
        let target = served.join(rel);
        let parent = target.parent().expect("a served path has a parent");
        if let Err(e) = std::fs::create_dir_all(parent) {
            if matches!(
                e.kind(),
                ErrorKind::AlreadyExists | ErrorKind::NotADirectory
            ) {
                self.synced.skipped.push(rel.to_string());
                return Ok(());
            }
            return Err(fsutil::fs_err_io(e, parent).into());
        }
        match std::fs::hard_link(source, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                self.synced.skipped.push(rel.to_string());
                return Ok(());
            }
            Err(e) => return Err(fsutil::fs_err_io(e, &target).into()),
        }
        self.synced.added += 1;
        if self.synced.added == 1 {
            if let Some(point) = self.crash.added {
                crashpoint(point);
            }
        }
        Ok(())
    }
}

fn remove_any(path: &Path, is_dir: bool) -> Result<()> {
    if is_dir {
        fsutil::remove_tree(path)
    } else {
        Ok(fs::remove_file(path)?)
    }
}

/// Remove the directories under `served` that removals left empty.
fn remove_empty_dirs(served: &Path) -> Result<()> {
    for item in walkdir::WalkDir::new(served)
        .follow_links(false)
        .contents_first(true)
        .min_depth(1)
    {
        let item = item.map_err(|e| crate::fsutil::walk_err(e, served))?;
        if item.file_type().is_dir() {
            match std::fs::remove_dir(item.path()) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => {}
                Err(e) => return Err(fsutil::fs_err_io(e, item.path()).into()),
            }
        }
    }
    Ok(())
}

/// After an install (or a killed command's repair by the next install):
/// add what the installed releases have and the served directory lacks;
/// the live release (`current`) keeps its versions.
pub fn after_install(
    host: &Host,
    lock: &Lock,
    config: &HostConfig,
    printer: &Printer,
) -> Result<()> {
    let crash = Crash {
        added: Some(CrashPoint::InstallStaticAdded),
        ..Crash::default()
    };
    run(host, lock, config, None, crash, printer)
}

/// After `current` moved to `live` (activate, rollback, or switching back
/// after a failed activation): the live release's version of every path
/// it has wins.
pub fn after_switch(
    host: &Host,
    lock: &Lock,
    config: &HostConfig,
    live: &str,
    crash: Crash,
    printer: &Printer,
) -> Result<()> {
    run(host, lock, config, Some(live), crash, printer)
}

/// Before prune removes `removed`: serve only what the releases that stay
/// provide, so a killed prune never leaves a file of a release that is
/// gone (or going) in the served directory.
pub fn before_prune(
    host: &Host,
    lock: &Lock,
    config: &HostConfig,
    removed: &[String],
    printer: &Printer,
) -> Result<Synced> {
    if !config.serve_static {
        return Ok(Synced::default());
    }
    let kept: Vec<Installed> = releases::installed(host)?
        .into_iter()
        .filter(|r| !removed.iter().any(|id| id == r.name()))
        .collect();
    let current = host.current()?;
    let synced = sync(
        host,
        lock,
        &kept,
        current.id().map(|id| id.as_str()),
        Crash::default(),
    )?;
    report(&synced, printer);
    Ok(synced)
}

fn run(
    host: &Host,
    lock: &Lock,
    config: &HostConfig,
    live: Option<&str>,
    crash: Crash,
    printer: &Printer,
) -> Result<()> {
    if !config.serve_static {
        return Ok(());
    }
    let current = host.current()?;
    let live = live.or(current.id().map(|id| id.as_str()));
    let synced = sync(host, lock, &releases::installed(host)?, live, crash)?;
    report(&synced, printer);
    Ok(())
}

fn report(synced: &Synced, printer: &Printer) {
    if synced.changed() {
        printer.progress(&format!(
            "static/: {} file(s) added, {} replaced by the live release's, {} removed",
            synced.added, synced.replaced, synced.removed
        ));
    }
    if !synced.skipped.is_empty() {
        printer.warn(&format!(
            "static/: {} path(s) not served, a file in one release and a directory in another: {}",
            synced.skipped.len(),
            synced.skipped.join(", ")
        ));
    }
}

/// What `list` and `status` show: the served directory's regular files and
/// their bytes; `None` when there is none.
pub fn served(host: &Host) -> Option<Served> {
    let path = dir(host);
    if !path.is_dir() {
        return None;
    }
    let (mut files, mut bytes) = (0, 0);
    for item in walkdir::WalkDir::new(&path).follow_links(false).into_iter() {
        let Ok(item) = item else { continue };
        if item.file_type().is_file() && !item.file_name().to_string_lossy().starts_with(TMP_PREFIX)
        {
            files += 1;
            bytes += item.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    Some(Served { path, files, bytes })
}

/// One installed release's static files by its manifest (with what install
/// recorded applied): path under `static/` -> sha256.
fn manifest_files(release: &Installed) -> Option<BTreeMap<String, String>> {
    use crate::host::record::InstallRecord;
    use crate::manifest::{EntryType, Manifest, MANIFEST_NAME};
    let json = std::fs::read(release.dir.join(MANIFEST_NAME)).ok()?;
    let manifest = Manifest::from_json(&json).ok()?;
    let record = InstallRecord::read(&release.dir).unwrap_or_default();
    let prefix = format!("{STATIC_DIR}/");
    Some(
        record
            .expected(&manifest)
            .into_iter()
            .filter(|e| e.kind == EntryType::File)
            .filter_map(|e| {
                let rel = e.path.strip_prefix(&prefix)?.to_string();
                Some((rel, e.sha256.unwrap_or_default()))
            })
            .collect(),
    )
}

/// `release verify`: every served file is a regular, world-readable file
/// whose content is some installed release's file at that path (by the
/// manifests, re-hashed), the current release's where it has the path; every
/// file of the current release is served; nothing else is there. `None`
/// when `serve_static = false`, or when there is nothing to serve and no
/// served directory.
pub fn verify(host: &Host, config: &HostConfig) -> Result<Option<StaticReport>> {
    if !config.serve_static {
        return Ok(None);
    }
    let by_release = manifests(host)?;
    let current = host.current()?;
    let live = by_release
        .iter()
        .find(|(id, _)| Some(id.as_str()) == current.id().map(|c| c.as_str()))
        .map(|(_, files)| files);
    let path = dir(host);
    let mut audit = Audit {
        by_release: &by_release,
        live,
        files: 0,
        served: BTreeSet::new(),
        problems: Vec::new(),
    };
    if path.is_dir() {
        audit.served_dir(&path)?;
    } else if by_release.iter().all(|(_, files)| files.is_empty()) {
        return Ok(None);
    } else {
        audit.problem(
            "",
            "missing (the installed releases have static files)".into(),
        );
    }
    audit.current_release_served();
    Ok(Some(audit.report(path)))
}

/// The static files of every complete installed release by its manifest,
/// with the release's id (releases whose manifest cannot be read are left
/// out).
fn manifests(host: &Host) -> Result<Vec<(String, BTreeMap<String, String>)>> {
    let mut by_release = Vec::new();
    for release in releases::installed(host)?
        .iter()
        .filter(|r| r.is_complete())
    {
        if let Some(files) = manifest_files(release) {
            by_release.push((release.name().to_string(), files));
        }
    }
    Ok(by_release)
}

/// What [`verify`] checks the served directory against, and what it found.
struct Audit<'a> {
    /// Each installed release's static files: path -> sha256.
    by_release: &'a [(String, BTreeMap<String, String>)],
    /// The current release's, if it is among them.
    live: Option<&'a BTreeMap<String, String>>,
    /// Regular files served.
    files: u64,
    /// Their paths.
    served: BTreeSet<String>,
    problems: Vec<Problem>,
}

impl Audit<'_> {
    fn problem(&mut self, path: &str, problem: String) {
        report_problem(&mut self.problems, path, problem);
    }

    /// Check every entry under the served directory `path`.
    fn served_dir(&mut self, path: &Path) -> Result<()> {
        for item in walkdir::WalkDir::new(path)
            .follow_links(false)
            .sort_by_file_name()
            .min_depth(1)
        {
            let item = item.map_err(|e| crate::fsutil::walk_err(e, path))?;
            let rel = item
                .path()
                .strip_prefix(path)
                .expect("under static/")
                .to_string_lossy()
                .into_owned();
            self.entry(&item, rel)?;
        }
        Ok(())
    }

    /// One entry of the served directory: no temporary leftover, a
    /// directory the web server can read, or a served file.
    fn entry(&mut self, item: &walkdir::DirEntry, rel: String) -> Result<()> {
        let meta = fs::symlink_metadata(item.path())?;
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
        if item.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            self.problem(
                &rel,
                "left by an interrupted command (the next install, activate or prune removes it)"
                    .into(),
            );
        } else if meta.is_dir() {
            if mode & 0o005 != 0o005 {
                self.problem(
                    &rel,
                    format!(
                        "directory mode {:o}: the web server cannot read it (chmod o+rx)",
                        mode & 0o7777
                    ),
                );
            }
        } else if !meta.is_file() {
            self.problem(
                &rel,
                "not a regular file (release serves only files of its releases)".into(),
            );
        } else {
            self.file(item.path(), rel, mode)?;
        }
        Ok(())
    }

    /// A served regular file: readable by the web server, and its content
    /// some release's file at its path (the current release's where it has
    /// the path).
    fn file(&mut self, path: &Path, rel: String, mode: u32) -> Result<()> {
        self.files += 1;
        if mode & 0o004 == 0 {
            self.problem(
                &rel,
                format!("mode {:o}: not readable by the web server", mode & 0o7777),
            );
        }
        let (digest, _) = crate::archive::hash_file(path)?;
        if let Some(problem) = self.content_problem(&rel, &digest) {
            self.problem(&rel, problem);
        }
        self.served.insert(rel);
        Ok(())
    }

    /// What is wrong with serving content `digest` at `rel`, if anything.
    fn content_problem(&self, rel: &str, digest: &str) -> Option<String> {
        match self.live.and_then(|files| files.get(rel)) {
            Some(want) if want != digest => Some(format!(
                "content is not the current release's (sha256 {digest}, the current release has {want})"
            )),
            Some(_) => None,
            None => {
                let has = |sha: Option<&String>| sha.is_some_and(|sha| sha == digest);
                if self.by_release.iter().any(|(_, files)| has(files.get(rel))) {
                    None
                } else if self.by_release.iter().any(|(_, files)| files.contains_key(rel)) {
                    Some(format!(
                        "content (sha256 {digest}) is no installed release's file at this path"
                    ))
                } else {
                    Some("no installed release has this file".into())
                }
            }
        }
    }

    /// Every file of the current release is served.
    fn current_release_served(&mut self) {
        let Some(files) = self.live else { return };
        for rel in files.keys() {
            if !self.served.contains(rel) {
                self.problem(rel, "missing: a file of the current release".into());
            }
        }
    }

    fn report(mut self, path: PathBuf) -> StaticReport {
        self.problems.sort_by(|a, b| a.path.cmp(&b.path));
        StaticReport {
            path,
            ok: self.problems.is_empty(),
            files: self.files,
            problems: self.problems,
        }
    }
}

fn report_problem(problems: &mut Vec<Problem>, path: &str, problem: String) {
    problems.push(Problem {
        path: if path.is_empty() {
            format!("{STATIC_DIR}/")
        } else {
            format!("{STATIC_DIR}/{path}")
        },
        problem,
    });
}
