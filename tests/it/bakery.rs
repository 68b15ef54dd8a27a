//! A real app's shape: `fixtures/bakery` imitates a public Wagtail site
//! (nested `-r` requirements with ranges, no pyproject.toml, a hard-coded
//! STATIC_ROOT, settings chosen by an environment variable, pages without the
//! commit). Each thing that needed a workaround on the real site is a test here.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::common::*;

const COLLECT: &str = "python manage.py collectstatic --noinput";

fn bakery() -> App {
    App::fixture("bakery")
}

/// `release build` of the bakery, offline, with pip, into `<tmp>/<out>`.
fn build(app: &App, out: &str, cache: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--installer", "pip"];
    args.extend_from_slice(extra);
    app.build(&app.tmp.path().join(out), cache, &args)
}

fn manifest(artifact: &Path) -> Value {
    let out = std::process::Command::new("tar")
        .args(["-I", "zstd", "-xOf"])
        .arg(artifact)
        .arg("release.json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn paths(m: &Value) -> Vec<String> {
    m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

fn artifact(report: &Value) -> PathBuf {
    PathBuf::from(report["artifact"].as_str().unwrap())
}

fn no_download_happened(cache: &Path) {
    for dir in ["pip", "envs"] {
        assert!(
            !cache.join(dir).exists(),
            "{} exists: the build downloaded or installed before refusing",
            cache.join(dir).display()
        );
    }
}

#[test]
fn unpinned_requirements_are_refused_before_any_download_naming_each_line() {
    let app = bakery();
    let cache = app.tmp.path().join("cache");
    let err = fails_with(&build(&app, "out", &cache, &[]), 1);
    assert!(
        err.contains("requirements/base.txt:2: Django>=5.2,<5.3")
            && err.contains("requirements.txt:2: gunicorn>=22.0,<24.0"),
        "{err}"
    );
    assert!(
        err.contains("--allow-unpinned") && err.contains("=="),
        "{err}"
    );
    no_download_happened(&cache);
}

/// A find-links directory with the wheelhouse's wheels except those `skip` names.
fn index_without(dir: &Path, skip: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(wheelhouse()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".whl") && !skip.iter().any(|s| name.starts_with(s)) {
            std::fs::copy(entry.path(), dir.join(&name)).unwrap();
        }
    }
}

fn build_from_index(app: &App, out: &str, cache: &Path, index: &Path, extra: &[&str]) -> Value {
    let mut cmd = release();
    cmd.current_dir(&app.dir)
        .args([
            "build",
            "--json",
            "--no-index",
            "--installer",
            "pip",
            "--find-links",
        ])
        .arg(index)
        .arg("--out")
        .arg(app.tmp.path().join(out))
        .arg("--cache-dir")
        .arg(cache)
        .args(extra);
    json_ok(&cmd.output().unwrap())
}

#[test]
fn allow_unpinned_records_what_resolved_and_a_new_resolve_never_hides_behind_the_cache() {
    let app = bakery();
    let cache = app.tmp.path().join("cache");
    let index = app.tmp.path().join("index");
    // Today the index has gunicorn 22 only.
    index_without(&index, &["gunicorn-23"]);
    let first = build_from_index(&app, "one", &cache, &index, &["--allow-unpinned"]);
    let m = manifest(&artifact(&first));
    assert_eq!(m["unpinned"], true);
    let resolved: Vec<&str> = m["resolved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        resolved.contains(&"django==5.2.19") && resolved.contains(&"gunicorn==22.0.0"),
        "{resolved:?}"
    );
    assert!(paths(&m).contains(&"wheels/gunicorn-22.0.0-py3-none-any.whl".to_string()));

    // The same commit again, same index: the cached venv is reused.
    let again = build_from_index(&app, "again", &cache, &index, &["--allow-unpinned"]);
    assert_eq!(again["cached_env"], true);
    assert_eq!(again["sha256"], first["sha256"]);

    // gunicorn 23 is published: the same commit resolves anew, and the warm
    // cache does not hand back the venv with 22.
    std::fs::copy(
        wheelhouse().join("gunicorn-23.0.0-py3-none-any.whl"),
        index.join("gunicorn-23.0.0-py3-none-any.whl"),
    )
    .unwrap();
    let newer = build_from_index(&app, "newer", &cache, &index, &["--allow-unpinned"]);
    assert_eq!(newer["cached_env"], false, "{newer}");
    let m = manifest(&artifact(&newer));
    assert!(
        m["resolved"]
            .as_array()
            .unwrap()
            .contains(&Value::from("gunicorn==23.0.0")),
        "{m}"
    );
    let files = paths(&m);
    assert!(files.iter().any(|p| p.starts_with("venv/lib/python3.")
        && p.ends_with("/gunicorn-23.0.0.dist-info/METADATA")));
    assert!(!files.iter().any(|p| p.contains("gunicorn-22")));

    // A pinned build records none of it.
    let app = App::new();
    let m = manifest(&app.build_ok(&app.tmp.path().join("pinned"), &["--static", "true"]));
    assert!(
        m.get("unpinned").is_none() && m.get("resolved").is_none(),
        "{m}"
    );
}

#[test]
fn the_python_version_the_app_declares_is_checked_before_any_download() {
    let app = bakery();
    app.write(".python-version", "3.99\n");
    app.commit("needs a python from the future");
    let cache = app.tmp.path().join("cache");
    let err = fails_with(&build(&app, "out", &cache, &["--allow-unpinned"]), 1);
    assert!(
        err.contains("Python 3.99 (.python-version)") && err.contains("no interpreter on PATH"),
        "{err}"
    );
    assert!(
        err.contains("--python") && err.contains("python3.99"),
        "{err}"
    );
    no_download_happened(&cache);

    // An explicit interpreter that does not match is refused just as early.
    let err = fails_with(
        &build(
            &app,
            "out",
            &cache,
            &["--allow-unpinned", "--python", "python3"],
        ),
        1,
    );
    assert!(
        err.contains("Python 3.99 (.python-version)") && err.contains("this build uses Python 3."),
        "{err}"
    );
    no_download_happened(&cache);

    // runtime.txt (Heroku's format) and requires-python are read too.
    let app = bakery();
    app.write("runtime.txt", "python-3.98.1\n");
    app.commit("runtime.txt");
    let err = fails_with(&build(&app, "out", &cache, &["--allow-unpinned"]), 1);
    assert!(err.contains("Python 3.98.1 (runtime.txt)"), "{err}");
    let app = App::new();
    let pyproject = std::fs::read_to_string(app.path("pyproject.toml")).unwrap();
    app.write(
        "pyproject.toml",
        &format!("[project]\nname = \"mysite\"\nrequires-python = \">=3.97\"\n\n{pyproject}"),
    );
    app.commit("requires-python");
    let err = fails_with(&build(&app, "out", &cache, &[]), 1);
    assert!(
        err.contains("Python >=3.97 (requires-python in pyproject.toml)"),
        "{err}"
    );
    no_download_happened(&cache);
}

/// The base interpreters of pyenv (`$(pyenv root)/versions/X.Y.*/bin/pythonX.Y`).
fn pyenv_python(minor: &str) -> PathBuf {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")))
        .expect("PYENV_ROOT or HOME");
    let versions = root.join("versions");
    let found = std::fs::read_dir(&versions)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join(format!("bin/python{minor}")))
        .find(|p| {
            p.is_file()
                && p.parent()
                    .unwrap()
                    .parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{minor}."))
        });
    found.unwrap_or_else(|| {
        panic!(
            "this test builds with Python {minor} from pyenv, but {} has no {minor}.x: install it (`pyenv install {minor}`)",
            versions.display()
        )
    })
}

