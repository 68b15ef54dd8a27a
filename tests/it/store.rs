//! Artifacts from a store and signatures: `release install URL` against a
//! real HTTP server on loopback (tests/it/store_server.py, honest and
//! hostile), and minisign signatures made and checked by the real
//! `minisign` CLI (Debian's package, installed by scripts/test-deps).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::*;
use crate::host::artifacts;

/// A host root in a temporary directory.
struct Root {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

impl Root {
    fn new() -> Root {
        let tmp = tempfile::Builder::new()
            .prefix("release-store-")
            .tempdir()
            .unwrap();
        let path = tmp.path().join("srv/mysite");
        std::fs::create_dir_all(&path).unwrap();
        Root { _tmp: tmp, path }
    }

    /// A root whose release.toml trusts `keys`.
    fn trusting(keys: &[&Key]) -> Root {
        let root = Root::new();
        let list: Vec<String> = keys.iter().map(|k| format!("{:?}", k.public)).collect();
        std::fs::write(
            root.path.join("release.toml"),
            format!("[trust]\nminisign_keys = [{}]\n", list.join(", ")),
        )
        .unwrap();
        root
    }

    fn run(&self, args: &[&str]) -> Output {
        release()
            .arg("--root")
            .arg(&self.path)
            .args(args)
            .output()
            .unwrap()
    }

    fn install(&self, artifact: &str, extra: &[&str]) -> Value {
        let mut args = vec!["--json", "install", artifact];
        args.extend_from_slice(extra);
        json_ok(&self.run(&args))
    }

    /// Refused with exit 1, naming each of `needles`, leaving nothing.
    fn refused(&self, artifact: &str, extra: &[&str], needles: &[&str]) -> String {
        let before = self.entries();
        let mut args = vec!["install", artifact];
        args.extend_from_slice(extra);
        let err = fails_with(&self.run(&args), 1);
        for needle in needles {
            assert!(err.contains(needle), "{needle:?} not in:\n{err}");
        }
        assert_eq!(self.entries(), before, "the install left something behind");
        err
    }

    /// Everything in releases/ (hidden entries too) and shared/.
    fn entries(&self) -> Vec<String> {
        let mut names = Vec::new();
        for dir in ["releases", "shared"] {
            if let Ok(read) = std::fs::read_dir(self.path.join(dir)) {
                for e in read {
                    names.push(format!(
                        "{dir}/{}",
                        e.unwrap().file_name().to_string_lossy()
                    ));
                }
            }
        }
        names.sort();
        names
    }

