//! The host root and its fixed layout (docs/design.md §2), with the safety checks a
//! root must pass before anything reads or writes it.
//!
//! ```text
//! <root>/release.toml   current -> releases/<id>   releases/<id>/   releases/.incoming-*/
//! <root>/shared/        history.jsonl              .lock
//! ```

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fs_err as fs;

use crate::crashpoint::CrashPoint;
use crate::error::{Error, ForeignCurrentFor, Result, RootError};
use crate::fsutil;
use crate::host::lock::Lock;
use crate::host::release_id::ReleaseId;
use crate::manifest::EntryType;
use crate::output::Printer;

/// Name prefixes of the temporary entries a killed command can leave behind.
pub const INCOMING_PREFIX: &str = ".incoming-";
pub const REMOVING_PREFIX: &str = ".removing-";
pub const CURRENT_TMP_PREFIX: &str = "current.tmp-";
/// The directory of a release (and of the root) that holds static files.
pub const STATIC_DIR: &str = "static";

/// The paths of one host root.
#[derive(Debug, Clone)]
pub struct Host {
    pub root: PathBuf,
    pub releases: PathBuf,
    pub current: PathBuf,
    pub shared: PathBuf,
    pub journal: PathBuf,
    pub lock: PathBuf,
    pub config: PathBuf,
}

/// What `current` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    /// No `current` yet: nothing was ever activated.
    None,
    /// `current -> releases/<id>`.
    Release(ReleaseId),
    /// A symlink somewhere else (changed by hand).
    Foreign(PathBuf),
}

impl Current {
    pub fn id(&self) -> Option<&ReleaseId> {
        match self {
            Current::Release(id) => Some(id),
            _ => None,
        }
    }
}

impl Host {
    /// The root from `--root` / `$RELEASE_ROOT` (clap reads both).
    pub fn at(root: Option<&Path>) -> Result<Host> {
        let Some(root) = root else {
            return Err(Error::Usage(
                "no host root given\n  fix: pass --root DIR (e.g. --root /srv/mysite) or set RELEASE_ROOT".into(),
            ));
        };
        let root = std::path::absolute(root).map_err(|e| fsutil::fs_err_io(e, root))?;
        Ok(Host {
            releases: root.join("releases"),
            current: root.join("current"),
            shared: root.join("shared"),
            journal: root.join("history.jsonl"),
            lock: root.join(".lock"),
            config: root.join("release.toml"),
            root,
        })
    }

