//! `build --delta-from PREVIOUS`: a delta artifact beside the full one.
//!
//! A delta is an artifact of the same format whose first member is
//! `release-delta.json` (which release it applies to, see
//! [`archive::DeltaHeader`]), then the new release's complete
//! `release.json`, then every directory and symlink of the new release and
//! only the regular files that PREVIOUS does not have with the same path,
//! mode, size and sha256. Directories and symlinks are a tar header each (a
//! few KB compressed for thousands of them) and keep the host's unpacking
//! rules unchanged: every parent is unpacked before its children, every
//! link is checked as in a full artifact. The files left out are taken on
//! the host from PREVIOUS as installed, after being checked against the new
//! manifest (src/host/delta.rs).

use std::path::{Path, PathBuf};

use fs_err as fs;

use crate::archive::{self, ArtifactWriter, DeltaHeader, Format};
use crate::error::{BuildError, Result};
use crate::fsutil;
use crate::manifest::{Entry, EntryType, Manifest};

/// What `--delta-from` names, by its first bytes.
enum BaseKind {
    Artifact,
    ManifestJson,
}

/// Whether `path` is an artifact or a `release.json`, by its first bytes:
/// a wrong path fails before the build, and [`base_manifest`] reads the
/// whole of it beside the build.
pub fn check_base(path: &Path) -> Result<()> {
    kind(path).map(|_| ())
}

fn kind(path: &Path) -> Result<BaseKind> {
    use std::io::Read;
    let mut first = [0u8; 4];
    let mut file = fs::File::open(path)?;
    let mut n = 0;
    while n < first.len() {
        match file.read(&mut first[n..])? {
            0 => break,
            read => n += read,
        }
    }
    if n == 4 && Format::sniff(&first).is_some() {
        return Ok(BaseKind::Artifact);
    }
    if first[..n].first().is_some_and(|b| *b == b'{') {
        return Ok(BaseKind::ManifestJson);
    }
    Err(BuildError::DeltaFrom {
        path: path.to_path_buf(),
        reason: "neither an artifact (zstd or gzip) nor a release.json".into(),
    }
    .into())
}

/// The previous release's manifest: from its artifact (full or delta: both
/// carry the complete manifest), or from its `release.json`.
pub fn base_manifest(path: &Path) -> Result<Manifest> {
    match kind(path)? {
        BaseKind::Artifact => Ok(archive::read_manifest(path)?.1),
        BaseKind::ManifestJson => Manifest::from_json(&fs::read(path)?).map_err(|why| {
            BuildError::DeltaFrom {
                path: path.to_path_buf(),
                reason: format!("not a valid release.json: {why}"),
            }
            .into()
        }),
    }
}

/// Which entries of `manifest` a delta against `base` carries: directories,
/// symlinks, and the files `base` lacks with the same path, mode, size and
/// content.
pub fn carried(manifest: &Manifest, base: &Manifest) -> Vec<bool> {
    manifest
        .files
        .iter()
        .map(|e| e.kind != EntryType::File || !unchanged(e, base))
        .collect()
}

/// `entry` is a file that `base` lists identically.
pub fn unchanged(entry: &Entry, base: &Manifest) -> bool {
    entry.kind == EntryType::File
        && base
            .files
            .binary_search_by(|b| b.path.cmp(&entry.path))
            .is_ok_and(|i| base.files[i] == *entry)
}

/// `<app>-<commit12>.delta-<base12>.<ext>`: a name no full artifact has.
pub fn file_name(manifest: &Manifest, base: &Manifest, format: Format) -> String {
    format!(
        "{}-{}.delta-{}.{}",
        manifest.app,
        manifest.release,
        base.release,
        format.extension()
    )
}

/// What the delta written is.
pub struct Written {
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
    /// Regular files carried, of the manifest's.
    pub files: u64,
    /// The release it applies to, and its commit.
    pub base_release: String,
    pub base_commit: String,
}

/// The new release's manifest as the delta carries it: its JSON, and for
/// zstd the compressed frames of its member, the same bytes as in the full
/// artifact ([`archive::manifest_frames`]).
pub struct ManifestBytes<'a> {
    pub json: &'a [u8],
    pub frames: Option<&'a archive::ManifestFrames>,
}

/// Write the delta of `manifest` against `base` into `out`, with its
/// `.sha256`; `source` gives where each carried entry's content is on disk.
pub fn write(
    out: &Path,
    manifest: &Manifest,
    bytes: ManifestBytes<'_>,
    base: &Manifest,
    format: Format,
    source: impl Fn(&Entry) -> Result<PathBuf>,
) -> Result<Written> {
    if base.app != manifest.app {
        return Err(BuildError::DeltaFrom {
            path: PathBuf::from(&base.release),
            reason: format!(
                "that release is of app {:?}, this build is of {:?}",
                base.app, manifest.app
            ),
        }
        .into());
    }
    fs::create_dir_all(out)?;
    let path = out.join(file_name(manifest, base, format));
    let tmp = tempfile::Builder::new()
        .prefix(".partial-delta-")
        .tempfile_in(out)
        .map_err(|e| fsutil::fs_err_io(e, out))?;
    let (tmp_file, tmp_path) = tmp.into_parts();
    let file = fs::File::from_parts(tmp_file, tmp_path.to_path_buf());
    let epoch = manifest.source_date_epoch;
    let carried = carried(manifest, base);
    let about = archive::tar_bytes(
        manifest
            .files
            .iter()
            .zip(&carried)
            .filter_map(|(e, carry)| carry.then_some(e)),
    );
    let mut writer = match bytes.frames {
        Some(head) => {
            let header = DeltaHeader::of(base).to_json_bytes();
            let header = archive::member_frame(archive::DELTA_NAME, &header, epoch)?;
            let frames: Vec<&[u8]> = std::iter::once(header.as_slice())
                .chain(head.frames())
                .collect();
            ArtifactWriter::after_frames(file, format, epoch, (&frames, &head.lead), about)?
        }
        None => {
            let mut writer = ArtifactWriter::after_frames(file, format, epoch, (&[], &[]), about)?;
            writer.append_delta_header(&DeltaHeader::of(base))?;
            writer.append_manifest(bytes.json)?;
            writer
        }
    };
    let mut files = 0;
    for (entry, carry) in manifest.files.iter().zip(carried) {
        if carry {
            writer.append(entry, &source(entry)?)?;
            files += u64::from(entry.kind == EntryType::File);
        }
    }
    let written = writer.finish()?;
    fsutil::set_mode(&tmp_path, 0o644)?;
    written.file.sync_all()?;
    archive::place_with_checksum(tmp_path, &path, &written.sha256)?;
    Ok(Written {
        path,
        sha256: written.sha256,
        bytes: written.bytes,
        files,
        base_release: base.release.clone(),
        base_commit: base.commit.clone(),
    })
}
