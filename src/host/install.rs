//! `release install ARTIFACT`: verify, check, unpack into
//! `releases/.incoming-*`, link shared paths, make read-only and durable,
//! rename into `releases/<id>`, journal. Any failure removes the incoming
//! directory and changes nothing else.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fs_err as fs;
use serde::Serialize;

use crate::archive;
use crate::crashpoint::{crashpoint, CrashPoint};
use crate::error::{Error, InstallError, Result};
use crate::fsutil;
use crate::fsutil::{random_suffix, remove_tree};
use crate::host::config::HostConfig;
use crate::host::durable;
use crate::host::extract::{Extracted, Extractor};
use crate::host::journal::{Event, EventKind, Journal, What};
use crate::host::layout::{installed_mode, Host, INCOMING_PREFIX};
use crate::host::lock::Lock;
use crate::host::python;
use crate::host::record::{InstallRecord, SharedLink, RECORD_NAME};
use crate::host::release_id::{rfc3339, ReleaseId};
use crate::host::releases::{self, Installed};
use crate::host::reuse::{BaseCheck, Reuse};
use crate::host::source;
use crate::host::statics;
use crate::host::verify;
use crate::manifest::{Entry, EntryType, Manifest, MANIFEST_NAME};
use crate::output::Printer;

/// Room kept free beyond the release's own size.
const SPACE_MARGIN: u64 = 32 * 1024 * 1024;

#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    pub artifact: PathBuf,
    /// Expected sha256 of the artifact file (`--sha256`).
    pub sha256: Option<String>,
    /// Re-point the venv to this interpreter (`--python`).
    pub python: Option<PathBuf>,
    /// Recreate the venv from `wheels/` (`--rebuild-venv`).
    pub rebuild_venv: bool,
    /// Where the signature is, instead of `<artifact>.minisig` (`--signature`).
    pub signature: Option<PathBuf>,
    /// Connect and between-bytes timeout for a URL (`--fetch-timeout`).
    pub fetch_timeout: Option<std::time::Duration>,
}

impl InstallOptions {
    pub fn fetch_timeout(&self) -> std::time::Duration {
        self.fetch_timeout
            .unwrap_or(crate::host::fetch::DEFAULT_TIMEOUT)
    }

    /// What the source is asked to read and check.
    fn source(&self) -> source::Request<'_> {
        source::Request {
            artifact: &self.artifact,
            sha256: self.sha256.as_deref(),
            signature: self.signature.as_deref(),
            fetch_timeout: self.fetch_timeout(),
        }
    }
}

/// What `release install --json` prints.
#[derive(Debug, Serialize)]
pub struct InstallReport {
    pub id: ReleaseId,
    pub commit: String,
    pub path: PathBuf,
    /// Entries in the manifest.
    pub files: u64,
    /// Bytes of regular files.
    pub bytes: u64,
    pub seconds: f64,
    pub already_installed: bool,
    /// The installed release identical files were hard-linked from.
    pub linked_from: Option<ReleaseId>,
    /// Files hard-linked from it instead of written, and their bytes.
    pub linked_files: u64,
    pub linked_bytes: u64,
    /// The artifact was a delta (`build --delta-from`): the files it left
    /// out were linked from `linked_from`, its base release.
    pub delta: bool,
    /// Where the artifact came from and what vouched for it (only what
    /// applies: `signed_by`, `url`, `downloaded_bytes`).
    #[serde(flatten)]
    pub source: source::Provenance,
}

/// The interpreter the venv will use.
enum VenvPlan {
    /// As built: the manifest's base interpreter is here and matches.
    AsBuilt,
    /// `--python PATH`: re-point the venv's links and pyvenv.cfg.
    Repoint(PathBuf),
    /// `--rebuild-venv`: recreate the venv with this interpreter.
    Rebuild(PathBuf),
}

/// A directory under `releases/` that is removed on drop unless kept.
struct Incoming {
    path: PathBuf,
    keep: bool,
}

