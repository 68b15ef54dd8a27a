//! Where `install` reads an artifact's bytes from, and what those bytes must
//! prove: a local file or an `http(s)://` URL ([`fetch`]), its sha256
//! (`--sha256`, the `.sha256` beside it) and, when `release.toml` lists
//! `[trust] minisign_keys`, its minisign signature (`--signature`, the
//! `.minisig` beside it).
//!
//! A local file's signature is checked before anything of it is unpacked
//! (the sha256 of the bytes checked is kept, and the unpacked stream must
//! have the same). A URL is read once, as it arrives: its sha256 and its
//! signature are known only at the end of the stream, so the install
//! unpacks into `releases/.incoming-*` meanwhile and renames nothing into
//! place until both verified.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fs_err as fs;

use crate::archive::{self, Background, Finished, Observer, ObserverVerdict};
use crate::error::{ArtifactError, Doing, Error, FetchError, Refusal, Result, SignatureError};
use crate::host::fetch::{self, Bound, Downloaded, Failure, Fetcher};
use crate::manifest::{EntryType, Manifest};
use crate::output::Printer;
use crate::signature::{self, SignatureInfo, StreamCheck, Trust};

/// A `.sha256` sidecar is one short line; a larger one is not one.
const MAX_CHECKSUM_BYTES: u64 = 64 * 1024;

/// The artifact's bytes, opened, and the checks they must pass.
pub struct Source {
    /// How messages name the artifact: its path, or its redacted URL.
    pub name: PathBuf,
    pub stream: Background,
    pub check: SourceCheck,
}

/// What `install --json` says of the source, when it applies.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Provenance {
    /// The key id of the signature checked (when release.toml requires one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    /// The URL, credentials redacted, and the bytes downloaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downloaded_bytes: Option<u64>,
}

/// What the whole stream must prove once it was read.
pub struct SourceCheck {
    name: PathBuf,
    /// (where the digest came from, the digest).
    digests: Vec<(String, String)>,
    /// A local file's signature: the sha256 of the bytes it was checked over.
    signed_sha256: Option<String>,
    /// The signature that was (or, for a URL, is being) checked.
    pub signature: Option<SignatureInfo>,
    /// For a URL: the redacted URL, the body's size bound, the bytes read.
    pub url: Option<String>,
    bound: Option<Bound>,
    downloaded: Option<Downloaded>,
    failure: Option<Failure>,
}

impl Observer for StreamCheck {
    fn update(&mut self, bytes: &[u8]) {
        StreamCheck::update(self, bytes);
    }

    fn finish(self: Box<Self>) -> std::result::Result<(), ObserverVerdict> {
        StreamCheck::finish(*self).map_err(|refusal| Box::new(refusal) as ObserverVerdict)
    }
}

/// What `install` was asked to read, and the checks its options add.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// A path or an `http(s)://` URL.
    pub artifact: &'a Path,
    /// `--sha256`.
    pub sha256: Option<&'a str>,
    /// `--signature`: where the signature is, instead of beside the artifact.
    pub signature: Option<&'a Path>,
    /// Connect and between-bytes timeout for a URL.
    pub fetch_timeout: Duration,
}

/// Open the artifact of `request` for `install`.
pub fn open(request: &Request, trust: &Trust, printer: &Printer) -> Result<Source> {
    if fetch::is_url(request.artifact) {
        open_url(request, trust, printer)
    } else {
        open_file(request, trust, printer)
    }
}

fn parse_sha256_flag(request: &Request) -> Result<Option<(String, String)>> {
    let Some(hex) = request.sha256 else {
        return Ok(None);
    };
    let hex = hex.trim().to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Usage(format!(
            "--sha256 {hex:?} is not a sha256 (64 hex digits)"
        )));
    }
    Ok(Some(("--sha256".to_string(), hex)))
}

fn warn_unverified(digests: &[(String, String)], name: &Path, printer: &Printer) {
    if digests.is_empty() {
        printer.warn(&format!(
            "no {}.sha256 beside the artifact and no --sha256: the artifact file itself is not verified (every member is still checked against its manifest)",
            name.display()
        ));
    }
}

fn refused(artifact: &Path, why: Refusal) -> Error {
    SignatureError::Refused {
        artifact: artifact.to_path_buf(),
        why,
    }
    .into()
}

fn open_file(request: &Request, trust: &Trust, printer: &Printer) -> Result<Source> {
    let artifact = request.artifact;
    let digests = file_digests(request)?;
    warn_unverified(&digests, artifact, printer);
    let (signed_sha256, signature) = if trust.required() {
        let (sha, info) = file_signature(request, trust, printer)?;
        (Some(sha), Some(info))
    } else {
        (None, None)
    };
    let (_format, stream) = Background::open(artifact)?;
    Ok(Source {
        name: artifact.to_path_buf(),
        stream,
        check: SourceCheck {
            name: artifact.to_path_buf(),
            digests,
            signed_sha256,
            signature,
            url: None,
            bound: None,
            downloaded: None,
            failure: None,
        },
    })
}

