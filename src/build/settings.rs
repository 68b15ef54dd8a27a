//! Build settings: command-line flags over `[tool.release]` in the app's
//! `pyproject.toml`, or the same keys at the top of `release.build.toml` for
//! apps without a pyproject.toml (both read from the commit being built), over
//! defaults.

use std::path::{Path, PathBuf};

use fs_err as fs;
use serde::Deserialize;

use crate::archive::Format;
use crate::error::{Error, Result, SourceError};
use crate::manifest;
use crate::python::InstallerChoice;

/// `release build` flags, as parsed.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildFlags {
    /// The app's directory in a git checkout.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub source: PathBuf,
    /// Where to write the artifact and its .sha256.
    #[arg(long, default_value = "dist", value_name = "DIR")]
    pub out: PathBuf,
    /// Compression of the artifact [default: zst].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Interpreter to build with, a name on PATH or a path [default: the first on PATH that
    /// matches the app's requires-python, .python-version and runtime.txt, else python3].
    #[arg(long, value_name = "PY")]
    pub python: Option<String>,
    /// Dependency file, relative to the app directory: a requirements file, pylock.toml,
    /// pylock.NAME.toml, uv.lock or poetry.lock [default: the first of pylock.toml, uv.lock,
    /// poetry.lock, requirements.txt at the commit].
    #[arg(long, value_name = "FILE")]
    pub requirements: Option<String>,
    /// Install this extra of the app from a lock file (repeatable).
    #[arg(long = "extra", value_name = "NAME")]
    pub extras: Vec<String>,
    /// Install this dependency group from a lock file too (repeatable; Poetry's `main`, or the
    /// lock's default groups, always).
    #[arg(long = "group", value_name = "NAME")]
    pub groups: Vec<String>,
    /// Command that collects static files into $STATIC_ROOT (run with the venv, in app/).
    #[arg(long = "static", value_name = "CMD")]
    pub static_cmd: Option<String>,
    /// App name used in the artifact name [default: [project].name or the directory name].
    #[arg(long)]
    pub name: Option<String>,
    /// Build this commit instead of HEAD.
    #[arg(long, value_name = "SHA")]
    pub commit: Option<String>,
    /// Build the working tree even if tracked files are modified (recorded as dirty).
    #[arg(long)]
    pub allow_dirty: bool,
    /// Build cache: pip's cache and ready venvs keyed by requirements [default: ~/.cache/release].
    #[arg(long, value_name = "DIR", env = "RELEASE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Extra wheel sources for pip (repeatable).
    #[arg(long = "find-links", value_name = "DIR")]
    pub find_links: Vec<PathBuf>,
    /// Do not use the package index: wheels come from --find-links and the cache only.
    #[arg(long)]
    pub no_index: bool,
    /// Which tool installs the venv [default: auto = uv when on PATH, else pip].
    #[arg(long, value_enum)]
    pub installer: Option<InstallerChoice>,
    /// Build even if requirements are not all pinned with == (the versions resolved are recorded).
    #[arg(long)]
    pub allow_unpinned: bool,
    /// Environment for the static step and the byte-compiling (repeatable; names recorded, values never).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Keep only the app files matching this glob (repeatable; added to `include` in the settings).
    #[arg(long = "include", value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out the app files matching this glob (repeatable; added to `exclude` in the settings).
    #[arg(long = "exclude", value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Leave wheels/ out of the artifact (smaller; `install --rebuild-venv` is then impossible).
    #[arg(long)]
    pub no_wheels: bool,
    /// Sign the artifact with this minisign secret key (from `minisign -G`), writing
    /// ARTIFACT.minisig; a password-protected key reads RELEASE_SIGN_PASSWORD or asks.
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// Also write a delta artifact against this previous release (its artifact, or its
    /// release.json): only the files that changed, installable where that release is
    /// installed. Written beside the full artifact as APP-COMMIT12.delta-PREV12.tar.zst.
    #[arg(long, value_name = "PREVIOUS")]
    pub delta_from: Option<PathBuf>,
}

/// `KEY=VALUE` of `--env`.
fn parse_env(text: &str) -> std::result::Result<(String, String), BadEnv> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| BadEnv::NotKeyValue(text.to_string()))?;
    check_env_name(key)?;
    Ok((key.to_string(), value.to_string()))
}

/// Variables the build sets itself: a build environment may not change them.
const RESERVED_ENV: &[&str] = &[
    "SOURCE_DATE_EPOCH",
    "PYTHONHASHSEED",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "STATIC_ROOT",
    "PATH",
];

/// Why a build environment variable is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadEnv {
    NotKeyValue(String),
    BadName(String),
    /// Set by the build itself.
    Reserved(String),
}

