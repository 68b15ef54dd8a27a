//! Whether a requirements file pins everything, and what an unpinned one
//! resolves to today.
//!
//! A build is reproducible only if its requirements name exact versions: with
//! `Django>=5.2,<5.3` the same commit builds different bytes whenever a new
//! 5.2.x is published. So every requirement must be pinned (`name==version`,
//! a hashed line, a direct reference with a hash or a VCS commit, or a local
//! path, whose content is in the commit), or be pinned by a constraints file
//! (`-c`). Anything else is refused unless `--allow-unpinned` is given; then
//! the versions pip resolves today are recorded and key the build cache.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use fs_err as fs;
use serde::Deserialize;

use crate::error::{Error, PythonError, Result, SourceError};
use crate::python::{self, Interpreter, WheelOptions};

/// A requirement line that does not pin one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpinned {
    /// `file:line` relative to the app directory.
    pub place: String,
    pub text: String,
}

/// One logical line of a requirements file: continuation lines joined,
/// comments dropped.
struct Line {
    number: usize,
    text: String,
}

fn logical_lines(text: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        if current.is_empty() {
            start = i + 1;
        }
        // A comment starts at `#` at the beginning or after whitespace.
        let mut body = raw;
        if let Some(pos) = comment_start(raw) {
            body = &raw[..pos];
        }
        if let Some(cont) = body.strip_suffix('\\') {
            current.push_str(cont);
            current.push(' ');
            continue;
        }
        current.push_str(body);
        let line = current.split_whitespace().collect::<Vec<_>>().join(" ");
        current.clear();
        if !line.is_empty() {
            lines.push(Line {
                number: start,
                text: line,
            });
        }
    }
    let line = current.split_whitespace().collect::<Vec<_>>().join(" ");
    if !line.is_empty() {
        lines.push(Line {
            number: start,
            text: line,
        });
    }
    lines
}

fn comment_start(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    (0..bytes.len()).find(|&i| bytes[i] == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()))
}

