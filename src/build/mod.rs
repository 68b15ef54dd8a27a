//! `release build`: a Python web app at a git commit → one reproducible artifact.
//!
//! The steps follow docs/design.md §1: resolve the commit, export the tracked files,
//! get a relocatable venv + its wheels (from the build cache when the
//! requirements are unchanged), run the static step, then write the manifest and
//! the deterministic archive.

mod git;
mod interpreter;
mod requirements;
mod settings;
mod untracked;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use fs_err as fs;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::{self, ArtifactWriter, Format};
use crate::error::{tail, BuildError, Error, PythonError, Result, SourceError};
use crate::fsutil;
use crate::manifest::{self, Builder, Entry, Manifest};
use crate::output::Printer;
use crate::python::{self, relocate};
use crate::tree::scan_tree;

pub use python::InstallerChoice;
pub use settings::BuildFlags;

/// What `release build --json` prints.
#[derive(Debug, Serialize)]
pub struct BuildReport {
    pub artifact: PathBuf,
    pub sha256: String,
    pub app: String,
    pub commit: String,
    pub release: String,
    pub format: Format,
    /// Entries in the manifest.
    pub files: u64,
    /// Size of the artifact file.
    pub bytes: u64,
    pub tree_sha256: String,
    pub seconds: f64,
    /// Whether the venv and wheels came from the build cache.
    pub cached_env: bool,
}

/// The contents of one build-cache entry: the venv and the wheels it was
/// installed from, with their manifest entries (paths under `venv/` and `wheels/`).
#[derive(Serialize, Deserialize)]
struct EnvIndex {
    base_executable: String,
    installer: String,
    entries: Vec<Entry>,
    /// What unpinned requirements resolved to (they key the entry); empty
    /// for pinned ones. Set by the build that reads the entry.
    #[serde(skip)]
    resolved: Vec<String>,
}

/// How long each step took, shown with `-v`.
struct Steps {
    last: Instant,
    done: Vec<(&'static str, f64)>,
}

impl Steps {
    fn new() -> Steps {
        Steps {
            last: Instant::now(),
            done: Vec::new(),
        }
    }

    fn done(&mut self, step: &'static str) {
        let now = Instant::now();
        self.done.push((step, (now - self.last).as_secs_f64()));
        self.last = now;
    }