impl std::fmt::Display for BadEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadEnv::NotKeyValue(text) => write!(f, "{text:?} is not KEY=VALUE"),
            BadEnv::BadName(key) => write!(
                f,
                "{key:?} is not an environment variable name (letters, digits, _)"
            ),
            BadEnv::Reserved(key) => write!(
                f,
                "{key} is set by the build itself (reproducible output, the venv, the static root) and cannot be overridden"
            ),
        }
    }
}

impl std::error::Error for BadEnv {}

fn check_env_name(key: &str) -> std::result::Result<(), BadEnv> {
    let mut chars = key.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(BadEnv::BadName(key.to_string()));
    }
    if RESERVED_ENV.contains(&key) {
        return Err(BadEnv::Reserved(key.to_string()));
    }
    Ok(())
}

/// What to do with files the static step leaves in the app tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Untracked {
    /// Refuse the build, naming them (the default).
    #[default]
    Fail,
    /// Move them into static/ (the directory they were written to becomes static/).
    MoveToStatic,
}

/// `[tool.release]` keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ToolRelease {
    name: Option<String>,
    requirements: Option<String>,
    python: Option<String>,
    #[serde(rename = "static")]
    static_cmd: Option<String>,
    format: Option<Format>,
    installer: Option<InstallerChoice>,
    #[serde(default)]
    find_links: Vec<PathBuf>,
    no_index: Option<bool>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    wheels: Option<bool>,
    allow_unpinned: Option<bool>,
    untracked: Option<Untracked>,
    #[serde(default)]
    extras: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct PyProject {
    project: Option<Project>,
    tool: Option<Tool>,
    #[serde(rename = "build-system")]
    build_system: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Project {
    name: Option<String>,
    requires_python: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Tool {
    release: Option<ToolRelease>,
}

#[derive(Debug)]
pub struct Settings {
    pub name: String,
    /// The dependency file named by `--requirements` or `requirements`; None:
    /// discovered at the commit (`lock::discover`).
    pub requirements: Option<String>,
    /// Extras and dependency groups selected from a lock file.
    pub extras: Vec<String>,
    pub groups: Vec<String>,
    /// pyproject.toml has a `[build-system]`: the app is built as a wheel
    /// and installed into the venv.
    pub package: bool,
    /// `--python` or `python` in the settings; None: chosen from what the app declares.
    pub python: Option<String>,
    /// `requires-python` of `[project]` in pyproject.toml.
    pub requires_python: Option<String>,
    pub static_cmd: Option<String>,
    pub format: Format,
    pub installer: InstallerChoice,
    pub find_links: Vec<PathBuf>,
    pub no_index: bool,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// The build environment, sorted by name.
    pub env: Vec<(String, String)>,
    /// Whether wheels/ goes into the artifact.
    pub wheels: bool,
    pub allow_unpinned: bool,
    pub untracked: Untracked,
    /// Where the settings came from, for messages: `[tool.release] in pyproject.toml` or `release.build.toml`.
    pub source: &'static str,
}

/// The file holding the settings of an app without a pyproject.toml.
pub const BUILD_TOML: &str = "release.build.toml";

/// Merge flags over the `pyproject.toml` found in the exported app.
pub fn resolve(flags: &BuildFlags, app_dir: &Path) -> Result<Settings> {
    let (pyproject, tool, source) = read_settings(flags, app_dir)?;
    let mut env: std::collections::BTreeMap<String, String> = tool.env;
    for key in env.keys() {
        check_env_name(key).map_err(|why| SourceError::BadProjectConfig {
            path: flags.source.join(if source == BUILD_TOML {
                BUILD_TOML
            } else {
                "pyproject.toml"
            }),
            message: format!("env: {why}"),
        })?;
    }
    env.extend(flags.env.iter().cloned());
    let mut include = tool.include;
    include.extend(flags.include.iter().cloned());
    let mut exclude = tool.exclude;
    exclude.extend(flags.exclude.iter().cloned());
    let dir_name = std::path::absolute(&flags.source)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let name = flags
        .name
        .clone()
        .or(tool.name)
        .or(pyproject.project.as_ref().and_then(|p| p.name.clone()))
        .or(dir_name)
        .unwrap_or_else(|| "app".into());
    if name.is_empty() || !name.chars().all(manifest::is_name_char) {
        return Err(Error::Usage(format!(
            "app name {name:?} may only contain letters, digits, '-', '_' and '.'; set --name or `name` under [tool.release]"
        )));
    }
    // find-links from pyproject are relative to the app directory in the checkout.
    let checkout = flags.source.clone();
    let mut find_links: Vec<PathBuf> = flags.find_links.iter().map(|p| absolute(p)).collect();
    find_links.extend(tool.find_links.iter().map(|p| absolute(&checkout.join(p))));
    Ok(Settings {
        name,
        requirements: flags.requirements.clone().or(tool.requirements),
        extras: merged(tool.extras, &flags.extras),
        groups: merged(tool.groups, &flags.groups),
        package: pyproject.build_system.is_some(),
        python: flags.python.clone().or(tool.python),
        requires_python: pyproject.project.and_then(|p| p.requires_python),
        static_cmd: flags.static_cmd.clone().or(tool.static_cmd),
        format: flags.format.or(tool.format).unwrap_or(Format::Zst),
        installer: flags
            .installer
            .or(tool.installer)
            .unwrap_or(InstallerChoice::Auto),
        find_links,
        no_index: flags.no_index || tool.no_index.unwrap_or(false),
        include,
        exclude,
        env: env.into_iter().collect(),
        wheels: !flags.no_wheels && tool.wheels.unwrap_or(true),
        allow_unpinned: flags.allow_unpinned || tool.allow_unpinned.unwrap_or(false),
        untracked: tool.untracked.unwrap_or_default(),
        source,
    })
}

/// The app's `pyproject.toml` and its build settings: `[tool.release]` in it
/// or release.build.toml (never both), with where they came from.
fn read_settings(
    flags: &BuildFlags,
    app_dir: &Path,
) -> Result<(PyProject, ToolRelease, &'static str)> {
    let pyproject_path = app_dir.join("pyproject.toml");
    let mut pyproject: PyProject = if pyproject_path.is_file() {
        toml::from_str(&fs::read_to_string(&pyproject_path)?).map_err(|e| {
            SourceError::BadProjectConfig {
                path: flags.source.join("pyproject.toml"),
                message: e.to_string(),
            }
        })?
    } else {
        PyProject::default()
    };
    let in_pyproject = pyproject.tool.take().and_then(|t| t.release);
    let build_toml_path = app_dir.join(BUILD_TOML);
    let (tool, source) = match (in_pyproject, build_toml_path.is_file()) {
        (Some(_), true) => {
            return Err(SourceError::SettingsTwice {
                path: flags.source.join(BUILD_TOML),
            }
            .into())
        }
        (Some(tool), false) => (tool, "[tool.release] in pyproject.toml"),
        (None, true) => (
            toml::from_str(&fs::read_to_string(&build_toml_path)?).map_err(|e| {
                SourceError::BadProjectConfig {
                    path: flags.source.join(BUILD_TOML),
                    message: e.to_string(),
                }
            })?,
            BUILD_TOML,
        ),
        (None, false) if pyproject_path.is_file() => {
            (ToolRelease::default(), "[tool.release] in pyproject.toml")
        }
        (None, false) => (ToolRelease::default(), BUILD_TOML),
    };
    Ok((pyproject, tool, source))
}

/// The file's list with the flags' added, sorted, without repeats.
fn merged(mut list: Vec<String>, flags: &[String]) -> Vec<String> {
    list.extend(flags.iter().cloned());
    list.sort();
    list.dedup();
    list
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The build cache directory: --cache-dir, else $XDG_CACHE_HOME/release, else ~/.cache/release.
pub fn cache_dir(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = flag {
        fs::create_dir_all(dir)?;
        return Ok(absolute(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or_else(|| {
            Error::Usage(
                "no cache directory: set HOME or XDG_CACHE_HOME, or pass --cache-dir".into(),
            )
        })?;
    let dir = base.join("release");
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Keep only the files of `app_dir` matched by `include` (all when empty) and
/// not matched by `exclude`. Patterns are globs relative to the app directory;
/// `dir/**` matches everything under `dir`.
pub fn apply_include_exclude(app_dir: &Path, include: &[String], exclude: &[String]) -> Result<()> {
    if include.is_empty() && exclude.is_empty() {
        return Ok(());
    }
    let set = |patterns: &[String]| -> Result<globset::GlobSet> {
        let mut b = globset::GlobSetBuilder::new();
        for p in patterns {
            b.add(
                globset::Glob::new(p)
                    .map_err(|e| Error::Usage(format!("bad include/exclude pattern {p:?}: {e}")))?,
            );
        }
        b.build().map_err(|e| Error::Usage(e.to_string()))
    };
    let include = set(include)?;
    let exclude = set(exclude)?;
    let mut doomed = Vec::new();
    for item in walkdir::WalkDir::new(app_dir).min_depth(1) {
        let item = item.map_err(|e| std::io::Error::other(e.to_string()))?;
        if item.file_type().is_dir() {
            continue;
        }
        let rel = item.path().strip_prefix(app_dir).expect("under app dir");
        let keep = (include.is_empty() || include.is_match(rel)) && !exclude.is_match(rel);
        if !keep {
            doomed.push(item.path().to_path_buf());
        }
    }
    for path in doomed {
        fs::remove_file(path)?;
    }
    // git tracks no empty directories: any left now were emptied above.
    for item in walkdir::WalkDir::new(app_dir)
        .min_depth(1)
        .contents_first(true)
    {
        let item = item.map_err(|e| std::io::Error::other(e.to_string()))?;
        if item.file_type().is_dir() && fs::read_dir(item.path())?.next().is_none() {
            fs::remove_dir(item.path())?;
        }
    }
    Ok(())
}