/// `name` normalised as PyPA does: lower case, runs of `-_.` as one `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            dash = true;
        } else {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// What a requirement line asks for.
enum Req {
    /// `name[extras] <specifiers>`: the name and the specifier text (before `;`).
    Named { name: String, spec: String },
    /// `name @ url` or a bare URL.
    Url(String),
    /// A local path (a directory, a wheel or an sdist file).
    Path(String),
}

fn parse_requirement(text: &str) -> Req {
    let text = text.split(';').next().unwrap_or_default().trim();
    if let Some((_, url)) = text
        .split_once(" @ ")
        .or_else(|| text.split_once('@').filter(|(n, _)| is_name(n.trim())))
    {
        return Req::Url(url.trim().to_string());
    }
    if text.contains("://") || text.starts_with("git+") {
        return Req::Url(text.to_string());
    }
    if text.starts_with('.')
        || text.starts_with('/')
        || text.starts_with('~')
        || text.ends_with(".whl")
        || text.ends_with(".tar.gz")
        || text.ends_with(".zip")
    {
        return Req::Path(text.to_string());
    }
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(text.len());
    let name = text[..end].to_string();
    let mut rest = text[end..].trim_start();
    if rest.starts_with('[') {
        rest = rest
            .split_once(']')
            .map(|(_, r)| r)
            .unwrap_or_default()
            .trim_start();
    }
    let spec = rest
        .trim_start_matches('(')
        .trim_end_matches(')')
        .trim()
        .to_string();
    Req::Named { name, spec }
}

fn is_name(s: &str) -> bool {
    let s = s.split('[').next().unwrap_or_default();
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `==1.2.3` or `===1.2.3`: exactly one version, no wildcard.
fn is_exact(spec: &str) -> bool {
    let spec: String = spec.chars().filter(|c| !c.is_whitespace()).collect();
    let version = spec.strip_prefix("===").or_else(|| spec.strip_prefix("=="));
    matches!(version, Some(v) if !v.is_empty() && !v.contains([',', '*']))
}

/// A URL that names one immutable thing: a hash fragment, or a VCS commit.
fn url_is_pinned(url: &str) -> bool {
    if url.contains("#sha256=") || url.contains("#sha384=") || url.contains("#sha512=") {
        return true;
    }
    if url.starts_with("git+") {
        let rev = url
            .split('#')
            .next()
            .unwrap_or_default()
            .rsplit_once('@')
            .map(|(_, r)| r)
            .unwrap_or_default();
        return rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit());
    }
    false
}

/// The unpinned requirements of `requirements` and the files it includes
/// (`-r`), in file order; empty when everything is pinned.
pub fn unpinned(requirements: &Path, app_dir: &Path) -> Result<Vec<Unpinned>> {
    let mut constrained = BTreeSet::new();
    let mut candidates = Vec::new();
    let mut seen = Vec::new();
    walk(
        requirements,
        app_dir,
        false,
        &mut seen,
        &mut constrained,
        &mut candidates,
    )?;
    Ok(candidates
        .into_iter()
        .filter(|(name, _)| !name.as_ref().is_some_and(|n| constrained.contains(n)))
        .map(|(_, u)| u)
        .collect())
}

/// What one logical line of a requirements file is.
enum LineKind {
    /// `-r FILE`: more requirements.
    Requirements(String),
    /// `-c FILE`: constraints.
    Constraints(String),
    /// Another option (--index-url, --require-hashes, ...): pins nothing.
    Option,
    /// A requirement: its normalized name (none for a path or URL), whether
    /// it is pinned, and its text without options.
    Requirement {
        name: Option<String>,
        pinned: bool,
        text: String,
    },
}

fn classify(text: &str) -> LineKind {
    let words: Vec<&str> = text.split_whitespace().collect();
    let first = words[0];
    let include = |flag: &str, long: &str| -> Option<String> {
        if first == flag || first == long {
            return words.get(1).map(|s| s.to_string());
        }
        first
            .strip_prefix(&format!("{long}="))
            .or_else(|| first.strip_prefix(flag))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    if let Some(f) = include("-r", "--requirement") {
        return LineKind::Requirements(f);
    }
    if let Some(f) = include("-c", "--constraint") {
        return LineKind::Constraints(f);
    }
    let (editable, req_text) = match include("-e", "--editable") {
        Some(target) => (true, target),
        None if first.starts_with('-') => return LineKind::Option,
        None => (false, text.to_string()),
    };
    let hashed = text.contains("--hash");
    let req_text = req_text
        .split(" --")
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let (name, pinned) = match parse_requirement(&req_text) {
        Req::Path(p) => (None, !p.starts_with('/') && !p.starts_with('~')),
        Req::Url(u) => (None, hashed || url_is_pinned(&u)),
        Req::Named { name, spec } => {
            let pinned = is_exact(&spec) || (hashed && !editable);
            (Some(normalize(&name)), pinned)
        }
    };
    LineKind::Requirement {
        name,
        pinned,
        text: req_text,
    }
}

fn walk(
    file: &Path,
    app_dir: &Path,
    constraints: bool,
    seen: &mut Vec<PathBuf>,
    constrained: &mut BTreeSet<String>,
    candidates: &mut Vec<(Option<String>, Unpinned)>,
) -> Result<()> {
    if seen.iter().any(|s| s == file) {
        return Ok(());
    }
    seen.push(file.to_path_buf());
    let text = fs::read_to_string(file)?;
    let shown = file
        .strip_prefix(app_dir)
        .unwrap_or(file)
        .display()
        .to_string();
    let dir = file.parent().unwrap_or(app_dir).to_path_buf();
    for line in logical_lines(&text) {
        let (name, pinned, req_text) = match classify(&line.text) {
            LineKind::Requirements(f) => {
                walk(
                    &dir.join(f),
                    app_dir,
                    constraints,
                    seen,
                    constrained,
                    candidates,
                )?;
                continue;
            }
            LineKind::Constraints(f) => {
                walk(&dir.join(f), app_dir, true, seen, constrained, candidates)?;
                continue;
            }
            LineKind::Option => continue,
            LineKind::Requirement { name, pinned, text } => (name, pinned, text),
        };
        if constraints {
            if pinned {
                if let Some(name) = name {
                    constrained.insert(name);
                }
            }
            continue;
        }
        if !pinned {
            candidates.push((
                name,
                Unpinned {
                    place: format!("{shown}:{}", line.number),
                    text: req_text,
                },
            ));
        }
    }
    Ok(())
}

/// The refusal of an unpinned build, naming a few of the lines.
pub fn refusal(requirements: &str, found: &[Unpinned]) -> Error {
    let mut lines: Vec<String> = found
        .iter()
        .take(8)
        .map(|u| format!("    {}: {}", u.place, u.text))
        .collect();
    if found.len() > 8 {
        lines.push(format!("    ... and {} more", found.len() - 8));
    }
    SourceError::Unpinned {
        requirements: requirements.to_string(),
        count: found.len(),
        lines,
    }
    .into()
}

#[derive(Deserialize)]
struct Report {
    install: Vec<ReportItem>,
}

#[derive(Deserialize)]
struct ReportItem {
    metadata: ReportMetadata,
}

#[derive(Deserialize)]
struct ReportMetadata {
    name: String,
    version: String,
}

/// What pip resolves `requirements` to today, as sorted `name==version`
/// (names normalised), without installing anything: `pip install --dry-run
/// --report`. Run from `source_dir` (a scratch export) so local paths resolve
/// and build backends cannot write into the app.
pub fn resolve(
    interpreter: &Interpreter,
    requirements: &Path,
    source_dir: &Path,
    opts: &WheelOptions<'_>,
    epoch: i64,
) -> Result<Vec<String>> {
    let report = source_dir.join(".release-resolve.json");
    let mut cmd = Command::new(&interpreter.executable);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--progress-bar",
        "off",
        "--report",
    ])
    .arg(&report)
    .arg("--cache-dir")
    .arg(opts.cache_dir)
    .arg("-r")
    .arg(requirements)
    .current_dir(source_dir);
    for link in opts.find_links {
        cmd.arg("--find-links").arg(link);
    }
    if opts.no_index {
        cmd.arg("--no-index");
    }
    python::build_env(&mut cmd, epoch);
    let line = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| PythonError::ToolFailed {
        tool: "pip install --dry-run".into(),
        command: line,
        status: "not started".into(),
        tail: format!("    {e}"),
    })?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        return Err(python::requirement_error(&text, interpreter));
    }
    let report: Report = serde_json::from_slice(&fs::read(&report)?).map_err(|e| {
        PythonError::PipReportUnreadable {
            error: e.to_string(),
            pip: interpreter.pip_version.clone(),
            executable: interpreter.executable.clone(),
        }
    })?;
    let mut pins: Vec<String> = report
        .install
        .into_iter()
        .map(|i| format!("{}=={}", normalize(&i.metadata.name), i.metadata.version))
        .collect();
    pins.sort();
    pins.dedup();
    Ok(pins)
}

