//! Python interpreters and virtualenvs, shared by both sides: find and probe
//! an interpreter, choose the installer (uv or pip), turn requirements into
//! wheels and wheels into a venv, make the venv relocatable (`relocate`) and
//! byte-compile it. `build` makes venvs with these; the host side
//! (`host::python`) checks a release's interpreter and rebuilds a venv from its
//! wheels with them.

pub mod relocate;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::{Deserialize, Serialize};

use crate::error::{tail, Error, PythonError, Result};
use crate::manifest::PythonInfo;

const PROBE: &str = r#"
import json, platform, sys, sysconfig
try:
    # pip's own __init__ is a few lines; importlib.metadata would scan every
    # distribution on sys.path (a quarter of this probe's CPU time).
    import pip
    pip = pip.__version__
except Exception:
    pip = None
print(json.dumps({
    "pip": pip,
    "implementation": sys.implementation.name,
    "version": platform.python_version(),
    "abi": "cp%d%d" % sys.version_info[:2] if sys.implementation.name == "cpython"
           else sys.implementation.cache_tag,
    "platform": sysconfig.get_platform().replace("-", "_").replace(".", "_"),
    "executable": sys.executable,
    # PEP 508's environment markers, for evaluating a lock file's markers.
    "markers": {
        "implementation_name": sys.implementation.name,
        "implementation_version": "%d.%d.%d" % sys.implementation.version[:3]
            + ("" if sys.implementation.version.releaselevel == "final"
               else sys.implementation.version.releaselevel[0]
               + str(sys.implementation.version.serial)),
        "os_name": __import__("os").name,
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    },
}))
"#;

/// What an interpreter says it is: one short Python run, shared by the build
/// (which needs pip) and the host's interpreter checks (which do not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// pip's version, when pip is importable.
    pub pip: Option<String>,
    pub implementation: String,
    pub version: String,
    pub abi: String,
    pub platform: String,
    pub executable: String,
    /// PEP 508 marker values (`sys_platform`, `python_full_version`, ...).
    #[serde(default)]
    pub markers: std::collections::BTreeMap<String, String>,
}

impl Probe {
    /// Run `python` (a name on PATH or a path) and ask it; `Err` says why it
    /// cannot be used, as a phrase ("cannot run it (...)").
    pub fn run(python: &std::ffi::OsStr) -> std::result::Result<Probe, Unusable> {
        Probe::run_at(python, 0)
    }

    /// [`Probe::run`] at a lower CPU priority (`nice`, inherited by what
    /// the interpreter's name runs, such as a pyenv shim's scripts): for a
    /// probe that runs beside work that matters more.
    pub fn run_at(python: &std::ffi::OsStr, nice: i32) -> std::result::Result<Probe, Unusable> {
        let child = Command::new(python)
            .args(["-c", PROBE])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Unusable::NotRunnable(e.to_string()))?;
        if nice != 0 {
            // Best effort: the probe's answer does not depend on it.
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::setpriority_process(Some(pid), nice);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Unusable::NotRunnable(e.to_string()))?;
        if !out.status.success() {
            return Err(Unusable::Failed {
                tail: tail(&String::from_utf8_lossy(&out.stderr), 5),
            });
        }
        serde_json::from_slice(&out.stdout).map_err(|_| Unusable::NotPython)
    }
}

/// Why an interpreter cannot be used, as a phrase about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    NotRunnable(String),
    /// It ran and failed; the last lines of its stderr.
    Failed {
        tail: String,
    },
    NotPython,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::NotRunnable(e) => write!(f, "cannot run it ({e})"),
            Unusable::Failed { tail } => write!(f, "it failed to run:\n{tail}"),
            Unusable::NotPython => f.write_str("it did not answer like a Python 3 interpreter"),
        }
    }
}

/// Which tool installs the venv.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstallerChoice {
    /// uv when it is on PATH, else pip.
    Auto,
    Uv,
    Pip,
}

#[derive(Debug, Clone)]
pub enum Installer {
    Uv { program: PathBuf, version: String },
    Pip { version: String },
}

