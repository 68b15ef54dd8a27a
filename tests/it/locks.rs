//! `release build` from lock files made by the real tools: pylock.toml and
//! uv.lock from uv (offline, against the test wheelhouse), poetry.lock written
//! here in Poetry 2's format with the wheelhouse's hashes, and an app that is
//! itself a package.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::*;

/// What the fixture site needs, as `[project]` dependencies (the closure is
/// left to the lock tool).
const PYPROJECT: &str = r#"[project]
name = "mysite"
version = "1.0"
requires-python = ">=3.11.3"
dependencies = ["Django==5.2.19", "gunicorn==23.0.0", "celery[redis]==5.7.0", "greeting"]

[dependency-groups]
dev = ["flit_core==4.2.0"]

[tool.uv]
# The wheelhouse has Linux wheels only.
environments = ["sys_platform == 'linux'"]
package = false

[tool.uv.sources]
greeting = { path = "packages/greeting" }

[tool.release]
name = "mysite"
static = "python manage.py collectstatic --noinput"
"#;

fn uv(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(uv_dir().join("uv"))
        .args(args)
        .args(["--offline", "--no-index", "--find-links"])
        .arg(wheelhouse())
        .args(["--no-python-downloads", "--python", "python3.11"])
        .current_dir(dir)
        .env("UV_CACHE_DIR", Path::new(REPO).join("target/test-cache/uv"))
        .env_remove("VIRTUAL_ENV")
        .output()
        .expect("run uv");
    assert!(
        out.status.success(),
        "uv {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The fixture site with `pyproject` and no requirements.txt, locked by
/// `uv lock` (uv.lock left in place, not committed yet).
fn uv_locked_site(pyproject: &str) -> App {
    let app = App::new();
    std::fs::remove_file(app.path("requirements.txt")).unwrap();
    app.write("pyproject.toml", pyproject);
    uv(&app.dir, &["lock"]);
    app
}

fn build_with(app: &App, out: &Path, cache: &Path, path: Option<&str>, extra: &[&str]) -> Output {
    let args: Vec<&str> = ["--installer", "pip"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    let mut cmd = app.build_command(out, cache, &args);
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    cmd.output().unwrap()
}

fn path_with_uv() -> String {
    format!("{}:{}", uv_dir().display(), std::env::var("PATH").unwrap())
}

/// `name==version` of every distribution in the artifact's venv.
fn venv_dists(report: &Value) -> BTreeSet<String> {
    let out = release()
        .args(["inspect", "--json"])
        .arg(report["artifact"].as_str().unwrap())
        .output()
        .unwrap();
    assert_eq!(json_ok(&out)["dependencies"], report["dependencies"]);
    let manifest = read_manifest(Path::new(report["artifact"].as_str().unwrap()));
    manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| {
            let path = f["path"].as_str().unwrap();
            let rest = path.strip_prefix("venv/lib/python3.11/site-packages/")?;
            let dist = rest.strip_suffix(".dist-info")?;
            let (name, version) = dist.split_once('-')?;
            Some(format!(
                "{}=={version}",
                name.to_lowercase().replace('_', "-")
            ))
        })
        .collect()
}

fn read_manifest(artifact: &Path) -> Value {
    serde_json::from_slice(&crate::common::members::manifest_bytes(artifact)).unwrap()
}

/// `name==version` of the `[[packages]]` of a pylock that come from an index.
fn pylock_pins(text: &str) -> BTreeSet<String> {
    let lock: toml::Value = toml::from_str(text).unwrap();
    lock["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            Some(format!(
                "{}=={}",
                p["name"].as_str()?,
                p.get("version")?.as_str()?
            ))
        })
        .collect()
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn two_cold_builds_are_identical(app: &App, path: Option<&str>) -> Value {
    let tmp = app.tmp.path();
    let a = json_ok(&build_with(
        app,
        &tmp.join("a"),
        &tmp.join("cache-a"),
        path,
        &[],
    ));
    let b = json_ok(&build_with(
        app,
        &tmp.join("b"),
        &tmp.join("cache-b"),
        path,
        &[],
    ));
    assert_eq!(a["cached_env"], false);
    assert_eq!(
        std::fs::read(a["artifact"].as_str().unwrap()).unwrap(),
        std::fs::read(b["artifact"].as_str().unwrap()).unwrap(),
        "two builds of one commit differ"
    );
    a
}

