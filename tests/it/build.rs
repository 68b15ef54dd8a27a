//! `release build` and `release inspect` against the real fixture app.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::members;
use crate::common::*;

fn artifact_of(report: &Value) -> PathBuf {
    PathBuf::from(report["artifact"].as_str().expect("artifact in report"))
}

fn only_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn same_commit_gives_byte_identical_artifacts_in_both_formats() {
    let app = App::new();
    let tmp = app.tmp.path();
    // Two cold builds, each with its own empty cache: nothing is shared but
    // the wheelhouse the requirements come from.
    let a = json_ok(&app.build(
        &tmp.join("a"),
        &tmp.join("cache-a"),
        &["--installer", "pip"],
    ));
    let b = json_ok(&app.build(
        &tmp.join("b"),
        &tmp.join("cache-b"),
        &["--installer", "pip"],
    ));
    assert_eq!(a["cached_env"], false);
    assert_eq!(b["cached_env"], false);
    let (a_path, b_path) = (artifact_of(&a), artifact_of(&b));
    assert!(a_path
        .to_string_lossy()
        .ends_with(&format!("mysite-{}.tar.zst", &app.head()[..12])));
    assert_eq!(
        std::fs::read(&a_path).unwrap(),
        std::fs::read(&b_path).unwrap()
    );
    assert_eq!(a["sha256"], b["sha256"]);
    assert_eq!(a["tree_sha256"], b["tree_sha256"]);

    // Warm: the cold build kept the compressed venv-and-wheels frame, and
    // the frame of the manifest's entries for them, in its cache entry, and
    // the next build appends them instead of compressing: the same bytes.
    // A damaged copy is not used: still the same bytes.
    let frames = |cache: &str| -> Vec<PathBuf> {
        let mut found = Vec::new();
        for env in std::fs::read_dir(tmp.join(cache).join("envs")).unwrap() {
            let dir = env.unwrap().path().join("frames");
            for f in std::fs::read_dir(&dir).into_iter().flatten() {
                let f = f.unwrap().path();
                if f.to_string_lossy().ends_with(".tar.zst") {
                    found.push(f);
                }
            }
        }
        found
    };
    assert_eq!(
        frames("cache-a").len(),
        2,
        "the cold build keeps two frames"
    );
    let warm = json_ok(&app.build(
        &tmp.join("warm"),
        &tmp.join("cache-a"),
        &["--installer", "pip"],
    ));
    assert_eq!(warm["cached_env"], true);
    assert_eq!(
        std::fs::read(artifact_of(&warm)).unwrap(),
        std::fs::read(&a_path).unwrap()
    );
    for copy in frames("cache-b") {
        let mut bytes = std::fs::read(&copy).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&copy, bytes).unwrap();
    }
    let damaged = json_ok(&app.build(
        &tmp.join("damaged"),
        &tmp.join("cache-b"),
        &["--installer", "pip"],
    ));
    assert_eq!(
        std::fs::read(artifact_of(&damaged)).unwrap(),
        std::fs::read(&a_path).unwrap()
    );

    // gzip, from each of the two caches.
    let gz = ["--installer", "pip", "--format", "gz"];
    let c = json_ok(&app.build(&tmp.join("c"), &tmp.join("cache-a"), &gz));
    let d = json_ok(&app.build(&tmp.join("d"), &tmp.join("cache-b"), &gz));
    let (c_path, d_path) = (artifact_of(&c), artifact_of(&d));
    assert!(c_path.to_string_lossy().ends_with(".tar.gz"));
    assert_eq!(
        std::fs::read(&c_path).unwrap(),
        std::fs::read(&d_path).unwrap()
    );
    // Same content whatever the compression.
    assert_eq!(a["tree_sha256"], c["tree_sha256"]);
    assert_ne!(a["sha256"], c["sha256"]);

    // The .sha256 files check with sha256sum.
    for path in [&a_path, &c_path] {
        let out = Command::new("sha256sum")
            .arg("--check")
            .arg(format!(
                "{}.sha256",
                path.file_name().unwrap().to_string_lossy()
            ))
            .current_dir(path.parent().unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stdout(&out));
    }
}

