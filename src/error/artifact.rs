//! Artifacts: the container, its manifest, its checksum, and every member as it is unpacked.

use std::fmt;
use std::path::PathBuf;

use super::Explain;

const REBUILD_ARTIFACT: &str = "rebuild the artifact with `release build` (never edit an artifact by hand), or check where this file came from";

#[derive(Debug)]
pub enum ArtifactError {
    NotAnArtifact {
        path: PathBuf,
        reason: String,
    },
    BadManifest {
        path: PathBuf,
        reason: String,
    },
    FileChanged {
        path: PathBuf,
        message: String,
    },
    BadChecksumFile {
        path: PathBuf,
        name: String,
        reason: String,
    },
    DigestMismatch {
        artifact: PathBuf,
        digest: String,
        source: String,
        want: String,
    },
    /// An archive entry breaks a safety rule or differs from the manifest.
    UnsafeEntry {
        artifact: PathBuf,
        entry: String,
        rule: String,
    },
    /// An extension header (which names no member of its own) breaks a rule.
    UnsafeMemberAfter {
        artifact: PathBuf,
        last: String,
        rule: String,
    },
    CorruptArchive {
        artifact: PathBuf,
        after: String,
        error: String,
    },
}

impl Explain for ArtifactError {
    fn what(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ArtifactError::*;
        match self {
            NotAnArtifact { path, reason } => {
                write!(f, "{}: not a release artifact: {reason}", path.display())
            }
            BadManifest { path, reason } => write!(
                f,
                "{}: bad manifest (release.json): {reason}",
                path.display()
            ),
            FileChanged { path, message } => write!(f, "{}: {message}", path.display()),
            BadChecksumFile { path, reason, .. } => write!(f, "{}: {reason}", path.display()),
            DigestMismatch {
                artifact,
                digest,
                source,
                want,
            } => write!(
                f,
                "{}: sha256 is {digest}, but {source} says {want}",
                artifact.display()
            ),
            UnsafeEntry {
                artifact,
                entry,
                rule,
            } => write!(f, "{}: entry `{entry}` refused: {rule}", artifact.display()),
            UnsafeMemberAfter {
                artifact,
                last,
                rule,
            } => write!(
                f,
                "{}: the member after `{last}` refused: {rule}",
                artifact.display()
            ),
            CorruptArchive {
                artifact,
                after,
                error,
            } => write!(
                f,
                "{}: the archive is corrupt or truncated after member `{after}`: {error}",
                artifact.display()
            ),
        }
    }

    fn outcome(&self) -> Option<&'static str> {
        use ArtifactError::*;
        match self {
            DigestMismatch { .. }
            | UnsafeEntry { .. }
            | UnsafeMemberAfter { .. }
            | CorruptArchive { .. } => Some("nothing was installed"),
            _ => None,
        }
    }

    fn fix(&self) -> Option<String> {
        use ArtifactError::*;
        let fix = match self {
            FileChanged { .. } => return None,
            NotAnArtifact { .. } => "pass a .tar.zst or .tar.gz written by `release build`".into(),
            BadManifest { .. } => "use the artifact as `release build` wrote it (a manifest is never edited by hand), or check where this file came from".into(),
            BadChecksumFile { name, .. } => format!(
                "regenerate it (`sha256sum {name} > {name}.sha256`) or remove it and pass --sha256"
            ),
            DigestMismatch { .. } => "copy the artifact again (it is corrupt or not the one meant), or correct the expected digest".into(),
            UnsafeEntry { .. } => REBUILD_ARTIFACT.into(),
            UnsafeMemberAfter { .. } => REBUILD_ARTIFACT.into(),
            CorruptArchive { .. } => {
                "copy the artifact again and compare it with its .sha256".into()
            }
        };
        Some(fix)
    }
}