#[test]
fn pylock_only_app_builds_exactly_the_locked_versions_and_refuses_a_wrong_hash() {
    let app = uv_locked_site(PYPROJECT);
    let pylock = uv(
        &app.dir,
        &["export", "--frozen", "--no-dev", "--format", "pylock.toml"],
    );
    std::fs::remove_file(app.path("uv.lock")).unwrap();
    app.write("pylock.toml", &pylock);
    app.commit("pylock.toml only");

    let report = two_cold_builds_are_identical(&app, None);
    let deps = &report["dependencies"];
    assert_eq!(deps["file"], "pylock.toml");
    assert_eq!(deps["format"], "pylock");
    assert_eq!(deps["sha256"], sha256_file(&app.path("pylock.toml")));
    let manifest = read_manifest(Path::new(report["artifact"].as_str().unwrap()));
    assert_eq!(manifest["dependencies"], *deps);
    let mut expected = pylock_pins(&pylock);
    expected.insert("greeting==1.0.0".into());
    assert_eq!(venv_dists(&report), expected);
    assert!(
        !expected.iter().any(|p| p.starts_with("flit-core==")),
        "dev group exported"
    );

    let out = release()
        .arg("inspect")
        .arg(report["artifact"].as_str().unwrap())
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains(&format!(
            "locked    pylock.toml (sha256 {})",
            sha256_file(&app.path("pylock.toml"))
        )),
        "{}",
        stdout(&out)
    );

    // -v says which file; a warm build of the same lock reuses the venv.
    let out = release()
        .current_dir(&app.dir)
        .args([
            "build",
            "-v",
            "--installer",
            "pip",
            "--no-index",
            "--find-links",
        ])
        .arg(wheelhouse())
        .arg("--out")
        .arg(app.tmp.path().join("v"))
        .arg("--cache-dir")
        .arg(app.tmp.path().join("cache-a"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "dependencies from pylock.toml (sha256 {})",
            sha256_file(&app.path("pylock.toml"))
        )),
        "{err}"
    );
    assert!(err.contains("reusing venv"), "{err}");

    // A hash that does not match the wheel: refused, naming the package.
    let sqlparse = sha256_file(&wheelhouse().join("sqlparse-0.6.1-py3-none-any.whl"));
    assert!(pylock.contains(&sqlparse));
    app.write("pylock.toml", &pylock.replace(&sqlparse, &"0".repeat(64)));
    app.commit("tampered hash");
    let out = build_with(
        &app,
        &app.tmp.path().join("bad"),
        &app.tmp.path().join("cache-bad"),
        None,
        &[],
    );
    let err = fails_with(&out, 1);
    assert!(err.contains("sqlparse==0.6.1"), "{err}");
    assert!(err.contains("hash"), "{err}");
    assert!(!app
        .tmp
        .path()
        .join("bad")
        .join(format!("mysite-{}.tar.zst", &app.head()[..12]))
        .exists());

    // A pylock that no longer satisfies pyproject.toml is stale.
    app.write("pylock.toml", &pylock);
    app.write(
        "pyproject.toml",
        &PYPROJECT.replace("\"gunicorn==23.0.0\"", "\"gunicorn==22.0.0\""),
    );
    app.commit("pyproject asks for another gunicorn");
    let out = build_with(
        &app,
        &app.tmp.path().join("stale"),
        &shared_cache(),
        None,
        &[],
    );
    let err = fails_with(&out, 1);
    assert!(
        err.contains("gunicorn==22.0.0 is locked at 23.0.0"),
        "{err}"
    );
    assert!(err.contains("uv export --format pylock.toml"), "{err}");
}

#[test]
fn uv_lock_only_app_builds_through_uv_export_and_a_stale_lock_fails() {
    let app = uv_locked_site(PYPROJECT);
    app.commit("uv.lock only");
    let report = two_cold_builds_are_identical(&app, Some(&path_with_uv()));
    assert_eq!(report["dependencies"]["file"], "uv.lock");
    assert_eq!(report["dependencies"]["format"], "uv.lock");
    let exported = uv(
        &app.dir,
        &["export", "--frozen", "--no-dev", "--format", "pylock.toml"],
    );
    let mut expected = pylock_pins(&exported);
    expected.insert("greeting==1.0.0".into());
    assert_eq!(venv_dists(&report), expected);

    // A dependency group by setting: flit_core comes in.
    let grouped = json_ok(&build_with(
        &app,
        &app.tmp.path().join("dev"),
        &shared_cache(),
        Some(&path_with_uv()),
        &["--group", "dev"],
    ));
    assert!(venv_dists(&report)
        .iter()
        .all(|d| !d.starts_with("flit-core==")));
    assert!(venv_dists(&grouped).contains("flit-core==4.2.0"));
    assert_eq!(
        grouped["dependencies"]["groups"],
        serde_json::json!(["dev"])
    );

    // Without uv: the error names the fix.
    let out = build_with(
        &app,
        &app.tmp.path().join("nouv"),
        &shared_cache(),
        None,
        &[],
    );
    let err = fails_with(&out, 1);
    assert!(err.contains("`uv` is not on PATH"), "{err}");
    assert!(err.contains("pylock.toml"), "{err}");

    // pyproject changed, lock not: uv says it is stale; nothing is re-resolved.
    app.write(
        "pyproject.toml",
        &PYPROJECT.replace("\"gunicorn==23.0.0\"", "\"gunicorn==22.0.0\""),
    );
    let lock_before = std::fs::read(app.path("uv.lock")).unwrap();
    app.commit("pyproject asks for another gunicorn");
    let out = build_with(
        &app,
        &app.tmp.path().join("stale"),
        &shared_cache(),
        Some(&path_with_uv()),
        &[],
    );
    let err = fails_with(&out, 1);
    assert!(err.contains("uv.lock is out of date"), "{err}");
    assert!(err.contains("run `uv lock`"), "{err}");
    assert_eq!(std::fs::read(app.path("uv.lock")).unwrap(), lock_before);
}

