//! Artifacts from a URL: requests that fail, bodies that stop, sidecars that
//! are not what they should be. URLs here are already redacted.

use std::fmt;

use super::Explain;
use crate::archive::ChecksumFileProblem;

/// What a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doing {
    Artifact,
    Checksum,
    Signature,
}

impl fmt::Display for Doing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Doing::Artifact => "downloading",
            Doing::Checksum => "downloading the checksum",
            Doing::Signature => "downloading the signature",
        })
    }
}

/// Why an artifact's body stopped being read.
#[derive(Debug, Clone)]
pub enum Cause {
    /// Nothing came for the timeout.
    Stalled {
        secs: f64,
    },
    /// The connection ended before the Content-Length.
    Truncated {
        declared: Option<u64>,
        error: String,
    },
    /// More bytes than the Content-Length declares.
    LongerThanDeclared {
        declared: u64,
    },
    /// More bytes than an artifact with the manifest can have.
    BeyondManifest {
        bound: u64,
    },
    Other(String),
}

/// A download that failed after its body began.
#[derive(Debug, Clone)]
pub struct DownloadFailure {
    pub url: String,
    /// Bytes of the body read before it failed.
    pub after: u64,
    pub cause: Cause,
}

impl fmt::Display for DownloadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "downloading {} failed after {} bytes: ",
            self.url, self.after
        )?;
        match &self.cause {
            Cause::Stalled { secs } => {
                write!(f, "the server sent nothing for {secs}s (--fetch-timeout)")
            }
            Cause::Truncated {
                declared: Some(declared),
                error,
            } => write!(
                f,
                "the body is truncated: the connection ended before the {declared} bytes its Content-Length declares ({error})"
            ),
            Cause::Truncated {
                declared: None,
                error,
            } => write!(f, "the body is truncated ({error})"),
            Cause::LongerThanDeclared { declared } => write!(
                f,
                "the body is longer than the {declared} bytes its Content-Length declares"
            ),
            Cause::BeyondManifest { bound } => write!(
                f,
                "the body is longer than the {bound} bytes an artifact of this manifest can take"
            ),
            Cause::Other(error) => f.write_str(error),
        }
    }
}

impl std::error::Error for DownloadFailure {}

#[derive(Debug)]
pub enum FetchError {
    /// A status that trying again will not change (4xx other than 404 for a sidecar).
    Status {
        doing: Doing,
        url: String,
        status: u16,
        reason: String,
        /// The URL has a query string (a presigned URL, a token).
        query: bool,
    },
    /// The artifact itself is not there (404/410).
    NotFound { url: String },
    /// Connection errors, timeouts or 5xx on every attempt.
    GaveUp {
        doing: Doing,
        url: String,
        cause: String,
        attempts: u32,
    },
    /// A failure trying again will not change (DNS, TLS, redirects, the URL).
    Failed {
        doing: Doing,
        url: String,
        cause: String,
        tls: bool,
    },
    /// A sidecar's body could not be read.
    SidecarBody {
        doing: Doing,
        url: String,
        error: String,
    },
    /// `URL.sha256` is not a checksum file for the artifact.
    BadChecksum {
        url: String,
        reason: ChecksumFileProblem,
    },
    /// No CA certificates to check an https server with.
    NoRoots { error: String },
    /// The artifact's body failed while it streamed.
    Download(DownloadFailure),
    /// The body ended without an error from the server or the connection,
    /// but the artifact in it had not: a store serving a short file (or a
    /// Content-Length smaller than the file), or a corrupt one.
    EndedEarly {
        url: String,
        /// Bytes of the body read.
        bytes: u64,
        /// The last member read whole, and what the archive reader said.
        after: String,
        error: String,
    },
}

impl Explain for FetchError {
    fn what(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FetchError::*;
        match self {
            Status {
                doing,
                url,
                status,
                reason,
                ..
            } => write!(f, "{doing} {url}: the server answered {status} {reason}"),
            NotFound { url } => write!(
                f,
                "{} {url}: the server answered 404 Not Found",
                Doing::Artifact
            ),
            GaveUp {
                doing,
                url,
                cause,
                attempts,
            } => write!(f, "{doing} {url}: {cause} ({attempts} attempts)"),
            Failed {
                doing, url, cause, ..
            } => write!(f, "{doing} {url}: {cause}"),
            SidecarBody { doing, url, error } => write!(f, "{doing} {url}: {error}"),
            BadChecksum { url, reason } => write!(f, "{url}: {reason}"),
            NoRoots { error } => {
                write!(f, "no CA certificates to check https servers with: {error}")
            }
            Download(failure) => write!(f, "{failure}"),
            EndedEarly {
                url,
                bytes,
                after,
                error,
            } => write!(
                f,
                "{} {url}: the body ended after {bytes} bytes, but the artifact in it is truncated or corrupt after member `{after}`: {error}",
                Doing::Artifact
            ),
        }
    }

    fn outcome(&self) -> Option<&'static str> {
        Some("nothing was installed")
    }

    fn fix(&self) -> Option<String> {
        use FetchError::*;
        let fix = match self {
            Status {
                status: 401 | 403,
                query: true,
                ..
            } => "the URL's credentials are refused or expired: make a fresh presigned URL (a presigned URL covers one object, so pass --sha256 and --signature for its sidecars)",
            Status {
                status: 401 | 403, ..
            } => "give credentials the store accepts (user:password@ in the URL, or a presigned URL)",
            Status { .. } => "check the URL",
            NotFound { .. } => "check the URL (was the artifact uploaded?)",
            GaveUp { .. } => "check that the store is up and reachable from this host, then run this again",
            Failed { tls: true, .. } => "make the server's certificate one this host trusts: install its CA into the system's roots (ca-certificates), or point SSL_CERT_FILE at a PEM bundle that has it",
            Failed { .. } => "check the URL and that the store is reachable from this host",
            SidecarBody { .. } => "check the file on the store",
            BadChecksum { .. } => "upload the .sha256 that `release build` wrote beside the artifact, or pass --sha256",
            NoRoots { .. } => "install the ca-certificates package, or point SSL_CERT_FILE at a PEM bundle",
            Download(_) => "check what the store serves at this URL (the artifact `release build` wrote, whole; `curl -o /dev/null URL` shows what arrives), then run this again",
            EndedEarly { .. } => "check what the store serves at this URL (the artifact `release build` wrote, whole, with its own size as Content-Length; `curl -o /dev/null URL` shows what arrives), then fetch it again",
        };
        Some(fix.into())
    }
}
