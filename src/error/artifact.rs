//! Artifacts: the container, its manifest, its checksum, and every member as it is unpacked.

use std::fmt;
use std::path::PathBuf;

use super::Explain;
use crate::manifest::EntryType;

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
        rule: UnsafeRule,
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

/// The rule an archive member breaks: what `UnsafeEntry` says of it after
/// the member's name. Names and link targets in it are already shortened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnsafeRule {
    PathNotUtf8,
    AbsolutePath,
    ControlCharacter,
    DotDot,
    /// Any other path the manifest's own rules refuse (their reason).
    Path(&'static str),
    /// Its type or mode, from the header alone.
    Header(HeaderRefused),
    UnreadableMode(String),
    NotInManifest,
    Duplicate,
    KindDiffers {
        archive: EntryType,
        manifest: EntryType,
    },
    ModeDiffers {
        archive: u32,
        manifest: u32,
    },
    /// Larger than the manifest lists (refused before reading it).
    SizeBeyond {
        size: u64,
        manifest: u64,
    },
    SizeDiffers {
        size: u64,
        manifest: u64,
    },
    Truncated {
        read: u64,
        manifest: u64,
    },
    ContentDiffers {
        sha256: String,
        manifest: String,
    },
    LinkNotUtf8,
    LinkDiffers {
        archive: String,
        manifest: String,
    },
    /// A symlink out of the release (but the venv's interpreter links).
    LinkLeaves {
        target: String,
    },
    ParentNotDir {
        parent: String,
    },
    /// Listed in the manifest, not in the archive; how many are missing.
    Missing {
        count: usize,
    },
    /// A delta's member for a file its manifest lists unchanged since the
    /// delta's base release (installed as `base`).
    UnchangedInDelta {
        base: String,
    },
}

impl fmt::Display for UnsafeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use UnsafeRule::*;
        match self {
            PathNotUtf8 => f.write_str("path is not UTF-8"),
            AbsolutePath => f.write_str("absolute path"),
            ControlCharacter => f.write_str("control character in the path"),
            DotDot => f.write_str("`..` component in the path"),
            Path(why) => f.write_str(why),
            Header(why) => write!(f, "{why}"),
            UnreadableMode(e) => write!(f, "unreadable mode: {e}"),
            NotInManifest => f.write_str("is not in the manifest"),
            Duplicate => f.write_str("appears twice in the archive (duplicate path)"),
            KindDiffers { archive, manifest } => {
                write!(f, "is a {archive} in the archive but a {manifest} in the manifest")
            }
            ModeDiffers { archive, manifest } => {
                write!(f, "has mode {archive:04o}, the manifest says {manifest:04o}")
            }
            SizeBeyond { size, manifest } => {
                write!(f, "is {size} bytes, beyond the {manifest} bytes the manifest lists")
            }
            SizeDiffers { size, manifest } => {
                write!(f, "is {size} bytes, the manifest lists {manifest}")
            }
            Truncated { read, manifest } => write!(
                f,
                "ended after {read} of {manifest} bytes: the archive is truncated"
            ),
            ContentDiffers { sha256, manifest } => write!(
                f,
                "content differs from the manifest (sha256 {sha256}, the manifest says {manifest})"
            ),
            LinkNotUtf8 => f.write_str("symlink target is not UTF-8"),
            LinkDiffers { archive, manifest } => write!(
                f,
                "symlink points to \"{archive}\", the manifest says \"{manifest}\""
            ),
            LinkLeaves { target } => write!(
                f,
                "symlink to \"{target}\" leaves the release (only venv/bin links to the manifest's interpreter may)"
            ),
            ParentNotDir { parent } => {
                write!(f, "its parent `{parent}` is not a directory unpacked before it")
            }
            UnchangedInDelta { base } => write!(
                f,
                "is carried by the delta, but the manifest lists it unchanged since its base release ({base}); a delta carries only the files that changed"
            ),
            Missing { count } => {
                f.write_str("listed in the manifest but missing from the archive")?;
                if *count > 1 {
                    write!(f, " ({count} manifest entries are missing in all)")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a member's header is refused before its path is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderRefused {
    HardLink,
    Device,
    Fifo,
    Sparse,
    /// Another tar type flag.
    OtherType(u8),
    /// Setuid, setgid or sticky (the mode).
    SpecialBits(u32),
}

impl fmt::Display for HeaderRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            HeaderRefused::SpecialBits(mode) => {
                return write!(f, "has the setuid, setgid or sticky bit (mode {mode:04o})")
            }
            HeaderRefused::HardLink => {
                "a hard link (artifacts have none; the manifest cannot describe one)".to_string()
            }
            HeaderRefused::Device => "a device node".to_string(),
            HeaderRefused::Fifo => "a fifo".to_string(),
            HeaderRefused::Sparse => "a sparse file".to_string(),
            HeaderRefused::OtherType(flag) => {
                format!("an unsupported member type ({:?})", *flag as char)
            }
        };
        write!(
            f,
            "is {what}; only files, directories and symlinks are allowed"
        )
    }
}

/// Why a delta artifact's `release-delta.json` is refused.
#[derive(Debug)]
pub enum DeltaHeaderProblem {
    /// Not JSON of the header's shape.
    Json(serde_json::Error),
    /// A format this release does not read (`supported` is the one it does).
    Format { format: u32, supported: u32 },
    /// The base commit is not 40 hex digits whose first 12 are the release.
    BaseCommit { commit: String, release: String },
    /// The base tree_sha256 is not 64 hex digits.
    BaseTree { tree_sha256: String },
}

impl fmt::Display for DeltaHeaderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DeltaHeaderProblem::*;
        match self {
            Json(e) => write!(f, "{e}"),
            Format { format, supported } => write!(
                f,
                "format {format} is not supported (this release reads format {supported})"
            ),
            BaseCommit { commit, release } => write!(
                f,
                "the base commit {commit:?} (release {release:?}) is not 40 hex digits with its first 12 as the release"
            ),
            BaseTree { tree_sha256 } => {
                write!(f, "the base tree_sha256 {tree_sha256:?} is not a sha256")
            }
        }
    }
}