impl Incoming {
    fn create(host: &Host) -> Result<Incoming> {
        use std::os::unix::fs::DirBuilderExt;
        let path = host
            .releases
            .join(format!("{INCOMING_PREFIX}{}", random_suffix()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| fsutil::fs_err_io(e, &path))?;
        Ok(Incoming { path, keep: false })
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.keep {
            let _ = remove_tree(&self.path);
        }
    }
}

/// Paths created outside the release (shared targets), removed on drop
/// unless the install went through.
#[derive(Default)]
struct CreatedOutside {
    paths: Vec<PathBuf>,
    keep: bool,
}

impl Drop for CreatedOutside {
    fn drop(&mut self) {
        if !self.keep {
            for p in self.paths.iter().rev() {
                let _ = remove_tree(p);
            }
        }
    }
}

/// An installed release with the same content that still verifies.
fn find_installed(
    installed: &[Installed],
    manifest: &Manifest,
    printer: &Printer,
) -> Result<Option<Installed>> {
    for release in installed {
        let same = release
            .summary
            .as_ref()
            .is_ok_and(|s| s.commit == manifest.commit && s.tree_sha256 == manifest.tree_sha256);
        if !same {
            continue;
        }
        let report = verify::verify(release)?;
        if report.ok {
            return Ok(Some(release.clone()));
        }
        printer.warn(&format!(
            "release {} has this commit but has drifted ({} problem(s); see `release verify {}`); installing a fresh copy",
            release.name(),
            report.problems.len(),
            release.name()
        ));
    }
    Ok(None)
}

fn plan_venv(options: &InstallOptions, manifest: &Manifest) -> Result<VenvPlan> {
    if options.rebuild_venv && !manifest.files.iter().any(|e| e.path == "wheels") {
        return Err(InstallError::NoWheels {
            release: manifest.release.clone(),
            need: python::describe_need(&manifest.python),
            at: manifest.python.base_executable.clone(),
        }
        .into());
    }
    if options.rebuild_venv {
        let python = options
            .python
            .clone()
            .unwrap_or_else(|| PathBuf::from("python3"));
        let found = python::HostPython::run(python.as_os_str()).map_err(|why| {
            InstallError::RebuildInterpreterUnusable {
                python: python.clone(),
                why: why.to_string(),
                need: python::describe_need(&manifest.python),
            }
        })?;
        return Ok(VenvPlan::Rebuild(PathBuf::from(found.executable)));
    }
    if let Some(python) = &options.python {
        return Ok(VenvPlan::Repoint(python::check_replacement(
            python, manifest,
        )?));
    }
    if !Path::new(&manifest.python.base_executable).exists() {
        // Missing: say so now, before anything is unpacked.
        python::check_base_interpreter(manifest)?;
    }
    // It exists: asking it what it is takes a process start, which runs
    // beside the rest of the planning and the unpacking (see `plan_install`).
    Ok(VenvPlan::AsBuilt)
}

/// Check the manifest's interpreter on a thread; joined once unpacked.
fn check_interpreter_beside(
    plan: &VenvPlan,
    manifest: &Manifest,
) -> Option<std::thread::JoinHandle<Result<()>>> {
    let VenvPlan::AsBuilt = plan else {
        return None;
    };
    let release = manifest.release.clone();
    let need = manifest.python.clone();
    Some(std::thread::spawn(move || {
        python::check_base_interpreter_for(&release, &need)
    }))
}

/// Bytes of disk a release needs: its files and directories in whole 4 KiB
/// blocks (the venv twice when it is rebuilt), plus a margin.
pub fn space_needed(manifest: &Manifest, rebuild: bool) -> u64 {
    space_needed_with(manifest, None, rebuild)
}

/// [`space_needed`] when the files `reuse` supplies are hard-linked.
fn space_needed_with(manifest: &Manifest, reuse: Option<&Reuse>, rebuild: bool) -> u64 {
    const BLOCK: u64 = 4096;
    let mut need = SPACE_MARGIN;
    for (i, e) in manifest.files.iter().enumerate() {
        // Saturating: a hostile manifest may declare sizes near 2^64.
        let blocks = match e.kind {
            // A linked file takes a directory entry, no blocks.
            EntryType::File if reuse.is_some_and(|r| r.linkable[i]) => 0,
            EntryType::File => e.size().div_ceil(BLOCK).max(1),
            EntryType::Dir => 1,
            EntryType::Symlink => 0,
        };
        let mut bytes = blocks.saturating_mul(BLOCK);
        if rebuild && e.path.starts_with("venv/") {
            bytes = bytes.saturating_mul(2);
        }
        need = need.saturating_add(bytes);
    }
    need
}

/// Refuse when the filesystem of `releases/` cannot hold the release;
/// returns the bytes it needs.
fn check_space(
    host: &Host,
    artifact: &Path,
    manifest: &Manifest,
    reuse: Option<&Reuse>,
    rebuild: bool,
) -> Result<u64> {
    let need = space_needed_with(manifest, reuse, rebuild);
    let stat = rustix::fs::statvfs(&host.releases)
        .map_err(|e| fsutil::fs_err_io(e.into(), &host.releases))?;
    let available = stat.f_bavail.saturating_mul(stat.f_frsize);
    let mib = |b: u64| b.div_ceil(1024 * 1024);
    if available < need {
        let whole = stat.f_blocks.saturating_mul(stat.f_frsize);
        return Err(InstallError::NoSpace(Box::new(crate::error::NoSpace {
            artifact: artifact.to_path_buf(),
            release: manifest.release.clone(),
            dir: host.releases.clone(),
            need_mib: mib(need),
            available_mib: mib(available),
            largest: manifest
                .files
                .iter()
                .max_by_key(|e| e.size())
                .map(|e| (e.path.clone(), mib(e.size()))),
            larger_than_fs: (need > whole).then(|| mib(whole)),
        }))
        .into());
    }
    let inodes = manifest.file_count - reuse.map_or(0, |r| r.files) + 1024;
    if stat.f_files > 0 && stat.f_favail < inodes {
        return Err(InstallError::NoInodes {
            release: manifest.release.clone(),
            dir: host.releases.clone(),
            need: inodes,
            free: stat.f_favail,
        }
        .into());
    }
    Ok(need)
}

/// A fresh release id for `commit12`, now (one second later if taken).
fn new_id(host: &Host, commit12: &str) -> ReleaseId {
    let mut now = chrono::Utc::now();
    loop {
        let id = ReleaseId::new(commit12, now);
        if fs::symlink_metadata(host.release_dir(&id.to_string())).is_err() {
            return id;
        }
        now += chrono::Duration::seconds(1);
    }
}

/// Replace each `shared` path of the release by a relative link to
/// `<root>/shared/<path>`; a missing shared target is created: a copy of the
/// release's file when it has one there, else an empty directory.
fn link_shared(
    host: &Host,
    release: &Path,
    config: &HostConfig,
    record: &mut InstallRecord,
    created: &mut CreatedOutside,
) -> Result<()> {
    for path in &config.shared {
        shared_parents(host, release, path, record)?;
        let in_release = release.join(path);
        let existing = fs::symlink_metadata(&in_release).ok();
        let shared_target = host.shared.join(path);
        if fs::symlink_metadata(&shared_target).is_err() {
            let from_release = existing.as_ref().is_some_and(|m| m.is_file());
            let made =
                create_shared_target(host, &shared_target, from_release.then_some(&*in_release))?;
            created.paths.push(made);
        }
        if let Some(meta) = existing {
            if meta.is_dir() {
                remove_tree(&in_release)?;
            } else {
                fs::remove_file(&in_release)?;
            }
        }
        let target = HostConfig::shared_link_target(path);
        std::os::unix::fs::symlink(&target, &in_release)
            .map_err(|e| fsutil::fs_err_io(e, &in_release))?;
        record.shared.push(SharedLink {
            path: path.clone(),
            target,
        });
    }
    Ok(())
}

/// The parents of shared path `path` inside the release must be real
/// directories; missing ones are created (and recorded).
fn shared_parents(
    host: &Host,
    release: &Path,
    path: &str,
    record: &mut InstallRecord,
) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut parent_rel = String::new();
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts[..parts.len() - 1] {
        if !parent_rel.is_empty() {
            parent_rel.push('/');
        }
        parent_rel.push_str(part);
        let dir = release.join(&parent_rel);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(InstallError::SharedParentNotADirectory {
                    path: path.to_string(),
                    parent: parent_rel,
                    config: host.config.clone(),
                }
                .into())
            }
            Err(_) => {
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&dir)
                    .map_err(|e| fsutil::fs_err_io(e, &dir))?;
                record.set_entry(Entry::dir(parent_rel.clone()));
            }
        }
    }
    Ok(())
}