    /// A digest of an installed release's tree: every path, type, mode,
    /// link target and file content.
    fn tree_digest(&self, id: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.path.join("releases").join(id);
        let mut hasher = Sha256::new();
        for e in walkdir::WalkDir::new(&dir).sort_by_file_name() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(&dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == "install.json" {
                continue; // the time and the user of the install
            }
            let meta = e.path().symlink_metadata().unwrap();
            hasher.update(format!("{rel}\0{:o}\0", meta.permissions().mode()));
            if meta.file_type().is_symlink() {
                hasher.update(
                    std::fs::read_link(e.path())
                        .unwrap()
                        .as_os_str()
                        .as_encoded_bytes(),
                );
            } else if meta.is_file() {
                hasher.update(std::fs::read(e.path()).unwrap());
            }
            hasher.update(b"\n");
        }
        hex::encode(hasher.finalize())
    }
}

/// A minisign key pair made by `minisign -G`.
struct Key {
    public: String,
    pub_file: PathBuf,
    sec_file: PathBuf,
    password: Option<String>,
}

fn minisign(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("minisign")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run minisign (scripts/test-deps installs Debian's minisign package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "minisign {args:?} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

impl Key {
    /// A key pair in `dir`; with a password, the secret key is encrypted.
    fn new(dir: &Path, name: &str, password: Option<&str>) -> Key {
        let pub_file = dir.join(format!("{name}.pub"));
        let sec_file = dir.join(format!("{name}.key"));
        let (p, s) = (pub_file.to_str().unwrap(), sec_file.to_str().unwrap());
        match password {
            None => minisign(&["-G", "-W", "-p", p, "-s", s], ""),
            Some(pw) => minisign(&["-G", "-p", p, "-s", s], &format!("{pw}\n{pw}\n")),
        };
        let text = std::fs::read_to_string(&pub_file).unwrap();
        let public = text.lines().nth(1).unwrap().trim().to_string();
        Key {
            public,
            pub_file,
            sec_file,
            password: password.map(str::to_string),
        }
    }

    /// `minisign -S` of `file` (prehashed, or legacy with `-l`), writing `sig`.
    fn cli_sign(&self, file: &Path, sig: &Path, legacy: bool) {
        let password = self.password.clone().map(|p| p + "\n").unwrap_or_default();
        let mut args = vec![
            "-S",
            "-s",
            self.sec_file.to_str().unwrap(),
            "-m",
            file.to_str().unwrap(),
            "-x",
            sig.to_str().unwrap(),
        ];
        if legacy {
            args.push("-l");
        }
        minisign(&args, &password);
    }

    /// `minisign -V` of `file` against `sig`: whether it verifies.
    fn cli_verifies(&self, file: &Path, sig: &Path) -> bool {
        Command::new("minisign")
            .args(["-V", "-p"])
            .arg(&self.pub_file)
            .arg("-m")
            .arg(file)
            .arg("-x")
            .arg(sig)
            .output()
            .unwrap()
            .status
            .success()
    }
}

/// Copy `artifact` into `dir` under `name`, without its .sha256.
fn copy_as(artifact: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(artifact, &to).unwrap();
    to
}

fn sig_of(artifact: &Path) -> PathBuf {
    PathBuf::from(format!("{}.minisig", artifact.display()))
}

#[test]
fn signatures_by_trusted_keys_install_and_every_other_case_is_refused() {
    let art = artifacts();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ci = Key::new(dir, "ci", Some("correct horse"));
    let other = Key::new(dir, "other", None);

    // build --sign with a password-protected key (password from the
    // environment): minisign -V accepts the signature it writes.
    let app = App::new();
    let out = dir.join("dist");
    let sec = ci.sec_file.to_str().unwrap();
    let mut build = app.build_command(
        &out,
        &shared_cache(),
        &["--installer", "pip", "--sign", sec],
    );
    build.env("RELEASE_SIGN_PASSWORD", "correct horse");
    let report = json_ok(&build.output().unwrap());
    let signed = PathBuf::from(report["artifact"].as_str().unwrap());
    assert_eq!(
        PathBuf::from(report["signature"].as_str().unwrap()),
        sig_of(&signed)
    );
    assert!(
        ci.cli_verifies(&signed, &sig_of(&signed)),
        "minisign -V refused build --sign's signature"
    );
    assert!(!other.cli_verifies(&signed, &sig_of(&signed)));

    // A wrong password fails before the build, naming the fix.
    let mut wrong = release();
    wrong
        .current_dir(&app.dir)
        .args(["build", "--out"])
        .arg(dir.join("never"))
        .arg("--sign")
        .arg(&ci.sec_file)
        .env("RELEASE_SIGN_PASSWORD", "wrong");
    let err = fails_with(&wrong.output().unwrap(), 1);
    assert!(
        err.contains("wrong password") && err.contains("RELEASE_SIGN_PASSWORD"),
        "{err}"
    );
    assert!(!dir.join("never").exists());

    // inspect shows the key id minisign prints for the key.
    let key_id = report["key_id"].as_str().unwrap().to_string();
    let pub_text = std::fs::read_to_string(&ci.pub_file).unwrap();
    assert!(pub_text.contains(&key_id), "{key_id} not in {pub_text}");
    let inspected = json_ok(
        &release()
            .args(["--json", "inspect"])
            .arg(&signed)
            .output()
            .unwrap(),
    );
    assert_eq!(inspected["signature"]["key_id"], key_id.as_str());
    assert_eq!(inspected["signature"]["prehashed"], true);
    let human = stdout(&release().arg("inspect").arg(&art.a).output().unwrap());
    assert!(human.contains("signed    no"), "{human}");

    // Signed by the trusted key: installs, and says by which key.
    let root = Root::trusting(&[&ci]);
    let installed = root.install(signed.to_str().unwrap(), &[]);
    assert_eq!(installed["signed_by"], key_id.as_str());

    // Unsigned.
    let unsigned = copy_as(&art.a, dir, "unsigned.tar.zst");
    let root = Root::trusting(&[&ci]);
    root.refused(
        unsigned.to_str().unwrap(),
        &[],
        &["unsigned.tar.zst", "signature refused", "unsigned", &key_id],
    );

    // Signed by another key.
    let by_other = copy_as(&art.a, dir, "other.tar.zst");
    other.cli_sign(&by_other, &sig_of(&by_other), false);
    root.refused(
        by_other.to_str().unwrap(),
        &[],
        &["other.tar.zst", "not a trusted key"],
    );

    // Tampered after signing (one byte of the compressed stream), with the
    // original signature: refused before anything is unpacked.
    let tampered = copy_as(&signed, dir, "tampered.tar.zst");
    std::fs::copy(sig_of(&signed), sig_of(&tampered)).unwrap();
    let mut bytes = std::fs::read(&tampered).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&tampered, bytes).unwrap();
    root.refused(
        tampered.to_str().unwrap(),
        &[],
        &["tampered.tar.zst", "does not match the artifact's bytes"],
    );

    // A signature moved from another artifact (B's bytes, the signed one's signature).
    let moved = copy_as(&art.b, dir, "moved.tar.zst");
    std::fs::copy(sig_of(&signed), sig_of(&moved)).unwrap();
    root.refused(
        moved.to_str().unwrap(),
        &[],
        &["moved.tar.zst", "does not match the artifact's bytes"],
    );
    // A signature file that is not one.
    let garbage = copy_as(&art.a, dir, "garbage.tar.zst");
    std::fs::write(sig_of(&garbage), "untrusted comment: x\nnot base64\n").unwrap();
    root.refused(
        garbage.to_str().unwrap(),
        &[],
        &["garbage.tar.zst", "not a minisign signature"],
    );

    // What `minisign -S` writes installs: prehashed (the default) and legacy.
    for (name, legacy) in [("cli.tar.zst", false), ("legacy.tar.zst", true)] {
        let file = copy_as(&art.b, dir, name);
        ci.cli_sign(&file, &sig_of(&file), legacy);
        let root = Root::trusting(&[&ci]);
        let report = root.install(file.to_str().unwrap(), &[]);
        assert_eq!(report["signed_by"], key_id.as_str(), "{name}");
    }

    // Key rotation: with both keys listed, either signs; --signature names
    // a signature kept elsewhere.
    let root = Root::trusting(&[&ci, &other]);
    root.install(by_other.to_str().unwrap(), &[]);
    let elsewhere = dir.join("elsewhere.minisig");
    ci.cli_sign(&art.b, &elsewhere, false);
    let report = root.install(
        art.b.to_str().unwrap(),
        &["--signature", elsewhere.to_str().unwrap()],
    );
    assert_eq!(report["signed_by"], key_id.as_str());

    // A root without [trust] does not look for signatures.
    Root::new().install(unsigned.to_str().unwrap(), &[]);

    // A key that is not one is refused when release.toml is read.
    let bad = Root::new();
    std::fs::write(
        bad.path.join("release.toml"),
        "[trust]\nminisign_keys = [\"RWQxyz\"]\n",
    )
    .unwrap();
    let err = fails_with(&bad.run(&["install", unsigned.to_str().unwrap()]), 1);
    assert!(
        err.contains("minisign_keys") && err.contains("tail -1"),
        "{err}"
    );
}

/// The store server, stopped (killed and reaped) on drop.
struct Store {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Store {
    fn start() -> Store {
        Store::start_with(&[])
    }

    /// With `tls` = [CERT, KEY]: over https.
    fn start_with(tls: &[&Path]) -> Store {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(REPO).join("tests/it/store_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(dir.path())
            .args(tls)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server prints its port");
        Store { child, port, dir }
    }

    /// Put `artifact` (and its .sha256 / .minisig when there) on the store.
    fn put(&self, artifact: &Path) -> String {
        let name = artifact.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(artifact, self.dir.path().join(&name)).unwrap();
        for suffix in [".sha256", ".minisig"] {
            let side = PathBuf::from(format!("{}{suffix}", artifact.display()));
            if side.exists() {
                std::fs::copy(&side, self.dir.path().join(format!("{name}{suffix}"))).unwrap();
            }
        }
        name
    }

    fn url(&self, mode: &str, name: &str) -> String {
        format!("http://127.0.0.1:{}/{mode}/{name}", self.port)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn install_from_a_url_streams_the_same_tree_and_hostile_servers_leave_nothing() {
    let art = artifacts();
    let server = Store::start();
    let name = server.put(&art.a);

    // By URL and by file: the same tree; --json adds url and downloaded_bytes.
    let by_file = Root::new();
    let file_report = by_file.install(art.a.to_str().unwrap(), &[]);
    let by_url = Root::new();
    let url_report = by_url.install(&server.url("ok", &name), &[]);
    let size = std::fs::metadata(&art.a).unwrap().len();
    assert_eq!(url_report["url"], server.url("ok", &name).as_str());
    assert_eq!(url_report["downloaded_bytes"], size);
    assert!(file_report.get("url").is_none());
    assert_eq!(
        by_url.tree_digest(url_report["id"].as_str().unwrap()),
        by_file.tree_digest(file_report["id"].as_str().unwrap())
    );
    let record: Value = serde_json::from_slice(
        &std::fs::read(
            by_url
                .path
                .join("releases")
                .join(url_report["id"].as_str().unwrap())
                .join("install.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let sidecar = std::fs::read_to_string(format!("{}.sha256", art.a.display())).unwrap();
    assert!(sidecar.starts_with(record["artifact_sha256"].as_str().unwrap()));

    // deploy URL; chunked (no Content-Length); a redirect; 500 then 200.
    let root = Root::new();
    let deployed = json_ok(&root.run(&["--json", "deploy", &server.url("chunked", &name)]));
    assert_eq!(deployed["install"]["downloaded_bytes"], size);
    Root::new().install(&server.url("moved", &name), &[]);
    let flaky = Root::new().install(&server.url("flaky", &name), &[]);
    assert_eq!(flaky["downloaded_bytes"], size);
    // Basic auth from the URL, and redacted in what is printed.
    let with_auth = format!("http://test:s3cret@127.0.0.1:{}/auth/{name}", server.port);
    let report = Root::new().install(&with_auth, &[]);
    assert!(!report.to_string().contains("s3cret"), "{report}");
    assert!(report["url"].as_str().unwrap().contains("***@127.0.0.1"));

    // The hostile cases: exit 1, a message naming the (redacted) URL and
    // the cause, nothing left in the root.
    let root = Root::new();
    let wrong_pw = format!(
        "http://test:wrong@127.0.0.1:{}/auth/{name}?token=abc",
        server.port
    );
    let err = root.refused(&wrong_pw, &[], &["401", "***@127.0.0.1", "token=***"]);
    assert!(
        !err.contains("wrong") && !err.contains("abc"),
        "credentials leak:\n{err}"
    );
    root.refused(&server.url("missing", &name), &[], &["/missing/", "404"]);
    root.refused(
        &server.url("down", &name),
        &["--fetch-timeout", "5"],
        &["/down/", "500", "4 attempts"],
    );
    root.refused(&server.url("cut", &name), &[], &["/cut/", "truncated"]);
    // A Content-Length shorter than the body: the body is what it declares,
    // which is not a whole artifact. The download is what to do again, not
    // a copy of a file.
    let err = root.refused(
        &server.url("long", &name),
        &[],
        &[
            "/long/",
            "the body ended after",
            "truncated",
            "fetch it again",
        ],
    );
    assert!(!err.contains("copy the artifact"), "{err}");
    // A body that goes on past the artifact (in a frame the decompressor
    // skips): refused once it exceeds what the manifest's files can take.
    root.refused(
        &server.url("padded", &name),
        &[],
        &["/padded/", "an artifact of this manifest can take"],
    );
    root.refused(
        &server.url("stall", &name),
        &["--fetch-timeout", "2"],
        &["/stall/", "sent nothing for 2s", "nothing was installed"],
    );
    root.refused(&server.url("loop", &name), &[], &["/loop/", "redirects"]);
    root.refused(
        &server.url("tampered", &name),
        &[],
        &["/tampered/", "nothing was installed"],
    );
    // The wrong --sha256 for an honest body: refused at the end of the stream.
    root.refused(
        &server.url("ok", &name),
        &["--sha256", &"0".repeat(64)],
        &["sha256 is", "--sha256 says"],
    );
    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    root.refused(
        &format!("http://127.0.0.1:{port}/x.tar.zst"),
        &["--fetch-timeout", "2"],
        &["refused"],
    );
}

#[test]
fn a_signed_artifact_from_a_url_is_checked_while_it_streams() {
    let art = artifacts();
    let tmp = tempfile::tempdir().unwrap();
    let key = Key::new(tmp.path(), "ci", None);
    let other = Key::new(tmp.path(), "other", None);
    let server = Store::start();
    let signed = copy_as(&art.a, tmp.path(), "signed.tar.zst");
    key.cli_sign(&signed, &sig_of(&signed), false);
    let name = server.put(&signed);
    let unsigned = server.put(&copy_as(&art.b, tmp.path(), "unsigned.tar.zst"));

    let root = Root::trusting(&[&key]);
    let report = root.install(&server.url("ok", &name), &[]);
    assert!(report["signed_by"].is_string());
    let root = Root::trusting(&[&key]);
    root.refused(
        &server.url("ok", &unsigned),
        &[],
        &["unsigned", "signature refused"],
    );
    // A body changed after signing (the .sha256 recomputed to match it)
    // breaks the compressed stream's own checksum on the way...
    root.refused(
        &server.url("tampered", &name),
        &[],
        &["/tampered/", "nothing was installed"],
    );
    // ...and a whole other artifact under the signature (its .sha256 its
    // own): the signature refuses it at the end of the stream, when it is
    // unpacked in .incoming-* but not renamed into releases/.
    let moved = copy_as(&art.b, tmp.path(), "moved.tar.zst");
    std::fs::copy(sig_of(&signed), sig_of(&moved)).unwrap();
    std::fs::copy(
        format!("{}.sha256", art.b.display()),
        format!("{}.sha256", moved.display()),
    )
    .unwrap();
    let sums = std::fs::read_to_string(format!("{}.sha256", moved.display())).unwrap();
    let digest = sums.split_whitespace().next().unwrap();
    std::fs::write(
        format!("{}.sha256", moved.display()),
        format!("{digest}  moved.tar.zst\n"),
    )
    .unwrap();
    let moved = server.put(&moved);
    root.refused(
        &server.url("ok", &moved),
        &[],
        &["/ok/moved.tar.zst", "signature refused", "does not match"],
    );
    let root = Root::trusting(&[&other]);
    root.refused(&server.url("ok", &name), &[], &["not a trusted key"]);
    // A legacy signature cannot be checked while streaming: said up front.
    let legacy = copy_as(&art.a, tmp.path(), "legacy.tar.zst");
    key.cli_sign(&legacy, &sig_of(&legacy), true);
    let legacy = server.put(&legacy);
    let root = Root::trusting(&[&key]);
    root.refused(
        &server.url("ok", &legacy),
        &[],
        &["legacy format", "prehashed"],
    );
}

/// Run openssl (Debian's package, installed by scripts/test-deps).
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
}

#[test]
fn https_checks_the_server_against_the_system_roots_or_ssl_cert_file() {
    let art = artifacts();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A CA of our own and a certificate for 127.0.0.1 it signed.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=release test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    );
    let server = Store::start_with(&[&dir.join("leaf.pem"), &dir.join("leaf.key")]);
    let name = server.put(&art.a);
    let url = format!("https://127.0.0.1:{}/ok/{name}", server.port);

    // The system's roots do not know our CA: refused, naming TLS.
    let root = Root::new();
    root.refused(&url, &[], &["https://127.0.0.1", "TLS", "SSL_CERT_FILE"]);
    // With SSL_CERT_FILE pointing at it: installs.
    let out = release()
        .arg("--root")
        .arg(&root.path)
        .args(["--json", "install", &url])
        .env("SSL_CERT_FILE", dir.join("ca.pem"))
        .output()
        .unwrap();
    let report = json_ok(&out);
    assert_eq!(report["url"], url.as_str());
}

/// A delta from a URL: the same checks and tree as from a file, the base
/// taken from the root; without its base, refused before anything streams
/// into the root.
#[test]
fn a_delta_from_a_url_installs_next_to_its_base() {
    let pair = crate::delta::pair();
    let server = Store::start();
    let name = server.put(&pair.delta);
    let root = Root::new();
    let base = root.install(pair.base.to_str().unwrap(), &[]);
    let report = root.install(&server.url("chunked", &name), &[]);
    assert_eq!(report["delta"], true, "{report}");
    assert_eq!(report["linked_from"], base["id"]);
    assert_eq!(
        report["downloaded_bytes"],
        std::fs::metadata(&pair.delta).unwrap().len()
    );
    let by_file = Root::new();
    by_file.install(pair.base.to_str().unwrap(), &[]);
    let full = by_file.install(pair.full.to_str().unwrap(), &[]);
    assert_eq!(
        root.tree_digest(report["id"].as_str().unwrap()),
        by_file.tree_digest(full["id"].as_str().unwrap())
    );
    let base12 = pair.report["delta"]["base_release"].as_str().unwrap();
    Root::new().refused(
        &server.url("ok", &name),
        &[],
        &[
            &format!("only next to release {base12}"),
            "install the full artifact",
        ],
    );
}

/// `build --sign --delta-from`: the delta is signed like the full artifact,
/// and a host that requires signatures installs it next to its base.
#[test]
fn a_signed_build_signs_its_delta_too() {
    let pair = crate::delta::pair();
    let dir = tempfile::tempdir().unwrap();
    let key = Key::new(dir.path(), "ci", Some("pw"));
    let app = App::new();
    app.write("mysite/signed_change.py", "SIGNED = True\n");
    app.commit("a signed change");
    let out = dir.path().join("dist");
    let (sec, base) = (key.sec_file.to_str().unwrap(), pair.base.to_str().unwrap());
    let mut build = app.build_command(
        &out,
        &shared_cache(),
        &["--installer", "pip", "--sign", sec, "--delta-from", base],
    );
    build.env("RELEASE_SIGN_PASSWORD", "pw");
    let report = json_ok(&build.output().unwrap());
    let delta = PathBuf::from(report["delta"]["artifact"].as_str().unwrap());
    assert_eq!(
        report["delta"]["signature"].as_str(),
        sig_of(&delta).to_str()
    );
    assert!(key.cli_verifies(&delta, &sig_of(&delta)));
    let full = PathBuf::from(report["artifact"].as_str().unwrap());
    assert!(key.cli_verifies(&full, &sig_of(&full)));
    let root = Root::trusting(&[&key]);
    let base_sig = dir.path().join("base.minisig");
    key.cli_sign(&pair.base, &base_sig, false);
    root.install(
        pair.base.to_str().unwrap(),
        &["--signature", base_sig.to_str().unwrap()],
    );
    let installed = root.install(delta.to_str().unwrap(), &[]);
    assert_eq!(installed["delta"], true, "{installed}");
    assert!(installed["signed_by"].is_string(), "{installed}");
}