/// A local file's expected digests: `--sha256`, and the `.sha256` beside it.
fn file_digests(request: &Request) -> Result<Vec<(String, String)>> {
    let artifact = request.artifact;
    let file_name = artifact
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut digests: Vec<(String, String)> = parse_sha256_flag(request)?.into_iter().collect();
    let sidecar = crate::archive::checksum_path(artifact);
    if sidecar.is_file() {
        let text = fs::read_to_string(&sidecar)?;
        let hex = archive::parse_checksum_file(&text, &file_name).map_err(|why| {
            ArtifactError::BadChecksumFile {
                path: sidecar.clone(),
                name: file_name.clone(),
                reason: why.to_string(),
            }
        })?;
        digests.push((sidecar.display().to_string(), hex));
    }
    Ok(digests)
}

/// A local file's signature (`--signature`, a file or a URL, else the
/// `.minisig` beside it), checked over the whole file before anything of it
/// is unpacked: the sha256 of the bytes checked, and who signed them.
fn file_signature(
    request: &Request,
    trust: &Trust,
    printer: &Printer,
) -> Result<(String, SignatureInfo)> {
    let artifact = request.artifact;
    let sig_source = request
        .signature
        .map(Path::to_path_buf)
        .unwrap_or_else(|| signature::sig_path(artifact));
    let text = if fetch::is_url(&sig_source) {
        let url = sig_source.to_string_lossy().into_owned();
        Fetcher::new(request.fetch_timeout, url.starts_with("https://"))?.small(
            &url,
            Doing::Signature,
            signature::MAX_SIG_BYTES,
        )?
    } else {
        signature::read_sig_file(&sig_source)?
    };
    let shown = sig_source.display().to_string();
    let Some(text) = text else {
        return Err(refused(artifact, trust.unsigned(&shown)));
    };
    let expected = trust
        .expect(&text, &shown)
        .map_err(|why| refused(artifact, why))?;
    let sha = expected
        .verify_file(artifact)
        .map_err(|why| refused(artifact, why))?;
    printer.progress(&format!(
        "signature verified: key id {} ({})",
        expected.info.key_id, shown
    ));
    Ok((sha, expected.info))
}

fn open_url(request: &Request, trust: &Trust, printer: &Printer) -> Result<Source> {
    let url = request.artifact.to_string_lossy().into_owned();
    let shown = fetch::redact(&url);
    let name = PathBuf::from(&shown);
    let fetcher = Fetcher::new(request.fetch_timeout, url.starts_with("https://"))?;
    let digests = url_digests(request, &url, &fetcher, printer)?;
    let (signature, observer) = if trust.required() {
        let (info, check) = url_signature(request, &url, &fetcher, trust, &name)?;
        (Some(info), Some(check))
    } else {
        (None, None)
    };
    printer.progress(&format!("downloading {shown}"));
    let body = fetcher.open(&url, printer.download_bar("downloading"))?;
    let bound = body.bound();
    let downloaded = body.downloaded();
    let failure = body.failure();
    let (_format, stream) = Background::start(&name, body, observer)?;
    Ok(Source {
        name: name.clone(),
        stream,
        check: SourceCheck {
            name,
            digests,
            signed_sha256: None,
            signature,
            url: Some(shown),
            bound: Some(bound),
            downloaded: Some(downloaded),
            failure: Some(failure),
        },
    })
}

/// A URL's expected digests: `--sha256`, else the `.sha256` beside it on the
/// store (warned about when there is neither).
fn url_digests(
    request: &Request,
    url: &str,
    fetcher: &Fetcher,
    printer: &Printer,
) -> Result<Vec<(String, String)>> {
    let mut digests: Vec<(String, String)> = parse_sha256_flag(request)?.into_iter().collect();
    if digests.is_empty() {
        let file_name = url
            .split(['?', '#'])
            .next()
            .and_then(|path| path.rsplit('/').next())
            .unwrap_or_default();
        let sidecar = fetch::sidecar_url(url, ".sha256");
        let sidecar_shown = fetch::redact(&sidecar);
        if let Some(text) = fetcher.small(&sidecar, Doing::Checksum, MAX_CHECKSUM_BYTES)? {
            let hex = archive::parse_checksum_file(&text, file_name).map_err(|reason| {
                FetchError::BadChecksum {
                    url: sidecar_shown.clone(),
                    reason,
                }
            })?;
            digests.push((sidecar_shown, hex));
        }
    }
    if digests.is_empty() {
        printer.warn(&format!(
            "no {} on the store and no --sha256: the artifact's bytes are not verified (every member is still checked against its manifest)",
            fetch::redact(&fetch::sidecar_url(url, ".sha256"))
        ));
    }
    Ok(digests)
}