/// Create a missing `<root>/shared/<path>`: a copy of the release's file
/// `from` when it has one there, else an empty directory. Returns the
/// outermost path created (to remove if the install fails).
fn create_shared_target(host: &Host, shared_target: &Path, from: Option<&Path>) -> Result<PathBuf> {
    let parent = shared_target.parent().expect("shared paths have a parent");
    let mut first_missing = None;
    for dir in parent.ancestors() {
        if dir.exists() || dir == host.root {
            break;
        }
        first_missing = Some(dir.to_path_buf());
    }
    fs::create_dir_all(parent)?;
    match from {
        Some(file) => {
            fs::copy(file, shared_target)?;
            fsutil::set_mode(shared_target, 0o644)?;
        }
        None => {
            fs::create_dir(shared_target)?;
            fsutil::set_mode(shared_target, 0o755)?;
        }
    }
    Ok(first_missing.unwrap_or_else(|| shared_target.to_path_buf()))
}

/// Make the release read-only: directories 0555, files 0444/0555. Files
/// unpacked from the artifact were created with their final mode, so only
/// the directories change, children first so each stays writable while its
/// entries change; a venv recreated by `--rebuild-venv` is walked whole.
/// `sealed`: the unpacked directories were created 0555 already (see
/// `extract::Sealing`); then only the root and the directories the install
/// added change.
fn make_read_only(
    release: &Path,
    manifest: &Manifest,
    unpacked_dirs: &[usize],
    sealed: bool,
    record: &InstallRecord,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs: Vec<PathBuf> = Vec::new();
    let rebuilt = |path: &str| record.venv_rebuilt && (path == "venv" || path.starts_with("venv/"));
    // Created read-only already (`Sealing::AtCreation`), but for a rebuilt
    // venv's.
    for &i in unpacked_dirs {
        let path = &manifest.files[i].path;
        if !sealed && !rebuilt(path) {
            dirs.push(release.join(path));
        }
    }
    for e in &record.entries {
        if e.kind == EntryType::Dir && !rebuilt(&e.path) {
            dirs.push(release.join(&e.path));
        }
    }
    if record.venv_rebuilt {
        for item in walkdir::WalkDir::new(release.join("venv")).follow_links(false) {
            let item = item.map_err(|e| io::Error::other(format!("{}: {e}", release.display())))?;
            let kind = item.file_type();
            if kind.is_dir() {
                dirs.push(item.path().to_path_buf());
            } else if kind.is_file() {
                let mode = item
                    .metadata()
                    .map_err(|e| io::Error::other(e.to_string()))?
                    .permissions()
                    .mode()
                    & 0o7777;
                let want = installed_mode(EntryType::File, mode);
                if mode != want {
                    fsutil::set_mode(item.path(), want)?;
                }
            }
        }
    }
    dirs.sort();
    dirs.insert(0, release.to_path_buf());
    for dir in dirs.iter().rev() {
        fsutil::set_mode(dir, 0o555)?;
    }
    Ok(())
}

