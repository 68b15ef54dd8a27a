//! Errors of the build's inputs: the git checkout, the build settings, the requirements, the build cache.

use std::fmt;
use std::path::PathBuf;

use super::Explain;

#[derive(Debug)]
pub enum SourceError {
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
    /// The dependency file named (--requirements, `requirements`) is not
    /// at the commit.
    DependencyFileMissing {
        path: PathBuf,
        commit: String,
        /// "requirements file" or "lock file".
        kind: &'static str,
    },
    BadProjectConfig {
        path: PathBuf,
        message: String,
    },
    CorruptCacheEntry {
        dir: PathBuf,
        reason: String,
    },
}

impl Explain for SourceError {
    fn what(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SourceError::*;
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
            DependencyFileMissing { path, commit, kind } => write!(
                f,
                "{kind} {} does not exist at commit {commit}",
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
        }
    }

    fn fix(&self) -> Option<String> {
        use SourceError::*;
        let fix = match self {
            Unpinned { .. } => "pin each one with == (e.g. `pip freeze` in a venv where the app works, or `pip-compile` / `uv pip compile` into a lock file named by `requirements`), or pass --allow-unpinned to build anyway (the versions resolved are then recorded in the manifest)".into(),
            SettingsTwice { .. } => "keep them in one of the two".into(),
            IndexChanged { .. } => "build again (better: pin the requirements)".into(),
            NotGitRepo { .. } => "run `release build` from a git checkout, or pass --source DIR pointing at one".into(),
            SourceMissing { .. } => "pass --source DIR pointing at the app's checkout".into(),
            GitNotRunnable { .. } => "install git and make sure it is on PATH".into(),
            UnknownCommit { .. } => {
                "pass a commit that exists (`git log` lists them), or fetch it first".into()
            }
            CommitTimeUnreadable { .. } => "check the repository with `git fsck`".into(),
            DirtyTree { .. } => "commit or stash them, or pass --allow-dirty to build the working tree as it is (recorded in the manifest)".into(),
            DependencyFileMissing { .. } => "commit it, or name the right file with --requirements FILE or `requirements` under [tool.release] in pyproject.toml".into(),
            BadProjectConfig { .. } => return None,
            CorruptCacheEntry { .. } => "delete that directory and build again".into(),
        };
        Some(fix)
    }
}
