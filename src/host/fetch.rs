//! Artifacts from a store: the body of an `http://` or `https://` URL as a
//! [`Read`], for `install` to decompress, check and unpack as it arrives
//! (no copy on disk). HTTP is ureq's: rustls with the system's roots
//! (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured), proxies from
//! `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` minus `NO_PROXY`.
//!
//! * Timeouts: one value (`--fetch-timeout`, default 30 s) bounds the DNS
//!   lookup, the connection (TLS included), the wait for the response head
//!   and every wait between two reads of the body.
//! * Redirects: at most [`MAX_REDIRECTS`]; credentials are not sent on.
//! * Retries: a connection that fails, a timeout and a 5xx status are tried
//!   again, [`ATTEMPTS`] times in all with a doubling pause, but only before
//!   the first byte of the body is handed over: once the body streams into
//!   the release, a failure ends the install (nothing is left).
//! * Size: the body may not exceed its `Content-Length`, nor the bound the
//!   caller sets once the manifest is read ([`Body::bound`]).
//! * Messages name the URL with its credentials and query values redacted.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Cause, Doing, DownloadFailure, FetchError, Result};

/// Attempts of one request before giving up (connection errors, timeouts, 5xx).
pub const ATTEMPTS: u32 = 4;

/// Pause before the second attempt; doubled for each later one.
const FIRST_PAUSE: Duration = Duration::from_millis(500);

/// Redirects followed before refusing.
pub const MAX_REDIRECTS: u32 = 5;

/// The default of `--fetch-timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether an artifact argument names a URL rather than a file.
pub fn is_url(artifact: &std::path::Path) -> bool {
    artifact
        .to_str()
        .is_some_and(|s| s.starts_with("http://") || s.starts_with("https://"))
}

/// The URL for messages: `user:password@` becomes `***@`, and each query
/// value (a presigned URL's signature, a token) becomes `***`.
pub fn redact(url: &str) -> String {
    let (before_fragment, _) = url.split_once('#').unwrap_or((url, ""));
    let (base, query) = match before_fragment.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (before_fragment, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            match authority.rfind('@') {
                Some(at) => format!("{scheme}://***@{}{path}", &authority[at + 1..]),
                None => base.to_string(),
            }
        }
        None => base.to_string(),
    };
    if let Some(query) = query {
        let parts: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) => format!("{name}=***"),
                None => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&parts.join("&"));
    }
    out
}

/// The URL of a sidecar (`.sha256`, `.minisig`): the suffix goes at the end
/// of the path, before any query string.
pub fn sidecar_url(url: &str, suffix: &str) -> String {
    let (before_fragment, _) = url.split_once('#').unwrap_or((url, ""));
    match before_fragment.split_once('?') {
        Some((base, query)) => format!("{base}{suffix}?{query}"),
        None => format!("{before_fragment}{suffix}"),
    }
}

/// What went wrong with a request, in words, and whether trying again may help.
fn describe(err: &ureq::Error) -> (String, bool) {
    use ureq::Error as E;
    match err {
        E::HostNotFound => ("the host name does not resolve (DNS)".into(), false),
        E::ConnectionFailed => ("the connection failed".into(), true),
        E::Timeout(what) => (format!("timed out ({what})"), true),
        E::TooManyRedirects => (
            format!("more than {MAX_REDIRECTS} redirects (a redirect loop?)"),
            false,
        ),
        E::RedirectFailed => ("a redirect without a usable Location".into(), false),
        E::BadUri(why) => (format!("not a usable URL: {why}"), false),
        E::Tls(why) => (format!("TLS: {why}"), false),
        E::Rustls(why) => (format!("TLS: {why}"), false),
        E::Pem(why) => (format!("TLS certificates: {why}"), false),
        E::Io(e) if e.to_string().contains("certificate") => (format!("TLS: {e}"), false),
        E::Io(e) => {
            let retry = matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::NotConnected
            );
            let what = match e.kind() {
                io::ErrorKind::ConnectionRefused => "the connection was refused".to_string(),
                io::ErrorKind::ConnectionReset => "the connection was reset".to_string(),
                _ => e.to_string(),
            };
            (what, retry)
        }
        E::Protocol(why) => (format!("not a valid HTTP response: {why}"), true),
        other => (other.to_string(), false),
    }
}

