//! `release build`: a Python web app at a git commit → one reproducible artifact.
//!
//! The steps follow docs/design.md §1: resolve the commit, export the tracked files,
//! get a relocatable venv + its wheels (from the build cache when the
//! requirements are unchanged), run the static step, then write the manifest and
//! the deterministic archive.

mod delta;
mod frame;
mod git;
mod interpreter;
mod lock;
mod pep508;
mod probes;
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
use crate::error::{
    tail, BuildError, Error, LockError, PackageProblem, PythonError, Result, SourceError,
};
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
    /// The dependency file the venv was built from.
    pub dependencies: manifest::Dependencies,
    /// `--sign`: the signature written beside the artifact, and its key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `--delta-from`: the delta artifact written beside the full one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaReport>,
}

/// The delta artifact of a build (`--delta-from`).
#[derive(Debug, Serialize)]
pub struct DeltaReport {
    pub artifact: PathBuf,
    pub sha256: String,
    /// Size of the delta file.
    pub bytes: u64,
    /// The release it applies to.
    pub base_release: String,
    pub base_commit: String,
    /// Regular files it carries (the others come from the base release).
    pub carried_files: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<PathBuf>,
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
    // The key first: a wrong password fails now, not after the build.
    let signer = flags
        .sign
        .as_deref()
        .map(crate::signature::Signer::load)
        .transpose()?;
    // The previous release too: a wrong path fails now (its manifest is
    // read beside the build).
    if let Some(base) = &flags.delta_from {
        delta::check_base(base)?;
    }
    let inputs = signer.as_ref();
    let report = match attempt(flags, printer, inputs, true) {
        Err(Error::InterpreterChanged) => {
            printer.progress(
                "the interpreter is not the one the last build found: building again with it",
            );
            attempt(flags, printer, inputs, false)
        }
        other => other,
    }?;
    Ok(BuildReport {
        seconds: started.elapsed().as_secs_f64(),
        ..report
    })
}

/// One build. With `remembered`, an interpreter named by the settings may be
/// taken from the last build's probe while it is probed again
/// ([`probes`]); `Error::InterpreterChanged` says it was not the same.
fn attempt(
    flags: &BuildFlags,
    printer: &Printer,
    signer: Option<&crate::signature::Signer>,
    remembered: bool,
) -> Result<BuildReport> {
    let started = Instant::now();
    let mut steps = Steps::new();
    let base = flags
        .delta_from
        .clone()
        .map(|path| std::thread::spawn(move || delta::base_manifest(&path)));
    let cache_dir = settings::cache_dir(flags.cache_dir.as_deref())?;
    let tmp_root = cache_dir.join("tmp");
    fs::create_dir_all(&tmp_root)?;
    let work = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(&tmp_root)
        .map_err(|e| fsutil::fs_err_io(e, &tmp_root))?;
    let (build, unpinned) = Build::start(
        flags,
        printer,
        cache_dir,
        work.path(),
        remembered,
        &mut steps,
    )?;
    steps.done("interpreter");
    build
        .finish(unpinned, (signer, base), started, &mut steps)
        .map_err(|e| build.settle(e))
}

impl Build<'_> {
    /// Everything after [`Build::start`].
    fn finish(
        &self,
        unpinned: Vec<requirements::Unpinned>,
        (signer, base): (Option<&crate::signature::Signer>, Option<BaseReader>),
        started: Instant,
        steps: &mut Steps,
    ) -> Result<BuildReport> {
        let build = self;
        let requirements_sha256 = build.deps.digest.clone();
        let resolved = build.resolve_unpinned(&unpinned, steps)?;
        let key_input = if resolved.is_empty() {
            requirements_sha256.clone()
        } else {
            format!("{requirements_sha256}\0unpinned\0{}", resolved.join("\n"))
        };
        let env = build.env(&key_input, resolved, steps)?;
        let (manifest, artifact, written, delta) =
            build.write(&env, requirements_sha256, base, steps)?;
        let printer = build.printer;
        let signature = sign(signer, &artifact, printer, steps)?;
        let delta = match delta {
            Some(d) => Some(DeltaReport {
                signature: sign(signer, &d.path, printer, steps)?,
                artifact: d.path,
                sha256: d.sha256,
                bytes: d.bytes,
                base_release: d.base_release,
                base_commit: d.base_commit,
                carried_files: d.files,
            }),
            None => None,
        };
        if printer.verbose > 0 {
            printer.progress(&steps.summary());
        }
        Ok(BuildReport {
            signature,
            key_id: signer.map(|s| s.key_id.to_string()),
            artifact,
            sha256: written.sha256,
            app: manifest.app,
            commit: manifest.commit,
            release: manifest.release,
            format: build.settings.format,
            files: manifest.file_count,
            bytes: written.bytes,
            tree_sha256: manifest.tree_sha256,
            seconds: started.elapsed().as_secs_f64(),
            cached_env: env.cached,
            dependencies: build.dependencies.clone(),
            delta,
        })
    }

    /// Whether the interpreter this build went on with is the one its name
    /// runs now (waiting for its fresh probe, once); always, when it was
    /// probed for this build.
    fn interpreter_confirmed(&self) -> bool {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        pending.is_none_or(probes::Pending::confirm)
    }

    /// Stop here when the interpreter is not the one assumed.
    fn confirm_interpreter(&self, steps: &mut Steps) -> Result<()> {
        let confirmed = self.interpreter_confirmed();
        steps.done("interpreter check");
        if confirmed {
            Ok(())
        } else {
            Err(Error::InterpreterChanged)
        }
    }

    /// A build's error, or `InterpreterChanged` when it ran with an
    /// interpreter that is not the one its name runs now (which may be what
    /// failed).
    fn settle(&self, e: Error) -> Error {
        if self.interpreter_confirmed() {
            e
        } else {
            Error::InterpreterChanged
        }
    }
}

