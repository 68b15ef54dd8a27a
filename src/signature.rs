//! minisign signatures of artifacts: `release build --sign KEY` writes
//! `<artifact>.minisig`; a host whose `release.toml` lists keys under
//! `[trust] minisign_keys` installs only artifacts signed by one of them.
//!
//! The cryptography is the `minisign` crate's (signing, with secret keys made
//! by `minisign -G`, password-protected or not) and the `minisign-verify`
//! crate's (verifying, streaming for the default prehashed format). The files
//! are the minisign CLI's: `minisign -V` checks what `build --sign` writes,
//! and what `minisign -S` writes (prehashed, or legacy with `-l`) installs.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use fs_err as fs;
use sha2::{Digest, Sha256};

use crate::error::{KeyProblem, Refusal, Result, SignatureError};

/// The signature file of an artifact is the artifact's name plus this.
pub const SIG_SUFFIX: &str = ".minisig";

/// A legacy (not prehashed) signature covers the whole file, which is read
/// into memory to check it; larger artifacts must use the default format.
pub const MAX_LEGACY_BYTES: u64 = 512 * 1024 * 1024;

/// A signature file is four short lines; anything larger is not one.
pub const MAX_SIG_BYTES: u64 = 64 * 1024;

/// The environment variable `build --sign` reads a key's password from.
pub const PASSWORD_ENV: &str = "RELEASE_SIGN_PASSWORD";

/// A minisign key id as the minisign CLI prints it: 16 upper-case hex
/// digits of the 8 id bytes read as a little-endian number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyId([u8; 8]);

impl KeyId {
    fn from_slice(bytes: &[u8]) -> Option<KeyId> {
        Some(KeyId(bytes.try_into().ok()?))
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

/// `<artifact>.minisig`.
pub fn sig_path(artifact: &Path) -> PathBuf {
    PathBuf::from(format!("{}{SIG_SUFFIX}", artifact.display()))
}

/// One key of `[trust] minisign_keys`.
#[derive(Debug, Clone)]
struct TrustedKey {
    key: minisign_verify::PublicKey,
    id: KeyId,
}

/// The keys a host trusts; empty means signatures are not required.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    keys: Vec<TrustedKey>,
}

impl Trust {
    /// Parse the keys of `[trust] minisign_keys`: each the base64 line of a
    /// minisign `.pub` file (its second line).
    pub fn parse(entries: &[String]) -> std::result::Result<Trust, BadKey> {
        let mut keys: Vec<TrustedKey> = Vec::new();
        for entry in entries {
            let text = entry.trim();
            if text.starts_with("untrusted comment:") || text.contains('\n') {
                return Err(BadKey::WholeFile(text.to_string()));
            }
            let not_a_key = || BadKey::NotAKey(text.to_string());
            let key = minisign_verify::PublicKey::from_base64(text).map_err(|_| not_a_key())?;
            let parsed = minisign::PublicKey::from_base64(text).map_err(|_| not_a_key())?;
            let id = KeyId::from_slice(parsed.keynum()).ok_or_else(not_a_key)?;
            if keys.iter().any(|k| k.id == id) {
                return Err(BadKey::DuplicateId(id));
            }
            keys.push(TrustedKey { key, id });
        }
        Ok(Trust { keys })
    }

    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The trusted key ids, for messages.
    pub fn ids(&self) -> String {
        self.keys
            .iter()
            .map(|k| k.id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Match a signature file's text (read from `source`) to a trusted key.
    pub fn expect(&self, text: &str, source: &str) -> std::result::Result<Expected, Refusal> {
        let not_one = |reason: String| Refusal::NotASignature {
            sig: source.to_string(),
            reason,
        };
        let info = SignatureInfo::parse(text).map_err(|e| not_one(e.0))?;
        let signature =
            minisign_verify::Signature::decode(text).map_err(|e| not_one(e.to_string()))?;
        let Some(trusted) = self.keys.iter().find(|k| k.id == info.key_id) else {
            return Err(Refusal::UntrustedKey {
                sig: source.to_string(),
                key_id: info.key_id,
                trusted: self.ids(),
            });
        };
        Ok(Expected {
            key: trusted.key.clone(),
            signature,
            info,
        })
    }

    /// The refusal of an artifact without a signature at `sig`.
    pub fn unsigned(&self, sig: &str) -> Refusal {
        Refusal::Unsigned {
            sig: sig.to_string(),
            trusted: self.ids(),
        }
    }
}

/// A `[trust] minisign_keys` entry that is not a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadKey {
    WholeFile(String),
    NotAKey(String),
    DuplicateId(KeyId),
}

impl std::fmt::Display for BadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const GIVE: &str = "give the second line of a minisign .pub file (`tail -1 minisign.pub`, it starts with RW)";
        match self {
            BadKey::WholeFile(text) => {
                write!(
                    f,
                    "[trust] minisign_keys: {text:?} is a whole .pub file; {GIVE}"
                )
            }
            BadKey::NotAKey(text) => write!(
                f,
                "[trust] minisign_keys: {text:?} is not a minisign public key; {GIVE}"
            ),
            BadKey::DuplicateId(id) => {
                write!(f, "[trust] minisign_keys lists the key id {id} twice")
            }
        }
    }
}

