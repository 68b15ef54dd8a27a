//! The build: the source checkout, its settings, and what the build makes of the tree.

use std::fmt;
use std::path::PathBuf;

use super::Explain;

const EXCLUDE: &str =
    "leave generated or vendored trees out of the artifact with `exclude` in [tool.release]";

#[derive(Debug)]
pub enum BuildError {
    /// Unpinned requirements, refused; `lines` names a few of them.
    Unpinned {
        requirements: String,
        count: usize,
        lines: Vec<String>,
    },
    /// Both release.build.toml and [tool.release] hold settings.
    SettingsTwice {
        path: PathBuf,
    },
    /// The static step wrote untracked files into app/.
    StaticWroteIntoApp {
        command: String,
        count: usize,
        named: Vec<String>,
        place: String,
        /// Where `untracked = "move-to-static"` could be set, when the
        /// files are in one directory.
        settings: Option<String>,
    },
    StaticMoveClash {
        path: PathBuf,
    },
    /// Unpinned requirements resolved to other wheels than were built.
    IndexChanged {
        resolved: Vec<String>,
        wheels: Vec<String>,
    },
    NotGitRepo {
        path: PathBuf,
    },
    SourceMissing {
        dir: PathBuf,
    },
    GitNotRunnable {
        purpose: &'static str,
        error: String,
    },
    UnknownCommit {
        rev: String,
        repo: PathBuf,
    },
    CommitTimeUnreadable {
        commit: String,
    },
    DirtyTree {
        path: PathBuf,
        files: String,
    },
    RequirementsMissing {
        path: PathBuf,
        commit: String,
    },
    BadProjectConfig {
        path: PathBuf,
        message: String,
    },
    CorruptCacheEntry {
        dir: PathBuf,
        reason: String,
    },
    StaticFailed {
        command: String,
        status: String,
        tail: String,
    },
    /// A file of the tree cannot go into an artifact.
    Unpackable {
        path: PathBuf,
        why: Unpackable,
    },
    LinkLeavesRelease {
        path: String,
        target: String,
    },
    /// The manifest the build made would be refused by a host.
    WouldNotInstall {
        reason: String,
    },
    ManifestTooLarge {
        files: u64,
        bytes: usize,
        max: u64,
    },
    /// PATH cannot hold the venv's bin directory.
    BadPathList {
        error: String,
    },
}

/// Why a file cannot go into an artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unpackable {
    NameNotUtf8,
    BadPath(&'static str),
    NotAFileDirOrLink,
}

impl Explain for BuildError {
    fn what(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use BuildError::*;
        match self {
            Unpinned {
                requirements,
                count,
                lines,
            } => write!(
                f,
                "{requirements} does not pin every requirement to one version, so the same commit could build different bytes tomorrow; {count} not pinned:\n{}",
                lines.join("\n")
            ),
            SettingsTwice { path } => write!(
                f,
                "{}: invalid build settings: the settings are in two places, here and under [tool.release] in pyproject.toml",
                path.display()
            ),
            StaticWroteIntoApp {
                command,
                count,
                named,
                place,
                ..
            } => write!(
                f,
                "the static step `{command}` wrote {} that git does not track into {place} instead of $STATIC_ROOT (they would ship in app/, and static/ would stay empty):\n{}",
                if *count == 1 {
                    "1 file".to_string()
                } else {
                    format!("{count} files")
                },
                named.join("\n")
            ),
            StaticMoveClash { path } => write!(
                f,
                "moving the static step's files into static/: {} exists there too",
                path.display()
            ),
            IndexChanged { resolved, wheels } => write!(
                f,
                "the unpinned requirements resolved to {} but the wheels built are {}: the index changed during the build",
                resolved.join(" "),
                wheels.join(" ")
            ),
            NotGitRepo { path } => write!(f, "{} is not inside a git repository", path.display()),
            SourceMissing { dir } => {
                write!(f, "source directory {} does not exist", dir.display())
            }
            GitNotRunnable { purpose, error } => {
                write!(f, "cannot run git ({error}) for {purpose}")
            }
            UnknownCommit { rev, repo } => {
                write!(f, "commit `{rev}` not found in {}", repo.display())
            }
            CommitTimeUnreadable { commit } => write!(f, "cannot read the time of commit {commit}"),
            DirtyTree { path, files } => write!(
                f,
                "the working tree at {} has uncommitted changes to tracked files:\n{files}",
                path.display()
            ),
            RequirementsMissing { path, commit } => write!(
                f,
                "requirements file {} does not exist at commit {commit}",
                path.display()
            ),
            BadProjectConfig { path, message } => write!(
                f,
                "{}: invalid build settings: {message}",
                path.display()
            ),
            CorruptCacheEntry { dir, reason } => {
                write!(f, "{}: corrupt build cache entry ({reason})", dir.display())
            }
            StaticFailed {
                command,
                status,
                tail,
            } => write!(
                f,
                "static step `{command}` failed ({status}); last lines of its output:\n{tail}"
            ),
            Unpackable { path, why } => {
                let path = path.display();
                match why {
                    self::Unpackable::NameNotUtf8 => write!(f, "{path}: file name is not UTF-8"),
                    self::Unpackable::BadPath(why) => {
                        write!(f, "{path}: cannot go into an artifact ({why})")
                    }
                    self::Unpackable::NotAFileDirOrLink => {
                        write!(f, "{path}: not a regular file, directory or symlink")
                    }
                }
            }
            LinkLeavesRelease { path, target } => write!(
                f,
                "{path}: symlink to {target} leaves the release; the host would refuse it"
            ),
            WouldNotInstall { reason } => write!(f, "the release would not install: {reason}"),
            ManifestTooLarge { files, bytes, max } => write!(
                f,
                "the manifest of {files} files is {bytes} bytes, more than the {max} a host reads"
            ),
            BadPathList { error } => write!(f, "cannot put the venv's bin/ on PATH: {error}"),
        }
    }

