//! Shared test harness: a git copy of the fixture app, the real `release`
//! binary, and the offline wheelhouse the builds install from.

#![allow(dead_code)]

pub mod members;
pub mod root;
pub mod running;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub const BIN: &str = env!("CARGO_BIN_EXE_release");
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A fixed commit time, so the fixture's commits (and artifacts) are stable.
pub const COMMIT_DATE: &str = "2026-01-01T00:00:00Z";

/// Whether the tests run as root, for the few that need it (mounting a
/// tmpfs, sshd logins as root, chown to another user). As another user such a
/// test notes on stderr that it skipped; with `CI` set it fails instead,
/// because CI runs as root and a skipped test there would prove nothing.
pub fn running_as_root(what: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} needs root, and CI is set: CI runs the tests as root (run .ci/run as root)"
    );
    eprintln!("SKIPPED: {what} needs root (CI runs as root); run the tests as root to cover it");
    false
}

/// Unmounts what a test mounted at `path` (a tmpfs, a loop filesystem);
/// lazily when something still holds it, so a failing test never leaves a
/// mount behind.
pub fn unmount(path: &Path) {
    let ok = Command::new("umount")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}

/// The offline wheelhouse (`scripts/wheelhouse`), made once per test run.
pub fn wheelhouse() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(REPO).join("target/wheelhouse");
        let status = Command::new(Path::new(REPO).join("scripts/wheelhouse"))
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/wheelhouse");
        assert!(status.success(), "scripts/wheelhouse failed");
        dir
    })
}

/// Directory holding `uv` (installed by scripts/test into target/tools).
pub fn uv_dir() -> PathBuf {
    let dir = Path::new(REPO).join("target/tools/bin");
    assert!(
        dir.join("uv").is_file(),
        "{} missing: run scripts/test (it installs uv into target/tools)",
        dir.join("uv").display()
    );
    dir
}

/// The build cache shared by tests that do not measure cold builds.
pub fn shared_cache() -> PathBuf {
    Path::new(REPO).join("target/test-cache")
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
        ])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_AUTHOR_DATE", COMMIT_DATE)
        .env("GIT_COMMITTER_DATE", COMMIT_DATE)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A temporary git repository holding a copy of `fixtures/mysite`.
pub struct App {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl App {
    pub fn new() -> App {
        App::fixture("mysite")
    }

    /// A git copy of `fixtures/<name>`, committed.
    pub fn fixture(name: &str) -> App {
        let tmp = tempfile::Builder::new()
            .prefix("release-test-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().join(name);
        copy_dir(&Path::new(REPO).join("fixtures").join(name), &dir);
        git(&dir, &["init", "-q"]);
        git(&dir, &["add", "-A"]);
        git(&dir, &["commit", "-q", "-m", "initial"]);
        App { tmp, dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let path = self.dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Commit everything; returns the new commit hash.
    pub fn commit(&self, message: &str) -> String {
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-q", "-m", message]);
        git(&self.dir, &["rev-parse", "HEAD"])
    }

    pub fn head(&self) -> String {
        git(&self.dir, &["rev-parse", "HEAD"])
    }

    /// `release build` of this app, offline from the wheelhouse, with pip.
    pub fn build(&self, out: &Path, cache: &Path, extra: &[&str]) -> Output {
        self.build_command(out, cache, extra).output().unwrap()
    }

    /// `release build --json` of this app from the offline wheelhouse into
    /// `out`, with `cache` and `extra`, for a caller that adds environment.
    pub fn build_command(&self, out: &Path, cache: &Path, extra: &[&str]) -> Command {
        let mut cmd = release();
        cmd.current_dir(&self.dir)
            .args(["build", "--json", "--no-index", "--find-links"])
            .arg(wheelhouse())
            .arg("--out")
            .arg(out)
            .arg("--cache-dir")
            .arg(cache)
            .args(extra);
        cmd
    }

    /// Build and return the artifact path (panics with the output on failure).
    pub fn build_ok(&self, out: &Path, extra: &[&str]) -> PathBuf {
        let output = self.build(
            out,
            &shared_cache(),
            &["--installer", "pip"]
                .iter()
                .chain(extra)
                .copied()
                .collect::<Vec<_>>(),
        );
        let report = json_ok(&output);
        PathBuf::from(report["artifact"].as_str().unwrap())
    }
}

/// The `release` binary with a clean environment for the tool's own variables.
pub fn release() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("RELEASE_ROOT")
        .env_remove("RELEASE_CACHE_DIR")
        .stdin(Stdio::null());
    cmd
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Assert success and parse stdout as JSON.
pub fn json_ok(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(output)))
}

/// Assert failure with `code` and return stderr.
pub fn fails_with(output: &Output, code: i32) -> String {
    assert_eq!(
        output.status.code(),
        Some(code),
        "expected exit {code}:\nstdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
    stderr(output)
}