/// A Poetry 2 lock (format 2.1) of the fixture's requirements, with the
/// hashes of the wheelhouse's files; plus a dev-only package, a Windows-only
/// one and an optional one, none of which may be installed.
fn poetry_lock(names: &[(String, String, PathBuf)]) -> String {
    let mut text = String::from("# This file is automatically @generated by Poetry 2.1.3 and should not be changed by hand.\n\n");
    for (name, version, wheel) in names {
        text.push_str(&format!(
            "[[package]]\nname = \"{name}\"\nversion = \"{version}\"\ndescription = \"\"\noptional = false\npython-versions = \">=3.8\"\ngroups = [\"main\"]\nfiles = [\n    {{file = \"{}\", hash = \"sha256:{}\"}},\n]\n\n",
            wheel.file_name().unwrap().to_string_lossy(),
            sha256_file(wheel)
        ));
    }
    text.push_str(r#"[[package]]
name = "greeting"
version = "1.0.0"
description = "A tiny local package for the mysite fixture"
optional = false
python-versions = ">=3.8"
groups = ["main"]
files = []
develop = false

[package.source]
type = "directory"
url = "packages/greeting"

[[package]]
name = "tzdata"
version = "2025.2"
description = "Provider of IANA time zone data"
optional = false
python-versions = ">=2"
groups = ["main"]
markers = "sys_platform == \"win32\""
files = [
    {file = "tzdata-2025.2-py2.py3-none-any.whl", hash = "sha256:1a403fada01ff9221ca8044d701868fa132215d84beb92242d9acd2147f667a8"},
]

[[package]]
name = "six"
version = "1.16.0"
description = ""
optional = false
python-versions = ">=2.7"
groups = ["dev"]
files = [
    {file = "six-1.16.0-py2.py3-none-any.whl", hash = "sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"},
]

[[package]]
name = "hiredis"
version = "3.0.0"
description = ""
optional = true
python-versions = ">=3.8"
groups = ["main"]
markers = "extra == \"fast\""
files = [
    {file = "hiredis-3.0.0.tar.gz", hash = "sha256:ccbc1b1a2d0b2a1c3e2d0b2a1c3e2d0b2a1c3e2d0b2a1c3e2d0b2a1c3e2d0b2a"},
]

[extras]
fast = ["hiredis"]

[metadata]
lock-version = "2.1"
python-versions = ">=3.11"
content-hash = "2b0c3c8b3f7a2d1e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f80910"
"#);
    text
}

#[test]
fn poetry_lock_only_app_installs_the_main_group_for_this_interpreter() {
    let app = App::new();
    // The fixture's pinned requirements, each with its wheel from the wheelhouse.
    let requirements = std::fs::read_to_string(app.path("requirements.txt")).unwrap();
    let mut pins = Vec::new();
    for line in requirements.lines() {
        let Some((name, version)) = line.split_once("==") else {
            continue;
        };
        let prefix = format!("{}-{version}-", name.to_lowercase().replace('-', "_"));
        let wheel = std::fs::read_dir(wheelhouse())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .to_lowercase()
                    .starts_with(&prefix)
            })
            .unwrap_or_else(|| panic!("no wheel for {line} in the wheelhouse"));
        pins.push((name.to_string(), version.to_string(), wheel));
    }
    std::fs::remove_file(app.path("requirements.txt")).unwrap();
    app.write("poetry.lock", &poetry_lock(&pins));
    app.write(
        "pyproject.toml",
        r#"[project]
name = "mysite"
version = "1.0"
requires-python = ">=3.11"
dependencies = ["django (>=5.2,<5.3)", "gunicorn (>=23)", "celery[redis] (>=5.7,<6)", "greeting"]

[project.optional-dependencies]
fast = ["hiredis (>=3)"]

[tool.poetry]
package-mode = false

[tool.poetry.group.dev.dependencies]
six = "^1.16"

[tool.release]
static = "python manage.py collectstatic --noinput"
"#,
    );
    app.commit("poetry.lock only");
    let report = json_ok(&build_with(
        &app,
        &app.tmp.path().join("a"),
        &shared_cache(),
        None,
        &[],
    ));
    assert_eq!(report["dependencies"]["format"], "poetry.lock");
    let mut expected: BTreeSet<String> = pins
        .iter()
        .map(|(n, v, _)| format!("{}=={v}", n.to_lowercase().replace('_', "-")))
        .collect();
    expected.insert("greeting==1.0.0".into());
    assert_eq!(venv_dists(&report), expected);

    // Several dependency files: the order picks, and the build says so.
    app.write("requirements.txt", &requirements);
    app.commit("requirements.txt back beside poetry.lock");
    let out = release()
        .current_dir(&app.dir)
        .args(["build", "--installer", "pip", "--no-index", "--find-links"])
        .arg(wheelhouse())
        .arg("--out")
        .arg(app.tmp.path().join("b"))
        .arg("--cache-dir")
        .arg(shared_cache())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("dependencies from poetry.lock; requirements.txt also present, not used"),
        "{err}"
    );

    // An extra the lock does not offer is named.
    let out = build_with(
        &app,
        &app.tmp.path().join("c"),
        &shared_cache(),
        None,
        &["--extra", "nosuch"],
    );
    let err = fails_with(&out, 1);
    assert!(
        err.contains("offers no extra") && err.contains("nosuch"),
        "{err}"
    );
}

