//! The app's dependency file: which one the build uses (`discover`), and the
//! lock files read into one exact list of `name==version` with hashes
//! (`read`), the same thing a hashed requirements file gives. From there the
//! build is the same for all: wheels (hash-checked by pip), then the venv.
//!
//! * `pylock.toml` (PEP 751) and `poetry.lock` are read here.
//! * `uv.lock` belongs to uv: `uv export --locked` turns it into a pylock,
//!   read the same way, and says when the lock is stale.
//! * Packages a lock takes from a directory (`./packages/x`, or the app
//!   itself) are built as wheels from a scratch copy of the commit.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fs_err as fs;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::pep508::{self, Env, Marker, Requirement};
use super::requirements::normalize;
use crate::error::{tail, Error, LockError, PackageProblem, PythonError, Result};
use crate::python::Interpreter;

/// What kind of dependency file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Format {
    #[serde(rename = "requirements")]
    Requirements,
    #[serde(rename = "pylock")]
    Pylock,
    #[serde(rename = "uv.lock")]
    UvLock,
    #[serde(rename = "poetry.lock")]
    PoetryLock,
}

impl Format {
    /// The name recorded in the manifest and `--json`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Requirements => "requirements",
            Format::Pylock => "pylock",
            Format::UvLock => "uv.lock",
            Format::PoetryLock => "poetry.lock",
        }
    }

    /// What messages call a file of this format.
    pub fn kind(self) -> &'static str {
        match self {
            Format::Requirements => "requirements file",
            Format::Pylock | Format::UvLock | Format::PoetryLock => "lock file",
        }
    }

    /// The format of a file, from its name.
    pub fn of(file: &str) -> Format {
        let name = Path::new(file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == "pylock.toml" || (name.starts_with("pylock.") && name.ends_with(".toml")) {
            Format::Pylock
        } else if name == "uv.lock" {
            Format::UvLock
        } else if name == "poetry.lock" {
            Format::PoetryLock
        } else {
            Format::Requirements
        }
    }
}

/// The order files are looked for when none is named.
pub const DISCOVERY_ORDER: &[&str] = &["pylock.toml", "uv.lock", "poetry.lock", "requirements.txt"];

/// The dependency file a build uses.
#[derive(Debug, Clone)]
pub struct Found {
    /// Relative to the app directory.
    pub file: String,
    pub format: Format,
    /// Other files of `DISCOVERY_ORDER` present but not used (discovery only).
    pub others: Vec<String>,
}

/// The file named by the settings, or the first of `DISCOVERY_ORDER` at the
/// commit. `Ok(None)`: nothing named and none there.
pub fn discover(app_dir: &Path, named: Option<&str>) -> Option<Found> {
    if let Some(file) = named {
        return Some(Found {
            file: file.to_string(),
            format: Format::of(file),
            others: Vec::new(),
        });
    }
    let present: Vec<&str> = DISCOVERY_ORDER
        .iter()
        .copied()
        .filter(|f| app_dir.join(f).is_file())
        .collect();
    let (first, others) = present.split_first()?;
    Some(Found {
        file: first.to_string(),
        format: Format::of(first),
        others: others.iter().map(|s| s.to_string()).collect(),
    })
}

/// One locked distribution from an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// Normalised.
    pub name: String,
    pub version: String,
    /// `sha256:<hex>` (or sha384/sha512) of every file the lock allows.
    pub hashes: Vec<String>,
}

/// A locked package built from a directory of the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDir {
    pub name: String,
    /// Relative to the app directory, `/`-separated.
    pub path: String,
}

/// What a lock file says to install for this interpreter and selection.
#[derive(Debug, Default)]
pub struct Locked {
    pub pins: Vec<Pin>,
    /// Directory packages other than the app itself.
    pub dirs: Vec<LocalDir>,
}

impl Locked {
    /// The pins as a requirements file pip reads in hash-checking mode.
    pub fn requirements_text(&self, from: &str) -> String {
        let mut text = format!("# the exact pins of {from}, written by release build\n");
        for pin in &self.pins {
            text.push_str(&format!("{}=={}", pin.name, pin.version));
            for hash in &pin.hashes {
                text.push_str(&format!(" --hash={hash}"));
            }
            text.push('\n');
        }
        text
    }