/// What a signature file says about itself (nothing here is verified).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SignatureInfo {
    #[serde(serialize_with = "key_id_string")]
    pub key_id: KeyId,
    /// Prehashed (minisign's default) or legacy (`minisign -S -l`).
    pub prehashed: bool,
    pub trusted_comment: String,
}

fn key_id_string<S: serde::Serializer>(id: &KeyId, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_string())
}

impl SignatureInfo {
    /// `Err` is why the text is not a minisign signature.
    pub fn parse(text: &str) -> std::result::Result<SignatureInfo, NotASignature> {
        let boxed =
            minisign::SignatureBox::from_string(text).map_err(|e| NotASignature(e.to_string()))?;
        let key_id = KeyId::from_slice(boxed.keynum())
            .ok_or_else(|| NotASignature("no key id".to_string()))?;
        Ok(SignatureInfo {
            key_id,
            prehashed: boxed.is_prehashed(),
            trusted_comment: boxed.trusted_comment().unwrap_or_default(),
        })
    }

    /// Read `<artifact>.minisig` when it exists.
    pub fn beside(artifact: &Path) -> Result<Option<(PathBuf, SignatureInfo)>> {
        let path = sig_path(artifact);
        let text = match read_sig_file(&path)? {
            Some(text) => text,
            None => return Ok(None),
        };
        let info = SignatureInfo::parse(&text).map_err(|reason| SignatureError::BadFile {
            path: path.clone(),
            reason: reason.0,
        })?;
        Ok(Some((path, info)))
    }
}

/// Why a text is not a minisign signature (the minisign crate's words).
#[derive(Debug, Clone)]
pub struct NotASignature(pub String);

/// Read a signature file, bounded; `None` when it does not exist.
pub fn read_sig_file(path: &Path) -> Result<Option<String>> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut text = String::new();
    file.take(MAX_SIG_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| SignatureError::BadFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(Some(text))
}

/// A signature matched to the trusted key that must have made it; the
/// artifact's bytes are still to be checked.
#[derive(Clone)]
pub struct Expected {
    key: minisign_verify::PublicKey,
    signature: minisign_verify::Signature,
    pub info: SignatureInfo,
}

impl Expected {
    /// Check a local file against the signature, before anything of it is
    /// unpacked; returns the sha256 of the bytes checked, so the install can
    /// make sure it unpacked those same bytes.
    pub fn verify_file(&self, path: &Path) -> std::result::Result<String, Refusal> {
        let unreadable = |e: io::Error| Refusal::Unreadable {
            error: e.to_string(),
        };
        let mut file = fs::File::open(path).map_err(unreadable)?;
        let mut sha = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        if self.info.prehashed {
            let mut verifier = self
                .key
                .verify_stream(&self.signature)
                .map_err(|_| Refusal::Mismatch)?;
            loop {
                let n = match file.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(unreadable(e)),
                };
                verifier.update(&buffer[..n]);
                sha.update(&buffer[..n]);
            }
            verifier.finalize().map_err(|_| Refusal::Mismatch)?;
        } else {
            let mut bytes = Vec::new();
            (&mut file)
                .take(MAX_LEGACY_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(unreadable)?;
            if bytes.len() as u64 > MAX_LEGACY_BYTES {
                return Err(Refusal::LegacyTooLarge {
                    limit_mib: MAX_LEGACY_BYTES >> 20,
                });
            }
            self.key
                .verify(&bytes, &self.signature, true)
                .map_err(|_| Refusal::Mismatch)?;
            sha.update(&bytes);
        }
        Ok(hex::encode(sha.finalize()))
    }

    /// A check of the signature over bytes seen one chunk at a time (an
    /// artifact streamed from a URL); legacy signatures cannot be.
    pub fn stream(self) -> std::result::Result<StreamCheck, Refusal> {
        if !self.info.prehashed {
            return Err(Refusal::LegacyWhileStreaming);
        }
        // minisign-verify's StreamVerifier only borrows the key and the
        // signature (it has no owning form), and it lives on the stream's
        // own thread for as long as the artifact streams. One install checks
        // one signature, so these few hundred bytes are kept for the life of
        // the process rather than tied to a lifetime the thread cannot name.
        let owned: &'static Expected = Box::leak(Box::new(self));
        let verifier = owned
            .key
            .verify_stream(&owned.signature)
            .map_err(|_| Refusal::Mismatch)?;
        Ok(StreamCheck { verifier })
    }
}

