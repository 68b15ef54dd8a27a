//! minisign signatures: an artifact a host refuses, a key `build --sign`
//! cannot use, a signature file that is not one.

use std::fmt;
use std::path::PathBuf;

use super::Explain;
use crate::signature::KeyId;

/// How to get an artifact a host with `[trust]` accepts.
const SIGN_FIX: &str = "install an artifact signed by a trusted key (`release build --sign KEY`, or `minisign -S -s KEY -m ARTIFACT`), or add its key to [trust] minisign_keys in release.toml";

const PREHASHED_FIX: &str =
    "sign it in the default (prehashed) format: `minisign -S` without -l, or `release build --sign`";

/// Why a host refuses an artifact's signature.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// No signature where it was looked for.
    Unsigned { sig: String, trusted: String },
    /// The signature file is not a minisign signature.
    NotASignature { sig: String, reason: String },
    /// Signed, by a key the host does not list.
    UntrustedKey {
        sig: String,
        key_id: KeyId,
        trusted: String,
    },
    /// The bytes are not the ones signed.
    Mismatch,
    /// A legacy signature over a file larger than is read into memory.
    LegacyTooLarge { limit_mib: u64 },
    /// A legacy signature on a streamed artifact.
    LegacyWhileStreaming,
    /// The file changed between the signature check and the unpacking.
    ChangedMeanwhile,
    /// The artifact could not be read for the check.
    Unreadable { error: String },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unsigned { sig, trusted } => write!(
                f,
                "it is unsigned ({sig} does not exist) and release.toml requires a signature by one of: {trusted}"
            ),
            Refusal::NotASignature { sig, reason } => {
                write!(f, "{sig} is not a minisign signature: {reason}")
            }
            Refusal::UntrustedKey {
                sig,
                key_id,
                trusted,
            } => write!(
                f,
                "{sig} is signed by key id {key_id}, which is not a trusted key (release.toml [trust] minisign_keys: {trusted})"
            ),
            Refusal::Mismatch => f.write_str("the signature does not match the artifact's bytes (the artifact was changed after it was signed, or the signature belongs to another artifact)"),
            Refusal::LegacyTooLarge { limit_mib } => write!(
                f,
                "the signature is in minisign's legacy format, which covers the whole file at once, and the artifact is larger than the {limit_mib} MiB read into memory for it"
            ),
            Refusal::LegacyWhileStreaming => f.write_str(
                "the signature is in minisign's legacy format, which cannot be checked while the artifact streams",
            ),
            Refusal::ChangedMeanwhile => {
                f.write_str("the file changed between the signature check and the unpacking")
            }
            Refusal::Unreadable { error } => write!(f, "cannot read it to check it: {error}"),
        }
    }
}

impl std::error::Error for Refusal {}

/// Why `build --sign KEY` cannot use the key.
#[derive(Debug, Clone)]
pub enum KeyProblem {
    Unreadable(String),
    NotASecretKey(String),
    WrongPassword,
    /// Password-protected, with neither RELEASE_SIGN_PASSWORD nor a terminal.
    NoPassword,
    PasswordUnreadable(String),
}

#[derive(Debug)]
pub enum SignatureError {
    /// A host that requires signatures refuses the artifact.
    Refused { artifact: PathBuf, why: Refusal },
    /// `--sign KEY` cannot be used.
    Key { key: PathBuf, problem: KeyProblem },
    /// Signing the artifact failed.
    Signing { artifact: PathBuf, error: String },
    /// `<artifact>.minisig` is not a signature (`release inspect`).
    BadFile { path: PathBuf, reason: String },
}

impl Explain for SignatureError {
    fn what(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::Refused { artifact, why } => {
                write!(f, "{}: signature refused: {why}", artifact.display())
            }
            SignatureError::Key { key, problem } => {
                write!(f, "--sign {}: ", key.display())?;
                match problem {
                    KeyProblem::Unreadable(error) => write!(f, "cannot read it: {error}"),
                    KeyProblem::NotASecretKey(reason) => {
                        write!(f, "not a minisign secret key ({reason})")
                    }
                    KeyProblem::WrongPassword => f.write_str("wrong password for this key"),
                    KeyProblem::NoPassword => f.write_str(
                        "the key is password-protected and there is no terminal to ask on",
                    ),
                    KeyProblem::PasswordUnreadable(error) => {
                        write!(f, "cannot read the password: {error}")
                    }
                }
            }
            SignatureError::Signing { artifact, error } => {
                write!(f, "signing {} failed: {error}", artifact.display())
            }
            SignatureError::BadFile { path, reason } => {
                write!(f, "{}: not a minisign signature: {reason}", path.display())
            }
        }
    }

    fn outcome(&self) -> Option<&'static str> {
        match self {
            SignatureError::Refused { .. } => Some("nothing was installed"),
            _ => None,
        }
    }

    fn fix(&self) -> Option<String> {
        let fix = match self {
            SignatureError::Refused { why, .. } => match why {
                Refusal::LegacyTooLarge { .. } | Refusal::LegacyWhileStreaming => PREHASHED_FIX,
                Refusal::ChangedMeanwhile => {
                    "make sure nothing writes the artifact while it installs, and run this again"
                }
                Refusal::Unreadable { .. } => "check the artifact file",
                _ => SIGN_FIX,
            },
            SignatureError::Key { problem, .. } => match problem {
                KeyProblem::WrongPassword => {
                    "set RELEASE_SIGN_PASSWORD to the key's password (the one given to `minisign -G`)"
                }
                KeyProblem::NoPassword => "set RELEASE_SIGN_PASSWORD to its password (in CI: from the secret store), or make a key without one (`minisign -G -W`)",
                KeyProblem::PasswordUnreadable(_) => "set RELEASE_SIGN_PASSWORD",
                _ => "pass a secret key made by `minisign -G` (the .key file, not the .pub)",
            },
            SignatureError::Signing { .. } => "check the key passed to --sign",
            SignatureError::BadFile { .. } => {
                "sign the artifact again (`release build --sign KEY` or `minisign -S -m ARTIFACT`)"
            }
        };
        Some(fix.into())
    }
}
