//! `release install`: the interpreter plan, space, shared paths, recreating a venv.

use std::fmt;
use std::path::PathBuf;

use super::Error;
use super::Explain;

const PRUNE: &str = "remove old releases with `release prune --keep N`";

#[derive(Debug)]
pub struct DeltaBaseMissing {
    pub artifact: PathBuf,
    pub release: String,
    pub base_release: String,
    pub base_commit: String,
    /// The name of the full artifact to install instead.
    pub full: String,
}

#[derive(Debug)]
pub struct DeltaBaseChanged {
    pub artifact: PathBuf,
    /// The installed base release's id.
    pub base: String,
    pub path: String,
    pub why: BaseFileProblem,
    /// The name of the full artifact to install instead.
    pub full: String,
}

/// Why a file a delta takes from its installed base release (or that
/// release's manifest or install record) cannot be taken.
#[derive(Debug)]
pub enum BaseFileProblem {
    Unreadable(std::io::Error),
    /// The base release's install record could not be read.
    RecordUnreadable(Box<Error>),
    NotAManifest(crate::manifest::Invalid),
    /// The base's manifest names another commit or tree.
    NotTheBase,
    /// The host installed the path otherwise (shared path, `--python`,
    /// `--rebuild-venv`), as its install record says.
    InstalledDifferently,
    NotAFile,
    ModeChanged {
        mode: u32,
        installed: u32,
    },
    SizeChanged {
        size: u64,
        manifest: u64,
    },
    /// Reading its content failed part way.
    ReadFailed(std::io::Error),
    ContentChanged {
        sha256: String,
        manifest: String,
    },
    /// The thread hashing it panicked.
    HashPanicked,
}

impl fmt::Display for BaseFileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use BaseFileProblem::*;
        match self {
            Unreadable(e) => write!(f, "it cannot be read: {e}"),
            RecordUnreadable(e) => write!(f, "it cannot be read: {e}"),
            NotAManifest(e) => write!(f, "it is not a valid manifest: {e}"),
            NotTheBase => f.write_str("it is not the manifest of the base release"),
            InstalledDifferently => f.write_str(
                "this host installed it differently on purpose (a shared path, --python or --rebuild-venv)",
            ),
            NotAFile => f.write_str("it is no longer a regular file"),
            ModeChanged { mode, installed } => write!(
                f,
                "it was changed on this host (mode {mode:04o}, installed {installed:04o})"
            ),
            SizeChanged { size, manifest } => write!(
                f,
                "it was changed on this host ({size} bytes, the manifest lists {manifest})"
            ),
            ReadFailed(e) => write!(f, "it was changed on this host: {e}"),
            ContentChanged { sha256, manifest } => write!(
                f,
                "it was changed on this host (its content has sha256 {sha256}, the manifest lists {manifest})"
            ),
            HashPanicked => f.write_str("the thread hashing it panicked"),
        }
    }
}

/// What is free on a full filesystem, when it could be read.
fn free_now(free_mib: Option<u64>) -> String {
    match free_mib {
        Some(free) => format!("{free} MiB are free now"),
        None => "free space unknown".to_string(),
    }
}

impl DeltaBaseMissing {
    fn what(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is a delta: it installs release {} only next to release {} (commit {}), which is not installed here",
            self.artifact.display(),
            self.release,
            self.base_release,
            self.base_commit
        )
    }
}

impl DeltaBaseChanged {
    fn what(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: the delta takes {} from installed release {}, but {}",
            self.artifact.display(),
            self.path,
            self.base,
            self.why
        )
    }
}

#[derive(Debug)]
pub enum InstallError {
    /// `--rebuild-venv` for an artifact built with `wheels = false`.
    NoWheels {
        release: String,
        need: String,
        at: String,
    },
    InterpreterMissing {
        release: String,
        need: String,
        at: String,
        problem: String,
    },
    PythonFlagUnusable {
        python: PathBuf,
        why: String,
        need: String,
    },
    PythonFlagMismatch {
        python: PathBuf,
        diff: String,
        release: String,
        need: String,
    },
    RebuildInterpreterUnusable {
        python: PathBuf,
        why: String,
        need: String,
    },
    RebuildFailed {
        release: String,
        python: PathBuf,
        need: String,
        built_with: String,
        error: Box<Error>,
    },
    NoSpace(Box<NoSpace>),
    NoInodes {
        release: String,
        dir: PathBuf,
        need: u64,
        free: u64,
    },
    DiskFull {
        dir: PathBuf,
        error: std::io::Error,
        release: String,
        need_mib: u64,
        free_mib: Option<u64>,
    },
    /// A delta artifact whose base release is not installed (complete) here.
    DeltaBaseMissing(Box<DeltaBaseMissing>),
    /// A file a delta takes from its base release is not, on this host,
    /// what the new manifest lists.
    DeltaBaseChanged(Box<DeltaBaseChanged>),
    SharedParentNotADirectory {
        path: String,
        parent: String,
        config: PathBuf,
    },
}