    /// Add `pin` (its hashes sorted and deduplicated here, once for every
    /// lock format), refusing one without hashes or a package locked twice.
    fn add_pin(&mut self, file: &str, mut pin: Pin) -> Result<()> {
        pin.hashes.sort();
        pin.hashes.dedup();
        if pin.hashes.is_empty() {
            return Err(LockError::Package {
                file: file.to_string(),
                package: format!("{}=={}", pin.name, pin.version),
                problem: PackageProblem::NoHashes,
            }
            .into());
        }
        if let Some(other) = self.pins.iter().find(|p| p.name == pin.name) {
            return Err(LockError::Package {
                file: file.to_string(),
                package: pin.name.clone(),
                problem: PackageProblem::LockedTwice {
                    first: other.version.clone(),
                    second: pin.version.clone(),
                },
            }
            .into());
        }
        self.pins.push(pin);
        Ok(())
    }
}

/// What to read a lock with.
pub struct Request<'a> {
    /// The lock file in a scratch copy of the commit (uv runs there).
    pub path: &'a Path,
    /// As the user names it, for messages.
    pub file: &'a str,
    pub format: Format,
    pub interpreter: &'a Interpreter,
    pub extras: &'a [String],
    pub groups: &'a [String],
    pub find_links: &'a [PathBuf],
    pub no_index: bool,
    pub cache_dir: &'a Path,
    /// The app's `[project].name` (normalised), which a lock lists as itself.
    pub project: Option<String>,
}

/// Read the lock of `req` for its interpreter and selection.
pub fn read(req: &Request<'_>) -> Result<Locked> {
    let env = Env {
        values: req.interpreter.markers.clone(),
        ..Env::default()
    };
    if env.values.is_empty() {
        return Err(Error::internal(format!(
            "{}: the interpreter's probe gave no PEP 508 marker values",
            req.interpreter.executable.display()
        )));
    }
    let locked = match req.format {
        Format::Pylock => {
            let text = fs::read_to_string(req.path)?;
            read_pylock(
                &text,
                req.file,
                &env,
                req.extras,
                req.groups,
                req.interpreter,
            )?
        }
        Format::UvLock => {
            let text = export_uv(req)?;
            // uv applied the selection; the markers left are environment ones.
            read_pylock(&text, req.file, &env, &[], &[], req.interpreter)?
        }
        Format::PoetryLock => {
            let text = fs::read_to_string(req.path)?;
            read_poetry(&text, req.file, &env, req.extras, req.groups)?
        }
        Format::Requirements => unreachable!("requirements files are read by pip"),
    };
    Ok(Locked {
        pins: locked.pins,
        dirs: locked
            .dirs
            .into_iter()
            .filter(|d| d.path != "." && Some(&d.name) != req.project.as_ref())
            .collect(),
    })
}

fn parse_marker(file: &str, package: &str, text: &str) -> Result<Marker> {
    Marker::parse(text).map_err(|why| {
        LockError::Package {
            file: file.to_string(),
            package: package.to_string(),
            problem: PackageProblem::BadMarker {
                marker: text.to_string(),
                why: why.to_string(),
            },
        }
        .into()
    })
}

