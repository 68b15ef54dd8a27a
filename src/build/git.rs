//! The app's source: which commit, when it was made, and its tracked files.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fs_err as fs;

use crate::error::{PythonError, Result, SourceError};

pub struct Source {
    /// Top of the git work tree.
    pub toplevel: PathBuf,
    /// The app's directory relative to `toplevel` ("" or "sub/dir/").
    pub prefix: String,
}

pub struct Commit {
    pub sha: String,
    pub epoch: i64,
    /// Built from a working tree with uncommitted changes (--allow-dirty).
    pub dirty: bool,
}

fn git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir).stdin(Stdio::null());
    cmd
}

fn run(mut cmd: Command, purpose: &'static str) -> Result<std::process::Output> {
    cmd.output().map_err(|e| {
        SourceError::GitNotRunnable {
            purpose,
            error: e.to_string(),
        }
        .into()
    })
}

fn stdout_text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Source {
    pub fn open(dir: &Path) -> Result<Source> {
        if !dir.is_dir() {
            return Err(SourceError::SourceMissing {
                dir: dir.to_path_buf(),
            }
            .into());
        }
        let mut cmd = git(dir);
        cmd.args(["rev-parse", "--show-toplevel", "--show-prefix"]);
        let out = run(cmd, "finding the repository")?;
        if !out.status.success() {
            return Err(SourceError::NotGitRepo {
                path: dir.to_path_buf(),
            }
            .into());
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        let toplevel = PathBuf::from(lines.next().unwrap_or_default());
        let prefix = lines.next().unwrap_or_default().to_string();
        Ok(Source { toplevel, prefix })
    }

    /// Resolve `rev` (default HEAD) and decide whether the working tree may be used.
    pub fn commit(&self, rev: Option<&str>, allow_dirty: bool) -> Result<Commit> {
        let wanted = rev.unwrap_or("HEAD");
        let mut cmd = git(&self.toplevel);
        cmd.args(["rev-parse", "--verify", "--quiet"])
            .arg(format!("{wanted}^{{commit}}"));
        let out = run(cmd, "resolving the commit")?;
        if !out.status.success() {
            return Err(SourceError::UnknownCommit {
                rev: wanted.to_string(),
                repo: self.toplevel.clone(),
            }
            .into());
        }
        let sha = stdout_text(&out);
        let mut cmd = git(&self.toplevel);
        cmd.args(["log", "-1", "--format=%ct", &sha]);
        let epoch = stdout_text(&run(cmd, "reading the commit time")?)
            .parse::<i64>()
            .map_err(|_| SourceError::CommitTimeUnreadable {
                commit: sha.clone(),
            })?;

        let mut dirty = false;
        if rev.is_none() {
            let mut cmd = git(&self.toplevel);
            cmd.args(["status", "--porcelain", "--untracked-files=no", "--", "."]);
            cmd.current_dir(self.toplevel.join(&self.prefix));
            let out = run(cmd, "checking for uncommitted changes")?;
            let changes = String::from_utf8_lossy(&out.stdout).into_owned();
            if !changes.trim().is_empty() {
                if !allow_dirty {
                    let files = crate::error::tail(&changes, 20);
                    return Err(SourceError::DirtyTree {
                        path: self.toplevel.join(&self.prefix),
                        files,
                    }
                    .into());
                }
                dirty = true;
            }
        }
        Ok(Commit { sha, epoch, dirty })
    }

    /// Write the app's tracked files at `commit` (or, for a dirty build, as they
    /// are in the working tree) into `dest`, which must not exist yet.
    pub fn export(&self, commit: &Commit, dest: &Path) -> Result<()> {
        fs::create_dir_all(dest)?;
        if commit.dirty {
            return self.copy_working_tree(dest);
        }
        let mut cmd = git(&self.toplevel);
        cmd.args(["archive", "--format=tar"])
            .arg(format!("{}:{}", commit.sha, self.prefix))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| SourceError::GitNotRunnable {
            purpose: "exporting the tracked files (git archive)",
            error: e.to_string(),
        })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut archive = tar::Archive::new(stdout);
        archive.set_preserve_permissions(true);
        archive.set_preserve_mtime(false);
        let unpacked = archive.unpack(dest);
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(PythonError::ToolFailed {
                tool: "git archive".into(),
                command: format!("git archive {}:{}", commit.sha, self.prefix),
                status: out.status.to_string(),
                tail: crate::error::tail(&String::from_utf8_lossy(&out.stderr), 10),
            }
            .into());
        }
        unpacked.map_err(|e| crate::fsutil::fs_err_io(e, dest))?;
        Ok(())
    }

    fn copy_working_tree(&self, dest: &Path) -> Result<()> {
        let app = self.toplevel.join(&self.prefix);
        let mut cmd = git(&app);
        cmd.args(["ls-files", "-z", "--cached", "--", "."]);
        let out = run(cmd, "listing tracked files")?;
        for rel in out.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
            let rel = PathBuf::from(String::from_utf8_lossy(rel).into_owned());
            let from = app.join(&rel);
            let to = dest.join(&rel);
            let Ok(meta) = fs::symlink_metadata(&from) else {
                continue; // deleted in the working tree: not part of this build
            };
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent)?;
            }
            if meta.file_type().is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            } else if meta.is_file() {
                fs::copy(&from, &to)?;
            }
        }
        Ok(())
    }
}