/// Install the artifact; `lock` proves the root's lock is held.
pub fn install(
    host: &Host,
    lock: &Lock,
    config: &HostConfig,
    options: &InstallOptions,
    printer: &Printer,
) -> Result<InstallReport> {
    let mut need = None;
    durable::forced()?;
    // The artifact's bytes (a file or a URL) and what they must prove.
    let source = source::open(&options.source(), &config.trust.keys(), printer)?;
    let failure = source.check.failure();
    let report = install_steps(host, lock, config, options, source, printer, &mut need)
        .map_err(|e| failure.explain(e))
        .map_err(|e| explain_full_disk(e, &host.releases, need))?;
    // The release is installed: serve its static files beside the others'
    // (also when it already was: a killed install may not have got here).
    if let Err(e) = statics::after_install(host, lock, config, printer) {
        printer.warn(&format!(
            "{} is installed, but its static files could not be added to {}: {e}\n  fix: the next install, activate or prune tries again; `release verify` shows what is missing",
            report.id,
            statics::dir(host).display()
        ));
    }
    Ok(report)
}

/// The pipeline: plan (manifest, an identical release already installed,
/// the venv and interpreter plan, what to reuse, space) → unpack (every
/// member checked) → the artifact's digest and, for a URL, its signature
/// (`source::SourceCheck`) → finalize (venv adjustments,
/// shared links, read-only, sync, rename, journal). `need`: the release and
/// the bytes it needs, once the space was checked (for a full-disk message).
fn install_steps(
    host: &Host,
    lock: &Lock,
    config: &HostConfig,
    options: &InstallOptions,
    source: source::Source,
    printer: &Printer,
    need: &mut Option<(String, u64)>,
) -> Result<InstallReport> {
    let started = Instant::now();
    let (stage, digest, provenance) = read_source(source, |artifact, check, head, entries| {
        let manifest = &head.manifest;
        printer.progress(&match &head.delta {
            Some(delta) => format!(
                "installing {} {} (commit {}) from a delta against {}",
                manifest.app, manifest.release, manifest.commit, delta.base.release
            ),
            None => format!(
                "installing {} {} (commit {})",
                manifest.app, manifest.release, manifest.commit
            ),
        });
        crashpoint(CrashPoint::InstallManifestRead);
        Ok(
            match plan_install(host, options, artifact, head, printer, Planning::Install)? {
                Plan::Existing(manifest, existing) => Stage::Existing(Box::new(manifest), existing),
                Plan::Fresh(fresh) => {
                    *need = Some((fresh.manifest.release.clone(), fresh.bytes));
                    let bar = if check.shows_download() {
                        // The download's bar shows the progress.
                        indicatif::ProgressBar::hidden()
                    } else {
                        printer.bar(fresh.manifest.files.len() as u64, "installing")
                    };
                    Stage::Unpacked(Box::new(unpack(
                        host, artifact, fresh, entries, bar, printer,
                    )?))
                }
            },
        )
    })?;
    let landed = Landed {
        digest,
        started,
        source: provenance,
    };
    match stage {
        Stage::Existing(manifest, existing) => {
            already_installed(host, lock, options, *manifest, &existing, landed, printer)
        }
        Stage::Unpacked(unpacked) => finalize(host, lock, config, *unpacked, landed, printer, need),
    }
}

/// The artifact's stream, read once: its head (the manifest, which bounds
/// the stream's size, and a delta's header) and the members after it go to
/// `step`, which plans and,
/// for an install, unpacks; then the rest of the stream is read and its
/// digest (and, for a URL, its signature) checked. Decompression runs on a
/// thread of its own, beside `step`. The digest and where the artifact came
/// from come back with what `step` made.
fn read_source<T>(
    source: source::Source,
    step: impl FnOnce(
        &Path,
        &source::SourceCheck,
        archive::Head,
        tar::Entries<'_, archive::Background>,
    ) -> Result<T>,
) -> Result<(T, String, source::Provenance)> {
    let source::Source {
        name: artifact,
        stream,
        check,
    } = source;
    let mut archive = tar::Archive::new(stream);
    let made = {
        let mut entries = archive::raw_entries(&mut archive)?;
        let head = archive::read_head(&artifact, &mut entries)?;
        check.manifest_read(&head.manifest, head.json.len());
        step(&artifact, &check, head, entries)?
    };
    let finished = archive
        .into_inner()
        .finish()
        .map_err(|e| fsutil::fs_err_io(e, &artifact))?;
    let digest = check.verify(finished)?;
    Ok((made, digest, check.provenance()))
}