    fn summary(&self) -> String {
        let parts: Vec<String> = self
            .done
            .iter()
            .map(|(step, secs)| format!("{step} {secs:.2}s"))
            .collect();
        format!("steps: {}", parts.join(", "))
    }
}

pub fn run(flags: &BuildFlags, printer: &Printer) -> Result<BuildReport> {
    let started = Instant::now();
    let mut steps = Steps::new();
    let source = git::Source::open(&flags.source)?;
    let commit = source.commit(flags.commit.as_deref(), flags.allow_dirty)?;
    let cache_dir = settings::cache_dir(flags.cache_dir.as_deref())?;
    let tmp_root = cache_dir.join("tmp");
    fs::create_dir_all(&tmp_root)?;
    let work = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(&tmp_root)
        .map_err(|e| fsutil::fs_err_io(e, &tmp_root))?;
    let work_dir = work.path();
    let app_dir = work_dir.join("app");
    printer.progress(&format!(
        "building {} at {}{}",
        flags.source.display(),
        &commit.sha[..12],
        if commit.dirty { " (dirty)" } else { "" }
    ));
    source.export(&commit, &app_dir)?;
    let settings = settings::resolve(flags, &app_dir)?;
    settings::apply_include_exclude(&app_dir, &settings.include, &settings.exclude)?;
    steps.done("code");

    let requirements = app_dir.join(&settings.requirements);
    if !requirements.is_file() {
        return Err(SourceError::RequirementsMissing {
            path: source
                .toplevel
                .join(&source.prefix)
                .join(&settings.requirements),
            commit: commit.sha[..12].to_string(),
        }
        .into());
    }
    // Both checks come before anything is downloaded.
    let unpinned = requirements::unpinned(&requirements, &app_dir)?;
    if !unpinned.is_empty() && !settings.allow_unpinned {
        return Err(requirements::refusal(&settings.requirements, &unpinned));
    }
    let needs = interpreter::declared(&app_dir, settings.requires_python.as_deref())?;
    let interpreter = interpreter::select(settings.python.as_deref(), &needs, printer)?;
    let installer = python::choose_installer(settings.installer, &interpreter)?;
    let requirements_sha256 = requirements_digest(&requirements, &app_dir)?;
    steps.done("interpreter");

    // Unpinned requirements resolve anew on every build, and what they
    // resolve to keys the cache: an old venv cannot stand in for a new resolve.
    let resolved = if unpinned.is_empty() {
        Vec::new()
    } else {
        printer.warn(&format!(
            "{} of the requirements are not pinned (--allow-unpinned): resolving them now; the versions are recorded in the manifest",
            unpinned.len()
        ));
        let scratch = work_dir.join("resolve");
        source.export(&commit, &scratch)?;
        let rel = requirements.strip_prefix(&app_dir).unwrap_or(&requirements);
        let resolved = requirements::resolve(
            &interpreter,
            &scratch.join(rel),
            &scratch,
            &python::WheelOptions {
                cache_dir: &cache_dir.join("pip"),
                find_links: &settings.find_links,
                no_index: settings.no_index,
            },
            commit.epoch,
        )?;
        fs::remove_dir_all(&scratch)?;
        steps.done("resolve");
        resolved
    };
    let key_input = if resolved.is_empty() {
        requirements_sha256.clone()
    } else {
        format!("{requirements_sha256}\0unpinned\0{}", resolved.join("\n"))
    };

    // The venv + wheels, from the cache or built now.
    let key = env_key(&key_input, &interpreter, &installer);
    let env_dir = cache_dir.join("envs").join(&key);
    let cached_env = env_dir.join("index.json").is_file();
    if cached_env {
        printer.progress(&format!("reusing venv {}", env_dir.display()));
    } else {
        printer.progress(&format!(
            "installing requirements with {} (cache: {})",
            installer.describe(),
            cache_dir.display()
        ));
        // The static step needs the installed venv but not its pycs: it runs
        // beside the byte-compiling of site-packages.
        build_env(
            &env_dir,
            &interpreter,
            &installer,
            &requirements,
            work_dir,
            &source,
            &commit,
            &settings,
            &cache_dir,
            &mut steps,
            printer,
            |venv| run_static_step(&settings, &app_dir, venv, work_dir, commit.epoch, printer),
        )?;
    }
    let static_done = !cached_env;
    let mut index: EnvIndex = serde_json::from_slice(&fs::read(env_dir.join("index.json"))?)
        .map_err(|e| SourceError::CorruptCacheEntry {
            dir: env_dir.clone(),
            reason: e.to_string(),
        })?;
    if cached_env {
        steps.done("env (cached)");
    }
    if !resolved.is_empty() {
        let wheels = requirements::wheel_pins(&env_dir.join("wheels"))?;
        if wheels != resolved {
            return Err(SourceError::IndexChanged { resolved, wheels }.into());
        }
    }
    index.resolved = resolved;
    if !settings.wheels {
        index
            .entries
            .retain(|e| e.path != "wheels" && !e.path.starts_with("wheels/"));
    }

    // The venv and the wheels end the (sorted) tar stream, and their entries
    // are known now: for zstd, compress them on a thread of their own, as a
    // second frame, while the static step and the app's pycs are made. (A
    // gzip artifact stays one gzip member: some readers stop after the first.)
    let mut tail_entries = index.entries.clone();
    tail_entries.sort_by(|a, b| a.path.cmp(&b.path));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (manifest, artifact, written) = std::thread::scope(|scope| -> Result<_> {
        let tail = (settings.format == Format::Zst).then(|| {
            scope.spawn(|| {
                write_tail(
                    &tail_entries,
                    &env_dir,
                    work_dir,
                    settings.format,
                    commit.epoch,
                    &stop,
                )
            })
        });
        let rest = make_rest_and_write(
            flags,
            &settings,
            &commit,
            &interpreter,
            &index,
            requirements_sha256,
            &app_dir,
            &env_dir,
            work_dir,
            &tail_entries,
            static_done,
            tail.map(|tail| {
                move || {
                    tail.join()
                        .unwrap_or_else(|_| Err(Error::internal("the archiving thread panicked")))
                }
            }),
            &mut steps,
            printer,
        );
        if rest.is_err() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        rest
    })?;
    if printer.verbose > 0 {
        printer.progress(&steps.summary());
    }

    Ok(BuildReport {
        artifact,
        sha256: written.sha256,
        app: manifest.app,
        commit: manifest.commit,
        release: manifest.release,
        format: settings.format,
        files: manifest.file_count,
        bytes: written.bytes,
        tree_sha256: manifest.tree_sha256,
        seconds: started.elapsed().as_secs_f64(),
        cached_env,
    })
}

/// Everything after the env: the static step and the app's pycs, the
/// manifest, and the artifact, whose venv-and-wheels part `join_tail` gives
/// (or, without it, is written here).
#[allow(clippy::too_many_arguments)]
fn make_rest_and_write(
    flags: &BuildFlags,
    settings: &settings::Settings,
    commit: &git::Commit,
    interpreter: &python::Interpreter,
    index: &EnvIndex,
    requirements_sha256: String,
    app_dir: &Path,
    env_dir: &Path,
    work_dir: &Path,
    tail_entries: &[Entry],
    static_done: bool,
    join_tail: Option<impl FnOnce() -> Result<fs::File>>,
    steps: &mut Steps,
    printer: &Printer,
) -> Result<(Manifest, PathBuf, archive::Written)> {
    let venv = &env_dir.join("venv");
    // Static files, and beside them the app's pycs: the static step runs
    // with PYTHONDONTWRITEBYTECODE and compileall replaces each pyc
    // atomically, so neither sees the other half-done.
    let static_dir = work_dir.join("static");
    std::thread::scope(|scope| -> Result<()> {
        let compiling = scope.spawn(|| {
            python::compile_with(
                venv,
                work_dir,
                &[app_dir.to_path_buf()],
                commit.epoch,
                python::Jobs::One,
                &settings.env,
            )
        });
        let collected = if static_done {
            Ok(())
        } else {
            run_static_step(settings, app_dir, venv, work_dir, commit.epoch, printer)
        };
        let compiled = compiling
            .join()
            .unwrap_or_else(|_| Err(Error::internal("the byte-compiling thread panicked")));
        collected.and(compiled)
    })?;
    steps.done(if settings.static_cmd.is_some() {
        "static + compile"
    } else {
        "compile"
    });

    // The manifest: every path, sorted.
    let mut files = scan_tree(app_dir, "app")?;
    files.extend(tail_entries.iter().cloned());
    if settings.static_cmd.is_some() {
        files.extend(scan_tree(&static_dir, "static")?);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    check_symlinks(&files, &index.base_executable)?;
    let bytes = files.iter().map(Entry::size).sum();
    let manifest = Manifest {
        format: manifest::FORMAT,
        app: settings.name.clone(),
        commit: commit.sha.clone(),
        release: commit.sha[..12].to_string(),
        source_date_epoch: commit.epoch,
        dirty: commit.dirty,
        builder: Builder {
            tool: "release".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            installer: index.installer.clone(),
        },
        python: interpreter.info(index.base_executable.clone()),
        requirements_sha256,
        unpinned: !index.resolved.is_empty(),
        resolved: index.resolved.clone(),
        build_env: settings.env.iter().map(|(k, _)| k.clone()).collect(),
        file_count: files.len() as u64,
        bytes,
        tree_sha256: manifest::tree_digest(&files),
        files,
    };
    manifest
        .validate()
        .map_err(|why| BuildError::WouldNotInstall {
            reason: why.to_string(),
        })?;
    let manifest_json = manifest.to_json_bytes();
    if manifest_json.len() as u64 > manifest::MAX_MANIFEST_BYTES {
        return Err(BuildError::ManifestTooLarge {
            files: manifest.file_count,
            bytes: manifest_json.len(),
            max: manifest::MAX_MANIFEST_BYTES,
        }
        .into());
    }
    steps.done("manifest");

    // The archive: written beside its final name, then renamed into place.
    fs::create_dir_all(&flags.out)?;
    let artifact = flags.out.join(format!(
        "{}-{}.{}",
        manifest.app,
        manifest.release,
        settings.format.extension()
    ));
    printer.progress(&format!("writing {}", artifact.display()));
    let split = manifest.files.len() - tail_entries.len();
    if manifest.files[split..] != *tail_entries {
        return Err(Error::internal(
            "the venv and wheels are not the end of the sorted file list",
        ));
    }
    let tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(&flags.out)
        .map_err(|e| fsutil::fs_err_io(e, &flags.out))?;
    let (tmp_file, tmp_path) = tmp.into_parts();
    let file = fs::File::from_parts(tmp_file, tmp_path.to_path_buf());
    let mut writer = ArtifactWriter::new(file, settings.format, commit.epoch)?;
    writer.append_manifest(&manifest_json)?;
    for entry in &manifest.files[..split] {
        let source_path = match entry.path.split_once('/') {
            Some(("app", rest)) => app_dir.join(rest),
            Some(("static", rest)) => static_dir.join(rest),
            _ if entry.path == "app" => app_dir.to_path_buf(),
            _ if entry.path == "static" => static_dir.clone(),
            _ => {
                return Err(Error::internal(format!(
                    "{} sorts before the venv but is not in app/ or static/",
                    entry.path
                )))
            }
        };
        writer.append(entry, &source_path)?;
    }
    let written = match join_tail {
        Some(join_tail) => {
            let spinner = printer.spinner("compressing the venv and the wheels");
            let tail = join_tail()?;
            spinner.finish_and_clear();
            writer.finish_with_tail(tail)?
        }
        None => {
            for entry in tail_entries {
                writer.append(entry, &env_dir.join(&entry.path))?;
            }
            writer.finish()?
        }
    };
    fsutil::set_mode(&tmp_path, 0o644)?;
    written.file.sync_all()?;
    tmp_path
        .persist(&artifact)
        .map_err(|e| fsutil::fs_err_io(e.error, &artifact))?;
    archive::write_checksum_file(&artifact, &written.sha256)?;
    fsutil::fsync_dir(&flags.out)?;
    steps.done("archive");
    Ok((manifest, artifact, written))
}

/// Write the venv's and the wheels' members (sorted, as they end the
/// artifact) as a complete compressed tar stream into a file in `work_dir`.
fn write_tail(
    entries: &[Entry],
    env_dir: &Path,
    work_dir: &Path,
    format: Format,
    epoch: i64,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<fs::File> {
    let path = work_dir.join("tail.partial");
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    let mut writer = ArtifactWriter::new(file, format, epoch)?;
    for entry in entries {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Stopped);
        }
        writer.append(entry, &env_dir.join(&entry.path))?;
    }
    Ok(writer.finish()?.file)
}

/// Build a cache entry: wheels, venv, relocation, pycs, index. Built under a
/// temporary name and renamed into place, so a killed build leaves no half entry
/// and concurrent builds of the same key are harmless.
#[allow(clippy::too_many_arguments)]
fn build_env(
    env_dir: &Path,
    interpreter: &python::Interpreter,
    installer: &python::Installer,
    requirements: &Path,
    work_dir: &Path,
    source: &git::Source,
    commit: &git::Commit,
    settings: &settings::Settings,
    cache_dir: &Path,
    steps: &mut Steps,
    printer: &Printer,
    beside_compile: impl FnOnce(&Path) -> Result<()> + Send,
) -> Result<()> {
    let envs = env_dir.parent().expect("env dir has a parent");
    fs::create_dir_all(envs)?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(envs)
        .map_err(|e| fsutil::fs_err_io(e, envs))?;
    // Wheels are built from a scratch copy of the source, so build backends
    // that write into the source tree (build/, *.egg-info) cannot leak into app/.
    let scratch = work_dir.join("src");
    source.export(commit, &scratch)?;
    let rel_requirements = requirements
        .strip_prefix(work_dir.join("app"))
        .unwrap_or(requirements);
    let wheels = tmp.path().join("wheels");
    fs::create_dir_all(&wheels)?;
    let find_links: Vec<PathBuf> = settings.find_links.clone();
    python::build_wheels(
        interpreter,
        &scratch.join(rel_requirements),
        &scratch,
        &wheels,
        &python::WheelOptions {
            cache_dir: &cache_dir.join("pip"),
            find_links: &find_links,
            no_index: settings.no_index,
        },
        commit.epoch,
    )?;
    steps.done("wheels");
    let venv = tmp.path().join("venv");
    python::create_venv(installer, interpreter, &venv, &wheels, commit.epoch)?;
    steps.done("venv");
    let report = relocate::relocate(&venv)?;
    printer.progress(&format!(
        "made {} console scripts relocatable",
        report.scripts
    ));
    if !report.leftovers.is_empty() {
        printer.warn(&format!(
            "these venv files still mention the build path and may not work after a move: {}",
            report.leftovers.join(", ")
        ));
    }
    let base_executable = base_interpreter_link(&venv)?;
    let site = venv.join("lib");
    steps.done("relocate");
    // checked-hash pycs replace each file atomically, so what runs beside
    // (the static step, which writes no bytecode) never sees half a pyc.
    // A failing static step is the app's error, not the env's: the entry is
    // still finished and kept, and the error reported after that.
    let beside_result = std::thread::scope(|scope| -> Result<Result<()>> {
        let beside = scope.spawn(|| beside_compile(&venv));
        let compiled = python::compile(&venv, tmp.path(), &[site], commit.epoch);
        let other = beside
            .join()
            .unwrap_or_else(|_| Err(Error::internal("the static step's thread panicked")));
        compiled.map(|()| other)
    })?;
    steps.done("compile + static");
    let mut entries = scan_tree(&venv, "venv")?;
    entries.extend(scan_tree(&wheels, "wheels")?);
    steps.done("hash env");
    let index = EnvIndex {
        base_executable,
        installer: installer.describe(),
        entries,
        resolved: Vec::new(),
    };
    fs::write(
        tmp.path().join("index.json"),
        serde_json::to_vec(&index).expect("index serialises"),
    )?;
    let tmp_path = tmp.keep();
    if let Err(e) = fs::rename(&tmp_path, env_dir) {
        // Another build finished the same entry first: use theirs.
        let _ = fs::remove_dir_all(&tmp_path);
        if !env_dir.join("index.json").is_file() {
            return Err(e.into());
        }
    }
    beside_result
}

/// The absolute path the venv's `python` links point at, in the end.
fn base_interpreter_link(venv: &Path) -> Result<String> {
    let mut link = venv.join("bin/python");
    for _ in 0..8 {
        let target = fs::read_link(&link)?;
        if target.is_absolute() {
            return Ok(target.to_string_lossy().into_owned());
        }
        link = venv.join("bin").join(target);
    }
    Err(PythonError::BaseInterpreterUnknown {
        link: venv.join("bin/python"),
    }
    .into())
}

/// The configured static step, if any, into `<work_dir>/static`.
fn run_static_step(
    settings: &settings::Settings,
    app_dir: &Path,
    venv: &Path,
    work_dir: &Path,
    epoch: i64,
    printer: &Printer,
) -> Result<()> {
    let Some(cmd) = &settings.static_cmd else {
        return Ok(());
    };
    printer.progress(&format!("static step: {cmd}"));
    let static_dir = work_dir.join("static");
    fs::create_dir_all(&static_dir)?;
    let before = untracked::snapshot(app_dir)?;
    run_static(cmd, app_dir, venv, &static_dir, epoch, &settings.env)?;
    untracked::settle(
        &before,
        app_dir,
        &static_dir,
        settings.untracked,
        cmd,
        settings.source,
    )
}

fn run_static(
    cmd: &str,
    app_dir: &Path,
    venv: &Path,
    static_dir: &Path,
    epoch: i64,
    env: &[(String, String)],
) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![venv.join("bin")];
    paths.extend(std::env::split_paths(&path));
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(cmd)
        .current_dir(app_dir)
        .env(
            "PATH",
            std::env::join_paths(paths).map_err(|e| BuildError::BadPathList {
                error: e.to_string(),
            })?,
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("VIRTUAL_ENV", venv)
        .env("STATIC_ROOT", static_dir);
    python::build_env(&mut command, epoch);
    command.env("VIRTUAL_ENV", venv);
    let out = command.output()?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(BuildError::StaticFailed {
        command: cmd.to_string(),
        status: out.status.to_string(),
        tail: tail(&text, 20),
    }
    .into())
}

/// Symlinks must stay inside the release; the only exception is the venv's
/// link to the base interpreter.
fn check_symlinks(files: &[Entry], base_executable: &str) -> Result<()> {
    for e in files
        .iter()
        .filter(|e| e.kind == manifest::EntryType::Symlink)
    {
        let target = e.target.as_deref().unwrap_or_default();
        if target == base_executable && e.path.starts_with("venv/bin/") {
            continue;
        }
        if !manifest::symlink_stays_inside(&e.path, target) {
            return Err(BuildError::LinkLeavesRelease {
                path: e.path.clone(),
                target: target.to_string(),
            }
            .into());
        }
    }
    Ok(())
}

/// sha256 over the requirements file, the files it includes with -r/-c, and the
/// contents of local directories it installs (e.g. `./packages/greeting`).
fn requirements_digest(requirements: &Path, app_dir: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut todo = vec![requirements.to_path_buf()];
    let mut seen = Vec::new();
    while let Some(file) = todo.pop() {
        if seen.contains(&file) {
            continue;
        }
        seen.push(file.clone());
        let text = fs::read_to_string(&file)?;
        hasher.update(
            file.strip_prefix(app_dir)
                .unwrap_or(&file)
                .to_string_lossy()
                .as_bytes(),
        );
        hasher.update(b"\0");
        hasher.update(text.as_bytes());
        let dir = file.parent().unwrap_or(app_dir);
        for line in text.lines() {
            let line = line.split(" #").next().unwrap_or_default().trim();
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["-r" | "-c" | "--requirement" | "--constraint", f, ..] => todo.push(dir.join(f)),
                [p, ..] if p.starts_with("./") || p.starts_with("../") => {
                    // pip resolves these against its working directory: the app root.
                    let local = app_dir.join(p);
                    if local.is_dir() {
                        for e in scan_tree(&local, "app")? {
                            hasher.update(format!("{}\0{:?}\0", e.path, e.sha256).as_bytes());
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The build-cache key: requirements, interpreter, installer and tool version.
fn env_key(
    requirements: &str,
    interpreter: &python::Interpreter,
    installer: &python::Installer,
) -> String {
    let mut hasher = Sha256::new();
    for part in [
        "release-env-1",
        env!("CARGO_PKG_VERSION"),
        requirements,
        &interpreter.executable.to_string_lossy(),
        &interpreter.version,
        &interpreter.abi,
        &interpreter.platform,
        &installer.describe(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update(b"\0");
    }
    hex::encode(hasher.finalize())[..32].to_string()
}