/// The filesystem of releases/ cannot hold a release.
#[derive(Debug)]
pub struct NoSpace {
    pub artifact: PathBuf,
    pub release: String,
    pub dir: PathBuf,
    pub need_mib: u64,
    pub available_mib: u64,
    /// The largest file and its MiB.
    pub largest: Option<(String, u64)>,
    /// The whole filesystem's MiB, when the release needs more than that.
    pub larger_than_fs: Option<u64>,
}

impl NoSpace {
    fn what(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: not enough free space for release {} under {}: it needs about {} MiB",
            self.artifact.display(),
            self.release,
            self.dir.display(),
            self.need_mib
        )?;
        if let Some((path, mib)) = &self.largest {
            write!(
                f,
                " (its largest file, `{}`, is {mib} MiB)",
                path.escape_debug()
            )?;
        }
        write!(f, ", {} MiB are available", self.available_mib)
    }
}

impl Explain for InstallError {
    fn what(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use InstallError::*;
        match self {
            DeltaBaseMissing(m) => m.what(f),
            DeltaBaseChanged(c) => c.what(f),
            NoWheels { release, .. } => write!(
                f,
                "--rebuild-venv: release {release} carries no wheels/ (it was built with `wheels = false`), so its venv cannot be recreated on this host"
            ),
            InterpreterMissing {
                release,
                need,
                at,
                problem,
            } => write!(f, "release {release} needs {need} at {at}, but {problem}"),
            PythonFlagUnusable { python, why, .. } => {
                write!(f, "--python {}: {why}", python.display())
            }
            PythonFlagMismatch {
                python,
                diff,
                release,
                need,
            } => write!(
                f,
                "--python {} is {diff}, but release {release} needs {need}",
                python.display()
            ),
            RebuildInterpreterUnusable { python, why, .. } => write!(
                f,
                "--rebuild-venv: the interpreter {}: {why}",
                python.display()
            ),
            RebuildFailed {
                release,
                python,
                error,
                ..
            } => write!(
                f,
                "recreating the venv of {release} with {} failed: {error}",
                python.display()
            ),
            NoSpace(no_space) => no_space.what(f),
            NoInodes {
                release,
                dir,
                need,
                free,
            } => write!(
                f,
                "not enough free inodes for release {release} under {}: it needs {need}, {free} are free",
                dir.display()
            ),
            DiskFull {
                dir,
                error,
                release,
                need_mib,
                free_mib,
            } => write!(
                f,
                "the filesystem of {} is full ({error}): release {release} needs about {need_mib} MiB, {}; the partial copy was removed and nothing was installed",
                dir.display(),
                free_now(*free_mib)
            ),
            SharedParentNotADirectory {
                path,
                parent,
                ..
            } => write!(
                f,
                "shared path {path:?} (release.toml): `{parent}` in the release is not a directory, so {path} cannot be linked"
            ),
        }
    }

    fn outcome(&self) -> Option<&'static str> {
        use InstallError::*;
        match self {
            RebuildFailed { .. }
            | NoSpace(_)
            | NoWheels { .. }
            | DeltaBaseMissing(_)
            | DeltaBaseChanged(_) => Some("nothing was installed"),
            _ => None,
        }
    }

    fn fix(&self) -> Option<String> {
        use InstallError::*;
        let fix = match self {
            DeltaBaseMissing(m) => format!("install the full artifact ({}) instead", m.full),
            DeltaBaseChanged(c) => format!(
                "install the full artifact ({}) instead; `release verify {}` lists what changed in {}",
                c.full, c.base, c.base
            ),
            NoWheels { need, at, .. } => format!(
                "install {need} at {at} and install without --rebuild-venv, or pass --python PATH alone to re-point the venv to a matching interpreter, or rebuild the artifact with its wheels (the default)"
            ),
            InterpreterMissing { need, .. } => format!(
                "install that interpreter there, or pass --python PATH naming a matching {need} interpreter on this host (the venv is re-pointed to it), or --rebuild-venv to recreate the venv offline from the release's wheels"
            ),
            PythonFlagUnusable { need, .. } => format!("pass the path of a {need} interpreter"),
            PythonFlagMismatch { .. } => "pass a matching interpreter, or use --rebuild-venv to recreate the venv from the release's wheels".into(),
            RebuildInterpreterUnusable { need, .. } => {
                format!("pass --python PATH naming a {need} interpreter")
            }
            RebuildFailed {
                need, built_with, ..
            } => format!(
                "use an interpreter the release's wheels/ fit ({need}), or install the one it was built with ({built_with}) and drop --rebuild-venv"
            ),
            NoSpace(no_space) => match no_space.larger_than_fs {
                Some(whole) => format!(
                    "it needs more than the whole filesystem holds ({whole} MiB), so no prune can make room: give releases/ a larger filesystem; if the release cannot really be this large, do not trust this artifact and rebuild it with `release build`"
                ),
                None => format!("free space, e.g. {PRUNE}"),
            },
            NoInodes { .. } => PRUNE.into(),
            DiskFull { .. } => format!(
                "free space on that filesystem, e.g. {PRUNE}, then install again"
            ),
            SharedParentNotADirectory { config, .. } => {
                format!("change `shared` in {}", config.display())
            }
        };
        Some(fix)
    }
}