/// One archive member: path, type, mode, size, and sha256 or link target.
type Member = (String, &'static str, u32, u64, String);
/// (mtime, uid, gid) of a member header.
type Owner = (u64, u64, u64);

/// The manifest bytes, every other member, and every member's owner fields.
fn read_members(artifact: &Path) -> (Vec<u8>, Vec<Member>, Vec<Owner>) {
    let mut manifest = Vec::new();
    let mut members = Vec::new();
    let mut owners = Vec::new();
    for (i, m) in members::read(artifact).into_iter().enumerate() {
        let path = m.path.trim_end_matches('/').to_string();
        let h = &m.header;
        owners.push((h.mtime().unwrap(), h.uid().unwrap(), h.gid().unwrap()));
        assert!(
            h.username_bytes().is_none_or(|u| u.is_empty()),
            "{path} has an owner name"
        );
        let mode = h.mode().unwrap();
        let size = h.size().unwrap();
        if i == 0 {
            assert_eq!(
                path, "release.json",
                "release.json must be the first member"
            );
            manifest = m.data;
            continue;
        }
        let (kind, digest) = match h.entry_type() {
            tar::EntryType::Regular => ("file", hex::encode(Sha256::digest(&m.data))),
            tar::EntryType::Directory => ("dir", String::new()),
            tar::EntryType::Symlink => ("symlink", m.link.unwrap_or_default()),
            other => panic!("{path}: unexpected member type {other:?}"),
        };
        members.push((path, kind, mode, size, digest));
    }
    (manifest, members, owners)
}

#[test]
fn every_member_matches_its_manifest_entry_and_the_manifest_comes_first() {
    let app = App::new();
    for format in ["zst", "gz"] {
        let artifact = app.build_ok(&app.tmp.path().join(format), &["--format", format]);
        let (manifest, members, owners) = read_members(&artifact);
        let manifest: Value = serde_json::from_slice(&manifest).unwrap();
        let epoch = manifest["source_date_epoch"].as_u64().unwrap();
        // release.json, app/ and static/ carry the commit's time; the venv
        // and the wheels 1980-01-01 (they come from the build cache).
        let dependency = |p: &str| {
            ["venv", "wheels"]
                .iter()
                .any(|d| p == *d || p.starts_with(&format!("{d}/")))
        };
        assert_eq!(owners[0], (epoch, 0, 0), "release.json's mtime/uid/gid");
        for (member, owner) in members.iter().zip(&owners[1..]) {
            let mtime = if dependency(&member.0) {
                315_532_800
            } else {
                epoch
            };
            assert_eq!(
                *owner,
                (mtime, 0, 0),
                "{}: mtime/uid/gid not normalised",
                member.0
            );
        }

        let files = manifest["files"].as_array().unwrap();
        assert_eq!(files.len() as u64, manifest["file_count"].as_u64().unwrap());
        assert_eq!(
            files.len(),
            members.len(),
            "members and manifest entries differ in number"
        );
        let by_path: BTreeMap<&str, &Value> = files
            .iter()
            .map(|f| (f["path"].as_str().unwrap(), f))
            .collect();
        let mut previous = String::new();
        for (path, kind, mode, size, digest) in &members {
            assert!(*path > previous, "members not sorted at {path}");
            previous = path.clone();
            let entry = by_path
                .get(path.as_str())
                .unwrap_or_else(|| panic!("{path} not in manifest"));
            assert_eq!(entry["type"], *kind, "{path}");
            match *kind {
                "file" => {
                    assert_eq!(entry["size"].as_u64().unwrap(), *size, "{path}");
                    assert_eq!(entry["sha256"], digest.as_str(), "{path}");
                    let m = entry["mode"].as_str().unwrap();
                    assert_eq!(u32::from_str_radix(m, 8).unwrap(), *mode, "{path}");
                    assert!(*mode == 0o644 || *mode == 0o755, "{path} mode {mode:o}");
                }
                "dir" => assert_eq!(*mode, 0o755, "{path}"),
                _ => assert_eq!(entry["target"], digest.as_str(), "{path}"),
            }
        }
        // The four parts of format 1 are there.
        for top in ["app", "venv", "wheels", "static"] {
            assert!(by_path.contains_key(top), "no {top}/ in the artifact");
        }
        assert!(
            by_path.contains_key("static/mysite/style.css"),
            "collectstatic output missing"
        );
        assert!(by_path.contains_key("app/manage.py"));
        assert!(
            by_path
                .keys()
                .any(|p| p.starts_with("wheels/greeting-1.0.0-")),
            "local package wheel missing"
        );
        assert!(by_path.keys().any(|p| p.starts_with("wheels/django-")));

        // GNU tar agrees that release.json is the first member.
        let out = Command::new("tar")
            .arg("-tf")
            .arg(&artifact)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out).lines().next(), Some("release.json"));
    }
}