/// What planning found.
enum Plan {
    /// An identical release is installed and verifies.
    Existing(Manifest, Box<Installed>),
    Fresh(Fresh),
}

/// A release to install: its manifest (and its bytes as read), how its venv
/// gets its interpreter, what an installed release lends it, the space it
/// needs.
struct Fresh {
    manifest: Manifest,
    json: Vec<u8>,
    venv: VenvPlan,
    reuse: Option<Box<Reuse>>,
    bytes: u64,
    /// The check of the interpreter the venv links to (an install's, not a
    /// dry run's), running since the plan was made.
    interpreter: Option<std::thread::JoinHandle<Result<()>>>,
}

/// How far the pipeline got before the digest was compared.
enum Stage {
    Existing(Box<Manifest>, Box<Installed>),
    Unpacked(Box<Unpacked>),
}

/// A release unpacked into `releases/.incoming-*`.
struct Unpacked {
    fresh: Fresh,
    incoming: Incoming,
    extracted: Extracted,
}

/// Who plans: the install, or its dry run. A dry run may find no root yet
/// (then nothing is installed and the space is what the release needs,
/// unchecked), and starts no check of a delta's base files.
#[derive(Debug, Clone, Copy)]
enum Planning {
    Install,
    DryRun { root_exists: bool },
}

/// Step 1, plan: an identical release already installed, else the venv
/// plan, the reuse plan (for a delta, its base) and the space check;
/// nothing is written. The install and its dry run both plan here.
fn plan_install(
    host: &Host,
    options: &InstallOptions,
    artifact: &Path,
    head: archive::Head,
    printer: &Printer,
    planning: Planning,
) -> Result<Plan> {
    let archive::Head {
        manifest,
        json,
        delta,
    } = head;
    let root_exists = match planning {
        Planning::Install => true,
        Planning::DryRun { root_exists } => root_exists,
    };
    // One listing of releases/ for both questions below.
    let installed = if root_exists {
        releases::installed(host)?
    } else {
        Vec::new()
    };
    if let Some(existing) = find_installed(&installed, &manifest, printer)? {
        return Ok(Plan::Existing(manifest, Box::new(existing)));
    }
    let venv = plan_venv(options, &manifest)?;
    let interpreter = match planning {
        Planning::Install => check_interpreter_beside(&venv, &manifest),
        Planning::DryRun { .. } => None,
    };
    let reuse = match &delta {
        Some(delta) => {
            // An install checks each base file as it links it; a dry run
            // links nothing, so it checks them all now.
            let check_now = matches!(planning, Planning::DryRun { .. });
            let reuse = Reuse::for_delta(host, &installed, &manifest, delta, artifact, check_now)?;
            Some(Box::new(reuse))
        }
        None => Reuse::plan(host, &installed, &manifest).map(Box::new),
    };
    let rebuild = matches!(venv, VenvPlan::Rebuild(_));
    let bytes = if root_exists {
        check_space(host, artifact, &manifest, reuse.as_deref(), rebuild)?
    } else {
        space_needed(&manifest, rebuild)
    };
    Ok(Plan::Fresh(Fresh {
        manifest,
        json,
        venv,
        reuse,
        bytes,
        interpreter,
    }))
}

/// Step 2, unpack into a fresh `.incoming-*`, checking every member, while
/// the interpreter the venv links to is checked beside it.
fn unpack<R: std::io::Read>(
    host: &Host,
    artifact: &Path,
    mut fresh: Fresh,
    entries: tar::Entries<'_, R>,
    bar: indicatif::ProgressBar,
    printer: &Printer,
) -> Result<Unpacked> {
    let interpreter = fresh.interpreter.take();
    let manifest = &fresh.manifest;
    let incoming = Incoming::create(host)?;
    crashpoint(CrashPoint::InstallIncomingCreated);
    let mut extracted = Extractor::new(artifact, manifest, &incoming.path)?
        .with_progress(bar)
        .with_reuse(fresh.reuse.as_deref())
        .run(entries)?;
    if let Some(reuse) = fresh.reuse.as_deref().filter(|r| r.delta) {
        let to_hash = std::mem::take(&mut extracted.to_hash);
        if printer.verbose > 0 {
            printer.progress(&format!(
                "took {} unchanged files from release {}; hashing the {} changed on this host since it was installed",
                reuse.files,
                reuse.id,
                to_hash.len()
            ));
        }
        if !to_hash.is_empty() {
            BaseCheck::start(to_hash).finish().map_err(|(index, why)| {
                reuse.base_changed(artifact, manifest, &manifest.files[index].path, why)
            })?;
        }
    }
    if let Some(check) = interpreter {
        check
            .join()
            .unwrap_or_else(|_| Err(Error::internal("the interpreter check's thread panicked")))?;
    }
    crashpoint(CrashPoint::InstallExtracted);
    if printer.verbose > 0 {
        printer.progress(&format!(
            "unpacked {} files ({} bytes), every one checked against the manifest",
            extracted.files, extracted.bytes
        ));
        if let Some(reuse) = &fresh.reuse {
            printer.progress(&format!(
                "linked {} unchanged files ({} bytes) from release {}",
                extracted.linked, extracted.linked_bytes, reuse.id
            ));
        }
    }
    Ok(Unpacked {
        fresh,
        incoming,
        extracted,
    })
}