/// Sign `artifact` with `--sign`'s key, when one was given; the signature's path.
fn sign(
    signer: Option<&crate::signature::Signer>,
    artifact: &Path,
    printer: &Printer,
    steps: &mut Steps,
) -> Result<Option<PathBuf>> {
    let Some(signer) = signer else {
        return Ok(None);
    };
    let path = signer.sign(artifact)?;
    printer.progress(&format!(
        "signed with key id {}: {}",
        signer.key_id,
        path.display()
    ));
    steps.done("sign");
    Ok(Some(path))
}

/// The manifest of `--delta-from`, read on a thread of its own while the
/// build runs.
type BaseReader = std::thread::JoinHandle<Result<Manifest>>;

/// The thread making the end of the manifest's JSON and its frame
/// ([`frame::manifest_end`]).
type ManifestEndThread<'s> = std::thread::ScopedJoinHandle<'s, Result<(Vec<u8>, Vec<u8>)>>;

/// What a build wrote: the manifest, the artifact (its path and what was
/// written), and the delta when asked for.
type Written = (Manifest, PathBuf, archive::Written, Option<delta::Written>);

/// One build's inputs, fixed once the commit, its settings and the
/// interpreter are known: what every later step reads.
struct Build<'a> {
    flags: &'a BuildFlags,
    printer: &'a Printer,
    source: git::Source,
    commit: git::Commit,
    settings: settings::Settings,
    cache_dir: PathBuf,
    /// pip's cache, under `cache_dir`.
    pip_cache: PathBuf,
    /// The build's scratch directory (removed when the build ends).
    work_dir: &'a Path,
    /// `<work_dir>/app`: the tracked files at the commit.
    app_dir: PathBuf,
    /// What the venv is installed from.
    deps: DepPlan,
    /// The dependency file, as the manifest names it.
    dependencies: manifest::Dependencies,
    interpreter: python::Interpreter,
    /// The fresh probe of `interpreter`, when it was remembered from the
    /// last build ([`probes`]).
    pending: std::sync::Mutex<Option<probes::Pending>>,
    installer: python::Installer,
}

/// The venv and wheels of a build, from the cache or built now.
struct Env {
    dir: PathBuf,
    index: EnvIndex,
    /// Taken from the cache (then the static step has not run yet).
    cached: bool,
    /// The venv's and wheels' entries, sorted: they end the artifact.
    tail: Vec<Entry>,
}