fn run_json(cmd: &mut Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("not JSON: {}", stdout(&out)))
}

#[test]
fn unpacked_with_tar_behind_a_symlink_the_venv_runs_from_the_unresolved_path() {
    let app = App::new();
    let artifact = app.build_ok(&app.tmp.path().join("out"), &[]);
    let root = app.tmp.path().join("srv");
    let release_dir = root.join("releases/one");
    std::fs::create_dir_all(&release_dir).unwrap();
    let out = Command::new("tar")
        .arg("-xf")
        .arg(&artifact)
        .arg("-C")
        .arg(&release_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    std::os::unix::fs::symlink("releases/one", root.join("current")).unwrap();
    let current = root.join("current");
    let expected_python = current.join("venv/bin/python");
    let expected_prefix = current.join("venv");

    // The interpreter itself, by absolute path and by a relative one.
    let probe =
        "import json, sys; print(json.dumps({'executable': sys.executable, 'prefix': sys.prefix}))";
    let abs = run_json(
        Command::new(current.join("venv/bin/python"))
            .args(["-c", probe])
            .current_dir("/"),
    );
    assert_eq!(abs["executable"], expected_python.to_str().unwrap());
    assert_eq!(abs["prefix"], expected_prefix.to_str().unwrap());
    let rel = run_json(
        Command::new("./current/venv/bin/python")
            .args(["-c", probe])
            .current_dir(&root),
    );
    assert_eq!(rel["executable"], expected_python.to_str().unwrap());

    // A console script: absolute, relative, and through a symlink to the script.
    let script = current.join("venv/bin/greeting-whoami");
    let expected_argv0 = script.to_str().unwrap();
    let links = app.tmp.path().join("bin");
    std::fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink(&script, links.join("whoami")).unwrap();
    std::os::unix::fs::symlink(
        "../srv/current/venv/bin/greeting-whoami",
        links.join("whoami-rel"),
    )
    .unwrap();
    for (program, cwd) in [
        (script.clone(), PathBuf::from("/")),
        (
            PathBuf::from("./current/venv/bin/greeting-whoami"),
            root.clone(),
        ),
        (links.join("whoami"), PathBuf::from("/")),
        (
            PathBuf::from("bin/whoami-rel"),
            app.tmp.path().to_path_buf(),
        ),
    ] {
        let who = run_json(Command::new(&program).current_dir(&cwd));
        assert_eq!(
            who["executable"],
            expected_python.to_str().unwrap(),
            "started as {}",
            program.display()
        );
        assert_eq!(
            who["prefix"],
            expected_prefix.to_str().unwrap(),
            "started as {}",
            program.display()
        );
        let argv0 = who["argv0"].as_str().unwrap();
        // Absolute (re-execs after a chdir must work) and still through
        // `current` (they must land in the release `current` names then).
        assert!(
            argv0.starts_with('/') && argv0.ends_with("current/venv/bin/greeting-whoami"),
            "argv0 {argv0} is not an unresolved absolute script path (started as {})",
            program.display()
        );
        assert_eq!(
            std::fs::canonicalize(argv0).unwrap(),
            std::fs::canonicalize(expected_argv0).unwrap()
        );
    }

    // A real third-party console script, and the app's own code.
    let out = Command::new(current.join("venv/bin/gunicorn"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("23.0.0") || stderr(&out).contains("23.0.0"));
    let out = Command::new(current.join("venv/bin/python"))
        .args(["-c", "import mysite.release_info as r; print(r.RELEASE_ID)"])
        .current_dir(current.join("app"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), &app.head()[..12]);

    // The activate script finds the venv through the symlink too.
    let out = Command::new("bash")
        .arg("-c")
        .arg(". ./current/venv/bin/activate && echo \"$VIRTUAL_ENV\" && command -v python")
        .current_dir(&root)
        .output()
        .unwrap();
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(expected_prefix.to_str().unwrap()));
    assert_eq!(lines.next(), Some(expected_python.to_str().unwrap()));

    // Nothing in the venv names the build directory any more.
    let cfg = std::fs::read_to_string(current.join("venv/pyvenv.cfg")).unwrap();
    assert!(!cfg.contains("command"), "{cfg}");
}

#[test]
fn uv_builds_work_and_an_unchanged_requirements_rebuild_reuses_the_venv() {
    let app = App::new();
    let tmp = app.tmp.path();
    let path = format!("{}:{}", uv_dir().display(), std::env::var("PATH").unwrap());
    let build = |out: &str| {
        let mut cmd = release();
        cmd.current_dir(&app.dir)
            .env("PATH", &path)
            .args(["build", "--json", "--no-index", "--find-links"])
            .arg(wheelhouse())
            .arg("--out")
            .arg(tmp.join(out))
            .arg("--cache-dir")
            .arg(tmp.join("cache"));
        json_ok(&cmd.output().unwrap())
    };
    // `auto` picks uv when it is on PATH.
    let first = build("one");
    assert_eq!(first["cached_env"], false);
    // uv unpacked the wheels into the build cache (not a temporary cache it
    // then deletes).
    assert!(tmp.join("cache/uv").is_dir());
    let inspect = run_json(
        release()
            .args(["inspect", "--json"])
            .arg(artifact_of(&first)),
    );
    assert!(
        inspect["builder"].as_str().unwrap().contains("(uv "),
        "{inspect}"
    );

    // A code-only change: the venv and wheels come from the cache.
    app.write("mysite/extra.py", "X = 1\n");
    app.commit("code only");
    let second = build("two");
    assert_eq!(second["cached_env"], true);
    assert_ne!(first["release"], second["release"]);
    assert!(second["seconds"].as_f64().unwrap() < first["seconds"].as_f64().unwrap());

    // The uv-built venv runs after unpacking.
    let dir = tmp.join("unpacked");
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("tar")
        .arg("-xf")
        .arg(artifact_of(&second))
        .arg("-C")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new(dir.join("venv/bin/gunicorn"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("app/mysite/extra.py").is_file());

    // --installer uv without uv on PATH is a clear error.
    let out = app.build(
        &tmp.join("three"),
        &tmp.join("cache"),
        &["--installer", "uv"],
    );
    let err = fails_with(&out, 1);
    assert!(err.contains("uv") && err.contains("not on PATH"), "{err}");
}

#[test]
fn inspect_reads_the_manifest_summary() {
    let app = App::new();
    let artifact = app.build_ok(&app.tmp.path().join("out"), &[]);
    let info = run_json(release().args(["inspect", "--json"]).arg(&artifact));
    assert_eq!(info["app"], "mysite");
    assert_eq!(info["commit"], app.head());
    assert_eq!(info["release"], &app.head()[..12]);
    assert_eq!(info["format"], "zst");
    assert_eq!(info["python"]["abi"], "cp311");
    assert!(info["files"].as_u64().unwrap() > 1000);
    let human = release().arg("inspect").arg(&artifact).output().unwrap();
    let text = stdout(&human);
    assert!(
        text.contains("mysite") && text.contains(&app.head()),
        "{text}"
    );

    // Not an artifact at all.
    let junk = app.tmp.path().join("junk.tar.zst");
    std::fs::write(&junk, b"hello, this is not an archive").unwrap();
    let err = fails_with(&release().arg("inspect").arg(&junk).output().unwrap(), 1);
    assert!(
        err.contains("junk.tar.zst") && err.contains("not zstd or gzip"),
        "{err}"
    );
}

// ---- clear errors (issue: each names the thing and the fix) ----

fn build_fails(app: &App, extra: &[&str]) -> String {
    let out_dir = app.tmp.path().join("err-out");
    let mut args = vec!["--installer", "pip"];
    args.extend_from_slice(extra);
    let out = app.build(&out_dir, &shared_cache(), &args);
    let err = fails_with(&out, 1);
    let left: Vec<String> = only_files(&out_dir)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "a failed build left {left:?}");
    err
}

#[test]
fn not_a_git_repository() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("requirements.txt"), "").unwrap();
    let out = release()
        .args(["build", "--source"])
        .arg(tmp.path())
        .arg("--cache-dir")
        .arg(tmp.path().join("cache"))
        .output()
        .unwrap();
    let err = fails_with(&out, 1);
    assert!(err.contains("not inside a git repository"), "{err}");
    assert!(err.contains(&tmp.path().display().to_string()), "{err}");
}