/// An HTTP(S) client for artifacts and their sidecars.
pub struct Fetcher {
    agent: ureq::Agent,
    pub timeout: Duration,
}

impl Fetcher {
    pub fn new(timeout: Duration, https: bool) -> Result<Fetcher> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(MAX_REDIRECTS)
            .max_redirects_will_error(true)
            // The artifact's own bytes: no transparent decompression.
            .accept_encoding(ureq::config::AutoHeaderValue::None)
            .user_agent(concat!("release/", env!("CARGO_PKG_VERSION")))
            .timeout_resolve(Some(timeout))
            .timeout_connect(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .timeout_per_read(Some(timeout));
        if https {
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(system_roots()?)
                    .build(),
            );
        }
        Ok(Fetcher {
            agent: config.build().into(),
            timeout,
        })
    }

    /// GET `url`, trying again on connection errors, timeouts and 5xx.
    /// `Ok(None)` for a 404. Other statuses are errors naming the URL.
    fn get(&self, url: &str, doing: Doing) -> Result<Option<ureq::http::Response<ureq::Body>>> {
        let shown = redact(url);
        let mut pause = FIRST_PAUSE;
        let mut attempt = 1;
        loop {
            let failure = match self.agent.get(url).call() {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if (200..300).contains(&status) {
                        return Ok(Some(response));
                    }
                    if status == 404 || status == 410 {
                        return Ok(None);
                    }
                    let reason = response
                        .status()
                        .canonical_reason()
                        .unwrap_or("")
                        .to_string();
                    if status < 500 {
                        return Err(FetchError::Status {
                            doing,
                            url: shown,
                            status,
                            reason,
                            query: url.contains('?'),
                        }
                        .into());
                    }
                    format!("the server answered {status} {reason}")
                }
                Err(e) => {
                    let (cause, retry) = describe(&e);
                    if !retry {
                        return Err(FetchError::Failed {
                            doing,
                            url: shown,
                            tls: cause.starts_with("TLS"),
                            cause,
                        }
                        .into());
                    }
                    cause
                }
            };
            if attempt >= ATTEMPTS {
                return Err(FetchError::GaveUp {
                    doing,
                    url: shown,
                    cause: failure,
                    attempts: ATTEMPTS,
                }
                .into());
            }
            std::thread::sleep(pause);
            pause *= 2;
            attempt += 1;
        }
    }

    /// A small sidecar file (`.sha256`, `.minisig`): `Ok(None)` when absent (404).
    pub fn small(&self, url: &str, doing: Doing, max: u64) -> Result<Option<String>> {
        let Some(response) = self.get(url, doing)? else {
            return Ok(None);
        };
        let mut text = String::new();
        response
            .into_body()
            .into_with_config()
            .limit(max)
            .reader()
            .read_to_string(&mut text)
            .map_err(|e| FetchError::SidecarBody {
                doing,
                url: redact(url),
                error: body_error(&e),
            })?;
        Ok(Some(text))
    }

    /// The artifact's body, streaming.
    pub fn open(&self, url: &str, progress: indicatif::ProgressBar) -> Result<Body> {
        let shown = redact(url);
        let Some(response) = self.get(url, Doing::Artifact)? else {
            return Err(FetchError::NotFound { url: shown }.into());
        };
        let declared = response.body().content_length();
        match declared {
            Some(len) => progress.set_length(len),
            None => progress.set_style(
                indicatif::ProgressStyle::with_template("{msg:>12} {bytes} {bytes_per_sec}")
                    .expect("valid template"),
            ),
        }
        let counter = Arc::new(AtomicU64::new(0));
        Ok(Body {
            failure: Failure::default(),
            reader: Box::new(response.into_body().into_reader()),
            shown,
            declared,
            read: 0,
            bound: Bound(Arc::new(AtomicU64::new(u64::MAX))),
            counter: Downloaded(counter),
            progress,
            timeout: self.timeout,
        })
    }
}

/// The roots TLS trusts: the system's (`/etc/ssl/certs`, or `SSL_CERT_FILE`
/// / `SSL_CERT_DIR` when set).
fn system_roots() -> Result<ureq::tls::RootCerts> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let error = found
            .errors
            .first()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "none found".into());
        return Err(FetchError::NoRoots { error }.into());
    }
    let certs: Vec<ureq::tls::Certificate<'static>> = found
        .certs
        .iter()
        .map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned())
        .collect();
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