impl<'a> Build<'a> {
    /// The commit exported, its settings read and the requirements and the
    /// interpreter checked, before anything is downloaded; the unpinned
    /// requirements (allowed with --allow-unpinned).
    fn start(
        flags: &'a BuildFlags,
        printer: &'a Printer,
        cache_dir: PathBuf,
        work_dir: &'a Path,
        remembered: bool,
        steps: &mut Steps,
    ) -> Result<(Build<'a>, Vec<requirements::Unpinned>)> {
        let source = git::Source::open(&flags.source)?;
        let commit = source.commit(flags.commit.as_deref(), flags.allow_dirty)?;
        let app_dir = work_dir.join("app");
        printer.progress(&format!(
            "building {} at {}{}",
            flags.source.display(),
            &commit.sha[..12],
            if commit.dirty { " (dirty)" } else { "" }
        ));
        source.export(&commit, &app_dir)?;
        let settings = settings::resolve(flags, &app_dir)?;
        steps.done("code");
        // The dependency file, read from the whole commit (before include/exclude).
        let (found, dep_sha256) = dependency_file(&settings, &source, &commit, &app_dir, printer)?;
        let dep_path = app_dir.join(&found.file);
        let is_lock = found.format != lock::Format::Requirements;
        // Both checks come before anything is downloaded.
        let unpinned = if is_lock {
            Vec::new()
        } else {
            requirements::unpinned(&dep_path, &app_dir)?
        };
        if !unpinned.is_empty() && !settings.allow_unpinned {
            return Err(requirements::refusal(&found.file, &unpinned));
        }
        let needs = interpreter::declared(&app_dir, settings.requires_python.as_deref())?;
        let (interpreter, pending) = interpreter::select(
            settings.python.as_deref(),
            &needs,
            printer,
            remembered.then_some(cache_dir.as_path()),
        )?;
        let planned = (|| -> Result<_> {
            let installer = python::choose_installer(settings.installer, &interpreter)?;
            let deps = if is_lock {
                lock_plan(
                    &found,
                    &dep_sha256,
                    &settings,
                    &interpreter,
                    (&source, &commit),
                    &app_dir,
                    work_dir,
                    &cache_dir,
                )?
            } else {
                requirements_plan(&dep_path, &settings, &app_dir)?
            };
            settings::apply_include_exclude(&app_dir, &settings.include, &settings.exclude)?;
            Ok((installer, deps))
        })();
        let (installer, deps) = match planned {
            Ok(planned) => planned,
            // What failed may be the remembered interpreter's doing.
            Err(_) if pending.is_some_and(|p| !p.confirm()) => {
                return Err(Error::InterpreterChanged)
            }
            Err(e) => return Err(e),
        };
        if settings.package {
            printer.progress("pyproject.toml has a [build-system]: the app is built as a wheel and installed into the venv");
        }
        let dependencies = manifest::Dependencies {
            file: found.file.clone(),
            format: found.format.name().to_string(),
            sha256: dep_sha256,
            extras: settings.extras.clone(),
            groups: settings.groups.clone(),
            package: settings.package,
        };
        let build = Build {
            flags,
            printer,
            source,
            commit,
            settings,
            pip_cache: cache_dir.join("pip"),
            cache_dir,
            work_dir,
            app_dir,
            deps,
            dependencies,
            interpreter,
            pending: std::sync::Mutex::new(pending),
            installer,
        };
        Ok((build, unpinned))
    }