#[test]
fn dirty_tree_is_refused_unless_allowed() {
    let app = App::new();
    app.write("mysite/views.py", "# edited\n");
    let err = build_fails(&app, &[]);
    assert!(
        err.contains("uncommitted changes") && err.contains("mysite/views.py"),
        "{err}"
    );
    assert!(err.contains("--allow-dirty"), "{err}");

    let report = json_ok(&app.build(
        &app.tmp.path().join("dirty"),
        &shared_cache(),
        &["--installer", "pip", "--allow-dirty", "--static", "true"],
    ));
    let info = run_json(
        release()
            .args(["inspect", "--json"])
            .arg(artifact_of(&report)),
    );
    assert_eq!(info["dirty"], true);
}

#[test]
fn missing_requirements_file() {
    let app = App::new();
    let err = build_fails(&app, &["--requirements", "requirements/prod.txt"]);
    assert!(
        err.contains("requirements file") && err.contains("requirements/prod.txt"),
        "{err}"
    );
    assert!(err.contains("--requirements"), "{err}");
    // A lock file is named as one.
    let err = build_fails(&app, &["--requirements", "locks/pylock.toml"]);
    assert!(
        err.contains("lock file") && err.contains("locks/pylock.toml does not exist"),
        "{err}"
    );
    assert!(!err.contains("requirements file"), "{err}");
}

