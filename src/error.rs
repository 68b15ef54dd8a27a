//! Typed errors. Every variant names the thing that went wrong and what to do
//! next; the exit code of each variant is decided in one place, [`Error::exit_code`].

use std::path::PathBuf;

use crate::exit_codes::ExitCode;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error; `fs_err` already names the path in the message.
    #[error("{0}")]
    Io(#[from] std::io::Error),

    #[error("{path} is not inside a git repository\n  fix: run `release build` from a git checkout, or pass --source DIR pointing at one")]
    NotGitRepo { path: PathBuf },

    #[error("commit `{rev}` not found in {repo}\n  fix: pass a commit that exists (`git log` lists them), or fetch it first")]
    UnknownCommit { rev: String, repo: PathBuf },

    #[error("the working tree at {path} has uncommitted changes to tracked files:\n{files}\n  fix: commit or stash them, or pass --allow-dirty to build the working tree as it is (recorded in the manifest)")]
    DirtyTree { path: PathBuf, files: String },

    #[error("requirements file {path} does not exist at commit {commit}\n  fix: commit it, or name the right file with --requirements FILE or `requirements` under [tool.release] in pyproject.toml")]
    RequirementsMissing { path: PathBuf, commit: String },

    #[error("Python interpreter `{python}` not found{detail}\n  fix: install it, or pass --python /path/to/python3.X (or set `python` under [tool.release])")]
    InterpreterNotFound { python: String, detail: String },

    #[error("requirement `{requirement}` failed to build or download:\n{tail}\n  fix: pin a version that has a wheel for this interpreter, make its build dependencies available (--find-links), or fix the package")]
    RequirementFailed { requirement: String, tail: String },

    #[error("{tool} failed: `{command}` exited with {status}:\n{tail}")]
    ToolFailed {
        tool: String,
        command: String,
        status: String,
        tail: String,
    },

    #[error("static step `{command}` failed ({status}); last lines of its output:\n{tail}\n  fix: run the command yourself in the app directory with STATIC_ROOT set, or change `static` under [tool.release]")]
    StaticFailed {
        command: String,
        status: String,
        tail: String,
    },

    #[error("{path}: invalid build settings: {message}")]
    BadProjectConfig { path: PathBuf, message: String },

    #[error("{path}: not a release artifact: {reason}\n  fix: pass a .tar.zst or .tar.gz written by `release build`")]
    NotAnArtifact { path: PathBuf, reason: String },

    #[error("{path}: bad manifest (release.json): {reason}\n  fix: use the artifact as `release build` wrote it (a manifest is never edited by hand), or check where this file came from")]
    BadManifest { path: PathBuf, reason: String },

    #[error("{path}: {message}")]
    FileChanged { path: PathBuf, message: String },

    /// Another command holds the host root's lock (exit 4).
    #[error("{lock}: another `release` command{holder} holds the lock on this root\n  fix: wait for it to finish and run this again, or pass --wait SECS to wait for it")]
    Locked { lock: PathBuf, holder: String },

    /// Activation switched `current`, then failed; the previous release was
    /// switched back (exit 3).
    #[error("activating {release} failed after the switch: {reason}\n  {restored}\n  fix: {fix}")]
    ActivationFailed {
        release: String,
        reason: String,
        restored: String,
        fix: String,
    },

    /// An archive entry breaks a safety rule or differs from the manifest.
    #[error("{artifact}: entry `{entry}` refused: {rule}\n  nothing was installed; fix: rebuild the artifact with `release build` (never edit an artifact by hand), or check where this file came from")]
    UnsafeEntry {
        artifact: PathBuf,
        entry: String,
        rule: String,
    },

    /// Anything else that failed and changed nothing; the message says what to do.
    #[error("{0}")]
    Failed(String),

    /// Bad command-line usage detected after parsing.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_) => ExitCode::Usage,
            Error::Locked { .. } => ExitCode::Locked,
            Error::ActivationFailed { .. } => ExitCode::RolledBack,
            _ => ExitCode::Failed,
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Error::Failed(message.into())
    }
}

/// The last `lines` lines of a command's output, indented for an error message.
pub fn tail(output: &str, lines: usize) -> String {
    let all: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = all.len().saturating_sub(lines);
    all[start..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