#[test]
fn with_two_interpreters_the_one_the_app_declares_is_picked_by_name() {
    let py311 = pyenv_python("3.11");
    let py312 = pyenv_python("3.12");
    // A PATH on which `python3` is 3.11 and `python3.12` is 3.12, nothing else.
    let app = bakery();
    let bin = app.tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(&py311, bin.join("python3")).unwrap();
    std::os::unix::fs::symlink(&py312, bin.join("python3.12")).unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let cache = shared_cache();
    let run = |app: &App, out: &str, extra: &[&str]| -> Output {
        let mut cmd = release();
        cmd.current_dir(&app.dir)
            .env("PATH", &path)
            .args([
                "build",
                "--json",
                "--no-index",
                "--installer",
                "pip",
                "--allow-unpinned",
            ])
            .arg("--find-links")
            .arg(wheelhouse())
            .arg("--out")
            .arg(app.tmp.path().join(out))
            .arg("--cache-dir")
            .arg(&cache)
            .args(extra);
        cmd.output().unwrap()
    };

    // Nothing declared: python3, i.e. 3.11.
    let m = manifest(&artifact(&json_ok(&run(&app, "plain", &[]))));
    assert_eq!(m["python"]["abi"], "cp311", "{}", m["python"]);

    // .python-version says 3.12: python3.12 is found by name and used.
    app.write(".python-version", "3.12\n");
    app.commit("python 3.12");
    let out = run(&app, "declared", &[]);
    let m = manifest(&artifact(&json_ok(&out)));
    assert_eq!(m["python"]["abi"], "cp312", "{}", m["python"]);
    assert!(m["python"]["version"]
        .as_str()
        .unwrap()
        .starts_with("3.12."));
    assert!(
        paths(&m)
            .iter()
            .any(|p| p.starts_with("venv/lib/python3.12/site-packages/django/")),
        "the venv is not a 3.12 one"
    );

    // An explicit --python that contradicts it is refused, naming both.
    let err = fails_with(&run(&app, "explicit", &["--python", "python3"]), 1);
    assert!(
        err.contains("Python 3.12 (.python-version)")
            && err.contains("this build uses Python 3.11"),
        "{err}"
    );

    // `python3` becomes 3.12 while the build cache remembers it as 3.11
    // (and holds a venv for that 3.11): the build goes on with the
    // remembered answer only until the fresh one comes back different
    // (here before resolving the unpinned requirements), then builds again
    // with 3.12.
    std::fs::remove_file(app.dir.join(".python-version")).unwrap();
    app.commit("no declared python");
    std::fs::remove_file(bin.join("python3")).unwrap();
    std::os::unix::fs::symlink(&py312, bin.join("python3")).unwrap();
    let out = run(&app, "switched", &[]);
    let m = manifest(&artifact(&json_ok(&out)));
    assert_eq!(m["python"]["abi"], "cp312", "{}", m["python"]);
    assert!(
        paths(&m)
            .iter()
            .any(|p| p.starts_with("venv/lib/python3.12/site-packages/django/")),
        "the venv is not a 3.12 one"
    );
}