#[test]
fn a_src_layout_package_app_is_installed_as_a_wheel_not_editable() {
    let app = App::new();
    std::fs::remove_file(app.path("requirements.txt")).unwrap();
    app.write(
        "pyproject.toml",
        r#"[build-system]
requires = ["flit_core==4.2.0"]
build-backend = "flit_core.buildapi"

[project]
name = "shop"
version = "0.3.0"
description = "a src-layout app"
requires-python = ">=3.11.3"
dependencies = ["Django==5.2.19", "gunicorn==23.0.0", "celery[redis]==5.7.0", "greeting"]

[tool.uv]
environments = ["sys_platform == 'linux'"]

[tool.uv.sources]
greeting = { path = "packages/greeting" }

[tool.release]
static = "python manage.py collectstatic --noinput"
"#,
    );
    app.write(
        "src/shop/__init__.py",
        "\"\"\"The shop.\"\"\"\nWHERE = 'wheel'\n",
    );
    uv(&app.dir, &["lock"]);
    let lock = std::fs::read_to_string(app.path("uv.lock")).unwrap();
    assert!(
        lock.contains("editable = \".\""),
        "uv locks the project as editable:\n{lock}"
    );
    app.commit("a package app");

    let report = two_cold_builds_are_identical(&app, Some(&path_with_uv()));
    assert_eq!(report["dependencies"]["package"], true);
    assert!(venv_dists(&report).contains("shop==0.3.0"));
    let manifest = read_manifest(Path::new(report["artifact"].as_str().unwrap()));
    let paths: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    let site = "venv/lib/python3.11/site-packages";
    assert!(paths.contains(&format!("{site}/shop/__init__.py").as_str()));
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with(site) && p.ends_with(".pth")),
        "an editable install left a .pth"
    );
    assert!(paths.contains(&"app/src/shop/__init__.py"));

    // The unpacked venv imports the installed copy.
    let unpacked = app.tmp.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    let status = Command::new("tar")
        .args(["--zstd", "-xf"])
        .arg(report["artifact"].as_str().unwrap())
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new(unpacked.join("venv/bin/python"))
        .args(["-c", "import shop; print(shop.WHERE, shop.__file__)"])
        .current_dir("/")
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(
        text.starts_with("wheel ") && text.contains("site-packages/shop/"),
        "{text} {}",
        stderr(&out)
    );

    // A change to the app's code is a new wheel: the venv is not reused.
    app.write(
        "src/shop/__init__.py",
        "\"\"\"The shop.\"\"\"\nWHERE = 'wheel, v2'\n",
    );
    app.commit("app code changed");
    let second = json_ok(&build_with(
        &app,
        &app.tmp.path().join("v2"),
        &app.tmp.path().join("cache-a"),
        Some(&path_with_uv()),
        &[],
    ));
    assert_eq!(second["cached_env"], false);
}