    fn fix(&self) -> Option<String> {
        use BuildError::*;
        let fix = match self {
            Unpinned { .. } => "pin each one with == (e.g. `pip freeze` in a venv where the app works, or `pip-compile` / `uv pip compile` into a lock file named by `requirements`), or pass --allow-unpinned to build anyway (the versions resolved are then recorded in the manifest)".into(),
            SettingsTwice { .. } => "keep them in one of the two".into(),
            StaticWroteIntoApp { settings, .. } => {
                let mut fix = "make the app's settings read STATIC_ROOT from the environment, e.g. `STATIC_ROOT = os.environ.get(\"STATIC_ROOT\", <the path it has now>)` (README: \"Static files\")".to_string();
                if let Some(settings) = settings {
                    fix.push_str(&format!(", or set `untracked = \"move-to-static\"` in {settings} to move them into static/"));
                }
                fix
            }
            StaticMoveClash { .. } => "make the app's settings read STATIC_ROOT from the environment (README: \"Static files\")".into(),
            IndexChanged { .. } => "build again (better: pin the requirements)".into(),
            BadProjectConfig { .. } => return None,
            NotGitRepo { .. } => "run `release build` from a git checkout, or pass --source DIR pointing at one".into(),
            SourceMissing { .. } => "pass --source DIR pointing at the app's checkout".into(),
            GitNotRunnable { .. } => "install git and make sure it is on PATH".into(),
            UnknownCommit { .. } => {
                "pass a commit that exists (`git log` lists them), or fetch it first".into()
            }
            CommitTimeUnreadable { .. } => "check the repository with `git fsck`".into(),
            DirtyTree { .. } => "commit or stash them, or pass --allow-dirty to build the working tree as it is (recorded in the manifest)".into(),
            RequirementsMissing { .. } => "commit it, or name the right file with --requirements FILE or `requirements` under [tool.release] in pyproject.toml".into(),
            CorruptCacheEntry { .. } => "delete that directory and build again".into(),
            StaticFailed { .. } => "run the command yourself in the app directory with STATIC_ROOT set, or change `static` under [tool.release]".into(),
            Unpackable { why, .. } => match why {
                self::Unpackable::NameNotUtf8 => "rename it".into(),
                self::Unpackable::BadPath(_) => "rename or exclude it".into(),
                self::Unpackable::NotAFileDirOrLink => "remove it from the tree".into(),
            },
            LinkLeavesRelease { .. } => {
                "make it a relative link inside the tree, or exclude it".into()
            }
            WouldNotInstall { .. } => EXCLUDE.into(),
            ManifestTooLarge { .. } => EXCLUDE.into(),
            BadPathList { .. } => "build in a directory whose path has no `:`".into(),
        };
        Some(fix)
    }
}