/// A URL's signature (`--signature`, a file or a URL, else the `.minisig`
/// beside it on the store), read before the download: who signed, and the
/// check the stream must pass as it arrives.
fn url_signature(
    request: &Request,
    url: &str,
    fetcher: &Fetcher,
    trust: &Trust,
    name: &Path,
) -> Result<(SignatureInfo, Box<dyn Observer>)> {
    let (text, sig_shown) = match request.signature {
        Some(path) if !fetch::is_url(path) => {
            (signature::read_sig_file(path)?, path.display().to_string())
        }
        other => {
            let sig_url = match other {
                Some(u) => u.to_string_lossy().into_owned(),
                None => fetch::sidecar_url(url, signature::SIG_SUFFIX),
            };
            let text = fetcher.small(&sig_url, Doing::Signature, signature::MAX_SIG_BYTES)?;
            (text, fetch::redact(&sig_url))
        }
    };
    let Some(text) = text else {
        return Err(refused(name, trust.unsigned(&sig_shown)));
    };
    let expected = trust
        .expect(&text, &sig_shown)
        .map_err(|why| refused(name, why))?;
    let info = expected.info.clone();
    let check = expected.stream().map_err(|why| refused(name, why))?;
    Ok((info, Box::new(check)))
}

/// The most bytes an honest artifact with this manifest can have: its tar
/// stream (headers, long names, contents in 512-byte blocks, the end
/// marker), plus what compression can add to incompressible data, plus a
/// margin.
pub fn max_artifact_bytes(manifest: &Manifest, manifest_json_len: usize) -> u64 {
    let block = |n: u64| n.div_ceil(512).saturating_mul(512);
    let long = |n: usize| {
        if n >= 100 {
            512 + block(n as u64 + 1)
        } else {
            0
        }
    };
    let mut tar: u64 = 512 + block(manifest_json_len as u64) + 2048;
    for e in &manifest.files {
        let size = if e.kind == EntryType::File {
            e.size()
        } else {
            0
        };
        let target = e.target.as_deref().map_or(0, str::len);
        tar = tar
            .saturating_add(512)
            .saturating_add(long(e.path.len() + 1))
            .saturating_add(long(target))
            .saturating_add(block(size));
    }
    tar.saturating_add(tar / 64).saturating_add(1 << 20)
}

impl SourceCheck {
    /// Once the manifest is read: a URL's body may be no larger than an
    /// artifact with this manifest.
    pub fn manifest_read(&self, manifest: &Manifest, json_len: usize) {
        if let Some(bound) = &self.bound {
            bound.set(max_artifact_bytes(manifest, json_len));
        }
    }

    /// Whether progress shows the download (so the per-member bar is not needed).
    pub fn shows_download(&self) -> bool {
        self.url.is_some()
    }

    /// Bytes of the URL's body read.
    pub fn downloaded_bytes(&self) -> Option<u64> {
        self.downloaded.as_ref().map(Downloaded::get)
    }

    /// A handle that turns an install's error into the download's failure
    /// when the download failed first (whatever reader then met it).
    pub fn failure(&self) -> DownloadFailure {
        DownloadFailure {
            failure: self.failure.clone(),
            url: self.url.clone(),
            downloaded: self.downloaded.clone(),
        }
    }

    /// Where the artifact came from and what vouched for it, for the report.
    pub fn provenance(&self) -> Provenance {
        Provenance {
            signed_by: self.signature.as_ref().map(|s| s.key_id.to_string()),
            url: self.url.clone(),
            downloaded_bytes: self.downloaded_bytes(),
        }
    }

    /// Check what the whole stream proved; returns the artifact's sha256.
    pub fn verify(&self, finished: Finished) -> Result<String> {
        let digest = finished.sha256;
        for (source, want) in &self.digests {
            if &digest != want {
                return Err(ArtifactError::DigestMismatch {
                    artifact: self.name.clone(),
                    digest,
                    source: source.clone(),
                    want: want.clone(),
                }
                .into());
            }
        }
        if let Some(signed) = &self.signed_sha256 {
            if &digest != signed {
                return Err(refused(&self.name, Refusal::ChangedMeanwhile));
            }
        }
        if let Some(Err(verdict)) = finished.observed {
            let why = match verdict.downcast::<Refusal>() {
                Ok(refusal) => *refusal,
                Err(other) => Refusal::Unreadable {
                    error: other.to_string(),
                },
            };
            return Err(refused(&self.name, why));
        }
        Ok(digest)
    }
}

/// See [`SourceCheck::failure`].
pub struct DownloadFailure {
    failure: Option<Failure>,
    /// For a URL: the redacted URL and the bytes read.
    url: Option<String>,
    downloaded: Option<Downloaded>,
}

impl DownloadFailure {
    /// The download's own failure when there was one: whatever reader met
    /// it first (decompression, the tar parser) gives a vaguer message. A
    /// URL's body that ended cleanly in the middle of the artifact is the
    /// download's failure too: fetching again (after the store is fixed)
    /// is the fix, not copying a file.
    pub fn explain(&self, err: Error) -> Error {
        if let Some(failure) = self.failure.as_ref().and_then(Failure::get) {
            return FetchError::Download(failure).into();
        }
        match (err, &self.url) {
            (Error::Artifact(ArtifactError::CorruptArchive { after, error, .. }), Some(url)) => {
                FetchError::EndedEarly {
                    url: url.clone(),
                    bytes: self.downloaded.as_ref().map_or(0, Downloaded::get),
                    after,
                    error,
                }
                .into()
            }
            (err, _) => err,
        }
    }
}