#[test]
fn a_static_step_writing_into_app_is_refused_or_moved_into_static() {
    let app = bakery();
    let cache = shared_cache();
    let err = fails_with(
        &build(
            &app,
            "out",
            &cache,
            &["--allow-unpinned", "--static", COLLECT],
        ),
        1,
    );
    assert!(
        err.contains("app/bakery/collect_static/")
            && err.contains("app/bakery/collect_static/css/bakery.css"),
        "{err}"
    );
    assert!(
        err.contains("STATIC_ROOT = os.environ.get(")
            && err.contains("move-to-static")
            && err.contains("release.build.toml"),
        "{err}"
    );
    assert!(only_artifacts(&app.tmp.path().join("out")).is_empty());

    // With the setting, the files move into static/ and app/ stays as committed.
    app.write(
        "release.build.toml",
        &format!("static = {COLLECT:?}\nuntracked = \"move-to-static\"\nallow-unpinned = true\n"),
    );
    app.commit("build settings");
    let m = manifest(&artifact(&json_ok(&build(&app, "moved", &cache, &[]))));
    let files = paths(&m);
    assert!(
        files.contains(&"static/css/bakery.css".to_string()),
        "{files:?}"
    );
    assert!(
        !files.iter().any(|p| p.contains("collect_static")),
        "{files:?}"
    );

    // The README's fix: settings that read STATIC_ROOT from the environment.
    let app = bakery();
    let base = std::fs::read_to_string(app.path("bakery/settings/base.py")).unwrap();
    app.write(
        "bakery/settings/base.py",
        &base.replace(
            "STATIC_ROOT = PROJECT_DIR / \"collect_static\"",
            "STATIC_ROOT = os.environ.get(\"STATIC_ROOT\", PROJECT_DIR / \"collect_static\")",
        ),
    );
    app.commit("STATIC_ROOT from the environment");
    let m = manifest(&artifact(&json_ok(&build(
        &app,
        "fixed",
        &cache,
        &["--allow-unpinned", "--static", COLLECT],
    ))));
    assert!(paths(&m).contains(&"static/css/bakery.css".to_string()));
}