fn bad_toml(file: &str, e: impl std::fmt::Display) -> Error {
    LockError::NotALock {
        file: file.to_string(),
        why: e.to_string(),
    }
    .into()
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Pylock {
    lock_version: String,
    environments: Option<Vec<String>>,
    requires_python: Option<String>,
    #[serde(default)]
    extras: Vec<String>,
    #[serde(default)]
    dependency_groups: Vec<String>,
    #[serde(default)]
    default_groups: Vec<String>,
    #[serde(default)]
    packages: Vec<PylockPackage>,
}

#[derive(Deserialize)]
struct PylockPackage {
    name: String,
    version: Option<String>,
    marker: Option<String>,
    wheels: Option<Vec<PylockFile>>,
    sdist: Option<PylockFile>,
    directory: Option<PylockDirectory>,
    vcs: Option<toml::Value>,
    archive: Option<toml::Value>,
}

#[derive(Deserialize)]
struct PylockFile {
    #[serde(default)]
    hashes: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct PylockDirectory {
    path: String,
}

/// A PEP 751 lock, for this interpreter: packages whose marker is false are
/// left out; `extras`/`groups` select what the lock's markers offer (the
/// lock's default groups are always in).
pub fn read_pylock(
    text: &str,
    file: &str,
    env: &Env,
    extras: &[String],
    groups: &[String],
    interpreter: &Interpreter,
) -> Result<Locked> {
    let lock: Pylock = toml::from_str(text).map_err(|e| bad_toml(file, e))?;
    if !lock.lock_version.starts_with("1.") && lock.lock_version != "1" {
        return Err(LockError::PylockVersion {
            file: file.to_string(),
            version: lock.lock_version,
        }
        .into());
    }
    check_offered(file, &lock, extras, groups)?;
    let mut selected_groups: Vec<String> = lock.default_groups.clone();
    selected_groups.extend(groups.iter().cloned());
    let env = env.with_selection(extras, &selected_groups);
    check_covers(file, &lock, &env, interpreter)?;
    let mut locked = Locked::default();
    for package in lock.packages {
        let name = normalize(&package.name);
        if let Some(marker) = &package.marker {
            if !parse_marker(file, &name, marker)?.evaluate(&env) {
                continue;
            }
        }
        if let Some(dir) = package.directory {
            locked.dirs.push(LocalDir {
                name,
                path: clean_rel(&dir.path),
            });
            continue;
        }
        if package.vcs.is_some() || package.archive.is_some() {
            return Err(LockError::Package {
                file: file.to_string(),
                package: name,
                problem: PackageProblem::Unpinnable {
                    source: if package.vcs.is_some() {
                        "VCS repository".into()
                    } else {
                        "URL archive".into()
                    },
                },
            }
            .into());
        }
        let version = package
            .version
            .ok_or_else(|| bad_toml(file, format!("{name} has no version")))?;
        let mut hashes = Vec::new();
        for f in package.wheels.iter().flatten().chain(package.sdist.iter()) {
            for (algo, hex) in &f.hashes {
                if matches!(algo.as_str(), "sha256" | "sha384" | "sha512") {
                    hashes.push(format!("{algo}:{hex}"));
                }
            }
        }
        locked.add_pin(
            file,
            Pin {
                name,
                version,
                hashes,
            },
        )?;
    }
    Ok(locked)
}

/// Every extra and group asked for is one the pylock offers.
fn check_offered(file: &str, lock: &Pylock, extras: &[String], groups: &[String]) -> Result<()> {
    for (asked, offered, what) in [
        (extras, &lock.extras, "extra"),
        (groups, &lock.dependency_groups, "dependency group"),
    ] {
        let offered: Vec<String> = offered.iter().map(|e| normalize(e)).collect();
        for name in asked {
            if !offered.contains(&normalize(name)) {
                return Err(LockError::NoSuchSelection {
                    file: file.to_string(),
                    what,
                    name: name.clone(),
                    offered,
                    fix: format!(
                        "export the lock with it (uv: `uv export --format pylock.toml --{} {name} -o {file}`; uv writes the selection into the file), or drop it from the settings",
                        if what == "extra" { "extra" } else { "group" }
                    ),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// The pylock's `requires-python` and `environments` cover the build interpreter.
fn check_covers(file: &str, lock: &Pylock, env: &Env, interpreter: &Interpreter) -> Result<()> {
    if let Some(spec) = &lock.requires_python {
        match pep508::spec_contains(spec, &interpreter.version) {
            Ok(true) => {}
            Ok(false) => {
                return Err(LockError::WrongPython {
                    file: file.to_string(),
                    spec: spec.clone(),
                    version: interpreter.version.clone(),
                    executable: interpreter.executable.clone(),
                }
                .into())
            }
            Err(why) => return Err(bad_toml(file, format!("requires-python: {why}"))),
        }
    }
    if let Some(environments) = &lock.environments {
        let mut any = environments.is_empty();
        for e in environments {
            any |= parse_marker(file, "environments", e)?.evaluate(env);
        }
        if !any {
            return Err(LockError::NotForThisPlatform {
                file: file.to_string(),
                environments: environments.join(" or "),
                version: interpreter.version.clone(),
                platform: env
                    .values
                    .get("sys_platform")
                    .cloned()
                    .unwrap_or_else(|| "?".into()),
            }
            .into());
        }
    }
    Ok(())
}

/// `./a/b/` → `a/b`; `.` stays.
fn clean_rel(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
    if trimmed.is_empty() {
        ".".into()
    } else {
        trimmed.to_string()
    }
}

#[derive(Deserialize)]
struct PoetryLock {
    #[serde(default)]
    package: Vec<PoetryPackage>,
    #[serde(default)]
    extras: std::collections::BTreeMap<String, Vec<String>>,
    metadata: PoetryMetadata,
}

#[derive(Deserialize)]
struct PoetryMetadata {
    #[serde(rename = "lock-version")]
    lock_version: String,
}

#[derive(Deserialize)]
struct PoetryPackage {
    name: String,
    version: String,
    #[serde(default)]
    optional: bool,
    #[serde(default)]
    groups: Vec<String>,
    /// One marker for every group, or a table group → marker.
    markers: Option<toml::Value>,
    #[serde(default)]
    files: Vec<PoetryFile>,
    source: Option<PoetrySource>,
}

#[derive(Deserialize)]
struct PoetryFile {
    hash: String,
}

#[derive(Deserialize)]
struct PoetrySource {
    #[serde(rename = "type")]
    kind: String,
    url: Option<String>,
}

/// A Poetry lock (format 2.1, Poetry 2): the `main` group and the selected
/// ones, optional packages only when a selected extra names them, markers
/// evaluated for this interpreter.
pub fn read_poetry(
    text: &str,
    file: &str,
    env: &Env,
    extras: &[String],
    groups: &[String],
) -> Result<Locked> {
    let lock: PoetryLock = toml::from_str(text).map_err(|e| bad_toml(file, e))?;
    let (major, minor) = lock
        .metadata
        .lock_version
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .unwrap_or((0, 0));
    if major != 2 || minor < 1 {
        return Err(LockError::OldPoetryLock {
            file: file.to_string(),
            version: lock.metadata.lock_version,
        }
        .into());
    }
    let extras_table = poetry_extras(file, &lock, extras)?;
    let mut wanted_groups = vec!["main".to_string()];
    wanted_groups.extend(groups.iter().map(|g| normalize(g)));
    let env = env.with_selection(extras, &wanted_groups);
    let mut locked = Locked::default();
    for package in lock.package {
        let name = normalize(&package.name);
        if package.optional
            && !extras.iter().any(|e| {
                extras_table
                    .get(&normalize(e))
                    .is_some_and(|set| set.contains(&name))
            })
        {
            continue;
        }
        if !poetry_applies(file, &package, &wanted_groups, &env)? {
            continue;
        }
        match package.source.as_ref().map(|s| s.kind.as_str()) {
            None | Some("legacy") => {}
            Some("directory") => {
                let path = package
                    .source
                    .as_ref()
                    .and_then(|s| s.url.clone())
                    .unwrap_or_default();
                locked.dirs.push(LocalDir {
                    name,
                    path: clean_rel(&path),
                });
                continue;
            }
            Some(other) => {
                return Err(LockError::Package {
                    file: file.to_string(),
                    package: name,
                    problem: PackageProblem::Unpinnable {
                        source: format!("{other} source"),
                    },
                }
                .into())
            }
        }
        let hashes: Vec<String> = package.files.iter().map(|f| f.hash.clone()).collect();
        locked.add_pin(
            file,
            Pin {
                name,
                version: package.version,
                hashes,
            },
        )?;
    }
    Ok(locked)
}

/// The lock's `[extras]`: each extra's package names (normalised), after
/// checking that every extra asked for is there.
fn poetry_extras(
    file: &str,
    lock: &PoetryLock,
    extras: &[String],
) -> Result<std::collections::BTreeMap<String, BTreeSet<String>>> {
    let table: std::collections::BTreeMap<String, BTreeSet<String>> = lock
        .extras
        .iter()
        .map(|(k, v)| {
            (
                normalize(k),
                v.iter()
                    .map(|n| {
                        normalize(
                            n.split(['[', ' ', '(', ';', '<', '>', '=', '!', '~'])
                                .next()
                                .unwrap_or_default(),
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    for extra in extras {
        if !table.contains_key(&normalize(extra)) {
            return Err(LockError::NoSuchSelection {
                file: file.to_string(),
                what: "extra",
                name: extra.clone(),
                offered: table.keys().cloned().collect(),
                fix: "declare it in pyproject.toml and run `poetry lock`, or drop it from the settings".into(),
            }
            .into());
        }
    }
    Ok(table)
}

/// Whether a Poetry package is in a wanted group whose marker holds.
fn poetry_applies(
    file: &str,
    package: &PoetryPackage,
    wanted_groups: &[String],
    env: &Env,
) -> Result<bool> {
    let name = normalize(&package.name);
    // Locks without groups (single-group projects) mean `main`.
    let package_groups: Vec<String> = if package.groups.is_empty() {
        vec!["main".into()]
    } else {
        package.groups.iter().map(|g| normalize(g)).collect()
    };
    for group in package_groups.iter().filter(|g| wanted_groups.contains(g)) {
        let marker = match &package.markers {
            None => None,
            Some(toml::Value::String(m)) => Some(m.clone()),
            Some(toml::Value::Table(t)) => t
                .iter()
                .find(|(g, _)| normalize(g) == *group)
                .and_then(|(_, m)| m.as_str().map(str::to_string)),
            Some(other) => return Err(bad_toml(file, format!("{name}: markers = {other}"))),
        };
        let ok = match marker {
            None => true,
            Some(m) => parse_marker(file, &name, &m)?.evaluate(env),
        };
        if ok {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `uv` on PATH, or the error naming the fix.
fn find_uv(file: &str) -> Result<PathBuf> {
    let found = Command::new("uv")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Ok(PathBuf::from("uv"));
    }
    Err(LockError::UvMissing {
        file: file.to_string(),
    }
    .into())
}

/// `uv export --locked --no-default-groups` of the project holding
/// `req.path`, as a pylock.
fn export_uv(req: &Request<'_>) -> Result<String> {
    let uv = find_uv(req.file)?;
    let project = req.path.parent().expect("the lock file is in a directory");
    let mut cmd = Command::new(&uv);
    cmd.args([
        "export",
        "--locked",
        // The groups uv installs by default (`dev`, or [tool.uv]
        // default-groups) are for development: only `--group` selects one.
        "--no-default-groups",
        "--no-emit-project",
        "--format",
        "pylock.toml",
        "--quiet",
        "--no-progress",
        "--no-python-downloads",
        "--python",
    ])
    .arg(&req.interpreter.executable)
    .arg("--cache-dir")
    .arg(req.cache_dir)
    .current_dir(project)
    .env_remove("VIRTUAL_ENV")
    .env_remove("UV_FROZEN")
    .env_remove("UV_NO_SYNC")
    .stdin(Stdio::null());
    for extra in req.extras {
        cmd.arg("--extra").arg(extra);
    }
    for group in req.groups {
        cmd.arg("--group").arg(group);
    }
    for link in req.find_links {
        cmd.arg("--find-links").arg(link);
    }
    if req.no_index {
        cmd.args(["--offline", "--no-index"]);
    }
    let line = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| PythonError::ToolFailed {
        tool: "uv export".into(),
        command: line.clone(),
        status: "not started".into(),
        tail: format!("    {e}"),
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("needs to be updated") {
            return Err(LockError::UvStale {
                file: req.file.to_string(),
                says: stderr
                    .lines()
                    .find(|l| l.contains("needs to be updated"))
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            }
            .into());
        }
        return Err(PythonError::ToolFailed {
            tool: "uv export".into(),
            command: line,
            status: out.status.to_string(),
            tail: tail(&stderr, 20),
        }
        .into());
    }
    String::from_utf8(out.stdout)
        .map_err(|_| Error::internal("uv export wrote something that is not UTF-8"))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct ProjectFile {
    project: Option<ProjectTable>,
    #[serde(default)]
    dependency_groups: std::collections::BTreeMap<String, Vec<toml::Value>>,
    tool: Option<ToolTable>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct ProjectTable {
    name: Option<String>,
    #[serde(default)]
    dependencies: Vec<String>,
    #[serde(default)]
    optional_dependencies: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize, Default)]
struct ToolTable {
    poetry: Option<PoetryTable>,
}

#[derive(Deserialize, Default)]
struct PoetryTable {
    #[serde(default)]
    dependencies: std::collections::BTreeMap<String, toml::Value>,
    #[serde(default)]
    group: std::collections::BTreeMap<String, PoetryGroup>,
}

#[derive(Deserialize, Default)]
struct PoetryGroup {
    #[serde(default)]
    dependencies: std::collections::BTreeMap<String, toml::Value>,
}

/// `[project].name` of the app's pyproject.toml, normalised.
pub fn project_name(app_dir: &Path) -> Result<Option<String>> {
    Ok(read_project(app_dir)?
        .project
        .and_then(|p| p.name)
        .map(|n| normalize(&n)))
}

fn read_project(app_dir: &Path) -> Result<ProjectFile> {
    let path = app_dir.join("pyproject.toml");
    if !path.is_file() {
        return Ok(ProjectFile::default());
    }
    // The settings have already parsed this file; a shape this reader does
    // not expect is left to the lock tool.
    Ok(toml::from_str(&fs::read_to_string(&path)?).unwrap_or_default())
}

/// A stale lock: what pyproject.toml asks for (`[project]` dependencies,
/// the selected extras and groups; Poetry's own tables by name) that the
/// lock does not hold for this interpreter. Empty when it is satisfied.
pub fn unsatisfied(
    app_dir: &Path,
    locked: &Locked,
    interpreter: &Interpreter,
    extras: &[String],
    groups: &[String],
    format: Format,
) -> Result<Vec<String>> {
    let file = read_project(app_dir)?;
    let project = file.project.unwrap_or_default();
    let own = project.name.as_deref().map(normalize);
    let mut wanted: Vec<String> = project.dependencies.clone();
    for extra in extras {
        if let Some((_, deps)) = project
            .optional_dependencies
            .iter()
            .find(|(k, _)| normalize(k) == normalize(extra))
        {
            wanted.extend(deps.iter().cloned());
        }
    }
    for group in groups {
        if let Some((_, deps)) = file
            .dependency_groups
            .iter()
            .find(|(k, _)| normalize(k) == normalize(group))
        {
            wanted.extend(deps.iter().filter_map(|d| d.as_str().map(str::to_string)));
        }
    }
    let env = Env {
        values: interpreter.markers.clone(),
        ..Env::default()
    }
    .with_selection(extras, groups);
    let version_of = |name: &str| -> Option<Option<&str>> {
        if let Some(pin) = locked.pins.iter().find(|p| p.name == name) {
            return Some(Some(pin.version.as_str()));
        }
        locked.dirs.iter().any(|d| d.name == name).then_some(None)
    };
    let mut problems = Vec::new();
    for text in &wanted {
        let req = match Requirement::parse(text) {
            Ok(req) => req,
            Err(why) => {
                problems.push(format!("{text} cannot be read ({why})"));
                continue;
            }
        };
        if req.marker.as_ref().is_some_and(|m| !m.evaluate(&env)) || Some(&req.name) == own.as_ref()
        {
            continue;
        }
        match version_of(&req.name) {
            None => problems.push(format!("{} is not in the lock", text.trim())),
            Some(Some(version)) => {
                let spec = req.spec.unwrap_or_default();
                match pep508::spec_contains(&spec, version) {
                    Ok(true) => {}
                    Ok(false) => problems.push(format!("{} is locked at {version}", text.trim())),
                    Err(why) => problems.push(format!("{} cannot be checked ({why})", text.trim())),
                }
            }
            Some(None) => {}
        }
    }
    if format == Format::PoetryLock {
        if let Some(poetry) = file.tool.and_then(|t| t.poetry) {
            problems.extend(poetry_unlocked(&poetry, groups, own.as_deref(), locked));
        }
    }
    problems.sort();
    problems.dedup();
    Ok(problems)
}

/// Poetry's own tables: the names of the non-optional dependencies of
/// `main` and of the selected groups that the lock does not hold.
fn poetry_unlocked(
    poetry: &PoetryTable,
    groups: &[String],
    own: Option<&str>,
    locked: &Locked,
) -> Vec<String> {
    let mut tables = vec![&poetry.dependencies];
    for group in groups {
        if let Some((_, g)) = poetry
            .group
            .iter()
            .find(|(k, _)| normalize(k) == normalize(group))
        {
            tables.push(&g.dependencies);
        }
    }
    let mut missing = Vec::new();
    for table in tables {
        for (name, value) in table {
            let optional = value.get("optional").and_then(toml::Value::as_bool) == Some(true);
            // A dependency for some environments only may rightly be absent.
            let conditional = value.get("markers").is_some()
                || value.get("python").is_some()
                || value.get("platform").is_some();
            let name = normalize(name);
            if name == "python" || optional || conditional || Some(name.as_str()) == own {
                continue;
            }
            let held = locked.pins.iter().any(|p| p.name == name)
                || locked.dirs.iter().any(|d| d.name == name);
            if !held {
                missing.push(format!("{name} is not in the lock"));
            }
        }
    }
    missing
}

/// The refusal of a stale lock.
pub fn stale(file: &str, format: Format, problems: &[String]) -> Error {
    let fix = match format {
        Format::PoetryLock => "run `poetry lock` and commit poetry.lock".to_string(),
        Format::UvLock => "run `uv lock` and commit uv.lock".to_string(),
        _ => format!(
            "lock again and commit it (`uv lock && uv export --format pylock.toml -o {file}`, or `pip lock -o {file}`)"
        ),
    };
    LockError::Stale {
        file: file.to_string(),
        fix,
        problems: problems.to_vec(),
    }
    .into()
}

/// sha256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    Ok(hex::encode(Sha256::digest(fs::read(path)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interpreter() -> Interpreter {
        let mut markers = std::collections::BTreeMap::new();
        for (k, v) in [
            ("python_version", "3.11"),
            ("python_full_version", "3.11.7"),
            ("sys_platform", "linux"),
            ("platform_system", "Linux"),
            ("implementation_name", "cpython"),
            ("platform_python_implementation", "CPython"),
            ("os_name", "posix"),
        ] {
            markers.insert(k.to_string(), v.to_string());
        }
        Interpreter {
            executable: "/usr/bin/python3".into(),
            implementation: "cpython".into(),
            version: "3.11.7".into(),
            abi: "cp311".into(),
            platform: "linux_x86_64".into(),
            pip_version: "24.0".into(),
            markers,
        }
    }

    fn env() -> Env {
        Env {
            values: interpreter().markers,
            ..Env::default()
        }
    }

    const PYLOCK: &str = r#"
lock-version = "1.0"
created-by = "test"
requires-python = ">=3.10"
extras = ["s3"]
dependency-groups = ["prod"]
default-groups = []

[[packages]]
name = "Django"
version = "5.2.19"
wheels = [{ name = "django-5.2.19-py3-none-any.whl", url = "https://example.invalid/django-5.2.19-py3-none-any.whl", hashes = { sha256 = "aa" } }]
sdist = { name = "django-5.2.19.tar.gz", url = "https://example.invalid/django-5.2.19.tar.gz", hashes = { sha256 = "bb" } }

[[packages]]
name = "tzdata"
version = "2025.2"
marker = "sys_platform == 'win32'"
wheels = [{ url = "https://example.invalid/tzdata.whl", hashes = { sha256 = "cc" } }]

[[packages]]
name = "boto3"
version = "1.0"
marker = "'s3' in extras"
wheels = [{ url = "https://example.invalid/boto3.whl", hashes = { sha256 = "dd" } }]

[[packages]]
name = "gunicorn"
version = "23.0.0"
marker = "'prod' in dependency_groups"
wheels = [{ url = "https://example.invalid/g.whl", hashes = { sha256 = "ee" } }]

[[packages]]
name = "greeting"
directory = { path = "./packages/greeting/", editable = false }

[[packages]]
name = "mysite"
directory = { path = ".", editable = true }
"#;

    #[test]
    fn pylock_markers_extras_and_groups_select_packages() {
        let i = interpreter();
        let l = read_pylock(PYLOCK, "pylock.toml", &env(), &[], &[], &i).unwrap();
        let names: Vec<&str> = l.pins.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["django"]);
        assert_eq!(l.pins[0].hashes, ["sha256:aa", "sha256:bb"]);
        assert_eq!(
            l.dirs.iter().map(|d| d.path.as_str()).collect::<Vec<_>>(),
            ["packages/greeting", "."]
        );
        let l = read_pylock(
            PYLOCK,
            "pylock.toml",
            &env(),
            &["s3".into()],
            &["prod".into()],
            &i,
        )
        .unwrap();
        let names: Vec<&str> = l.pins.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["django", "boto3", "gunicorn"]);
        assert_eq!(
            l.requirements_text("pylock.toml").lines().nth(1),
            Some("django==5.2.19 --hash=sha256:aa --hash=sha256:bb")
        );
        let err = read_pylock(PYLOCK, "pylock.toml", &env(), &["gcs".into()], &[], &i).unwrap_err();
        assert!(err.to_string().contains("offers no extra \"gcs\""), "{err}");
        let old = PYLOCK.replace(">=3.10", ">=3.12");
        let err = read_pylock(&old, "pylock.toml", &env(), &[], &[], &i).unwrap_err();
        assert!(err.to_string().contains("is for Python >=3.12"), "{err}");
    }

    const POETRY: &str = r#"
[[package]]
name = "Django"
version = "5.2.19"
description = ""
optional = false
python-versions = ">=3.10"
groups = ["main"]
files = [
    {file = "django-5.2.19-py3-none-any.whl", hash = "sha256:aa"},
]

[[package]]
name = "colorama"
version = "0.4.6"
description = ""
optional = false
python-versions = "*"
groups = ["main", "dev"]
markers = {main = "sys_platform == \"win32\"", dev = "sys_platform == \"linux\""}
files = [{file = "colorama-0.4.6-py2.py3-none-any.whl", hash = "sha256:cc"}]

[[package]]
name = "redis"
version = "6.4.0"
description = ""
optional = true
python-versions = ">=3.9"
groups = ["main"]
markers = "extra == \"redis\""
files = [{file = "redis-6.4.0-py3-none-any.whl", hash = "sha256:dd"}]

[[package]]
name = "pytest"
version = "8.0.0"
description = ""
optional = false
python-versions = ">=3.8"
groups = ["dev"]
files = [{file = "pytest-8.0.0-py3-none-any.whl", hash = "sha256:ee"}]

[extras]
redis = ["redis"]

[metadata]
lock-version = "2.1"
python-versions = ">=3.11"
content-hash = "00"
"#;

    #[test]
    fn poetry_main_group_by_default_extras_and_groups_by_setting() {
        let names = |l: &Locked| l.pins.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        let l = read_poetry(POETRY, "poetry.lock", &env(), &[], &[]).unwrap();
        assert_eq!(names(&l), ["django"]);
        let l = read_poetry(
            POETRY,
            "poetry.lock",
            &env(),
            &["redis".into()],
            &["dev".into()],
        )
        .unwrap();
        assert_eq!(names(&l), ["django", "colorama", "redis", "pytest"]);
        let old = POETRY.replace("lock-version = \"2.1\"", "lock-version = \"2.0\"");
        let err = read_poetry(&old, "poetry.lock", &env(), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("poetry lock"), "{err}");
        let unhashed = POETRY.replace(
            "{file = \"django-5.2.19-py3-none-any.whl\", hash = \"sha256:aa\"},",
            "",
        );
        let err = read_poetry(&unhashed, "poetry.lock", &env(), &[], &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("django==5.2.19 has no file hashes"),
            "{err}"
        );
    }

    #[test]
    fn poetry_tables_name_what_the_lock_lacks() {
        let poetry: PoetryTable = toml::from_str(
            r#"
[dependencies]
python = "^3.11"
Django = "^5.2"
boto3 = { version = "^1", optional = true }
pywin32 = { version = "*", markers = "sys_platform == 'win32'" }
requests = "^2"

[group.dev.dependencies]
pytest = "^8"
"#,
        )
        .unwrap();
        let locked = read_poetry(POETRY, "poetry.lock", &env(), &[], &[]).unwrap();
        assert_eq!(
            poetry_unlocked(&poetry, &[], Some("mysite"), &locked),
            ["requests is not in the lock"]
        );
        assert_eq!(
            poetry_unlocked(&poetry, &["dev".into()], None, &locked),
            ["requests is not in the lock", "pytest is not in the lock"]
        );
    }

    #[test]
    fn discovery_order_and_formats() {
        let dir = tempfile::tempdir().unwrap();
        assert!(discover(dir.path(), None).is_none());
        for f in ["requirements.txt", "poetry.lock", "uv.lock"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let found = discover(dir.path(), None).unwrap();
        assert_eq!(found.file, "uv.lock");
        assert_eq!(found.format, Format::UvLock);
        assert_eq!(found.others, ["poetry.lock", "requirements.txt"]);
        assert_eq!(Format::of("pylock.prod.toml"), Format::Pylock);
        assert_eq!(Format::of("deps/pylock.toml"), Format::Pylock);
        assert_eq!(Format::of("requirements/prod.txt"), Format::Requirements);
    }
}
