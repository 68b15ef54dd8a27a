//! The last probe of an interpreter name, kept in the build cache, so that a
//! build need not wait for it.
//!
//! Finding what `python3` is means running it, and a `python3` that is a
//! pyenv shim runs a dozen bash scripts before Python starts: 60-100 ms
//! of a warm build's 300 ms, every time. So a build takes the answer the
//! last build got for the same name (with the same PATH, working directory
//! and PYENV_VERSION) and goes on with it at once, while the name is run
//! again on a thread beside the build. Before anything is written outside
//! the build's scratch directory — before a venv is built for it, and
//! before the artifact — the fresh answer must equal the remembered one,
//! field for field; when it does not (another interpreter, another pip, a
//! name that no longer runs), the build starts again from the beginning
//! with the fresh answer, and the remembered one is replaced. Whatever the
//! cache holds, the artifact is the one the fresh probe's interpreter
//! gives: the cache only decides what runs while the probe is under way.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use fs_err as fs;
use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::python::{Probe, Unusable};

/// Where the probes live in the build cache.
const DIR: &str = "probes";

/// The file that remembers the probe of `name` in this context.
fn file(cache_dir: &Path, name: &str) -> PathBuf {
    let mut h = Sha256::new();
    h.update(b"release probe 1\0");
    h.update(name.as_bytes());
    for part in [
        std::env::var_os("PATH"),
        std::env::var_os("PYENV_VERSION"),
        std::env::current_dir().ok().map(PathBuf::into_os_string),
    ] {
        h.update(b"\0");
        if let Some(part) = part {
            h.update(part.as_encoded_bytes());
        }
    }
    let key = hex::encode(h.finalize());
    cache_dir.join(DIR).join(format!("{}.json", &key[..32]))
}

/// The remembered probe of `name`, if any.
pub fn recall(cache_dir: &Path, name: &str) -> Option<Probe> {
    let bytes = fs::read(file(cache_dir, name)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Remember `probe` as the answer of `name`. Only a head start for the next
/// build: a cache that cannot be written costs that build the wait.
pub fn remember(cache_dir: &Path, name: &str, probe: &Probe) {
    let path = file(cache_dir, name);
    if let Some(dir) = path.parent() {
        let _ = fs::create_dir_all(dir);
    }
    let json = serde_json::to_vec(probe).expect("a probe serialises");
    let _ = fsutil::write_atomic(&path, &json);
}

/// A remembered probe in use, and the fresh probe of the same name running
/// beside the build.
pub struct Pending {
    cache_dir: PathBuf,
    name: String,
    assumed: Probe,
    fresh: JoinHandle<std::result::Result<Probe, Unusable>>,
}

impl Pending {
    /// Run `name` again on a thread; `assumed` is what the build goes on with.
    pub fn start(cache_dir: &Path, name: &str, assumed: Probe) -> Pending {
        let program = name.to_string();
        Pending {
            cache_dir: cache_dir.to_path_buf(),
            name: name.to_string(),
            assumed,
            // Niced: it runs beside the static step, which the build waits for.
            fresh: std::thread::spawn(move || Probe::run_at(program.as_ref(), 10)),
        }
    }

    /// Wait for the fresh probe: whether it answered exactly what was
    /// assumed. When it did not, the remembered answer is replaced (or
    /// forgotten, when the name no longer runs).
    pub fn confirm(self) -> bool {
        let fresh = self.fresh.join().ok().and_then(|r| r.ok());
        match fresh {
            Some(probe) if probe == self.assumed => true,
            Some(probe) => {
                remember(&self.cache_dir, &self.name, &probe);
                false
            }
            None => {
                let _ = fs::remove_file(file(&self.cache_dir, &self.name));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(version: &str) -> Probe {
        Probe {
            pip: Some("24.0".into()),
            implementation: "cpython".into(),
            version: version.into(),
            abi: "cp311".into(),
            platform: "linux_x86_64".into(),
            executable: "/usr/bin/python3".into(),
            markers: Default::default(),
        }
    }

    #[test]
    fn a_probe_is_recalled_by_name() {
        let cache = tempfile::tempdir().unwrap();
        assert!(recall(cache.path(), "python3").is_none());
        remember(cache.path(), "python3", &probe("3.11.7"));
        assert_eq!(recall(cache.path(), "python3"), Some(probe("3.11.7")));
        assert!(recall(cache.path(), "python3.12").is_none());
        // A damaged file is no answer.
        std::fs::write(file(cache.path(), "python3"), b"{").unwrap();
        assert!(recall(cache.path(), "python3").is_none());
    }

    #[test]
    fn a_name_that_no_longer_runs_is_forgotten() {
        let cache = tempfile::tempdir().unwrap();
        let name = "/nonexistent/python3";
        remember(cache.path(), name, &probe("3.11.7"));
        let pending = Pending::start(cache.path(), name, probe("3.11.7"));
        assert!(!pending.confirm());
        assert!(recall(cache.path(), name).is_none());
    }
}
