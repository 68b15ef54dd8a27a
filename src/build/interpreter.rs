//! Which interpreter builds the app: `--python` or `python` in the settings,
//! else the first one on PATH that matches what the app declares at the
//! commit — `requires-python` in pyproject.toml, `.python-version` and
//! `runtime.txt` — checked before anything is downloaded.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};

use fs_err as fs;

use super::probes::{self, Pending};
use crate::error::{PythonError, Result};
use crate::output::Printer;
use crate::python::{self, Interpreter, Probe};

/// One thing the app says about its Python, and where it says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// A PEP 440 specifier set (`>=3.12`, `~=3.11`), from `requires-python`.
    Spec { spec: String, source: &'static str },
    /// `X.Y` (the declared text may name a patch release too).
    Minor {
        minor: String,
        declared: String,
        source: &'static str,
    },
}

impl Need {
    fn describe(&self) -> String {
        match self {
            Need::Spec { spec, source } => format!("Python {spec} ({source})"),
            Need::Minor {
                declared, source, ..
            } => format!("Python {declared} ({source})"),
        }
    }
}

/// What the app at the commit declares; `requires_python` comes from the
/// settings' reading of pyproject.toml.
pub fn declared(app_dir: &Path, requires_python: Option<&str>) -> Result<Vec<Need>> {
    let mut needs = Vec::new();
    if let Some(spec) = requires_python.map(str::trim).filter(|s| !s.is_empty()) {
        needs.push(Need::Spec {
            spec: spec.to_string(),
            source: "requires-python in pyproject.toml",
        });
    }
    let first_line = |name: &str| -> Result<Option<String>> {
        let path = app_dir.join(name);
        if !path.is_file() {
            return Ok(None);
        }
        Ok(fs::read_to_string(&path)?
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default().trim().to_string())
            .find(|l| !l.is_empty()))
    };
    if let Some(v) = first_line(".python-version")? {
        // pyenv also allows names like `pypy3.10` or `system`: those say
        // nothing about a CPython X.Y, and are left to pyenv.
        if let Some(minor) = minor_of(&v) {
            needs.push(Need::Minor {
                minor,
                declared: v,
                source: ".python-version",
            });
        }
    }
    if let Some(v) = first_line("runtime.txt")? {
        if let Some(minor) = v.strip_prefix("python-").and_then(minor_of) {
            needs.push(Need::Minor {
                minor,
                declared: v.trim_start_matches("python-").to_string(),
                source: "runtime.txt",
            });
        }
    }
    Ok(needs)
}

/// `3.12` of `3.12`, `3.12.1` or `3.12.1rc1`; None for anything else.
fn minor_of(text: &str) -> Option<String> {
    let mut parts = text.trim().split('.');
    let major = parts.next()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!major.is_empty() && major.chars().all(|c| c.is_ascii_digit()) && !minor.is_empty())
        .then(|| format!("{major}.{minor}"))
}

/// Whether `probe`'s interpreter meets every need: `Err` says which it misses.
fn meets(probe: &Probe, needs: &[Need]) -> std::result::Result<(), Missed> {
    let mut missed = Vec::new();
    let specs: Vec<&str> = needs
        .iter()
        .filter_map(|n| match n {
            Need::Spec { spec, .. } => Some(spec.as_str()),
            _ => None,
        })
        .collect();
    let spec_ok = if specs.is_empty() {
        Vec::new()
    } else {
        spec_contains(&probe.executable, &specs).map_err(Missed::Check)?
    };
    let mut spec_results = spec_ok.into_iter();
    for need in needs {
        let ok = match need {
            Need::Spec { .. } => spec_results.next().unwrap_or(false),
            Need::Minor { minor, .. } => {
                probe.version == *minor || probe.version.starts_with(&format!("{minor}."))
            }
        };
        if !ok {
            missed.push(need.describe());
        }
    }
    if missed.is_empty() {
        Ok(())
    } else {
        Err(Missed::Needs(missed.join(" and ")))
    }
}

/// What an interpreter misses of what the app asks for.
#[derive(Debug)]
enum Missed {
    /// The needs it does not meet, described.
    Needs(String),
    /// Its version could not be checked against requires-python.
    Check(SpecCheck),
}

