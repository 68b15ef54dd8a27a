//! The host's interpreter for a release's venv: check that the one the venv
//! links to is there and matches, re-point the venv to another matching one
//! (`--python PATH`), or recreate the venv from the release's wheels
//! (`--rebuild-venv`).

use std::path::{Path, PathBuf};

use fs_err as fs;

use crate::error::{InstallError, Result};
use crate::fsutil;
use crate::manifest::{Entry, EntryType, Manifest, PythonInfo};
use crate::python::Unusable;

/// What an interpreter says it is (the build's probe; pip is not needed here).
pub use crate::python::Probe as HostPython;

/// What the host asks an interpreter a release's venv is to run on: its
/// implementation, version, ABI, platform and path, one per line. Run with
/// `-I -S` (no `site`, no `PYTHON*` variables, no imports beyond `sysconfig`):
/// about 8 ms of CPU where the build's probe, which also needs pip and the
/// environment markers, takes 35 ms; an install runs it every time.
const HOST_PROBE: &str = r#"
import sys, sysconfig
i, v = sys.implementation, sys.version_info
print(i.name)
print("%d.%d.%d" % v[:3])
print("cp%d%d" % v[:2] if i.name == "cpython" else i.cache_tag)
print(sysconfig.get_platform().replace("-", "_").replace(".", "_"))
print(sys.executable)
"#;

impl HostPython {
    /// Ask `python` (a name on PATH or a path) what it is, for running a
    /// release's venv on it (see [`HOST_PROBE`]); no pip, no markers.
    pub fn ask(python: &std::ffi::OsStr) -> std::result::Result<HostPython, Unusable> {
        let out = std::process::Command::new(python)
            .args(["-I", "-S", "-c", HOST_PROBE])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| Unusable::NotRunnable(e.to_string()))?;
        if !out.status.success() {
            return Err(Unusable::Failed {
                tail: crate::error::tail(&String::from_utf8_lossy(&out.stderr), 5),
            });
        }
        let text = String::from_utf8(out.stdout).map_err(|_| Unusable::NotPython)?;
        let mut lines = text.splitn(5, '\n');
        let mut next = || {
            lines
                .next()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .ok_or(Unusable::NotPython)
        };
        let (implementation, version, abi, platform) = (next()?, next()?, next()?, next()?);
        let executable = next()?
            .strip_suffix('\n')
            .ok_or(Unusable::NotPython)?
            .to_string();
        Ok(HostPython {
            pip: None,
            implementation,
            version,
            abi,
            platform,
            executable,
            markers: Default::default(),
        })
    }

    /// Whether a venv built for `need` runs on this interpreter: same
    /// implementation, ABI, platform and `X.Y` version (patch releases of one
    /// `X.Y` are ABI-compatible).
    pub fn mismatch(&self, need: &PythonInfo) -> Option<String> {
        let minor = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
        let mut differences = Vec::new();
        if self.implementation != need.implementation {
            differences.push(format!("implementation {}", self.implementation));
        }
        if minor(&self.version) != minor(&need.version) {
            differences.push(format!("version {}", self.version));
        }
        if self.abi != need.abi {
            differences.push(format!("ABI {}", self.abi));
        }
        if self.platform != need.platform {
            differences.push(format!("platform {}", self.platform));
        }
        (!differences.is_empty()).then(|| differences.join(", "))
    }
}

/// `CPython 3.11 (cp311, linux_x86_64)`.
pub fn describe_need(need: &PythonInfo) -> String {
    let minor: Vec<&str> = need.version.split('.').take(2).collect();
    format!(
        "{} {} ({}, {})",
        need.implementation,
        minor.join("."),
        need.abi,
        need.platform
    )
}

/// Check that the interpreter the manifest's venv links to exists on this
/// host and matches; the error names what is needed and the two ways out.
pub fn check_base_interpreter(manifest: &Manifest) -> Result<()> {
    check_base_interpreter_for(&manifest.release, &manifest.python)
}

/// [`check_base_interpreter`] from the release id and the manifest's `python`.
pub fn check_base_interpreter_for(release: &str, need: &PythonInfo) -> Result<()> {
    let base = Path::new(&need.base_executable);
    let problem = match HostPython::ask(base.as_os_str()) {
        Ok(found) => match found.mismatch(need) {
            None => return Ok(()),
            Some(diff) => format!("{} is {diff}", base.display()),
        },
        Err(_) if !base.exists() => format!("{} does not exist on this host", base.display()),
        Err(why) => format!("{}: {why}", base.display()),
    };
    Err(InstallError::InterpreterMissing {
        release: release.to_string(),
        need: describe_need(need),
        at: need.base_executable.clone(),
        problem,
    }
    .into())
}