impl Installer {
    pub fn describe(&self) -> String {
        match self {
            Installer::Uv { version, .. } => format!("uv {version}"),
            Installer::Pip { version } => format!("pip {version}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Interpreter {
    /// The interpreter as found (absolute).
    pub executable: PathBuf,
    pub implementation: String,
    pub version: String,
    pub abi: String,
    pub platform: String,
    pub pip_version: String,
    /// PEP 508 marker values of this interpreter.
    pub markers: std::collections::BTreeMap<String, String>,
}

impl Interpreter {
    pub fn info(&self, base_executable: String) -> PythonInfo {
        PythonInfo {
            implementation: self.implementation.clone(),
            version: self.version.clone(),
            abi: self.abi.clone(),
            platform: self.platform.clone(),
            base_executable,
        }
    }
}

/// Find `python` on PATH (or as a path) and ask it what it is.
pub fn find_interpreter(python: &str) -> Result<Interpreter> {
    Interpreter::from_probe(probe_named(python)?)
}

/// Run `python` (on PATH, or a path) and ask it what it is.
pub fn probe_named(python: &str) -> Result<Probe> {
    Probe::run(python.as_ref()).map_err(|why| {
        PythonError::InterpreterNotFound {
            python: python.to_string(),
            detail: format!(": {why}"),
        }
        .into()
    })
}

impl Interpreter {
    /// The interpreter a probe describes; it must have pip.
    pub fn from_probe(probe: Probe) -> Result<Interpreter> {
        let Some(pip_version) = probe.pip else {
            return Err(PythonError::NoPip {
                python: probe.executable,
            }
            .into());
        };
        Ok(Interpreter {
            executable: PathBuf::from(probe.executable),
            implementation: probe.implementation,
            version: probe.version,
            abi: probe.abi,
            platform: probe.platform,
            pip_version,
            markers: probe.markers,
        })
    }
}

pub fn choose_installer(choice: InstallerChoice, interpreter: &Interpreter) -> Result<Installer> {
    let uv = || -> Option<Installer> {
        let out = Command::new("uv")
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let version = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)?
            .to_string();
        out.status.success().then_some(Installer::Uv {
            program: PathBuf::from("uv"),
            version,
        })
    };
    let pip = Installer::Pip {
        version: interpreter.pip_version.clone(),
    };
    match choice {
        InstallerChoice::Pip => Ok(pip),
        InstallerChoice::Auto => Ok(uv().unwrap_or(pip)),
        InstallerChoice::Uv => uv().ok_or(PythonError::UvNotFound.into()),
    }
}

/// Environment every tool of the build runs with: reproducible outputs.
pub fn build_env(cmd: &mut Command, epoch: i64) {
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("PYTHONHASHSEED", "0")
        .env("PIP_NO_INPUT", "1")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH")
        .env_remove("VIRTUAL_ENV")
        .stdin(Stdio::null());
}

fn output(mut cmd: Command, tool: &str) -> Result<Output> {
    let line = format!("{cmd:?}");
    cmd.output().map_err(|e| {
        PythonError::ToolFailed {
            tool: tool.into(),
            command: line,
            status: "not started".into(),
            tail: format!("    {e}"),
        }
        .into()
    })
}

fn check(out: Output, tool: &str, command: String) -> Result<Output> {
    if out.status.success() {
        return Ok(out);
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(PythonError::ToolFailed {
        tool: tool.into(),
        command,
        status: out.status.to_string(),
        tail: tail(&text, 20),
    }
    .into())
}

pub struct WheelOptions<'a> {
    pub cache_dir: &'a Path,
    pub find_links: &'a [PathBuf],
    pub no_index: bool,
    /// The requirements are a complete lock: take no dependencies from metadata.
    pub no_deps: bool,
}

/// `pip wheel -r requirements` into `wheel_dir`, run from `app_dir` so relative
/// local paths in the requirements resolve.
pub fn build_wheels(
    interpreter: &Interpreter,
    requirements: &Path,
    app_dir: &Path,
    wheel_dir: &Path,
    opts: &WheelOptions<'_>,
    epoch: i64,
) -> Result<()> {
    let mut cmd = Command::new(&interpreter.executable);
    cmd.args(["-m", "pip", "wheel", "--progress-bar", "off", "-r"])
        .arg(requirements)
        .arg("--wheel-dir")
        .arg(wheel_dir)
        .arg("--cache-dir")
        .arg(opts.cache_dir)
        .current_dir(app_dir);
    run_pip_wheel(cmd, interpreter, opts, epoch)
}

/// `pip wheel --no-deps` of local directories (the app itself, or packages
/// a lock takes from the commit) into `wheel_dir`, run from `cwd`.
pub fn build_local_wheels(
    interpreter: &Interpreter,
    dirs: &[PathBuf],
    cwd: &Path,
    wheel_dir: &Path,
    opts: &WheelOptions<'_>,
    epoch: i64,
) -> Result<()> {
    let mut cmd = Command::new(&interpreter.executable);
    cmd.args(["-m", "pip", "wheel", "--progress-bar", "off", "--no-deps"])
        .args(dirs)
        .arg("--wheel-dir")
        .arg(wheel_dir)
        .arg("--cache-dir")
        .arg(opts.cache_dir)
        .current_dir(cwd);
    run_pip_wheel(cmd, interpreter, opts, epoch)
}

fn run_pip_wheel(
    mut cmd: Command,
    interpreter: &Interpreter,
    opts: &WheelOptions<'_>,
    epoch: i64,
) -> Result<()> {
    if opts.no_deps {
        cmd.arg("--no-deps");
    }
    for link in opts.find_links {
        cmd.arg("--find-links").arg(link);
    }
    if opts.no_index {
        cmd.arg("--no-index");
    }
    build_env(&mut cmd, epoch);
    let out = output(cmd, "pip wheel")?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(requirement_error(&text, interpreter))
}

/// The packages pip refused because a file's hash is not one the
/// requirements allow, as `name==version (expected …, got …)`.
fn hash_mismatches(text: &str) -> Vec<String> {
    let Some(start) = text.find("DO NOT MATCH THE HASHES") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut lines = text[start..].lines().skip(1).peekable();
    while let Some(line) = lines.next() {
        // "    six==1.17.0 from file:///…/six-1.17.0-py2.py3-none-any.whl:"
        let trimmed = line.trim();
        let Some((req, _)) = trimmed.split_once(" from ") else {
            continue;
        };
        if !req.contains("==") {
            continue;
        }
        let mut expected = Vec::new();
        let mut got = String::new();
        while let Some(next) = lines.peek() {
            let t = next.trim();
            if let Some(rest) = t.strip_prefix("Expected") {
                expected.push(rest.trim().to_string());
            } else if let Some(rest) = t.strip_prefix("or") {
                expected.push(rest.trim().to_string());
            } else if let Some(rest) = t.strip_prefix("Got") {
                got = rest.trim().to_string();
            } else {
                break;
            }
            lines.next();
        }
        found.push(format!(
            "{req} (the lock allows {}; the file has {got})",
            expected.join(" or ")
        ));
    }
    found
}

/// The error for pip's failure to resolve or build: when pip skipped versions
/// because of their `Requires-Python`, say so and name the interpreter to use
/// (pip's own advice, a list of every version it saw, hides that).
pub fn requirement_error(text: &str, interpreter: &Interpreter) -> Error {
    let mismatched = hash_mismatches(text);
    if !mismatched.is_empty() {
        return crate::error::LockError::HashMismatch {
            packages: mismatched,
        }
        .into();
    }
    let mut requirement = failing_requirement(text);
    if let Some((package, needs)) = python_mismatch(text) {
        if let Some(package) = package {
            requirement = package;
        }
        return PythonError::RequirementNeedsPython {
            requirement,
            needs,
            version: interpreter.version.clone(),
            executable: interpreter.executable.clone(),
        }
        .into();
    }
    PythonError::RequirementFailed {
        requirement,
        tail: tail(text, 15),
    }
    .into()
}

/// The `Requires-Python` specifiers pip reported as the reason it skipped
/// versions, joined with " or " (and the package, when pip named it): None
/// when that was not the reason.
fn python_mismatch(text: &str) -> Option<(Option<String>, String)> {
    let mut specs: Vec<String> = Vec::new();
    let mut package = None;
    for line in text.lines() {
        // "Ignored the following versions that require a different python
        // version: 6.0 Requires-Python >=3.12; 6.0.1 Requires-Python >=3.12"
        if let Some(rest) = line.split("require a different python version: ").nth(1) {
            for item in rest.split("; ") {
                if let Some(spec) = item.split(" Requires-Python ").nth(1) {
                    specs.push(spec.trim().to_string());
                }
            }
        }
        // "Package 'x' requires a different Python: 3.11.7 not in '>=3.12'"
        if let Some((before, rest)) = line.split_once(" requires a different Python: ") {
            package = before
                .rsplit_once("Package '")
                .map(|(_, p)| p.trim_end_matches('\'').to_string());
            if let Some(spec) = rest.split(" not in ").nth(1) {
                specs.push(spec.trim().trim_matches('\'').to_string());
            }
        }
    }
    let no_match = text.contains("No matching distribution found")
        || text.contains("requires a different Python");
    specs.dedup();
    (no_match && !specs.is_empty()).then(|| (package, specs.join(" or ")))
}

/// Name the requirement pip was working on when it failed.
pub fn failing_requirement(output: &str) -> String {
    const MARKERS: &[&str] = &[
        "Failed building wheel for ",
        "No matching distribution found for ",
        "Could not find a version that satisfies the requirement ",
        "Failed to build ",
    ];
    for line in output.lines().rev() {
        for marker in MARKERS {
            if let Some(rest) = line.split(marker).nth(1) {
                if let Some(name) = rest.split_whitespace().next() {
                    return name.trim_end_matches(['.', ',']).to_string();
                }
            }
        }
    }
    for line in output.lines().rev() {
        let line = line.trim();
        for marker in ["Processing ", "Collecting "] {
            if let Some(rest) = line.strip_prefix(marker) {
                return rest.split_whitespace().next().unwrap_or(rest).to_string();
            }
        }
    }
    "(unknown: see pip's output)".into()
}

/// `name==version` for every wheel file in `wheel_dir`, sorted.
pub fn pinned_wheels(wheel_dir: &Path) -> Result<Vec<String>> {
    let mut pins = Vec::new();
    for entry in fs_err::read_dir(wheel_dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".whl") else {
            continue;
        };
        let mut parts = stem.split('-');
        match (parts.next(), parts.next()) {
            (Some(dist), Some(version)) => pins.push(format!("{dist}=={version}")),
            _ => {
                return Err(PythonError::NotAWheel {
                    path: wheel_dir.join(&name),
                }
                .into())
            }
        }
    }
    pins.sort();
    Ok(pins)
}

/// Create a venv at `venv` and install exactly the wheels of `wheel_dir` into it,
/// offline, without byte-compiling (that is done deterministically afterwards).
/// `uv_cache`: where uv keeps the wheels it unpacks (the build cache's
/// `uv/`); without it uv unpacks into a temporary cache and deletes it,
/// which costs a cold build about a second of deletions (and, on a
/// filesystem mounted with `discard`, far more).
pub fn create_venv(
    installer: &Installer,
    interpreter: &Interpreter,
    venv: &Path,
    wheel_dir: &Path,
    uv_cache: Option<&Path>,
    epoch: i64,
) -> Result<()> {
    let pins = pinned_wheels(wheel_dir)?;
    match installer {
        Installer::Pip { .. } => {
            let mut cmd = Command::new(&interpreter.executable);
            cmd.args(["-m", "venv", "--without-pip"]).arg(venv);
            build_env(&mut cmd, epoch);
            let line = format!("{cmd:?}");
            check(output(cmd, "python -m venv")?, "python -m venv", line)?;
            if pins.is_empty() {
                return Ok(());
            }
            let mut cmd = Command::new(&interpreter.executable);
            cmd.args(["-m", "pip", "--python"])
                .arg(venv.join("bin/python"))
                .args([
                    "install",
                    "--no-index",
                    "--no-deps",
                    "--no-compile",
                    "--no-cache-dir",
                    "--no-warn-script-location",
                    "--progress-bar",
                    "off",
                    "--find-links",
                ])
                .arg(wheel_dir)
                .args(&pins);
            build_env(&mut cmd, epoch);
            let line = format!("{cmd:?}");
            check(output(cmd, "pip install")?, "pip install", line)?;
        }
        Installer::Uv { program, .. } => {
            let mut cmd = Command::new(program);
            cmd.args(["venv", "--quiet", "--no-config", "--python"])
                .arg(&interpreter.executable)
                .arg(venv);
            build_env(&mut cmd, epoch);
            let line = format!("{cmd:?}");
            check(output(cmd, "uv venv")?, "uv venv", line)?;
            if pins.is_empty() {
                return Ok(());
            }
            let mut cmd = Command::new(program);
            cmd.args(["pip", "install", "--quiet", "--no-config", "--python"])
                .arg(venv.join("bin/python"))
                .args(["--offline", "--no-index", "--no-deps"]);
            match uv_cache {
                Some(dir) => cmd.arg("--cache-dir").arg(dir),
                None => cmd.arg("--no-cache"),
            };
            cmd.args(["--link-mode", "copy", "--find-links"])
                .arg(wheel_dir)
                .args(&pins);
            build_env(&mut cmd, epoch);
            let line = format!("{cmd:?}");
            check(output(cmd, "uv pip install")?, "uv pip install", line)?;
        }
    }
    Ok(())
}

/// Byte-compile `dirs` with the venv's interpreter: checked-hash pycs (no
/// timestamps), fixed hash seed, and the build path stripped from the recorded
/// file names (`-s strip`). CPython rewrites `co_filename` to the real source
/// path when it loads a pyc, so tracebacks on the host name the installed files.
pub fn compile(venv: &Path, strip: &Path, dirs: &[PathBuf], epoch: i64) -> Result<()> {
    compile_with(venv, strip, dirs, epoch, Jobs::All, &[])
}

/// How many processes compileall uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jobs {
    /// One per core: for site-packages (thousands of files).
    All,
    /// One: for an app's code, where starting a process pool (about 0.1 s)
    /// costs more than it saves.
    One,
}

