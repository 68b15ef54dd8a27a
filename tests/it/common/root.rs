//! One host root for the tests: a `<tmp>/srv/mysite` the real binary runs
//! against (`--root`), and what the tests read back from it (current, the
//! journal, `list --json`, leftovers). Shared by the host, fault, hostile and
//! reload tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::{fails_with, json_ok, release, stderr, stdout};

/// A host root, by default in a fresh temporary directory (removed when the
/// `Root` drops); the root itself is created by the first command.
pub struct Root {
    _tmp: Option<tempfile::TempDir>,
    pub path: PathBuf,
}

impl Root {
    pub fn new() -> Root {
        let tmp = tempfile::Builder::new()
            .prefix("release-root-")
            .tempdir()
            .unwrap();
        Root::in_tmp(tmp)
    }

    /// In /dev/shm when there is one: a test that installs dozens of
    /// releases spends seconds making each durable on a disk shared
    /// with other work. A SIGKILL leaves the same state on any filesystem,
    /// and the lock does not care either.
    pub fn in_memory() -> Root {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return Root::new();
        }
        let tmp = tempfile::Builder::new()
            .prefix("release-root-")
            .tempdir_in(shm)
            .unwrap();
        Root::in_tmp(tmp)
    }

    fn in_tmp(tmp: tempfile::TempDir) -> Root {
        let path = tmp.path().join("srv/mysite");
        Root {
            _tmp: Some(tmp),
            path,
        }
    }

    /// A root at `path`, in a directory someone else cleans up.
    pub fn at(path: PathBuf) -> Root {
        Root { _tmp: None, path }
    }

    /// `release --root <root> ARGS`, with no crash or stop point inherited.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = release();
        cmd.arg("--root")
            .arg(&self.path)
            .args(args)
            .env_remove("RELEASE_CRASHPOINT")
            .env_remove("RELEASE_STOPPOINT");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "release {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            stdout(&out),
            stderr(&out)
        );
        out
    }

    /// `--json ARGS`, which must succeed; its object.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        json_ok(&self.run(&all))
    }

    /// ARGS must fail with exit `code`; their stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        fails_with(&self.run(args), code)
    }

    /// Install `artifact`; the release's id.
    pub fn install(&self, artifact: &Path) -> String {
        let report = self.json(&["install", artifact.to_str().unwrap()]);
        report["id"].as_str().unwrap().to_string()
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.path.join("release.toml"), text).unwrap();
    }

    /// The release `current` links to.
    pub fn current(&self) -> Option<String> {
        std::fs::read_link(self.path.join("current"))
            .ok()
            .map(|l| l.file_name().unwrap().to_string_lossy().into_owned())
    }

    /// (id, state) newest install first, from `list --json`.
    pub fn states(&self) -> Vec<(String, String)> {
        self.json(&["list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    pub fn state_of(&self, id: &str) -> String {
        self.states()
            .into_iter()
            .find(|(i, _)| i == id)
            .map(|(_, s)| s)
            .unwrap_or_else(|| panic!("{id} not listed"))
    }

    pub fn journal_text(&self) -> String {
        std::fs::read_to_string(self.path.join("history.jsonl")).unwrap_or_default()
    }

    /// Every journal line, each of which must parse; the file must end with
    /// a newline (no torn line).
    pub fn journal(&self) -> Vec<Value> {
        let text = self.journal_text();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "journal ends mid-line: {text}"
        );
        text.lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad journal line {l:?}: {e}"))
            })
            .collect()
    }

    /// Everything in releases/, hidden entries included, sorted.
    pub fn release_dirs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path.join("releases"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Release directories (hidden entries excluded), sorted.
    pub fn releases(&self) -> Vec<String> {
        let mut names = self.release_dirs();
        names.retain(|n| !n.starts_with('.'));
        names
    }

    /// What an interrupted command can leave: `releases/.incoming-*`,
    /// `releases/.removing-*`, `current.tmp-*`.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (dir, prefix) in [
            ("releases", ".incoming-"),
            ("releases", ".removing-"),
            ("", "current.tmp-"),
        ] {
            if let Ok(entries) = std::fs::read_dir(self.path.join(dir)) {
                for e in entries {
                    let name = e.unwrap().file_name().to_string_lossy().into_owned();
                    if name.starts_with(prefix) {
                        found.push(if dir.is_empty() {
                            name
                        } else {
                            format!("{dir}/{name}")
                        });
                    }
                }
            }
        }
        found.sort();
        found
    }

    pub fn verifies(&self, id: &str) -> bool {
        self.run(&["verify", id]).status.success()
    }

    /// Every file under `dir` (relative paths, sorted) with its (dev, ino).
    fn files_under(dir: &Path) -> Vec<(String, (u64, u64))> {
        use std::os::unix::fs::MetadataExt;
        let mut found = Vec::new();
        let mut dirs = vec![dir.to_path_buf()];
        while let Some(d) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries {
                let e = e.unwrap();
                let meta = std::fs::symlink_metadata(e.path()).unwrap();
                if meta.is_dir() {
                    dirs.push(e.path());
                } else {
                    let rel = e
                        .path()
                        .strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    found.push((rel, (meta.dev(), meta.ino())));
                }
            }
        }
        found.sort();
        found
    }

    /// The files of the served `<root>/static/`, relative, sorted.
    pub fn served_static(&self) -> Vec<String> {
        Root::files_under(&self.path.join("static"))
            .into_iter()
            .map(|(rel, _)| rel)
            .collect()
    }

    /// The files of `releases/<id>/static/`, relative, sorted.
    pub fn release_static(&self, id: &str) -> Vec<String> {
        Root::files_under(&self.path.join("releases").join(id).join("static"))
            .into_iter()
            .map(|(rel, _)| rel)
            .collect()
    }

    /// The installed release whose `static/` file is served at `rel` (the
    /// same inode), if any.
    pub fn served_from(&self, rel: &str) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(self.path.join("static").join(rel)).ok()?;
        self.releases().into_iter().find(|id| {
            std::fs::symlink_metadata(self.path.join("releases").join(id).join("static").join(rel))
                .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
        })
    }

    /// Served files that are not a file of an installed release at the same
    /// path (what a crash must never leave). A replacement's temporary link
    /// (`.release-tmp-*`, a link to the live release's file under another
    /// name, renamed over the old file next) is not counted: the next
    /// command removes it, which the fault test checks.
    pub fn served_not_from_releases(&self) -> Vec<String> {
        self.served_static()
            .into_iter()
            .filter(|rel| !rel.rsplit('/').next().unwrap().starts_with(".release-tmp-"))
            .filter(|rel| self.served_from(rel).is_none())
            .collect()
    }

    /// `release verify` (the current release and the served static/).
    pub fn verifies_all(&self) -> bool {
        self.run(&["verify"]).status.success()
    }
}