fn only_artifacts(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_build_environment_reaches_the_static_step_and_only_its_names_are_recorded() {
    let app = bakery();
    app.write(
        "release.build.toml",
        &format!(
            "static = {COLLECT:?}\nuntracked = \"move-to-static\"\nallow-unpinned = true\n\n[env]\nDJANGO_SETTINGS_MODULE = \"bakery.settings.production\"\n"
        ),
    );
    app.commit("production settings for the build");
    let cache = shared_cache();
    // The production settings need a secret: without it the static step fails.
    let err = fails_with(&build(&app, "nosecret", &cache, &[]), 1);
    assert!(err.contains("DJANGO_SECRET_KEY"), "{err}");

    let secret = "s3cret-value-for-the-build-only";
    let report = json_ok(&build(
        &app,
        "out",
        &cache,
        &["--env", &format!("DJANGO_SECRET_KEY={secret}")],
    ));
    let m = manifest(&artifact(&report));
    // ManifestStaticFilesStorage (production only) writes staticfiles.json.
    let files = paths(&m);
    assert!(
        files.contains(&"static/staticfiles.json".to_string()),
        "{files:?}"
    );
    assert_eq!(
        m["build_env"],
        serde_json::json!(["DJANGO_SECRET_KEY", "DJANGO_SETTINGS_MODULE"])
    );
    let json = serde_json::to_string(&m).unwrap();
    assert!(!json.contains(secret));
    let bytes = std::fs::read(artifact(&report)).unwrap();
    let unpacked = std::process::Command::new("tar")
        .args(["-I", "zstd", "-xOf"])
        .arg(artifact(&report))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&unpacked.stdout).contains(secret));
    assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));

    // Variables the build sets itself cannot be overridden.
    let err = fails_with(
        &build(&app, "bad", &cache, &["--env", "SOURCE_DATE_EPOCH=1"]),
        2,
    );
    assert!(err.contains("SOURCE_DATE_EPOCH"), "{err}");
}

#[test]
fn excludes_from_release_build_toml_and_flags_are_honoured() {
    let app = bakery();
    app.write(
        "release.build.toml",
        "allow-unpinned = true\nexclude = [\".github/**\", \"Vagrantfile\"]\n",
    );
    app.commit("excludes");
    let report = json_ok(&build(
        &app,
        "out",
        &shared_cache(),
        &[
            "--exclude",
            "package-lock.json",
            "--exclude",
            "bakery/media/**",
        ],
    ));
    let files = paths(&manifest(&artifact(&report)));
    for gone in [
        ".github",
        "Vagrantfile",
        "package-lock.json",
        "bakery/media",
    ] {
        assert!(
            !files
                .iter()
                .any(|p| p == &format!("app/{gone}") || p.starts_with(&format!("app/{gone}/"))),
            "app/{gone} is in the artifact"
        );
    }
    assert!(files.contains(&"app/bakery/settings/base.py".to_string()));
    assert!(files.contains(&"app/release.build.toml".to_string()));

    // Settings in both places are refused.
    app.write("pyproject.toml", "[tool.release]\nname = \"bakery\"\n");
    app.commit("two places");
    let err = fails_with(&build(&app, "two", &shared_cache(), &[]), 1);
    assert!(
        err.contains("release.build.toml") && err.contains("one of the two"),
        "{err}"
    );
}

#[test]
fn without_wheels_the_artifact_is_smaller_and_rebuild_venv_says_why_it_cannot() {
    let app = bakery();
    let with = json_ok(&build(&app, "with", &shared_cache(), &["--allow-unpinned"]));
    let without = json_ok(&build(
        &app,
        "without",
        &shared_cache(),
        &["--allow-unpinned", "--no-wheels"],
    ));
    let files = paths(&manifest(&artifact(&without)));
    assert!(!files
        .iter()
        .any(|p| p == "wheels" || p.starts_with("wheels/")));
    assert!(without["bytes"].as_u64() < with["bytes"].as_u64());

    let root = app.tmp.path().join("root");
    json_ok(
        &release()
            .arg("--root")
            .arg(&root)
            .args(["--json", "init"])
            .output()
            .unwrap(),
    );
    let out = release()
        .arg("--root")
        .arg(&root)
        .args(["install", "--rebuild-venv"])
        .arg(artifact(&without))
        .output()
        .unwrap();
    let err = fails_with(&out, 1);
    assert!(
        err.contains("carries no wheels/") && err.contains("wheels = false"),
        "{err}"
    );
    assert!(
        !root.join("releases").exists()
            || std::fs::read_dir(root.join("releases")).unwrap().count() == 0,
        "something was installed"
    );
}

// ---- the host side: health, before_activate migrations, switching back ----