pub fn compile_with(
    venv: &Path,
    strip: &Path,
    dirs: &[PathBuf],
    epoch: i64,
    jobs: Jobs,
    env: &[(String, String)],
) -> Result<()> {
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.args([
        "-m",
        "compileall",
        "-q",
        "-q",
        "-j",
        if jobs == Jobs::All { "0" } else { "1" },
        "--invalidation-mode",
        "checked-hash",
        "-s",
    ])
    .arg(strip)
    .args(dirs);
    build_env(&mut cmd, epoch);
    cmd.env_remove("PYTHONDONTWRITEBYTECODE");
    // compileall exits 1 when some file does not compile (e.g. a template that
    // is not Python); pip ignores those too, and they simply get no pyc.
    output(cmd, "compileall")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_failing_requirement() {
        let out = "Collecting django==5.2\nERROR: Could not find a version that satisfies the requirement nosuchpkg==1.0 (from versions: none)\nERROR: No matching distribution found for nosuchpkg==1.0\n";
        assert_eq!(failing_requirement(out), "nosuchpkg==1.0");
        let out = "Processing ./packages/broken\n  error: subprocess-exited-with-error\n";
        assert_eq!(failing_requirement(out), "./packages/broken");
    }

    #[test]
    fn a_python_version_mismatch_is_named() {
        let out = "ERROR: Ignored the following versions that require a different python version: 6.0 Requires-Python >=3.12; 6.0.1 Requires-Python >=3.12\nERROR: Could not find a version that satisfies the requirement Django>=6.0 (from versions: 5.2.19)\nERROR: No matching distribution found for Django>=6.0\n";
        assert_eq!(python_mismatch(out), Some((None, ">=3.12".into())));
        let out = "ERROR: Package 'toonew' requires a different Python: 3.11.7 not in '>=3.99'\n";
        assert_eq!(
            python_mismatch(out),
            Some((Some("toonew".into()), ">=3.99".into()))
        );
        let out = "ERROR: No matching distribution found for nosuchpkg==1.0\n";
        assert_eq!(python_mismatch(out), None);
    }
}