/// The release was already installed: journal its install if a killed
/// command did not, and report it.
fn already_installed(
    host: &Host,
    lock: &Lock,
    options: &InstallOptions,
    manifest: Manifest,
    existing: &Installed,
    landed: Landed,
    printer: &Printer,
) -> Result<InstallReport> {
    printer.progress(&format!(
        "{} is already installed as {} and verifies; not installing it again",
        manifest.release,
        existing.name()
    ));
    journal_if_missing(host, lock, existing, &manifest, printer)?;
    if options.python.is_some() || options.rebuild_venv {
        printer
            .warn("--python / --rebuild-venv were not applied: the release was already installed");
    }
    Ok(InstallReport {
        id: existing.id.clone(),
        commit: manifest.commit,
        path: existing.dir.clone(),
        files: manifest.file_count,
        bytes: manifest.bytes,
        seconds: landed.started.elapsed().as_secs_f64(),
        already_installed: true,
        linked_from: None,
        linked_files: 0,
        linked_bytes: 0,
        delta: false,
        source: landed.source,
    })
}

/// The artifact's digest, when the install started, and where the
/// artifact came from.
struct Landed {
    digest: String,
    started: Instant,
    source: source::Provenance,
}

/// Step 3, finalize: the venv plan applied, shared paths linked, the record
/// written, the tree made read-only and durable, renamed into place (after
/// which `need` is cleared: a full disk no longer means nothing was
/// installed) and journaled.
fn finalize(
    host: &Host,
    lock: &Lock,
    config: &HostConfig,
    unpacked: Unpacked,
    landed: Landed,
    printer: &Printer,
    need: &mut Option<(String, u64)>,
) -> Result<InstallReport> {
    let Unpacked {
        fresh,
        mut incoming,
        extracted,
    } = unpacked;
    let (manifest, dir) = (&fresh.manifest, incoming.path.clone());
    let id = new_id(host, &manifest.release);
    let mut record = InstallRecord {
        installed_at: id.installed_rfc3339(),
        user: crate::host::journal::current_user(),
        artifact_sha256: landed.digest,
        ..InstallRecord::default()
    };
    fsutil::write_new_file(&dir.join(MANIFEST_NAME), &fresh.json, 0o444)?;
    apply_venv_plan(&dir, manifest, &fresh.venv, &mut record, printer)?;
    let mut created = CreatedOutside::default();
    link_shared(host, &dir, config, &mut record, &mut created)?;
    crashpoint(CrashPoint::InstallSharedLinked);
    fsutil::write_new_file(
        &dir.join(RECORD_NAME),
        &serde_json::to_vec_pretty(&record).expect("record serialises"),
        0o444,
    )?;
    make_read_only(&dir, manifest, &extracted.dirs, extracted.sealed, &record)?;
    crashpoint(CrashPoint::InstallReadOnly);
    // Durable before it becomes visible.
    let (strategy, why) = durable::choose(&dir, manifest.files.len(), extracted.bytes)?;
    if printer.verbose > 0 {
        printer.progress(&format!(
            "making it durable: {} ({why})",
            strategy.describe()
        ));
    }
    let durable_started = Instant::now();
    durable::make_durable(&dir, &created.paths, strategy)?;
    if printer.verbose > 0 {
        printer.progress(&format!(
            "durable in {:.2}s",
            durable_started.elapsed().as_secs_f64()
        ));
    }
    crashpoint(CrashPoint::InstallSynced);
    let final_dir = host.release_dir(id.as_str());
    fs::rename(&dir, &final_dir)?;
    incoming.keep = true;
    created.keep = true;
    *need = None;
    crashpoint(CrashPoint::InstallRenamed);
    fsutil::fsync_dir(&host.releases)?;
    journal_install(host, lock, &id, manifest, &record)?;
    crashpoint(CrashPoint::InstallJournaled);
    let seconds = landed.started.elapsed().as_secs_f64();
    let linked = match &fresh.reuse {
        Some(reuse) if extracted.linked > 0 => format!(
            " ({} unchanged files linked from {})",
            extracted.linked, reuse.id
        ),
        _ => String::new(),
    };
    printer.progress(&format!("installed {id} in {seconds:.2}s{linked}"));
    Ok(InstallReport {
        id: id.clone(),
        commit: fresh.manifest.commit,
        path: final_dir,
        files: fresh.manifest.file_count,
        bytes: fresh.manifest.bytes,
        seconds,
        already_installed: false,
        delta: fresh.reuse.as_ref().is_some_and(|r| r.delta),
        linked_from: fresh.reuse.map(|r| r.id),
        linked_files: extracted.linked,
        linked_bytes: extracted.linked_bytes,
        source: landed.source,
    })
}