#[test]
fn interpreter_not_found() {
    let app = App::new();
    let err = build_fails(&app, &["--python", "python3.99"]);
    assert!(
        err.contains("`python3.99` not found") && err.contains("--python"),
        "{err}"
    );
}

#[test]
fn a_requirement_that_cannot_be_built_is_named() {
    let app = App::new();
    let mut reqs = std::fs::read_to_string(app.path("requirements.txt")).unwrap();
    reqs.push_str("nosuchpackage-for-release-tests==1.0\n");
    app.write("requirements.txt", &reqs);
    app.commit("bad requirement");
    let err = build_fails(&app, &[]);
    assert!(
        err.contains("requirement `nosuchpackage-for-release-tests==1.0`"),
        "{err}"
    );

    // A local package whose build fails is named by its path.
    let app = App::new();
    app.write("packages/greeting/pyproject.toml", "[build-system]\nrequires = [\"flit_core>=3.4,<5\"]\nbuild-backend = \"flit_core.buildapi\"\n[project]\nname = \"greeting\"\n");
    app.commit("broken package");
    let err = build_fails(&app, &[]);
    assert!(err.contains("packages/greeting"), "{err}");
}

#[test]
fn a_failing_static_command_shows_the_tail_of_its_output() {
    let app = App::new();
    let err = build_fails(
        &app,
        &[
            "--static",
            "python -c \"import sys; print('collect went wrong here'); sys.exit(3)\"",
        ],
    );
    assert!(
        err.contains("static step") && err.contains("collect went wrong here"),
        "{err}"
    );
    assert!(err.contains("exit status: 3"), "{err}");
}
