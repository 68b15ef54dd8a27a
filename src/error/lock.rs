//! Errors of the app's dependency file: finding it, reading a lock, a stale
//! lock, a file whose hash the lock does not allow.

use std::fmt;
use std::path::PathBuf;

use super::Explain;

const RELOCK: &str = "lock again with a current tool and commit the file as it wrote it";

#[derive(Debug)]
pub enum LockError {
    /// Nothing named and none of the discovery order at the commit.
    NoDependencyFile {
        dir: PathBuf,
        commit: String,
        looked_for: String,
    },
    /// Not the TOML (or the shape) of its format.
    NotALock {
        file: String,
        why: String,
    },
    /// A PEP 751 lock of a version this release does not read.
    PylockVersion {
        file: String,
        version: String,
    },
    /// A poetry.lock from Poetry 1 (format < 2.1).
    OldPoetryLock {
        file: String,
        version: String,
    },
    /// A package the lock names that the build cannot take as locked.
    Package {
        file: String,
        package: String,
        problem: PackageProblem,
    },
    /// An extra or group the lock does not offer.
    NoSuchSelection {
        file: String,
        /// "extra" or "dependency group".
        what: &'static str,
        name: String,
        offered: Vec<String>,
        /// The fix, which depends on the lock's tool.
        fix: String,
    },
    /// The lock's requires-python excludes the build interpreter.
    WrongPython {
        file: String,
        spec: String,
        version: String,
        executable: PathBuf,
    },
    /// The lock's environments exclude the build interpreter.
    NotForThisPlatform {
        file: String,
        environments: String,
        version: String,
        platform: String,
    },
    UvMissing {
        file: String,
    },
    /// `uv export --locked` says the lock needs updating.
    UvStale {
        file: String,
        says: String,
    },
    /// pyproject.toml asks for what the lock does not hold.
    Stale {
        file: String,
        fix: String,
        problems: Vec<String>,
    },
    /// pip refused files whose hashes the lock (or hashed requirements) do not allow.
    HashMismatch {
        packages: Vec<String>,
    },
}

impl Explain for LockError {
    fn what(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use LockError::*;
        match self {
            NoDependencyFile {
                dir,
                commit,
                looked_for,
            } => write!(
                f,
                "no dependency file in {} at commit {commit}: looked for {looked_for}",
                dir.display()
            ),
            NotALock { file, why } => write!(f, "{file} is not a valid lock file: {why}"),
            PylockVersion { file, version } => write!(
                f,
                "{file} has lock-version {version}; this release reads PEP 751 version 1"
            ),
            OldPoetryLock { file, version } => write!(
                f,
                "{file} has lock-version {version}, written by Poetry before 2.0, which does not record the group and markers of each package"
            ),
            Package {
                file,
                package,
                problem,
            } => problem.describe(file, package, f),
            NoSuchSelection {
                file,
                what,
                name,
                offered,
                ..
            } => write!(
                f,
                "{file} offers no {what} {name:?} (it offers: {})",
                list_or_none(offered)
            ),
            WrongPython {
                file,
                spec,
                version,
                executable,
            } => write!(
                f,
                "{file} is for Python {spec}; this build uses Python {version} at {}",
                executable.display()
            ),
            NotForThisPlatform {
                file,
                environments,
                version,
                platform,
            } => write!(
                f,
                "{file} is locked for {environments} only, which this build's Python {version} on {platform} is not"
            ),
            UvMissing { file } => write!(
                f,
                "{file} is uv's lock format, which only uv reads, and `uv` is not on PATH"
            ),
            UvStale { file, says } => write!(
                f,
                "{file} is out of date: pyproject.toml asks for something the lock does not hold (uv: {says})"
            ),
            Stale {
                file, problems, ..
            } => write!(
                f,
                "{file} does not satisfy pyproject.toml for this build, so it is out of date: {}",
                problems.join("; ")
            ),
            HashMismatch { packages } => write!(
                f,
                "refused: the file downloaded for {} does not have a hash the lock allows; it may have been replaced, or the lock is wrong",
                packages.join(", ")
            ),
        }
    }

