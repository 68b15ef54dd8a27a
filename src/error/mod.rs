//! Typed errors, one file per concern. Every variant carries the data of what
//! went wrong (paths, release ids, pids, the step that failed) and nothing
//! pre-written. Each concern's type says, through [`Explain`], what happened,
//! what that left when it needs saying, and the fix; [`render`] turns those
//! into the message, in one place, so every message has the same shape:
//!
//! ```text
//! <what happened, naming the thing>
//!   [<what it left>; ]fix: <what to do next>
//! ```
//!
//! The exit code of each error is decided in one place too, [`Error::exit_code`].

mod activate;
mod artifact;
mod build;
mod fetch;
mod install;
mod lock;
mod python;
mod release;
mod reload;
mod root;
mod signature;
mod source;

use std::fmt;

use crate::exit_codes::ExitCode;

pub use activate::{
    ActivateError, CheckFailed, FailedStep, Restored, ServicesCause, ServicesFailure,
};
pub use artifact::{ArtifactError, DeltaHeaderProblem, HeaderRefused, UnsafeRule};
pub use build::{BuildError, Unpackable};
pub use fetch::{Cause, Doing, DownloadFailure, FetchError};
pub use install::{BaseFileProblem, DeltaBaseChanged, DeltaBaseMissing, InstallError, NoSpace};
pub use lock::{LockError, PackageProblem};
pub use python::PythonError;
pub use release::{NoCurrentFor, ReleaseError};
pub use reload::{HealthAnswer, HealthError, ReloadError, ReloadProblem, StartSeen};
pub use root::{ForeignCurrentFor, RootError};
pub use signature::{KeyProblem, Refusal, SignatureError};
pub use source::SourceError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

// `Error` is written by the `error_enum!` invocation below, which lists each
// concern once: its variant, its `From`, its `Display` and its place in
// `Error::explained`.
macro_rules! error_enum {
    ($($(#[$doc:meta])* $variant:ident($ty:ty)),* $(,)?) => {
        #[derive(Debug)]
        pub enum Error {
            /// An I/O error; `fs_err` already names the path in the message.
            Io(std::io::Error),
            /// Bad command-line usage detected after parsing.
            Usage(String),
            /// A bug: an invariant of this program did not hold (or a worker
            /// thread panicked). Never caused by input.
            Internal {
                what: String,
            },
            /// A step stopped because another one running beside it failed
            /// (whose error is the one reported).
            Stopped,
            /// The interpreter a build went on with, remembered from the
            /// last build, is not the one its name runs now: the build
            /// starts again (`build::run` never returns this).
            InterpreterChanged,
            $($(#[$doc])* $variant($ty),)*
        }

        impl Error {
            /// The concern's error, when there is one.
            fn explained(&self) -> Option<&dyn Explain> {
                match self {
                    $(Error::$variant(e) => Some(e),)*
                    Error::Io(_)
                    | Error::Usage(_)
                    | Error::Internal { .. }
                    | Error::Stopped
                    | Error::InterpreterChanged => {
                        None
                    }
                }
            }
        }

        $(
            impl From<$ty> for Error {
                fn from(e: $ty) -> Self {
                    Error::$variant(e)
                }
            }

            impl fmt::Display for $ty {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    render(self, f)
                }
            }
        )*
    };
}

error_enum!(
    /// The build's inputs: checkout, settings, requirements, cache.
    Source(SourceError),
    /// The build's outputs: static step, tree, manifest.
    Build(BuildError),
    /// The app's dependency file.
    Lock(LockError),
    /// Interpreters and the tools that fill a venv.
    Python(PythonError),
    /// Artifacts: container, manifest, checksum, members.
    Artifact(ArtifactError),
    /// The host root: layout, safety checks, release.toml, init, the lock.
    Root(RootError),
    /// Finding installed releases.
    Release(ReleaseError),
    /// release install: interpreter plan, space, shared paths.
    Install(InstallError),
    /// activate and rollback.
    Activate(ActivateError),
    /// Artifacts from a URL.
    Fetch(FetchError),
    /// minisign signatures.
    Signature(SignatureError),
);

/// An error's parts, which [`render`] puts together.
pub trait Explain {
    /// What happened, naming the thing.
    fn what(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
    /// What the failure left, when that needs saying before the fix.
    fn outcome(&self) -> Option<&'static str> {
        None
    }
    /// What to do next; `None` where the message is the whole story.
    fn fix(&self) -> Option<String>;
}

/// The one way an error becomes its message.
pub fn render(e: &impl Explain, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    e.what(f)?;
    match (e.outcome(), e.fix()) {
        (Some(outcome), Some(fix)) => write!(f, "\n  {outcome}; fix: {fix}"),
        (None, Some(fix)) => write!(f, "\n  fix: {fix}"),
        (Some(outcome), None) => write!(f, "\n  {outcome}"),
        (None, None) => Ok(()),
    }
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_) => ExitCode::Usage,
            Error::Root(RootError::Locked { .. }) => ExitCode::Locked,
            Error::Activate(ActivateError::ActivationFailed { .. }) => ExitCode::RolledBack,
            _ => ExitCode::Failed,
        }
    }

    /// A bug, not an input problem.
    pub fn internal(what: impl Into<String>) -> Self {
        Error::Internal { what: what.into() }
    }
}

impl Explain for Error {
    fn what(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = self.explained() {
            return e.what(f);
        }
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Usage(message) => f.write_str(message),
            Error::Internal { what } => write!(f, "internal error: {what}"),
            Error::InterpreterChanged => f.write_str("the interpreter changed while the build ran"),
            _ => f.write_str("stopped because a step running beside it failed"),
        }
    }

    fn outcome(&self) -> Option<&'static str> {
        self.explained().and_then(|e| e.outcome())
    }

    fn fix(&self) -> Option<String> {
        if let Some(e) = self.explained() {
            return e.fix();
        }
        match self {
            Error::Internal { .. } => {
                Some("please report this as a bug, with the command and its output".into())
            }
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        render(self, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Install(InstallError::DiskFull { error, .. }) => Some(error),
            Error::Install(InstallError::RebuildFailed { error, .. }) => Some(error.as_ref()),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn the_fix_follows_what_happened_on_its_own_line() {
        let e = Error::from(RootError::NoRoot {
            root: PathBuf::from("/srv/app"),
        });
        assert_eq!(
            e.to_string(),
            "host root /srv/app does not exist\n  fix: check --root / RELEASE_ROOT, or install a first release with `release install ARTIFACT --root /srv/app`"
        );
        let e = Error::from(ArtifactError::CorruptArchive {
            artifact: PathBuf::from("a.tar.zst"),
            after: "app/x".into(),
            error: "unexpected end of file".into(),
        });
        assert!(e
            .to_string()
            .ends_with("\n  nothing was installed; fix: copy the artifact again and compare it with its .sha256"));
    }
}