/// Check `python` against the manifest for `--python PATH`; its absolute path.
pub fn check_replacement(python: &Path, manifest: &Manifest) -> Result<PathBuf> {
    let need = &manifest.python;
    let absolute = std::path::absolute(python)?;
    let found =
        HostPython::ask(absolute.as_os_str()).map_err(|why| InstallError::PythonFlagUnusable {
            python: python.to_path_buf(),
            why: why.to_string(),
            need: describe_need(need),
        })?;
    if let Some(diff) = found.mismatch(need) {
        return Err(InstallError::PythonFlagMismatch {
            python: python.to_path_buf(),
            diff,
            release: manifest.release.clone(),
            need: describe_need(need),
        }
        .into());
    }
    Ok(absolute)
}

/// Re-point the venv at `release_dir/venv` to `python`: every `venv/bin` link
/// to the manifest's base interpreter, and `home` (and `executable`) in
/// `pyvenv.cfg`. Returns the entries as they now are.
pub fn repoint(release_dir: &Path, manifest: &Manifest, python: &Path) -> Result<Vec<Entry>> {
    let mut changed = Vec::new();
    let target = python.to_string_lossy().into_owned();
    for e in &manifest.files {
        let is_base_link = e.kind == EntryType::Symlink
            && e.path.starts_with("venv/bin/")
            && e.target.as_deref() == Some(manifest.python.base_executable.as_str());
        if is_base_link {
            let path = release_dir.join(&e.path);
            fs::remove_file(&path)?;
            std::os::unix::fs::symlink(python, &path)
                .map_err(|err| crate::fsutil::fs_err_io(err, &path))?;
            changed.push(Entry::symlink(e.path.clone(), target.clone()));
        }
    }
    let cfg_path = release_dir.join("venv/pyvenv.cfg");
    let text = fs::read_to_string(&cfg_path)?;
    let home = python
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lines: Vec<String> = text
        .lines()
        .map(|line| match line.split_once('=').map(|(k, _)| k.trim()) {
            Some("home") => format!("home = {home}"),
            Some("executable") => format!("executable = {target}"),
            _ => line.to_string(),
        })
        .collect();
    let new_text = lines.join("\n") + "\n";
    fs::remove_file(&cfg_path)?;
    fsutil::write_new_file(&cfg_path, new_text.as_bytes(), 0o444)?;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(new_text.as_bytes()));
    changed.push(Entry::file(
        "venv/pyvenv.cfg".into(),
        false,
        new_text.len() as u64,
        digest,
    ));
    Ok(changed)
}

/// Recreate `release_dir/venv` from `release_dir/wheels` with `python`,
/// offline, then make it relocatable like the build does and byte-compile it.
pub fn rebuild_venv(release_dir: &Path, python: &Path) -> Result<()> {
    let venv = release_dir.join("venv");
    if venv.exists() {
        fsutil::remove_tree(&venv)?;
    }
    let interpreter = crate::python::find_interpreter(&python.to_string_lossy())?;
    let pip = crate::python::Installer::Pip {
        version: interpreter.pip_version.clone(),
    };
    // Nothing is built from source here (the wheels are all there), so the
    // epoch only fills SOURCE_DATE_EPOCH.
    crate::python::create_venv(
        &pip,
        &interpreter,
        &venv,
        &release_dir.join("wheels"),
        None,
        0,
    )?;
    crate::python::relocate::relocate(&venv)?;
    crate::python::compile(&venv, release_dir, &[venv.join("lib")], 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need() -> PythonInfo {
        PythonInfo {
            implementation: "cpython".into(),
            version: "3.11.7".into(),
            abi: "cp311".into(),
            platform: "linux_x86_64".into(),
            base_executable: "/usr/bin/python3.11".into(),
        }
    }

    fn found(version: &str, abi: &str) -> HostPython {
        HostPython {
            pip: None,
            implementation: "cpython".into(),
            version: version.into(),
            abi: abi.into(),
            platform: "linux_x86_64".into(),
            executable: "/x".into(),
            markers: Default::default(),
        }
    }

    #[test]
    fn patch_versions_match_minor_versions_do_not() {
        assert_eq!(found("3.11.9", "cp311").mismatch(&need()), None);
        assert_eq!(
            found("3.12.1", "cp312").mismatch(&need()).unwrap(),
            "version 3.12.1, ABI cp312"
        );
        assert_eq!(describe_need(&need()), "cpython 3.11 (cp311, linux_x86_64)");
    }

    /// The host's light probe answers what the build's full one answers
    /// for the fields the host compares.
    #[test]
    fn the_host_probe_agrees_with_the_builds() {
        let python = std::ffi::OsStr::new("python3");
        let light = HostPython::ask(python).unwrap();
        let full = HostPython::run(python).unwrap();
        assert_eq!(light.implementation, full.implementation);
        assert_eq!(light.abi, full.abi);
        assert_eq!(light.platform, full.platform);
        assert!(
            full.version.starts_with(&light.version),
            "{light:?} {full:?}"
        );
        assert!(Path::new(&light.executable).is_absolute(), "{light:?}");
        assert_eq!(
            HostPython::ask(std::ffi::OsStr::new("/bin/false")).unwrap_err(),
            Unusable::Failed {
                tail: String::new()
            }
        );
    }
}