/// A body read failure in words.
fn body_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            format!("the server stopped sending ({e})")
        }
        io::ErrorKind::UnexpectedEof => format!("the body is truncated ({e})"),
        _ => e.to_string(),
    }
}

/// The most bytes the body may have; lowered once the manifest is read.
#[derive(Clone)]
pub struct Bound(Arc<AtomicU64>);

impl Bound {
    pub fn set(&self, bytes: u64) {
        self.0.fetch_min(bytes, Ordering::Relaxed);
    }
}

/// Bytes of the body read so far.
#[derive(Clone)]
pub struct Downloaded(Arc<AtomicU64>);

impl Downloaded {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The first failure of a download, kept for the message: the reader that
/// meets it (decompression, the tar parser) only passes on its text.
#[derive(Clone, Default)]
pub struct Failure(Arc<std::sync::Mutex<Option<DownloadFailure>>>);

impl Failure {
    pub fn get(&self) -> Option<DownloadFailure> {
        self.0.lock().ok().and_then(|f| f.clone())
    }

    fn set(&self, failure: &DownloadFailure) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert_with(|| failure.clone());
        }
    }
}

/// The body of an artifact's URL.
pub struct Body {
    failure: Failure,
    reader: Box<dyn Read + Send>,
    shown: String,
    declared: Option<u64>,
    read: u64,
    bound: Bound,
    counter: Downloaded,
    progress: indicatif::ProgressBar,
    timeout: Duration,
}

impl Body {
    /// A handle that lowers the size bound while the body streams.
    pub fn bound(&self) -> Bound {
        self.bound.clone()
    }

    /// A handle on the count of bytes read.
    pub fn downloaded(&self) -> Downloaded {
        self.counter.clone()
    }

    /// A handle on the download's failure, once there is one.
    pub fn failure(&self) -> Failure {
        self.failure.clone()
    }

    fn fail(&self, cause: Cause) -> io::Error {
        let failure = DownloadFailure {
            url: self.shown.clone(),
            after: self.read,
            cause,
        };
        self.failure.set(&failure);
        io::Error::other(failure)
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.reader.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let timed_out = matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) || e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<ureq::Error>())
                    .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)));
                let cause = if timed_out {
                    Cause::Stalled {
                        secs: self.timeout.as_secs_f64(),
                    }
                } else if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                ) || e.to_string().contains("disconnected")
                {
                    Cause::Truncated {
                        declared: self.declared,
                        error: e.to_string(),
                    }
                } else {
                    Cause::Other(e.to_string())
                };
                return Err(self.fail(cause));
            }
        };
        self.read += n as u64;
        if let Some(declared) = self.declared {
            if self.read > declared {
                return Err(self.fail(Cause::LongerThanDeclared { declared }));
            }
            if n == 0 && self.read < declared {
                return Err(self.fail(Cause::Truncated {
                    declared: Some(declared),
                    error: format!("{} bytes came", self.read),
                }));
            }
        }
        let bound = self.bound.0.load(Ordering::Relaxed);
        if self.read > bound {
            return Err(self.fail(Cause::BeyondManifest { bound }));
        }
        self.counter.0.store(self.read, Ordering::Relaxed);
        self.progress.set_position(self.read);
        if n == 0 {
            self.progress.finish_and_clear();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials_and_query_values() {
        assert_eq!(
            redact("https://ci:s3cret@store.example/a/b.tar.zst"),
            "https://***@store.example/a/b.tar.zst"
        );
        assert_eq!(
            redact("https://bucket.s3.amazonaws.com/app.tar.zst?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abcd#frag"),
            "https://bucket.s3.amazonaws.com/app.tar.zst?X-Amz-Credential=***&X-Amz-Signature=***"
        );
        assert_eq!(redact("http://h:8080/x"), "http://h:8080/x");
    }

    #[test]
    fn sidecars_go_before_the_query() {
        assert_eq!(
            sidecar_url("http://h/a.tar.zst?t=1", ".sha256"),
            "http://h/a.tar.zst.sha256?t=1"
        );
        assert_eq!(
            sidecar_url("http://h/a.tar.zst", ".minisig"),
            "http://h/a.tar.zst.minisig"
        );
    }
}