/// `--python` re-points the unpacked venv, `--rebuild-venv` recreates it;
/// either is recorded.
fn apply_venv_plan(
    dir: &Path,
    manifest: &Manifest,
    plan: &VenvPlan,
    record: &mut InstallRecord,
    printer: &Printer,
) -> Result<()> {
    match plan {
        VenvPlan::AsBuilt => {}
        VenvPlan::Repoint(python) => {
            printer.progress(&format!("re-pointing the venv to {}", python.display()));
            for entry in python::repoint(dir, manifest, python)? {
                record.set_entry(entry);
            }
            record.python = Some(python.to_string_lossy().into_owned());
        }
        VenvPlan::Rebuild(python) => {
            printer.progress(&format!(
                "recreating the venv from wheels/ with {} (offline)",
                python.display()
            ));
            python::rebuild_venv(dir, python).map_err(|e| InstallError::RebuildFailed {
                release: manifest.release.clone(),
                python: python.clone(),
                need: python::describe_need(&manifest.python),
                built_with: manifest.python.base_executable.clone(),
                error: Box::new(e),
            })?;
            record.replaced.push("venv".into());
            for entry in crate::tree::scan_tree(&dir.join("venv"), "venv")? {
                record.set_entry(entry);
            }
            record.python = Some(python.to_string_lossy().into_owned());
            record.venv_rebuilt = true;
        }
    }
    Ok(())
}

/// The journal's `installed` event, stamped with the install time in the id.
fn journal_install(
    host: &Host,
    lock: &Lock,
    id: &ReleaseId,
    manifest: &Manifest,
    record: &InstallRecord,
) -> Result<()> {
    let mut event = Event::new(
        What::Installed {
            commit: Some(manifest.commit.clone()),
            python: record.python.clone(),
            venv_rebuilt: record.venv_rebuilt,
        },
        id,
        None,
    );
    event.at = rfc3339(id.installed);
    Journal::new(&host.journal).append(lock, &event)
}

/// What `release install --dry-run --json` prints (and `deploy --dry-run`
/// under `install`): what an install would do.
#[derive(Debug, Serialize)]
pub struct InstallPlan {
    pub dry_run: bool,
    /// The installed release when this one is already installed; otherwise
    /// null (an id is made when the install runs).
    pub id: Option<ReleaseId>,
    pub commit: String,
    /// Entries in the manifest, and bytes of its regular files.
    pub files: u64,
    pub bytes: u64,
    pub already_installed: bool,
    /// The release unchanged files would be hard-linked from, and how many.
    pub linked_from: Option<ReleaseId>,
    pub linked_files: u64,
    pub linked_bytes: u64,
    /// Disk the install needs (what the space check compares with what is
    /// free); null when already installed.
    pub need_bytes: Option<u64>,
}

impl InstallPlan {
    pub fn human(&self) -> String {
        match &self.id {
            Some(id) => format!(
                "{} is already installed as {id}: install would change nothing\n",
                &self.commit[..12.min(self.commit.len())]
            ),
            None => format!(
                "would install {} ({} files; {} MiB of disk, {} files linked from {})\n",
                &self.commit[..12.min(self.commit.len())],
                self.files,
                self.need_bytes.unwrap_or(0).div_ceil(1024 * 1024),
                self.linked_files,
                self.linked_from.as_ref().map_or("none", ReleaseId::as_str)
            ),
        }
    }
}

/// `install --dry-run`: the checks an install makes before it writes (the
/// artifact's sha256, its manifest, whether it is installed already, the
/// interpreter, the space), with nothing written and no lock taken. The
/// members themselves are checked only by the install (they are unpacked
/// then); a root that does not exist yet counts as empty.
pub fn plan(host: &Host, options: &InstallOptions, printer: &Printer) -> Result<InstallPlan> {
    // The same source and checks as the install: sha256, and the signature
    // when release.toml requires one.
    let config = HostConfig::load(&host.config)?;
    let source = source::open(&options.source(), &config.trust.keys(), printer)?;
    let failure = source.check.failure();
    let root_exists = host.releases.is_dir();
    read_source(source, |artifact, _, head, _| {
        let planning = Planning::DryRun { root_exists };
        InstallPlan::of(plan_install(
            host, options, artifact, head, printer, planning,
        )?)
    })
    .map(|(plan, _, _)| plan)
    .map_err(|e| failure.explain(e))
}