fn children(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Columns of the `breads_bread` table and the breads migrations applied.
fn schema(db: &Path) -> (String, String) {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             print(','.join(r[1] for r in c.execute('pragma table_info(breads_bread)')))\n\
             print(','.join(r[0] for r in c.execute(\"select name from django_migrations where app = 'breads' order by name\")))",
        )
        .arg(db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    (
        lines.next().unwrap_or_default().to_string(),
        lines.next().unwrap_or_default().to_string(),
    )
}

#[test]
fn deploys_with_a_plain_health_url_and_migrations_before_the_switch() {
    use crate::common::running::Gunicorn;

    let app = bakery();
    app.write("release.build.toml", "allow-unpinned = true\n");
    app.commit("build settings");
    let root = app.tmp.path().join("srv/bakery");
    let run_dir = app.tmp.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let deploy = |name: &str| -> Output {
        let artifact = artifact(&json_ok(&build(&app, name, &shared_cache(), &[])));
        release()
            .arg("--root")
            .arg(&root)
            .arg("deploy")
            .arg(&artifact)
            .output()
            .unwrap()
    };
    // The launch line `release init` writes for this app.
    let port = crate::common::running::free_port();
    let init = json_ok(
        &release()
            .arg("--root")
            .arg(&root)
            .args([
                "init",
                "--json",
                "--wsgi",
                "bakery.wsgi:application",
                "--run-dir",
            ])
            .arg(&run_dir)
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .output()
            .unwrap(),
    );
    let launch = crate::common::running::launch_line(&init, "web");
    let db = root.join("shared/app/var/db.sqlite3");
    // The hook notes where `current` pointed when it ran, then migrates.
    let hooks = "[hooks]\ncheck = \"venv/bin/python -c 'import bakery.wsgi'\"\nbefore_activate = \"readlink \\\"$RELEASE_ROOT/current\\\" > \\\"$RELEASE_ROOT/shared/seen-current\\\" || true; venv/bin/python app/manage.py migrate --noinput\"\n";
    let seen = || {
        std::fs::read_to_string(root.join("shared/seen-current"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let current = || {
        std::fs::read_link(root.join("current"))
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };

    // Release A, first deploy on the fresh root: the hook creates the database.
    std::fs::write(
        root.join("release.toml"),
        format!("shared = [\"app/var\"]\n\n{hooks}"),
    )
    .unwrap();
    let out = deploy("a");
    assert!(out.status.success(), "{}", stderr(&out));
    let a = current();
    assert_eq!(seen(), "", "no current before the first release");
    assert_eq!(schema(&db), ("id,name".into(), "0001_initial".into()));

    let web = Gunicorn::from_launch_ready(&launch, &run_dir, port, "/");
    let (status, body) = web.get("/");
    assert_eq!(status, 200);
    assert!(
        !body.contains(&a[..12]),
        "the page does not name the release"
    );
    std::fs::write(
        root.join("release.toml"),
        format!(
            "shared = [\"app/var\"]\n\n[[service]]\nname = \"web\"\npidfile = \"{}\"\nreload = \"hup\"\ntimeout = \"60s\"\n\n[health]\nurl = \"{}\"\ntimeout = \"20s\"\n\n{hooks}",
            web.pidfile.display(),
            web.url("/")
        ),
    )
    .unwrap();

    // Release B adds a column its page reads: served before the migration,
    // the page would fail. The migration runs in B, while A is current.
    app.write(
        "bakery/breads/models.py",
        "from django.db import models\n\n\nclass Bread(models.Model):\n    name = models.CharField(max_length=100)\n    origin = models.CharField(max_length=100, default=\"\")\n\n    def __str__(self):\n        return f\"{self.name} ({self.origin})\"\n",
    );
    app.write(
        "bakery/breads/migrations/0002_bread_origin.py",
        "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n    dependencies = [(\"breads\", \"0001_initial\")]\n    operations = [\n        migrations.AddField(\"bread\", \"origin\", models.CharField(max_length=100, default=\"\")),\n    ]\n",
    );
    app.commit("release B: bread origin");
    let out = deploy("b");
    assert!(out.status.success(), "{}", stderr(&out));
    let b = current();
    assert_ne!(a, b);
    assert_eq!(
        seen(),
        format!("releases/{a}"),
        "the hook ran before the switch"
    );
    assert_eq!(
        schema(&db),
        (
            "id,name,origin".into(),
            "0001_initial,0002_bread_origin".into()
        )
    );
    let (status, body) = web.get("/");
    assert_eq!(status, 200, "{body}");

    // Release C's migration fails half-way (a column added, then an error):
    // nothing live changes: current, the workers, the schema.
    let master = std::fs::read_to_string(&web.pidfile)
        .unwrap()
        .trim()
        .to_string();
    let workers = children(&master);
    app.write(
        "bakery/breads/migrations/0003_broken.py",
        "from django.db import migrations, models\n\n\ndef fail(apps, schema_editor):\n    raise RuntimeError(\"this data migration is broken\")\n\n\nclass Migration(migrations.Migration):\n    dependencies = [(\"breads\", \"0002_bread_origin\")]\n    operations = [\n        migrations.AddField(\"bread\", \"price\", models.IntegerField(default=0)),\n        migrations.RunPython(fail),\n    ]\n",
    );
    app.commit("release C: a broken migration");
    let out = deploy("c");
    let err = fails_with(&out, 1);
    assert!(
        err.contains("before_activate") && err.contains("this data migration is broken"),
        "{err}"
    );
    assert!(err.contains(&format!("{b} is still current")), "{err}");
    assert_eq!(current(), b);
    assert_eq!(seen(), format!("releases/{b}"));
    assert_eq!(
        schema(&db),
        (
            "id,name,origin".into(),
            "0001_initial,0002_bread_origin".into()
        )
    );
    assert_eq!(children(&master), workers, "the workers were touched");
    assert_eq!(web.get("/").0, 200);
    let journal = std::fs::read_to_string(root.join("history.jsonl")).unwrap();
    let last: Value = serde_json::from_str(journal.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "failed", "{last}");
    assert_eq!(last["step"], "before_activate", "{last}");

    // With `expect` opted in, a release whose page fails is rolled back, and
    // switching back to B does not require B's page to contain B's id.
    std::fs::remove_file(app.path("bakery/breads/migrations/0003_broken.py")).unwrap();
    app.write(
        "bakery/views.py",
        "from django.http import HttpResponse\n\n\ndef home(request):\n    return HttpResponse(\"broken\", status=500)\n",
    );
    app.commit("release D: a page that fails");
    let config = std::fs::read_to_string(root.join("release.toml")).unwrap();
    std::fs::write(
        root.join("release.toml"),
        config.replace(
            "timeout = \"20s\"",
            "timeout = \"5s\"\nexpect = \"{release}\"",
        ),
    )
    .unwrap();
    let out = deploy("d");
    let err = fails_with(&out, 3);
    assert!(err.contains(&format!("{b} is live again")), "{err}");
    assert!(!err.contains("failed too"), "{err}");
    assert_eq!(current(), b);
    assert_eq!(web.get("/").0, 200);
}

#[test]
fn a_requirement_needing_another_python_is_named_with_the_version_it_needs() {
    // A wheel whose metadata says Requires-Python >=3.99, in a find-links dir.
    let app = App::new();
    let links = app.tmp.path().join("links");
    std::fs::create_dir_all(&links).unwrap();
    let made = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import base64, hashlib, sys, zipfile\n\
             files = {'toonew/__init__.py': b'', 'toonew-1.0.dist-info/METADATA': b'Metadata-Version: 2.1\\nName: toonew\\nVersion: 1.0\\nRequires-Python: >=3.99\\n', 'toonew-1.0.dist-info/WHEEL': b'Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n'}\n\
             record = ''.join('%s,sha256=%s,%d\\n' % (n, base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode(), len(d)) for n, d in files.items())\n\
             with zipfile.ZipFile(sys.argv[1] + '/toonew-1.0-py3-none-any.whl', 'w') as z:\n\
             \x20   [z.writestr(n, d) for n, d in files.items()]\n\
             \x20   z.writestr('toonew-1.0.dist-info/RECORD', record + 'toonew-1.0.dist-info/RECORD,,\\n')\n",
        )
        .arg(&links)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    let mut reqs = std::fs::read_to_string(app.path("requirements.txt")).unwrap();
    reqs.push_str("toonew==1.0\n");
    app.write("requirements.txt", &reqs);
    app.commit("a requirement for a newer Python");
    let out = app.build(
        &app.tmp.path().join("out"),
        &app.tmp.path().join("cache"),
        &[
            "--installer",
            "pip",
            "--find-links",
            links.to_str().unwrap(),
        ],
    );
    let err = fails_with(&out, 1);
    assert!(
        err.contains("`toonew` needs Python >=3.99; this build uses Python 3."),
        "{err}"
    );
    assert!(err.contains("--python"), "{err}");
}
