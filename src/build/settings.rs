//! Build settings: command-line flags over `[tool.release]` in the app's
//! `pyproject.toml` (read from the commit being built) over defaults.

use std::path::{Path, PathBuf};

use fs_err as fs;
use serde::Deserialize;

use crate::archive::Format;
use crate::error::{Error, Result};
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
    /// Interpreter to build with, a name on PATH or a path [default: python3].
    #[arg(long, value_name = "PY")]
    pub python: Option<String>,
    /// Requirements file, relative to the app directory [default: requirements.txt].
    #[arg(long, value_name = "FILE")]
    pub requirements: Option<String>,
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
}

#[derive(Debug, Default, Deserialize)]
struct PyProject {
    project: Option<Project>,
    tool: Option<Tool>,
}

#[derive(Debug, Default, Deserialize)]
struct Project {
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Tool {
    release: Option<ToolRelease>,
}

#[derive(Debug)]
pub struct Settings {
    pub name: String,
    pub requirements: String,
    pub python: String,
    pub static_cmd: Option<String>,
    pub format: Format,
    pub installer: InstallerChoice,
    pub find_links: Vec<PathBuf>,
    pub no_index: bool,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// Merge flags over the `pyproject.toml` found in the exported app.
pub fn resolve(flags: &BuildFlags, app_dir: &Path) -> Result<Settings> {
    let pyproject_path = app_dir.join("pyproject.toml");
    let pyproject: PyProject = if pyproject_path.is_file() {
        toml::from_str(&fs::read_to_string(&pyproject_path)?).map_err(|e| {
            Error::BadProjectConfig {
                path: flags.source.join("pyproject.toml"),
                message: e.to_string(),
            }
        })?
    } else {
        PyProject::default()
    };
    let tool = pyproject.tool.and_then(|t| t.release).unwrap_or_default();
    let dir_name = std::path::absolute(&flags.source)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let name = flags
        .name
        .clone()
        .or(tool.name)
        .or(pyproject.project.and_then(|p| p.name))
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
        requirements: flags
            .requirements
            .clone()
            .or(tool.requirements)
            .unwrap_or_else(|| "requirements.txt".into()),
        python: flags
            .python
            .clone()
            .or(tool.python)
            .unwrap_or_else(|| "python3".into()),
        static_cmd: flags.static_cmd.clone().or(tool.static_cmd),
        format: flags.format.or(tool.format).unwrap_or(Format::Zst),
        installer: flags
            .installer
            .or(tool.installer)
            .unwrap_or(InstallerChoice::Auto),
        find_links,
        no_index: flags.no_index || tool.no_index.unwrap_or(false),
        include: tool.include,
        exclude: tool.exclude,
    })
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
            b.add(globset::Glob::new(p).map_err(|e| {
                Error::Usage(format!(
                    "bad include/exclude pattern {p:?} under [tool.release]: {e}"
                ))
            })?);
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
    Ok(())
}
