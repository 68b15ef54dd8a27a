//! Errors of the build's outputs: the static step, the tree that goes into the artifact, its manifest.

use std::fmt;
use std::path::PathBuf;

use super::Explain;

const EXCLUDE: &str =
    "leave generated or vendored trees out of the artifact with `exclude` in [tool.release]";

#[derive(Debug)]
pub enum BuildError {
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
    /// `--delta-from PREVIOUS` names no usable previous release.
    DeltaFrom {
        path: PathBuf,
        reason: String,
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
            DeltaFrom { path, reason } => {
                write!(f, "--delta-from {}: {reason}", path.display())
            }
        }
    }

    fn fix(&self) -> Option<String> {
        use BuildError::*;
        let fix = match self {
            StaticWroteIntoApp { settings, .. } => {
                let mut fix = "make the app's settings read STATIC_ROOT from the environment, e.g. `STATIC_ROOT = os.environ.get(\"STATIC_ROOT\", <the path it has now>)` (README: \"Static files\")".to_string();
                if let Some(settings) = settings {
                    fix.push_str(&format!(", or set `untracked = \"move-to-static\"` in {settings} to move them into static/"));
                }
                fix
            }
            StaticMoveClash { .. } => "make the app's settings read STATIC_ROOT from the environment (README: \"Static files\")".into(),
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
            DeltaFrom { .. } => "pass the artifact (.tar.zst or .tar.gz) of a previous release of this app, or the release.json of one (an installed release has it at its top)".into(),
        };
        Some(fix)
    }
}