/// `name==version` (normalised) of the wheel files in `wheel_dir`, sorted.
pub fn wheel_pins(wheel_dir: &Path) -> Result<Vec<String>> {
    let mut pins: Vec<String> = python::pinned_wheels(wheel_dir)?
        .into_iter()
        .map(|p| match p.split_once("==") {
            Some((name, version)) => format!("{}=={version}", normalize(name)),
            None => p,
        })
        .collect();
    pins.sort();
    Ok(pins)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(files: &[(&str, &str)]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        unpinned(&dir.path().join(files[0].0), dir.path())
            .unwrap()
            .into_iter()
            .map(|u| format!("{} {}", u.place, u.text))
            .collect()
    }

    #[test]
    fn exact_pins_local_paths_and_hashes_pass() {
        let found = check(&[(
            "requirements.txt",
            "# comment\nDjango==5.2.19  # the web framework\nrequests[socks] == 2.32.3 ; python_version >= '3.8'\n./packages/greeting\n--index-url https://example.invalid/simple\nfoo==1.0 \\\n    --hash=sha256:abcd\nbar @ https://example.invalid/bar-1.0.tar.gz#sha256=00ff\nbaz @ git+https://example.invalid/baz@0123456789abcdef0123456789abcdef01234567\nqux===1.0.post1\n",
        )]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn ranges_wildcards_and_bare_names_are_named_with_their_place() {
        let found = check(&[
            ("requirements.txt", "-r requirements/base.txt\ngunicorn>=22,<24\n"),
            (
                "requirements/base.txt",
                "Django>=5.2,<5.3\nwagtail\nsix==1.*\npytz==2024.1\nbar @ https://example.invalid/bar.tar.gz\n-e git+https://example.invalid/x@main#egg=x\n",
            ),
        ]);
        assert_eq!(
            found,
            [
                "requirements/base.txt:1 Django>=5.2,<5.3",
                "requirements/base.txt:2 wagtail",
                "requirements/base.txt:3 six==1.*",
                "requirements/base.txt:5 bar @ https://example.invalid/bar.tar.gz",
                "requirements/base.txt:6 git+https://example.invalid/x@main#egg=x",
                "requirements.txt:2 gunicorn>=22,<24",
            ]
        );
    }

    #[test]
    fn a_constraints_file_pins_what_it_pins() {
        let found = check(&[
            (
                "requirements.txt",
                "-c constraints.txt\nDjango>=5.2\nGunicorn\n",
            ),
            ("constraints.txt", "django==5.2.19\n"),
        ]);
        assert_eq!(found, ["requirements.txt:3 Gunicorn"]);
    }

    #[test]
    fn continuation_lines_count_from_their_first_line() {
        let found = check(&[(
            "requirements.txt",
            "a==1 \\\n  --hash=sha256:00\nb>=1 \\\n  ; python_version>'3'\n",
        )]);
        assert_eq!(found, ["requirements.txt:3 b>=1 ; python_version>'3'"]);
    }

    #[test]
    fn names_normalise() {
        assert_eq!(normalize("Python_Dateutil"), "python-dateutil");
        assert_eq!(normalize("zope.interface"), "zope-interface");
    }
}
