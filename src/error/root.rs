//! The host root: its layout, its safety checks, its settings and its lock.

use std::fmt;
use std::path::PathBuf;

use super::Explain;

#[derive(Debug)]
pub enum RootError {
    /// `init --systemd DIR` found a different unit where it would write one.
    UnitDiffers {
        path: PathBuf,
        root: PathBuf,
    },
    NoRoot {
        root: PathBuf,
    },
    SymlinkedRoot {
        dir: PathBuf,
        real: Option<PathBuf>,
    },
    NotADirectory {
        path: PathBuf,
    },
    CurrentNotALink {
        path: PathBuf,
        is_dir: bool,
    },
    /// One of release's own paths in the root is a symlink.
    SymlinkedOwnPath {
        path: PathBuf,
        target: String,
        dir: bool,
        holds: &'static str,
    },
    WrongTypeOwnPath {
        path: PathBuf,
        dir: bool,
        holds: &'static str,
    },
    PlantedReleaseLink {
        path: PathBuf,
        target: String,
    },
    /// `current` points outside releases/; `command` is what refused it.
    ForeignCurrent {
        link: PathBuf,
        target: PathBuf,
        releases: PathBuf,
        command: ForeignCurrentFor,
    },
    GroupWritable {
        path: PathBuf,
        mode: u32,
        harm: &'static str,
    },
    ForeignOwner {
        path: PathBuf,
        uid: u32,
        you: u32,
        harm: &'static str,
    },
    BadHostConfig {
        path: PathBuf,
        message: String,
    },
    /// Another command holds the host root's lock (exit 4).
    Locked {
        lock: PathBuf,
        holder: String,
    },
}

/// The command that found `current` pointing outside releases/.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignCurrentFor {
    /// A mutating command, which neither follows nor replaces it.
    Change,
    Verify,
}

impl ForeignCurrentFor {
    /// What the command does about such a link.
    fn refusal(self) -> &'static str {
        match self {
            ForeignCurrentFor::Change => "release did not make this link (it was changed by hand or planted) and will neither follow nor replace it",
            ForeignCurrentFor::Verify => "verify does not follow it",
        }
    }
}

impl Explain for RootError {
    fn what(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use RootError::*;
        match self {
            UnitDiffers { path, .. } => write!(
                f,
                "{} exists and differs from the unit release init would write; release.toml is written, no unit was changed",
                path.display()
            ),
            NoRoot { root } => write!(f, "host root {} does not exist", root.display()),
            SymlinkedRoot { dir, .. } => write!(
                f,
                "{} is a symlink; release refuses a host root or releases/ that is a symlink, because the directory it points to could be swapped under a running deploy",
                dir.display()
            ),
            NotADirectory { path } => write!(f, "{} is not a directory", path.display()),
            CurrentNotALink { path, is_dir } => write!(
                f,
                "{} is a {}, not a symlink; release manages `current` as a symlink to releases/<id>",
                path.display(),
                if *is_dir { "directory" } else { "file" }
            ),
            SymlinkedOwnPath {
                path,
                target,
                holds,
                ..
            } => write!(
                f,
                "{} is a symlink (to {target}); release never uses {holds} through a symlink, which could lead anywhere and be swapped at any time",
                path.display()
            ),
            WrongTypeOwnPath { path, dir, holds } => write!(
                f,
                "{} is not a {}; release keeps {holds} there",
                path.display(),
                if *dir { "directory" } else { "regular file" }
            ),
            PlantedReleaseLink { path, target } => write!(
                f,
                "{} is a symlink (to {target}); release installs every release as a real directory, so this link was planted and could make a release lead anywhere",
                path.display()
            ),
            ForeignCurrent {
                link,
                target,
                releases,
                command,
            } => write!(
                f,
                "{} points to {}, not to a release under {}; {}",
                link.display(),
                target.display(),
                releases.display(),
                command.refusal()
            ),
            GroupWritable { path, mode, harm } => write!(
                f,
                "{} is writable by group or others (mode {mode:04o}); anyone who can write it can {harm}",
                path.display()
            ),
            ForeignOwner {
                path,
                uid,
                you,
                harm,
            } => write!(
                f,
                "{} belongs to uid {uid}, not to you (uid {you}) or root; that user can {harm}",
                path.display()
            ),
            BadHostConfig { path, message } => write!(f, "{}: {message}", path.display()),
            Locked { lock, holder } => write!(
                f,
                "{}: another `release` command{holder} holds the lock on this root",
                lock.display()
            ),
        }
    }

    fn fix(&self) -> Option<String> {
        use RootError::*;
        let fix = match self {
            UnitDiffers { root, .. } => format!(
                "compare it with `release --root {} init --wsgi … --celery …` (which prints the units), then move it away and run init again, or edit it by hand",
                root.display()
            ),
            NoRoot { root } => format!(
                "check --root / RELEASE_ROOT, or install a first release with `release install ARTIFACT --root {}`",
                root.display()
            ),
            SymlinkedRoot { real, .. } => format!(
                "pass the real directory (--root {}), or replace the link with a directory",
                real.as_ref()
                    .map_or("the directory it points to".into(), |r| r.display().to_string())
            ),
            NotADirectory { .. } => "move it away; release manages this path".into(),
            CurrentNotALink { path, .. } => format!(
                "move it away (mv {0} {0}.old), then activate a release",
                path.display()
            ),
            SymlinkedOwnPath {
                path, target, dir, ..
            } => {
                let p = path.display();
                if *dir {
                    format!("move the link away and put the real directory in its place (mv {p} {p}.link && mv {target} {p})")
                } else {
                    format!("replace the link with a copy of the file it points to (cp --remove-destination {target} {p}), or move it away (mv {p} {p}.link)")
                }
            }
            WrongTypeOwnPath { path, .. } => {
                format!("move it away (mv {0} {0}.old)", path.display())
            }
            PlantedReleaseLink { path, .. } => format!(
                "remove the link (rm {}; what it points to is left alone)",
                path.display()
            ),
            ForeignCurrent { link, command, .. } => match command {
                ForeignCurrentFor::Change => format!(
                    "see where it leads (ls -l {0}); then move it away (mv {0} {0}.planted) and run `release activate ID` to put a release back live",
                    link.display()
                ),
                ForeignCurrentFor::Verify => {
                    "name a release: `release verify ID` (see `release list`)".into()
                }
            },
            GroupWritable { path, .. } => format!("chmod go-w {}", path.display()),
            ForeignOwner { path, you, .. } => format!(
                "run release as its owner, or chown it (chown {you} {})",
                path.display()
            ),
            BadHostConfig { .. } => "correct the file (`release help config` lists every key)".into(),
            Locked { .. } => "wait for it to finish and run this again, or pass --wait SECS to wait for it".into(),
        };
        Some(fix)
    }
}