    fn outcome(&self) -> Option<&'static str> {
        match self {
            LockError::HashMismatch { .. } => Some("nothing was installed"),
            _ => None,
        }
    }

    fn fix(&self) -> Option<String> {
        use LockError::*;
        Some(match self {
            NoDependencyFile { .. } => "commit the lock file the app uses (`uv lock`, `poetry lock`, `uv export --format pylock.toml -o pylock.toml`, or `pip-compile --generate-hashes`), or name it with --requirements FILE or `requirements` under [tool.release]".into(),
            NotALock { .. } => RELOCK.into(),
            Package { problem, .. } => problem.fix().into(),
            PylockVersion { .. } => "export the lock in version 1 (`uv export --format pylock.toml`), or upgrade release".into(),
            OldPoetryLock { .. } => "run `poetry lock` with Poetry 2 and commit poetry.lock, or export it (`poetry export --format requirements.txt -o requirements.txt`, with poetry-plugin-export) and name that file with `requirements`".into(),
            NoSuchSelection { fix, .. } => fix.clone(),
            WrongPython { .. } => "build with an interpreter the lock covers (--python, or `python` under [tool.release]), or lock for this one".into(),
            NotForThisPlatform { .. } => "lock for this platform too, or build on one the lock covers".into(),
            UvMissing { .. } => "install uv on the build machine (`pip install uv`), or commit a pylock.toml exported from the lock (`uv export --format pylock.toml -o pylock.toml`) and build from that".into(),
            UvStale { .. } => "run `uv lock` and commit uv.lock; the build never re-resolves on its own".into(),
            Stale { fix, .. } => format!("{fix}; the build never re-resolves on its own"),
            HashMismatch { .. } => "find out why the wheel source (--find-links, the index) serves a different file; if the new file is the right one, lock again and commit the lock".into(),
        })
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// What is wrong with one package of a lock.
#[derive(Debug)]
pub enum PackageProblem {
    /// Its environment marker does not parse.
    BadMarker { marker: String, why: String },
    /// No file hashes: what is downloaded could not be checked.
    NoHashes,
    /// Two versions for this interpreter.
    LockedTwice { first: String, second: String },
    /// From a VCS repository or a URL archive (`source` says which).
    Unpinnable { source: String },
    /// A directory package that is not a directory inside the app.
    DirectoryOutside { path: String },
}

impl PackageProblem {
    /// What is wrong with `package` of lock `file`.
    fn describe(&self, file: &str, package: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use PackageProblem::*;
        write!(f, "{file}: ")?;
        match self {
            BadMarker { marker, why } => write!(
                f,
                "the marker of {package} ({marker}) cannot be read: {why}"
            ),
            NoHashes => write!(
                f,
                "{package} has no file hashes, so what is downloaded could not be checked"
            ),
            LockedTwice { first, second } => write!(
                f,
                "{package} is locked twice for this interpreter ({first} and {second})"
            ),
            Unpinnable { source } => write!(
                f,
                "{package} comes from a {source}, which release cannot check by version and hash"
            ),
            DirectoryOutside { path } => write!(
                f,
                "{package} is a directory package at {path}, which is not a directory inside the app at this commit"
            ),
        }
    }

    fn fix(&self) -> &'static str {
        use PackageProblem::*;
        match self {
            BadMarker { .. } => RELOCK,
            NoHashes => "lock again with a tool that records hashes (uv, pip lock, Poetry), and commit the lock",
            LockedTwice { .. } => "lock again; a lock names one version of a package for each environment",
            Unpinnable { .. } => "publish it to an index (or a --find-links directory) and lock that version",
            DirectoryOutside { .. } => "commit the package inside the app, or publish it and lock a version",
        }
    }
}