impl InstallPlan {
    /// What a plan says an install would do; the interpreter a venv kept as
    /// built links to is checked here (the install checks it while it
    /// unpacks).
    fn of(plan: Plan) -> Result<InstallPlan> {
        let of_manifest = |manifest: &Manifest| InstallPlan {
            dry_run: true,
            id: None,
            commit: manifest.commit.clone(),
            files: manifest.file_count,
            bytes: manifest.bytes,
            already_installed: false,
            linked_from: None,
            linked_files: 0,
            linked_bytes: 0,
            need_bytes: None,
        };
        Ok(match plan {
            Plan::Existing(manifest, existing) => InstallPlan {
                id: Some(existing.id.clone()),
                already_installed: true,
                ..of_manifest(&manifest)
            },
            Plan::Fresh(fresh) => {
                let manifest = &fresh.manifest;
                if let VenvPlan::AsBuilt = fresh.venv {
                    python::check_base_interpreter_for(&manifest.release, &manifest.python)?;
                }
                let reuse = fresh.reuse.as_deref();
                InstallPlan {
                    need_bytes: Some(fresh.bytes),
                    linked_from: reuse.map(|r| r.id.clone()),
                    linked_files: reuse.map_or(0, |r| r.files),
                    linked_bytes: reuse.map_or(0, |r| r.bytes),
                    ..of_manifest(manifest)
                }
            }
        })
    }
}

/// An install killed after its rename but before its journal line left a
/// complete release without an `installed` event: write it now, once.
fn journal_if_missing(
    host: &Host,
    lock: &Lock,
    release: &Installed,
    manifest: &Manifest,
    printer: &Printer,
) -> Result<()> {
    let journal = Journal::new(&host.journal);
    let known = journal
        .read()?
        .events
        .iter()
        .any(|e| e.kind() == EventKind::Installed && e.release == release.id);
    if known {
        return Ok(());
    }
    let record = InstallRecord::read(&release.dir).unwrap_or_default();
    let mut event = Event::new(
        What::Installed {
            commit: Some(manifest.commit.clone()),
            python: record.python,
            venv_rebuilt: record.venv_rebuilt,
        },
        &release.id,
        None,
    );
    event.at = rfc3339(release.id.installed);
    journal.append(lock, &event)?;
    printer.progress(&format!(
        "journaled the install of {} (the command that installed it was interrupted before it could)",
        release.name()
    ));
    Ok(())
}

/// Say plainly that a filesystem filled up: an `ENOSPC` (or `EDQUOT`) while
/// installing into `dir` becomes an error naming the filesystem, the file,
/// what the release needs (`need`: the release and its bytes; `None` once
/// the release is in place, or before anything was written), what is free
/// now, and the fix. Other errors pass through.
pub fn explain_full_disk(err: Error, dir: &Path, need: Option<(String, u64)>) -> Error {
    use std::io::ErrorKind;
    match (err, need) {
        (Error::Io(error), Some((release, bytes)))
            if matches!(
                error.kind(),
                ErrorKind::StorageFull | ErrorKind::QuotaExceeded
            ) =>
        {
            let mib = |b: u64| b.div_ceil(1024 * 1024);
            InstallError::DiskFull {
                dir: dir.to_path_buf(),
                error,
                release,
                need_mib: mib(bytes),
                free_mib: rustix::fs::statvfs(dir)
                    .ok()
                    .map(|s| mib(s.f_bavail.saturating_mul(s.f_frsize))),
            }
            .into()
        }
        (err, _) => err,
    }
}

#[cfg(test)]
mod tests {
    use crate::archive::parse_checksum_file;
    use crate::manifest::Manifest;

    #[test]
    fn space_needed_saturates_instead_of_wrapping() {
        // A valid manifest listing a file of u64::MAX bytes: the block
        // rounding overflowed (a panic in debug builds, a tiny need that
        // passed the free-space check in release builds).
        let json = br#"{"format":1,"app":"fuzz","commit":"0123456789abcdef0123456789abcdef01234567","release":"0123456789ab","source_date_epoch":0,"dirty":false,"builder":{"tool":"release","version":"0","installer":"pip"},"python":{"implementation":"cpython","version":"3.11.2","abi":"cp311","platform":"linux_x86_64","base_executable":"/usr/bin/python3"},"requirements_sha256":"0000000000000000000000000000000000000000000000000000000000000000","file_count":2,"bytes":18446744073709551615,"tree_sha256":"b286b6e201655a2ee09337341b8a6a797fc390713f4997d2498d3e5c4db438f2","files":[{"path":"app","type":"dir","mode":"0755"},{"path":"app/a","type":"file","mode":"0644","size":18446744073709551615,"sha256":"0000000000000000000000000000000000000000000000000000000000000000"}]}"#;
        let manifest = Manifest::from_json(json).unwrap();
        assert_eq!(super::space_needed(&manifest, false), u64::MAX);
        assert_eq!(super::space_needed(&manifest, true), u64::MAX);
    }

    #[test]
    fn checksum_files_in_sha256sum_format() {
        let hex = "ab".repeat(32);
        assert_eq!(
            parse_checksum_file(&format!("{hex}  a.tar.zst\n"), "a.tar.zst").unwrap(),
            hex
        );
        assert_eq!(
            parse_checksum_file(&format!("{hex} *dir/a.tar.zst\n"), "a.tar.zst").unwrap(),
            hex
        );
        let err = parse_checksum_file(&format!("{hex}  b.tar.zst\n"), "a.tar.zst").unwrap_err();
        assert!(err.to_string().contains("no digest for a.tar.zst"), "{err}");
        assert!(parse_checksum_file("xyz  a.tar.zst\n", "a.tar.zst").is_err());
    }
}