/// A signature check fed the artifact's bytes as they arrive.
pub struct StreamCheck {
    verifier: minisign_verify::StreamVerifier<'static>,
}

impl StreamCheck {
    pub fn update(&mut self, bytes: &[u8]) {
        self.verifier.update(bytes);
    }

    pub fn finish(mut self) -> std::result::Result<(), Refusal> {
        self.verifier.finalize().map_err(|_| Refusal::Mismatch)
    }
}

/// A secret key loaded for `build --sign`, ready before the build starts so
/// a wrong password fails at once, not after the build.
pub struct Signer {
    key: minisign::SecretKey,
    public: Option<minisign::PublicKey>,
    pub key_id: KeyId,
}

impl Signer {
    /// Load a secret key written by `minisign -G`; a password-protected one
    /// takes its password from RELEASE_SIGN_PASSWORD, else from a prompt on
    /// the terminal.
    pub fn load(path: &Path) -> Result<Signer> {
        let problem = |problem: KeyProblem| SignatureError::Key {
            key: path.to_path_buf(),
            problem,
        };
        let text =
            fs::read_to_string(path).map_err(|e| problem(KeyProblem::Unreadable(e.to_string())))?;
        if !text.starts_with("untrusted comment:") || text.lines().count() < 2 {
            return Err(problem(KeyProblem::NotASecretKey(
                "it does not start with `untrusted comment:` and a key line".into(),
            ))
            .into());
        }
        let key = match minisign::SecretKey::from_unencrypted_box(text.clone().into()) {
            Ok(key) => key,
            Err(e) if e.to_string().contains("encrypted") => {
                let password = password(path)?;
                minisign::SecretKey::from_box(text.into(), Some(password)).map_err(|e| {
                    if e.to_string().contains("Wrong password") {
                        problem(KeyProblem::WrongPassword)
                    } else {
                        problem(KeyProblem::NotASecretKey(e.to_string()))
                    }
                })?
            }
            Err(e) => return Err(problem(KeyProblem::NotASecretKey(e.to_string())).into()),
        };
        let public = minisign::PublicKey::from_secret_key(&key).ok();
        let key_id = KeyId::from_slice(key.keynum())
            .ok_or_else(|| problem(KeyProblem::NotASecretKey("no key id".into())))?;
        Ok(Signer {
            key,
            public,
            key_id,
        })
    }

    /// Sign `artifact` and write `<artifact>.minisig` (atomically); returns its path.
    pub fn sign(&self, artifact: &Path) -> Result<PathBuf> {
        let name = artifact
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // The trusted comment the minisign CLI writes for a prehashed signature.
        let trusted = format!("timestamp:{timestamp}\tfile:{name}\thashed");
        let file = io::BufReader::with_capacity(1 << 20, fs::File::open(artifact)?);
        let signature = minisign::sign(
            self.public.as_ref(),
            &self.key,
            file,
            Some(&trusted),
            Some("signature from release secret key"),
        )
        .map_err(|e| SignatureError::Signing {
            artifact: artifact.to_path_buf(),
            error: e.to_string(),
        })?;
        let path = sig_path(artifact);
        crate::fsutil::write_atomic(&path, signature.into_string().as_bytes())?;
        Ok(path)
    }
}

/// The key's password: RELEASE_SIGN_PASSWORD, else a prompt on the terminal.
fn password(path: &Path) -> Result<String> {
    let problem = |problem: KeyProblem| SignatureError::Key {
        key: path.to_path_buf(),
        problem,
    };
    if let Some(password) = std::env::var_os(PASSWORD_ENV) {
        return password.into_string().map_err(|_| {
            problem(KeyProblem::PasswordUnreadable(format!(
                "{PASSWORD_ENV} is not UTF-8"
            )))
            .into()
        });
    }
    use std::io::IsTerminal;
    if !io::stdin().is_terminal() {
        return Err(problem(KeyProblem::NoPassword).into());
    }
    rpassword::prompt_password(format!("password for {}: ", path.display()))
        .map_err(|e| problem(KeyProblem::PasswordUnreadable(e.to_string())).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_read_like_minisign_prints_them() {
        let id = KeyId([0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01]);
        assert_eq!(id.to_string(), "0123456789ABCDEF");
    }

    #[test]
    fn trust_refuses_what_is_not_a_key() {
        assert_eq!(
            Trust::parse(&["RWQnot-a-key".into()]).unwrap_err(),
            BadKey::NotAKey("RWQnot-a-key".into())
        );
        assert!(matches!(
            Trust::parse(&["untrusted comment: minisign public key 1\nRWQ".into()]),
            Err(BadKey::WholeFile(_))
        ));
        assert!(!Trust::parse(&[]).unwrap().required());
    }
}
