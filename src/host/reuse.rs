//! Files an install takes from an installed release instead of the artifact.
//!
//! Installed releases are read-only trees whose every file was checked
//! against its manifest when it was installed. A new release usually shares
//! almost all of its files with the live one (the venv and the wheels do not
//! change when only the code does), so `install` hard-links each file whose
//! path, sha256, size and mode equal the live release's, instead of writing
//! it again: the new release costs disk only for what changed, and the
//! install does one `link(2)` where it would create, write and hash a file.
//!
//! The release linked from is the live one (`current`), else the newest
//! installed release. Its tree as installed is its manifest with its install
//! record applied ([`InstallRecord::expected`]), so paths replaced by shared
//! links, a rebuilt venv or a re-pointed interpreter are never linked. Each
//! candidate is `lstat`ed first: it must still be a regular file of the
//! recorded size and read-only mode, so a release changed by hand is not
//! copied from.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use crate::host::layout::installed_mode;
use crate::host::layout::Host;
use crate::host::record::InstallRecord;
use crate::host::release_id::ReleaseId;
use crate::host::releases::Installed;
use crate::manifest::{EntryType, Manifest, MANIFEST_NAME};

/// The installed release files are linked from, and which of the new
/// manifest's entries it can supply.
#[derive(Debug)]
pub struct Reuse {
    /// The release directory linked from.
    pub dir: PathBuf,
    /// Its id.
    pub id: ReleaseId,
    /// Per entry of the new manifest: the file can be linked from `dir`.
    pub linkable: Vec<bool>,
    /// How many files and bytes that is.
    pub files: u64,
    pub bytes: u64,
}

impl Reuse {
    /// Plan the reuse for `manifest` from the installed releases `list`:
    /// `None` when none shares a file with it (or none is installed).
    pub fn plan(host: &Host, list: &[Installed], manifest: &Manifest) -> Option<Reuse> {
        let current = host.current().ok().and_then(|c| c.id().cloned());
        let source = list
            .iter()
            .filter(|r| r.is_complete())
            .find(|r| current.as_ref() == Some(&r.id))
            .or_else(|| list.iter().find(|r| r.is_complete()))?;
        Reuse::from_release(source, manifest)
    }

    fn from_release(source: &Installed, manifest: &Manifest) -> Option<Reuse> {
        let json = std::fs::read(source.dir.join(MANIFEST_NAME)).ok()?;
        let theirs = Manifest::from_json(&json).ok()?;
        let record = InstallRecord::read(&source.dir).ok()?;
        let tree = record.expected(&theirs);
        let mut reuse = Reuse {
            dir: source.dir.clone(),
            id: source.id.clone(),
            linkable: vec![false; manifest.files.len()],
            files: 0,
            bytes: 0,
        };
        for (i, entry) in manifest.files.iter().enumerate() {
            if entry.kind != EntryType::File {
                continue;
            }
            let Ok(j) = tree.binary_search_by(|e| e.path.cmp(&entry.path)) else {
                continue;
            };
            let old = &tree[j];
            let same = old.kind == EntryType::File
                && old.mode == entry.mode
                && old.size == entry.size
                && old.sha256 == entry.sha256;
            if !same {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(source.dir.join(&entry.path)) else {
                continue;
            };
            let intact = meta.file_type().is_file()
                && meta.size() == entry.size()
                && meta.permissions().mode() & 0o7777 == installed_mode(entry.kind, entry.mode);
            if intact {
                reuse.linkable[i] = true;
                reuse.files += 1;
                reuse.bytes += entry.size();
            }
        }
        (reuse.files > 0).then_some(reuse)
    }
}
