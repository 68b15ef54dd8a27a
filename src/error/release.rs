//! Installed releases: finding the one a user means, and their records.

use std::fmt;
use std::path::PathBuf;

use super::Explain;

#[derive(Debug)]
pub enum ReleaseError {
    ReleaseIncomplete {
        release: String,
        dir: PathBuf,
        why: String,
    },
    NoSuchRelease {
        query: String,
        releases: PathBuf,
        /// Some installed releases, as `id  (commit …)` lines.
        installed: Vec<String>,
        /// How many more are installed than listed.
        more: usize,
    },
    AmbiguousRelease {
        query: String,
        matches: Vec<String>,
    },
    NoCurrent {
        root: PathBuf,
        command: NoCurrentFor,
    },
    BadInstallRecord {
        path: PathBuf,
        reason: String,
    },
}

/// The command that needs a current release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoCurrentFor {
    Verify,
    /// Rollback; with where `current` points when it is not a release.
    Rollback(Option<PathBuf>),
}

impl Explain for ReleaseError {
    fn what(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ReleaseError::*;
        match self {
            ReleaseIncomplete { release, dir, why } => write!(
                f,
                "release {release} at {} is incomplete: {why}",
                dir.display()
            ),
            NoSuchRelease {
                query,
                releases,
                installed,
                more,
            } => {
                writeln!(
                    f,
                    "no installed release matches `{query}` under {}",
                    releases.display()
                )?;
                if installed.is_empty() {
                    f.write_str("  (no releases are installed)")
                } else {
                    write!(f, "  installed:\n{}", installed.join("\n"))?;
                    if *more > 0 {
                        write!(f, "\n  ... and {more} more (release list)")?;
                    }
                    Ok(())
                }
            }
            AmbiguousRelease { query, matches } => write!(
                f,
                "`{query}` is ambiguous: it matches {} releases:\n{}",
                matches.len(),
                matches.join("\n")
            ),
            NoCurrent { root, command } => {
                write!(f, "no release is current under {}", root.display())?;
                match command {
                    NoCurrentFor::Verify => Ok(()),
                    NoCurrentFor::Rollback(Some(link)) => write!(
                        f,
                        " (current points to {}), so there is nothing to roll back",
                        link.display()
                    ),
                    NoCurrentFor::Rollback(None) => {
                        f.write_str(" (current does not exist), so there is nothing to roll back")
                    }
                }
            }
            BadInstallRecord { path, reason } => write!(
                f,
                "{}: not a valid install record ({reason})",
                path.display()
            ),
        }
    }

    fn fix(&self) -> Option<String> {
        use ReleaseError::*;
        let fix = match self {
            ReleaseIncomplete { .. } => "install its artifact again (`release install ARTIFACT`), and remove this directory with `release prune` or by hand".into(),
            NoSuchRelease { .. } => "pass a prefix of one of these ids or commits".into(),
            AmbiguousRelease { .. } => "pass more of the id".into(),
            NoCurrent { command, .. } => match command {
                NoCurrentFor::Verify => "name one: `release verify ID` (see `release list`)".into(),
                NoCurrentFor::Rollback(_) => {
                    "activate one with `release activate ID` (see `release list`)".into()
                }
            },
            BadInstallRecord { .. } => "reinstall the release's artifact".into(),
        };
        Some(fix)
    }
}