impl std::fmt::Display for Missed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missed::Needs(needs) => f.write_str(needs),
            Missed::Check(why) => why.fmt(f),
        }
    }
}

/// Why a version could not be checked against requires-python.
#[derive(Debug)]
enum SpecCheck {
    NotRunnable {
        python: String,
        error: String,
    },
    NoPackaging {
        python: String,
        stderr: String,
    },
    /// requires-python is not a PEP 440 specifier.
    BadSpec(String),
}

impl std::fmt::Display for SpecCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpecCheck::NotRunnable { python, error } => write!(f, "cannot run {python} ({error})"),
            SpecCheck::NoPackaging { python, stderr } => write!(
                f,
                "{python} cannot check requires-python (it has no pip/packaging): {stderr}"
            ),
            SpecCheck::BadSpec(what) => write!(
                f,
                "requires-python in pyproject.toml is not a version specifier: {what}"
            ),
        }
    }
}

/// Ask the interpreter itself whether its version is in each specifier set,
/// with the `packaging` library pip vendors (pip is needed for the build anyway).
fn spec_contains(python: &str, specs: &[&str]) -> std::result::Result<Vec<bool>, SpecCheck> {
    const CHECK: &str = r#"
import platform, sys
try:
    from packaging.specifiers import SpecifierSet
except ImportError:
    from pip._vendor.packaging.specifiers import SpecifierSet
v = platform.python_version()
for spec in sys.argv[1:]:
    try:
        print(1 if SpecifierSet(spec).contains(v, prereleases=True) else 0)
    except Exception as e:
        print("bad %r: %s" % (spec, e))
"#;
    let out = Command::new(python)
        .args(["-c", CHECK])
        .args(specs)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SpecCheck::NotRunnable {
            python: python.to_string(),
            error: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(SpecCheck::NoPackaging {
            python: python.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .map(|l| match l {
            "1" => Ok(true),
            "0" => Ok(false),
            other => Err(SpecCheck::BadSpec(other.to_string())),
        })
        .collect()
}

/// The interpreter for this build. `explicit` is `--python` or `python` in
/// the settings; without it, candidates are tried by name on PATH. With
/// `remembered` (the build cache), an interpreter found by one name may be
/// the one the last build found ([`probes`]): then its fresh probe is
/// [`Pending`], and the build must confirm it.
pub fn select(
    explicit: Option<&str>,
    needs: &[Need],
    printer: &Printer,
    remembered: Option<&Path>,
) -> Result<(Interpreter, Option<Pending>)> {
    if let Some(python) = explicit {
        let (interpreter, pending) = by_name(python, remembered)?;
        let probe = probe_of(&interpreter);
        if let Err(missed) = meets(&probe, needs) {
            if pending.is_some_and(|p| !p.confirm()) {
                // The remembered answer is stale: decide on the fresh one.
                return select(explicit, needs, printer, None);
            }
            return Err(PythonError::NotWhatTheAppAsks {
                missed: missed.to_string(),
                version: interpreter.version,
                executable: interpreter.executable,
                suggestion: suggestion(needs),
            }
            .into());
        }
        return Ok((interpreter, pending));
    }
    if needs.is_empty() {
        return by_name("python3", remembered);
    }
    Ok((by_needs(needs, printer)?, None))
}

/// The interpreter `python` names: the remembered probe when there is one
/// (and its fresh probe pending), else probed now (and remembered).
fn by_name(python: &str, remembered: Option<&Path>) -> Result<(Interpreter, Option<Pending>)> {
    let Some(cache_dir) = remembered else {
        return Ok((python::find_interpreter(python)?, None));
    };
    if let Some(probe) = probes::recall(cache_dir, python) {
        if let Ok(interpreter) = Interpreter::from_probe(probe.clone()) {
            return Ok((interpreter, Some(Pending::start(cache_dir, python, probe))));
        }
    }
    let probe = python::probe_named(python)?;
    let interpreter = Interpreter::from_probe(probe.clone())?;
    probes::remember(cache_dir, python, &probe);
    Ok((interpreter, None))
}

/// The first candidate on PATH that meets what the app declares.
fn by_needs(needs: &[Need], printer: &Printer) -> Result<Interpreter> {
    let mut tried = Vec::new();
    for name in candidates(needs) {
        let probe = match Probe::run(name.as_os_str()) {
            Ok(probe) => probe,
            Err(_) => continue,
        };
        match meets(&probe, needs) {
            Ok(()) => {
                printer.progress(&format!(
                    "building with {} (Python {} at {}), as the app asks for {}",
                    name.to_string_lossy(),
                    probe.version,
                    probe.executable,
                    needs
                        .iter()
                        .map(Need::describe)
                        .collect::<Vec<_>>()
                        .join(" and ")
                ));
                return Interpreter::from_probe(probe);
            }
            Err(Missed::Check(SpecCheck::BadSpec(spec))) => {
                return Err(PythonError::BadRequiresPython { spec }.into())
            }
            Err(_) => tried.push(format!(
                "{} is {} at {}",
                name.to_string_lossy(),
                probe.version,
                probe.executable
            )),
        }
    }
    Err(PythonError::NoMatchingInterpreter {
        needs: needs
            .iter()
            .map(Need::describe)
            .collect::<Vec<_>>()
            .join(" and "),
        tried,
        suggestion: suggestion(needs),
    }
    .into())
}

fn probe_of(i: &Interpreter) -> Probe {
    Probe {
        pip: Some(i.pip_version.clone()),
        implementation: i.implementation.clone(),
        version: i.version.clone(),
        abi: i.abi.clone(),
        platform: i.platform.clone(),
        executable: i.executable.to_string_lossy().into_owned(),
        markers: i.markers.clone(),
    }
}

/// `3.12` when the app names a minor version, else `3.X`.
fn suggestion(needs: &[Need]) -> String {
    needs
        .iter()
        .find_map(|n| match n {
            Need::Minor { minor, .. } => Some(minor.clone()),
            _ => None,
        })
        .or_else(|| {
            needs.iter().find_map(|n| match n {
                Need::Spec { spec, .. } => spec
                    .split(',')
                    .find_map(|s| s.trim().strip_prefix(">=").and_then(minor_of)),
                _ => None,
            })
        })
        .unwrap_or_else(|| "3.X".into())
}

/// Names to try, in order: `pythonX.Y` for a declared minor version, then
/// `python3`, then every `python3.N` on PATH, newest first.
fn candidates(needs: &[Need]) -> Vec<OsString> {
    let mut names: Vec<OsString> = Vec::new();
    for need in needs {
        if let Need::Minor { minor, .. } = need {
            names.push(format!("python{minor}").into());
        }
    }
    names.push("python3".into());
    let mut minors = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(n) = name.strip_prefix("python3.") {
                    if let Ok(n) = n.parse::<u32>() {
                        minors.push(n);
                    }
                }
            }
        }
    }
    minors.sort_unstable_by(|a, b| b.cmp(a));
    minors.dedup();
    for n in minors {
        names.push(format!("python3.{n}").into());
    }
    let mut seen = Vec::new();
    names.retain(|n| {
        let new = !seen.contains(n);
        seen.push(n.clone());
        new
    });
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_minor_versions() {
        assert_eq!(minor_of("3.12").as_deref(), Some("3.12"));
        assert_eq!(minor_of("3.12.1").as_deref(), Some("3.12"));
        assert_eq!(minor_of("3.13.0rc1").as_deref(), Some("3.13"));
        assert_eq!(minor_of("pypy3.10"), None);
        assert_eq!(minor_of("system"), None);
    }

    #[test]
    fn reads_what_the_app_declares() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".python-version"), "# pyenv\n3.12.1\n").unwrap();
        std::fs::write(dir.path().join("runtime.txt"), "python-3.12.1\n").unwrap();
        let needs = declared(dir.path(), Some(">=3.12")).unwrap();
        assert_eq!(needs.len(), 3);
        assert_eq!(
            needs[0].describe(),
            "Python >=3.12 (requires-python in pyproject.toml)"
        );
        assert_eq!(needs[1].describe(), "Python 3.12.1 (.python-version)");
        assert_eq!(needs[2].describe(), "Python 3.12.1 (runtime.txt)");
        assert_eq!(suggestion(&needs), "3.12");
        assert_eq!(suggestion(&needs[..1]), "3.12");
    }
}