    /// Check an existing root (read-only commands and all but the first install).
    pub fn check_exists(&self) -> Result<()> {
        match fs::symlink_metadata(&self.root) {
            Ok(_) => self.check_safe(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(RootError::NoRoot {
                root: self.root.clone(),
            }
            .into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Create the root (0755) and `releases/` when missing, then check them.
    pub fn create(&self) -> Result<()> {
        // Never create anything inside a root that fails the checks.
        if fs::symlink_metadata(&self.root).is_ok() {
            self.check_safe()?;
        }
        for dir in [&self.root, &self.releases] {
            if fs::symlink_metadata(dir).is_err() {
                fs::create_dir_all(dir)?;
                fsutil::set_mode(dir, 0o755)?;
                if let Some(parent) = dir.parent() {
                    fsutil::fsync_dir(parent)?;
                }
            }
        }
        self.check_safe()
    }

    /// Refuse a root, `releases/` or `current` another user could swap under
    /// us, and release's own paths in the root (`shared/`, `release.toml`,
    /// `history.jsonl`, `.lock`, the entries of `releases/`) when they are
    /// planted symlinks, of the wrong type, writable by group or others, or
    /// owned by another user.
    pub fn check_safe(&self) -> Result<()> {
        for dir in [&self.root, &self.releases] {
            let meta = match fs::symlink_metadata(dir) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != &self.root => continue,
                Err(e) => return Err(e.into()),
            };
            if meta.file_type().is_symlink() {
                return Err(RootError::SymlinkedRoot {
                    dir: dir.clone(),
                    real: std::fs::canonicalize(dir).ok(),
                }
                .into());
            }
            if !meta.is_dir() {
                return Err(RootError::NotADirectory { path: dir.clone() }.into());
            }
            check_owner(dir, &meta, "replace a release")?;
        }
        self.check_own_path(
            &self.shared,
            true,
            "the shared directory",
            "replace the files every release links to",
        )?;
        self.check_own_path(
            &self.root.join(STATIC_DIR),
            true,
            "the served static files",
            "replace the files the web server serves",
        )?;
        self.check_own_path(
            &self.config,
            false,
            "its settings",
            "choose the hooks release runs",
        )?;
        self.check_own_path(
            &self.journal,
            false,
            "its journal",
            "rewrite what rollback goes back to",
        )?;
        self.check_own_path(&self.lock, false, "its lock", "fake the lock's holder")?;
        self.check_release_entries()?;
        match fs::symlink_metadata(&self.current) {
            Ok(meta) if !meta.file_type().is_symlink() => Err(RootError::CurrentNotALink {
                path: self.current.clone(),
                is_dir: meta.is_dir(),
            }
            .into()),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// One of release's own paths in the root, when it exists: a real
    /// directory (`dir`) or regular file, not a symlink, not writable by group
    /// or others, owned by us or root. `what` says what release keeps there,
    /// `harm` what a writer could do.
    fn check_own_path(
        &self,
        path: &Path,
        dir: bool,
        holds: &'static str,
        harm: &'static str,
    ) -> Result<()> {
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if meta.file_type().is_symlink() {
            return Err(RootError::SymlinkedOwnPath {
                path: path.to_path_buf(),
                target: link_target(path),
                dir,
                holds,
            }
            .into());
        }
        if (dir && !meta.is_dir()) || (!dir && !meta.is_file()) {
            return Err(RootError::WrongTypeOwnPath {
                path: path.to_path_buf(),
                dir,
                holds,
            }
            .into());
        }
        check_owner(path, &meta, harm)
    }

    /// Every entry of `releases/` that is a symlink is refused: release
    /// installs each release as a real directory, so a link there was planted
    /// and could lead `current` (or `activate`) anywhere.
    fn check_release_entries(&self) -> Result<()> {
        let entries = match fs::read_dir(&self.releases) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_symlink() {
                let path = entry.path();
                return Err(RootError::PlantedReleaseLink {
                    target: link_target(&path),
                    path,
                }
                .into());
            }
        }
        Ok(())
    }

    /// For mutating commands: `current` must be missing or point at
    /// `releases/<id>`. A link elsewhere was not made by release; it is neither
    /// followed nor replaced (prune and rollback could not tell what is live).
    pub fn check_current_is_ours(&self) -> Result<()> {
        if let Current::Foreign(target) = self.current()? {
            return Err(RootError::ForeignCurrent {
                link: self.current.clone(),
                target,
                releases: self.releases.clone(),
                command: ForeignCurrentFor::Change,
            }
            .into());
        }
        Ok(())
    }

    /// Where `current` points.
    pub fn current(&self) -> Result<Current> {
        let target = match fs::read_link(&self.current) {
            Ok(target) => target,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Current::None),
            Err(e) => return Err(e.into()),
        };
        let mut parts = target.components();
        let is_release = matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some(std::path::Component::Normal(r)), Some(std::path::Component::Normal(_)), None)
                if r == "releases"
        );
        let id = target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(ReleaseId::parse);
        match id {
            Some(id) if is_release => Ok(Current::Release(id)),
            _ => Ok(Current::Foreign(target)),
        }
    }

    pub fn release_dir(&self, id: &str) -> PathBuf {
        self.releases.join(id)
    }

    /// Point `current` at `releases/<id>` atomically: a new symlink under a
    /// temporary name in the root, `rename(2)`d over `current` (never
    /// unlink + symlink, which leaves a moment without `current`), then the root
    /// directory is fsynced so the switch survives a crash.
    pub fn switch_current(&self, lock: &Lock, id: &str) -> Result<()> {
        self.switch_current_at(lock, id, None)
    }

    /// [`Host::switch_current`] with crash points (src/crashpoint.rs) after
    /// the temporary link is made and after the rename.
    pub fn switch_current_at(
        &self,
        _lock: &Lock,
        id: &str,
        crash: Option<(CrashPoint, CrashPoint)>,
    ) -> Result<()> {
        let tmp = self
            .root
            .join(format!("{CURRENT_TMP_PREFIX}{}", fsutil::random_suffix()));
        let target = Path::new("releases").join(id);
        std::os::unix::fs::symlink(&target, &tmp).map_err(|e| fsutil::fs_err_io(e, &tmp))?;
        if let Some((tmp_link, _)) = crash {
            crate::crashpoint::crashpoint(tmp_link);
        }
        if let Err(e) = fs::rename(&tmp, &self.current) {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        if let Some((_, renamed)) = crash {
            crate::crashpoint::crashpoint(renamed);
        }
        fsutil::fsync_dir(&self.root)
    }

    /// Remove what a killed command left: `releases/.incoming-*`,
    /// `releases/.removing-*` and `current.tmp-*`. Only under the lock, so
    /// nothing in progress is touched.
    pub fn remove_leftovers(&self, _lock: &Lock, printer: &Printer) -> Result<()> {
        if let Ok(entries) = fs::read_dir(&self.releases) {
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(INCOMING_PREFIX) || name.starts_with(REMOVING_PREFIX) {
                    printer.progress(&format!(
                        "removing {} (left by an interrupted command)",
                        entry.path().display()
                    ));
                    fsutil::remove_tree(&entry.path())?;
                }
            }
        }
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(CURRENT_TMP_PREFIX) && entry.file_type()?.is_symlink() {
                printer.progress(&format!(
                    "removing {} (left by an interrupted activation)",
                    entry.path().display()
                ));
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}

/// Refuse a path of the root that is writable by group or others, or owned by
/// another user (not root): such a user could `harm`.
fn check_owner(path: &Path, meta: &std::fs::Metadata, harm: &'static str) -> Result<()> {
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(RootError::GroupWritable {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
            harm,
        }
        .into());
    }
    let you = rustix::process::geteuid().as_raw();
    if meta.uid() != you && meta.uid() != 0 {
        return Err(RootError::ForeignOwner {
            path: path.to_path_buf(),
            uid: meta.uid(),
            you,
            harm,
        }
        .into());
    }
    Ok(())
}

/// Where a symlink points, for a message (`?` when it cannot be read).
fn link_target(path: &Path) -> String {
    fs::read_link(path)
        .map(|t| t.display().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Read-only modes of an installed release: files 0444 or 0555, dirs 0555.
pub fn installed_mode(kind: EntryType, manifest_mode: u32) -> u32 {
    match kind {
        EntryType::Dir => 0o555,
        EntryType::File if manifest_mode & 0o111 != 0 => 0o555,
        EntryType::File => 0o444,
        EntryType::Symlink => 0o777,
    }
}