    fn wheel_options(&self) -> python::WheelOptions<'_> {
        python::WheelOptions {
            cache_dir: &self.pip_cache,
            find_links: &self.settings.find_links,
            no_index: self.settings.no_index,
            no_deps: self.deps.no_deps,
        }
    }

    /// Unpinned requirements resolve anew on every build, and what they
    /// resolve to keys the cache: an old venv cannot stand in for a new
    /// resolve. Empty when everything is pinned.
    fn resolve_unpinned(
        &self,
        unpinned: &[requirements::Unpinned],
        steps: &mut Steps,
    ) -> Result<Vec<String>> {
        if unpinned.is_empty() {
            return Ok(Vec::new());
        }
        // Resolving asks the index: not for an interpreter that may be wrong.
        self.confirm_interpreter(steps)?;
        self.printer.warn(&format!(
            "{} of the requirements are not pinned (--allow-unpinned): resolving them now; the versions are recorded in the manifest",
            unpinned.len()
        ));
        let (scratch, requirements) = self.export_scratch("resolve")?;
        let resolved = requirements::resolve(
            &self.interpreter,
            &requirements,
            &scratch,
            &self.wheel_options(),
            self.commit.epoch,
        )?;
        fs::remove_dir_all(&scratch)?;
        steps.done("resolve");
        Ok(resolved)
    }

    /// The venv and wheels, from the cache or built now (with the static
    /// step beside the byte-compiling of site-packages).
    fn env(&self, key_input: &str, resolved: Vec<String>, steps: &mut Steps) -> Result<Env> {
        let key = env_key(key_input, &self.interpreter, &self.installer);
        let dir = self.cache_dir.join("envs").join(&key);
        let cached = dir.join("index.json").is_file();
        if cached {
            self.printer
                .progress(&format!("reusing venv {}", dir.display()));
        } else {
            // A venv is built for the interpreter it is keyed by, only.
            self.confirm_interpreter(steps)?;
            self.printer.progress(&format!(
                "installing requirements with {} (cache: {})",
                self.installer.describe(),
                self.cache_dir.display()
            ));
            self.build_env(&dir, steps, |venv| self.run_static_step(venv))?;
        }
        let mut index: EnvIndex = serde_json::from_slice(&fs::read(dir.join("index.json"))?)
            .map_err(|e| SourceError::CorruptCacheEntry {
                dir: dir.clone(),
                reason: e.to_string(),
            })?;
        if cached {
            steps.done("env (cached)");
        }
        if !resolved.is_empty() {
            let wheels = requirements::wheel_pins(&dir.join("wheels"))?;
            if wheels != resolved {
                return Err(SourceError::IndexChanged { resolved, wheels }.into());
            }
        }
        index.resolved = resolved;
        if !self.settings.wheels {
            index
                .entries
                .retain(|e| e.path != "wheels" && !e.path.starts_with("wheels/"));
        }
        let mut tail = index.entries.clone();
        tail.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Env {
            dir,
            index,
            cached,
            tail,
        })
    }

    /// The venv and the wheels end the (sorted) tar stream, and their
    /// entries are known now: for zstd, compress them on a thread of their
    /// own, as the last frame, while the static step and the app's pycs are
    /// made. (A gzip artifact stays one gzip member: some readers stop after
    /// the first.)
    fn write(
        &self,
        env: &Env,
        requirements_sha256: String,
        base: Option<BaseReader>,
        steps: &mut Steps,
    ) -> Result<Written> {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let reused = std::sync::atomic::AtomicBool::new(false);
        let written = std::thread::scope(|scope| -> Result<_> {
            let zst = self.settings.format == Format::Zst;
            let tail = zst.then(|| {
                scope.spawn(|| frame::tail(&env.tail, &env.dir, self.work_dir, &stop, &reused))
            });
            let end = zst.then(|| scope.spawn(|| frame::manifest_end(&env.tail, &env.dir)));
            let join_tail = tail.map(|tail| {
                move || {
                    tail.join()
                        .unwrap_or_else(|_| Err(Error::internal("the archiving thread panicked")))
                }
            });
            let rest =
                self.make_rest_and_write(env, requirements_sha256, base, (join_tail, end), steps);
            if rest.is_err() {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            rest
        })?;
        if reused.load(std::sync::atomic::Ordering::Relaxed) {
            self.printer.progress(
                "the venv and the wheels: their compressed frame came from the build cache",
            );
        }
        Ok(written)
    }

    /// Everything after the env: the static step and the app's pycs, the
    /// manifest, and the artifact, whose venv-and-wheels part `join_tail`
    /// gives (or, without it, is written here), and the end of whose
    /// manifest `end` gives ([`frame::manifest_end`]) when it is zstd.
    fn make_rest_and_write(
        &self,
        env: &Env,
        requirements_sha256: String,
        base: Option<BaseReader>,
        (join_tail, end): (
            Option<impl FnOnce() -> Result<fs::File>>,
            Option<ManifestEndThread<'_>>,
        ),
        steps: &mut Steps,
    ) -> Result<Written> {
        self.static_and_compile(env)?;
        steps.done(if self.settings.static_cmd.is_some() {
            "static + compile"
        } else {
            "compile"
        });
        // Nothing leaves the scratch directory before this.
        self.confirm_interpreter(steps)?;
        let base = base
            .map(|reader| {
                reader.join().unwrap_or_else(|_| {
                    Err(Error::internal("the thread reading --delta-from panicked"))
                })
            })
            .transpose()?;
        let base = base.as_ref();
        let end = end
            .map(|end| {
                end.join().unwrap_or_else(|_| {
                    Err(Error::internal(
                        "the manifest's compressing thread panicked",
                    ))
                })
            })
            .transpose()?;
        let (manifest, manifest_json) = self.manifest(
            env,
            requirements_sha256,
            end.as_ref().map(|e| e.0.as_slice()),
        )?;
        // zstd: the manifest's member is frames of its own, compressed once
        // for the artifact and its delta.
        let frames = end
            .as_ref()
            .map(|(raw, frame)| {
                archive::manifest_frames(
                    &manifest_json,
                    self.commit.epoch,
                    Some((raw.as_slice(), frame.as_slice())),
                )
            })
            .transpose()?;
        let manifest_bytes = || delta::ManifestBytes {
            json: &manifest_json,
            frames: frames.as_ref(),
        };
        steps.done("manifest");
        // The delta (small) is written on a thread of its own, beside the
        // full artifact (its compression and its fsync overlap).
        let write_delta = || -> Result<Option<delta::Written>> {
            let Some(base) = base else {
                return Ok(None);
            };
            let delta = delta::write(
                &self.flags.out,
                &manifest,
                manifest_bytes(),
                base,
                self.settings.format,
                |entry| match entry.path.split('/').next() {
                    Some("venv" | "wheels") => Ok(env.dir.join(&entry.path)),
                    _ => self.source_of(entry),
                },
            )?;
            self.printer.progress(&format!(
                "wrote {} ({} changed files of {}, against {})",
                delta.path.display(),
                delta.files,
                manifest
                    .files
                    .iter()
                    .filter(|e| e.kind == manifest::EntryType::File)
                    .count(),
                base.release
            ));
            Ok(Some(delta))
        };
        let (full, delta) = std::thread::scope(|scope| {
            let delta = scope.spawn(write_delta);
            let full = self.write_artifact(&manifest, manifest_bytes(), env, join_tail);
            let delta = delta
                .join()
                .unwrap_or_else(|_| Err(Error::internal("the delta's thread panicked")));
            (full, delta)
        });
        if let (Err(_), Ok(Some(orphan))) = (&full, &delta) {
            // No delta without the full artifact it stands for.
            let _ = fs::remove_file(&orphan.path);
            let _ = fs::remove_file(format!("{}.sha256", orphan.path.display()));
        }
        let ((artifact, written), delta) = (full?, delta?);
        steps.done(if base.is_some() {
            "archive + delta"
        } else {
            "archive"
        });
        Ok((manifest, artifact, written, delta))
    }

    /// Static files, and beside them the app's pycs: the static step runs
    /// with PYTHONDONTWRITEBYTECODE and compileall replaces each pyc
    /// atomically, so neither sees the other half-done. (A fresh env ran the
    /// static step already.)
    fn static_and_compile(&self, env: &Env) -> Result<()> {
        let venv = &env.dir.join("venv");
        std::thread::scope(|scope| -> Result<()> {
            let compiling = scope.spawn(|| {
                python::compile_with(
                    venv,
                    self.work_dir,
                    std::slice::from_ref(&self.app_dir),
                    self.commit.epoch,
                    python::Jobs::One,
                    &self.settings.env,
                )
            });
            let collected = if env.cached {
                self.run_static_step(venv)
            } else {
                Ok(())
            };
            let compiled = compiling
                .join()
                .unwrap_or_else(|_| Err(Error::internal("the byte-compiling thread panicked")));
            collected.and(compiled)
        })
    }

    /// The manifest, every path sorted, checked as a host would; and its
    /// JSON, whose end is `end` when given (the venv's and the wheels'
    /// entries, [`frame::manifest_end`]).
    fn manifest(
        &self,
        env: &Env,
        requirements_sha256: String,
        end: Option<&[u8]>,
    ) -> Result<(Manifest, Vec<u8>)> {
        let (settings, commit, index) = (&self.settings, &self.commit, &env.index);
        let mut files = scan_tree(&self.app_dir, "app")?;
        files.extend(env.tail.iter().cloned());
        if settings.static_cmd.is_some() {
            files.extend(scan_tree(&self.work_dir.join("static"), "static")?);
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        check_symlinks(&files, &index.base_executable)?;
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
            python: self.interpreter.info(index.base_executable.clone()),
            requirements_sha256,
            // Artifacts built from a requirements file keep the manifest
            // older hosts read; a lock file is named.
            dependencies: (self.dependencies.format != "requirements")
                .then(|| self.dependencies.clone()),
            unpinned: !index.resolved.is_empty(),
            resolved: index.resolved.clone(),
            build_env: settings.env.iter().map(|(k, _)| k.clone()).collect(),
            file_count: files.len() as u64,
            bytes: files.iter().map(Entry::size).sum(),
            tree_sha256: manifest::tree_digest(&files),
            files,
        };
        manifest
            .validate()
            .map_err(|why| BuildError::WouldNotInstall {
                reason: why.to_string(),
            })?;
        let split = manifest.files.len() - env.tail.len();
        let json = match end {
            Some(end) if split > 0 && manifest.files[split..] == *env.tail => {
                manifest.to_json_bytes_ending(split, end)
            }
            _ => manifest.to_json_bytes(),
        };
        if json.len() as u64 > manifest::MAX_MANIFEST_BYTES {
            return Err(BuildError::ManifestTooLarge {
                files: manifest.file_count,
                bytes: json.len(),
                max: manifest::MAX_MANIFEST_BYTES,
            }
            .into());
        }
        Ok((manifest, json))
    }

    /// The archive: written beside its final name, then renamed into place,
    /// with its `.sha256`.
    fn write_artifact(
        &self,
        manifest: &Manifest,
        manifest_bytes: delta::ManifestBytes<'_>,
        env: &Env,
        join_tail: Option<impl FnOnce() -> Result<fs::File>>,
    ) -> Result<(PathBuf, archive::Written)> {
        let out = &self.flags.out;
        fs::create_dir_all(out)?;
        let artifact = out.join(format!(
            "{}-{}.{}",
            manifest.app,
            manifest.release,
            self.settings.format.extension()
        ));
        self.printer
            .progress(&format!("writing {}", artifact.display()));
        let split = manifest.files.len() - env.tail.len();
        if manifest.files[split..] != *env.tail {
            return Err(Error::internal(
                "the venv and wheels are not the end of the sorted file list",
            ));
        }
        let tmp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(out)
            .map_err(|e| fsutil::fs_err_io(e, out))?;
        let (tmp_file, tmp_path) = tmp.into_parts();
        fsutil::set_mode(&tmp_path, 0o644)?;
        let file = fs::File::from_parts(tmp_file, tmp_path.to_path_buf());
        let (format, epoch) = (self.settings.format, self.commit.epoch);
        let head = &manifest.files[..split];
        let about = archive::tar_bytes(head);
        let mut writer = match manifest_bytes.frames {
            Some(head) => {
                let frames: Vec<&[u8]> = head.frames().collect();
                ArtifactWriter::after_frames(file, format, epoch, (&frames, &head.lead), about)?
            }
            None => {
                let mut writer =
                    ArtifactWriter::after_frames(file, format, epoch, (&[], &[]), about)?;
                writer.append_manifest(manifest_bytes.json)?;
                writer
            }
        };
        for entry in head {
            writer.append(entry, &self.source_of(entry)?)?;
        }
        let written = match join_tail {
            Some(join_tail) => {
                let spinner = self.printer.spinner("compressing the venv and the wheels");
                let tail = join_tail()?;
                spinner.finish_and_clear();
                // Synced as it is finished.
                writer.finish_with_tail(tail)?
            }
            None => {
                writer.set_mtime(archive::DEPENDENCY_MTIME);
                for entry in &env.tail {
                    writer.append(entry, &env.dir.join(&entry.path))?;
                }
                let written = writer.finish()?;
                written.file.sync_all()?;
                written
            }
        };
        archive::place_with_checksum(tmp_path, &artifact, &written.sha256)?;
        Ok((artifact, written))
    }

    /// Where an `app/` or `static/` entry's content is on disk.
    fn source_of(&self, entry: &Entry) -> Result<PathBuf> {
        let static_dir = self.work_dir.join("static");
        Ok(match entry.path.split_once('/') {
            Some(("app", rest)) => self.app_dir.join(rest),
            Some(("static", rest)) => static_dir.join(rest),
            _ if entry.path == "app" => self.app_dir.clone(),
            _ if entry.path == "static" => static_dir,
            _ => {
                return Err(Error::internal(format!(
                    "{} sorts before the venv but is not in app/ or static/",
                    entry.path
                )))
            }
        })
    }

    /// Build a cache entry: wheels, venv, relocation, pycs, index. Built
    /// under a temporary name and renamed into place, so a killed build
    /// leaves no half entry and concurrent builds of the same key are
    /// harmless.
    fn build_env(
        &self,
        env_dir: &Path,
        steps: &mut Steps,
        beside_compile: impl FnOnce(&Path) -> Result<()> + Send,
    ) -> Result<()> {
        let envs = env_dir.parent().expect("env dir has a parent");
        fs::create_dir_all(envs)?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(envs)
            .map_err(|e| fsutil::fs_err_io(e, envs))?;
        let wheels = self.build_wheels(tmp.path(), steps)?;
        let venv = tmp.path().join("venv");
        let (interpreter, installer) = (&self.interpreter, &self.installer);
        python::create_venv(
            installer,
            interpreter,
            &venv,
            &wheels,
            Some(&self.cache_dir.join("uv")),
            self.commit.epoch,
        )?;
        steps.done("venv");
        let base_executable = self.relocate(&venv)?;
        steps.done("relocate");
        // checked-hash pycs replace each file atomically, so what runs beside
        // (the static step, which writes no bytecode) never sees half a pyc.
        // A failing static step is the app's error, not the env's: the entry
        // is still finished and kept, and the error reported after that.
        let beside_result = std::thread::scope(|scope| -> Result<Result<()>> {
            let beside = scope.spawn(|| beside_compile(&venv));
            let site = venv.join("lib");
            let compiled = python::compile(&venv, tmp.path(), &[site], self.commit.epoch);
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

    /// A copy of the source at the commit in `<work dir>/<name>`, and the path
    /// of the requirements file inside that copy.
    fn export_scratch(&self, name: &str) -> Result<(PathBuf, PathBuf)> {
        let scratch = self.work_dir.join(name);
        self.source.export(&self.commit, &scratch)?;
        let requirements = &self.deps.requirements;
        let rel = requirements
            .strip_prefix(&self.app_dir)
            .unwrap_or(requirements);
        let in_scratch = scratch.join(rel);
        Ok((scratch, in_scratch))
    }

    /// Every requirement as a wheel in `<dir>/wheels`. Wheels are built from
    /// a scratch copy of the source, so build backends that write into the
    /// source tree (build/, *.egg-info) cannot leak into app/.
    fn build_wheels(&self, dir: &Path, steps: &mut Steps) -> Result<PathBuf> {
        let (scratch, requirements) = self.export_scratch("src")?;
        let wheels = dir.join("wheels");
        fs::create_dir_all(&wheels)?;
        if self.deps.drop_app_lines {
            let text = fs::read_to_string(&requirements)?;
            let kept: Vec<&str> = text.lines().filter(|l| !installs_the_app(l)).collect();
            fs::write(&requirements, kept.join("\n") + "\n")?;
        }
        let opts = self.wheel_options();
        python::build_wheels(
            &self.interpreter,
            &requirements,
            &scratch,
            &wheels,
            &opts,
            self.commit.epoch,
        )?;
        if !self.deps.local.is_empty() {
            let dirs: Vec<PathBuf> = self.deps.local.iter().map(|d| scratch.join(d)).collect();
            python::build_local_wheels(
                &self.interpreter,
                &dirs,
                &scratch,
                &wheels,
                &opts,
                self.commit.epoch,
            )?;
        }
        steps.done("wheels");
        Ok(wheels)
    }

    /// Make the venv relocatable; the base interpreter it links to.
    fn relocate(&self, venv: &Path) -> Result<String> {
        let report = relocate::relocate(venv)?;
        self.printer.progress(&format!(
            "made {} console scripts relocatable",
            report.scripts
        ));
        if !report.leftovers.is_empty() {
            self.printer.warn(&format!(
                "these venv files still mention the build path and may not work after a move: {}",
                report.leftovers.join(", ")
            ));
        }
        base_interpreter_link(venv)
    }

    /// The configured static step, if any, into `<work_dir>/static`.
    fn run_static_step(&self, venv: &Path) -> Result<()> {
        let settings = &self.settings;
        let Some(cmd) = &settings.static_cmd else {
            return Ok(());
        };
        self.printer.progress(&format!("static step: {cmd}"));
        let static_dir = self.work_dir.join("static");
        fs::create_dir_all(&static_dir)?;
        let before = untracked::snapshot(&self.app_dir)?;
        run_static(
            cmd,
            &self.app_dir,
            venv,
            &static_dir,
            self.commit.epoch,
            &settings.env,
        )?;
        untracked::settle(
            &before,
            &self.app_dir,
            &static_dir,
            settings.untracked,
            cmd,
            settings.source,
        )
    }
}

/// Write the venv's and the wheels' members (sorted, as they end the
/// artifact) as a complete compressed tar stream into a file in `work_dir`.
fn write_tail(
    entries: &[Entry],
    env_dir: &Path,
    work_dir: &Path,
    format: Format,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<fs::File> {
    let path = work_dir.join("tail.partial");
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    let mut writer = ArtifactWriter::new(file, format, archive::DEPENDENCY_MTIME)?;
    for entry in entries {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Stopped);
        }
        writer.append(entry, &env_dir.join(&entry.path))?;
    }
    Ok(writer.finish()?.file)
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

/// The dependency file of the build (named, or discovered at the commit),
/// and its sha256; says which it is, and when others were passed over.
fn dependency_file(
    settings: &settings::Settings,
    source: &git::Source,
    commit: &git::Commit,
    app_dir: &Path,
    printer: &Printer,
) -> Result<(lock::Found, String)> {
    let Some(found) = lock::discover(app_dir, settings.requirements.as_deref()) else {
        return Err(LockError::NoDependencyFile {
            dir: source.toplevel.join(&source.prefix),
            commit: commit.sha[..12].to_string(),
            looked_for: lock::DISCOVERY_ORDER.join(", "),
        }
        .into());
    };
    let dep_path = app_dir.join(&found.file);
    if !dep_path.is_file() {
        return Err(SourceError::DependencyFileMissing {
            path: source.toplevel.join(&source.prefix).join(&found.file),
            commit: commit.sha[..12].to_string(),
            kind: found.format.kind(),
        }
        .into());
    }
    let dep_sha256 = lock::file_sha256(&dep_path)?;
    if !found.others.is_empty() {
        printer.progress(&format!(
            "dependencies from {}; {} also present, not used (the first of {} is used; name another with --requirements or `requirements`)",
            found.file,
            found.others.join(", "),
            lock::DISCOVERY_ORDER.join(", ")
        ));
    }
    if printer.verbose > 0 {
        printer.progress(&format!(
            "dependencies from {} (sha256 {dep_sha256}){}{}",
            found.file,
            if settings.extras.is_empty() {
                String::new()
            } else {
                format!(", extras {}", settings.extras.join(" "))
            },
            if settings.groups.is_empty() {
                String::new()
            } else {
                format!(", groups {}", settings.groups.join(" "))
            }
        ));
    }
    if found.format == lock::Format::Requirements
        && (!settings.extras.is_empty() || !settings.groups.is_empty())
    {
        return Err(Error::Usage(format!(
            "extras and groups select from a lock file, but the dependencies come from {} (a requirements file)\n  fix: drop `extras`/`groups` (and --extra/--group), or build from the lock",
            found.file
        )));
    }
    Ok((found, dep_sha256))
}

/// What the venv is installed from: a requirements file for pip (the app's,
/// or one written from a lock), and local directories built as wheels.
struct DepPlan {
    requirements: PathBuf,
    /// The requirements are a complete lock: pip takes no dependencies from metadata.
    no_deps: bool,
    /// Leave lines installing the app itself out of pip's copy.
    drop_app_lines: bool,
    /// Directories (relative to the app, `.` for the app itself) built with `pip wheel --no-deps`.
    local: Vec<String>,
    /// The venv cache key's dependency part (and the manifest's `requirements_sha256`).
    digest: String,
}

/// A requirements file as pip reads it. When the app is a package, it is
/// built from the commit as a wheel, and a line installing the app (`.`,
/// `-e .`) is dropped from the scratch copy pip reads, so pip does not build
/// it twice (or editable).
fn requirements_plan(
    requirements: &Path,
    settings: &settings::Settings,
    app_dir: &Path,
) -> Result<DepPlan> {
    let mut digest = requirements_digest(requirements, app_dir)?;
    let mut local = Vec::new();
    if settings.package {
        digest = package_digest(&digest, app_dir)?;
        local.push(".".to_string());
    }
    Ok(DepPlan {
        requirements: requirements.to_path_buf(),
        no_deps: false,
        drop_app_lines: settings.package,
        local,
        digest,
    })
}

/// Whether a requirements line installs the app itself (`.`, `-e .`).
fn installs_the_app(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let target = match words.as_slice() {
        ["-e" | "--editable", t, ..] => *t,
        [t, ..] => *t,
        [] => return false,
    };
    matches!(target, "." | "./" | "file:." | "file:./")
}

/// A lock file read into exact pins with hashes (uv.lock through `uv
/// export`), checked against pyproject.toml, and written as a requirements
/// file for pip; directory packages and the app are built from the commit.
#[allow(clippy::too_many_arguments)]
fn lock_plan(
    found: &lock::Found,
    dep_sha256: &str,
    settings: &settings::Settings,
    interpreter: &python::Interpreter,
    (source, commit): (&git::Source, &git::Commit),
    app_dir: &Path,
    work_dir: &Path,
    cache_dir: &Path,
) -> Result<DepPlan> {
    let locked = read_lock(
        found,
        settings,
        interpreter,
        (source, commit),
        app_dir,
        work_dir,
        cache_dir,
    )?;
    let text = locked.requirements_text(&found.file);
    let requirements = work_dir.join("locked-requirements.txt");
    fs::write(&requirements, &text)?;
    let selection = [
        found.format.name(),
        dep_sha256,
        &settings.extras.join(","),
        &settings.groups.join(","),
        &text,
    ];
    let (mut digest, mut local) = lock_digest(&found.file, &selection, &locked.dirs, app_dir)?;
    if settings.package {
        digest = package_digest(&digest, app_dir)?;
        local.push(".".to_string());
    }
    Ok(DepPlan {
        requirements,
        no_deps: true,
        drop_app_lines: false,
        local,
        digest,
    })
}

/// The lock read for this interpreter and selection, refused when it does
/// not satisfy pyproject.toml. uv checks its own lock (`--locked`) and reads
/// the project around it, so uv.lock is read from a scratch copy of the
/// commit: nothing uv (or a build backend it runs for metadata) writes
/// reaches app/.
fn read_lock(
    found: &lock::Found,
    settings: &settings::Settings,
    interpreter: &python::Interpreter,
    (source, commit): (&git::Source, &git::Commit),
    app_dir: &Path,
    work_dir: &Path,
    cache_dir: &Path,
) -> Result<lock::Locked> {
    let scratch;
    let lock_path = if found.format == lock::Format::UvLock {
        scratch = work_dir.join("lock");
        source.export(commit, &scratch)?;
        scratch.join(&found.file)
    } else {
        app_dir.join(&found.file)
    };
    let locked = lock::read(&lock::Request {
        path: &lock_path,
        file: &found.file,
        format: found.format,
        interpreter,
        extras: &settings.extras,
        groups: &settings.groups,
        find_links: &settings.find_links,
        no_index: settings.no_index,
        cache_dir: &cache_dir.join("uv"),
        project: lock::project_name(app_dir)?,
    })?;
    if found.format != lock::Format::UvLock {
        let problems = lock::unsatisfied(
            app_dir,
            &locked,
            interpreter,
            &settings.extras,
            &settings.groups,
            found.format,
        )?;
        if !problems.is_empty() {
            return Err(lock::stale(&found.file, found.format, &problems));
        }
    }
    Ok(locked)
}

/// The venv cache key of a lock: the `selection` (format, the file's
/// sha256, extras, groups, the pins as pip reads them) and the files of each
/// directory package, which must be a directory inside the app; and those
/// directories, to build as wheels.
fn lock_digest(
    file: &str,
    selection: &[&str],
    dirs: &[lock::LocalDir],
    app_dir: &Path,
) -> Result<(String, Vec<String>)> {
    let mut hasher = Sha256::new();
    for part in selection {
        hasher.update(part.as_bytes());
        hasher.update(b"\0");
    }
    let mut local = Vec::new();
    for dir in dirs {
        let path = app_dir.join(&dir.path);
        if !path.is_dir() || !path.starts_with(app_dir) || dir.path.split('/').any(|c| c == "..") {
            return Err(LockError::Package {
                file: file.to_string(),
                package: dir.name.clone(),
                problem: PackageProblem::DirectoryOutside {
                    path: dir.path.clone(),
                },
            }
            .into());
        }
        for e in scan_tree(&path, "app")? {
            hasher.update(format!("{}\0{}\0{:?}\0", dir.path, e.path, e.sha256).as_bytes());
        }
        local.push(dir.path.clone());
    }
    Ok((hex::encode(hasher.finalize()), local))
}

/// `digest` extended with the app's files: an app built as a wheel is part
/// of the venv, so its code keys the cache entry too.
fn package_digest(digest: &str, app_dir: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(digest.as_bytes());
    hasher.update(b"\0package\0");
    for e in scan_tree(app_dir, "app")? {
        hasher.update(format!("{}\0{:?}\0{:?}\0", e.path, e.sha256, e.target).as_bytes());
    }
    Ok(hex::encode(hasher.finalize()))
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
