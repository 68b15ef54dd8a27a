//! The host side against real artifacts of the fixture app: install, activate,
//! rollback, list, status, prune, verify, the lock and the journal.
//!
//! Two artifacts are built once for the whole run (A: the fixture, B: one more
//! commit); C and D are B's tree under other commits (the host does not care
//! where a commit came from), and the refused artifacts are A rewritten member
//! by member with the `tar` crate.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use release::manifest::Entry;

use crate::common::members::{manifest_bytes, Member, Members};
use crate::common::root::Root;
use crate::common::*;

const COMMIT_C: &str = "cafe0000000000000000000000000000000000c0";
const COMMIT_D: &str = "cafe1111111111111111111111111111111111d0";

pub(crate) struct Artifacts {
    pub(crate) a: PathBuf,
    pub(crate) b: PathBuf,
    pub(crate) c: PathBuf,
    d: PathBuf,
    commit_a: String,
    commit_b: String,
    /// What `venv/bin/python3` links to in A.
    base_executable: String,
}

/// The artifacts every test shares, built once (offline, from the shared
/// cache); tests/it/faults.rs uses them too.
pub(crate) fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        let out = Path::new(REPO).join("target/host-it");
        let app = App::new();
        let a = app.build_ok(&out, &[]);
        let commit_a = app.head();
        app.write("mysite/extra.py", "X = 1\n");
        // B's CSS differs too: a new hashed name, and new content at the
        // unhashed names (style.css, staticfiles.json) in the served static/.
        let css = std::fs::read_to_string(app.path("mysite/static/mysite/style.css")).unwrap();
        app.write(
            "mysite/static/mysite/style.css",
            &format!("{css}\nh1 {{\n  color: #036;\n}}\n"),
        );
        let commit_b = app.commit("two");
        let b = app.build_ok(&out, &[]);
        let members = Members::read(&b);
        let c = members
            .with_commit(COMMIT_C)
            .write(&out.join("mysite-cafe00000000.tar.zst"));
        let d = members
            .with_commit(COMMIT_D)
            .write(&out.join("mysite-cafe11111111.tar.zst"));
        let inspect = json_ok(
            &release()
                .args(["--json", "inspect"])
                .arg(&a)
                .output()
                .unwrap(),
        );
        let base_executable = inspect["python"]["base_executable"]
            .as_str()
            .unwrap()
            .to_string();
        Artifacts {
            a,
            b,
            c,
            d,
            commit_a,
            commit_b,
            base_executable,
        }
    })
}

fn file_header(mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    h
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_activate_rollback_and_the_states_list_shows() {
    let art = artifacts();
    let root = Root::new();
    let missing = root.fails(&["list"], 1);
    assert!(missing.contains("does not exist"), "{missing}");

    let a = root.json(&["install", art.a.to_str().unwrap()]);
    assert_eq!(a["already_installed"], false);
    assert_eq!(a["commit"], art.commit_a.as_str());
    let id_a = a["id"].as_str().unwrap().to_string();
    assert!(
        id_a.starts_with(&art.commit_a[..12]) && id_a.ends_with('Z') && id_a.len() == 29,
        "{id_a}"
    );
    assert!(a["files"].as_u64().unwrap() > 1000 && a["bytes"].as_u64().unwrap() > 1_000_000);
    assert_eq!(mode_of(&root.path), 0o755);
    let id_b = root.install(&art.b);

    // Installing again changes nothing.
    let journal_before = root.journal().len();
    let again = root.json(&["install", art.a.to_str().unwrap()]);
    assert_eq!(again["already_installed"], true);
    assert_eq!(again["id"], id_a.as_str());
    assert_eq!(root.journal().len(), journal_before);
    let mut both = vec![id_a.clone(), id_b.clone()];
    both.sort();
    assert_eq!(root.release_dirs(), both);

    // Newest install first, nothing activated yet.
    assert_eq!(
        root.states(),
        vec![
            (id_b.clone(), "inactive".into()),
            (id_a.clone(), "inactive".into())
        ]
    );
    let rows = root.json(&["list"]);
    assert_eq!(rows[0]["commit"], art.commit_b.as_str());
    assert_eq!(rows[1]["commit"], art.commit_a.as_str());
    assert_eq!(rows[1]["last_activated_at"], Value::Null);
    assert!(rows[1]["installed_at"].as_str().unwrap().ends_with('Z'));

    // Activate by a commit prefix, then by a release id prefix.
    assert_eq!(
        stdout(&root.ok(&["activate", &art.commit_a[..8]])).trim(),
        id_a
    );
    assert_eq!(root.current().as_deref(), Some(id_a.as_str()));
    assert_eq!(
        std::fs::read_link(root.path.join("current")).unwrap(),
        Path::new("releases").join(&id_a)
    );
    let already = root.ok(&["activate", &id_a]);
    assert!(
        stderr(&already).contains("already current"),
        "{}",
        stderr(&already)
    );
    root.ok(&["activate", &id_b[..16]]);
    assert_eq!(root.state_of(&id_b), "current");
    assert_eq!(root.state_of(&id_a), "rollback-target");
    let rows = root.json(&["list"]);
    assert!(rows[0]["last_activated_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(!rows[0]["activated_by"].as_str().unwrap().is_empty());
    assert_eq!(rows[1]["bytes"], a["bytes"]);

    // rollback → A; B is marked rolled back.
    let back = root.json(&["rollback"]);
    assert_eq!(back["id"], id_a.as_str());
    assert_eq!(back["from"], id_b.as_str());
    assert_eq!(root.current().as_deref(), Some(id_a.as_str()));
    assert_eq!(root.state_of(&id_a), "current");
    assert_eq!(root.state_of(&id_b), "rolled-back");
    let last = root.journal().last().unwrap().clone();
    assert_eq!(last["event"], "rolled_back");
    assert_eq!(last["release"], id_a.as_str());
    assert_eq!(last["from"], id_b.as_str());

    // rollback again: B was rolled back, nothing else was live: refused.
    let err = root.fails(&["rollback"], 1);
    assert!(
        err.contains("nothing to roll back") && err.contains("--to"),
        "{err}"
    );
    assert_eq!(root.current().as_deref(), Some(id_a.as_str()));

    // --to: explicit target; the release left (A) is now the rolled-back one.
    root.ok(&["rollback", "--to", &id_b[..12]]);
    assert_eq!(root.current().as_deref(), Some(id_b.as_str()));
    assert_eq!(root.state_of(&id_b), "current");
    assert_eq!(root.state_of(&id_a), "rolled-back");

    // An explicit activate clears the mark.
    root.ok(&["activate", &id_a]);
    assert_eq!(root.state_of(&id_a), "current");
    assert_eq!(root.state_of(&id_b), "rollback-target");

    // Human list: an aligned table.
    let table = stdout(&root.ok(&["list"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STATE"),
        "{table}"
    );
    let state_col = lines[0].find("STATE").unwrap();
    assert_eq!(&lines[1][state_col..], "rollback-target", "{table}");
    assert_eq!(&lines[2][state_col..], "current", "{table}");

    // status
    let status = root.json(&["status"]);
    assert_eq!(status["current"], id_a.as_str());
    assert_eq!(status["commit"], art.commit_a.as_str());
    assert!(status["since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(status["services"], serde_json::json!([]));
    assert!(stdout(&root.ok(&["status"])).contains(&id_a));

    // Every event has the documented fields.
    for e in root.journal() {
        for key in ["event", "release", "at", "user", "host"] {
            assert!(e[key].is_string(), "{key} missing in {e}");
        }
        assert!(e.get("from").is_some(), "{e}");
    }
}

#[test]
fn two_rollbacks_go_two_steps_back_and_ids_must_be_unique() {
    let art = artifacts();
    let root = Root::new();
    let a = root.install(&art.a);
    let b = root.install(&art.b);
    let c = root.install(&art.c);
    let d = root.install(&art.d);
    for id in [&a, &b, &c] {
        root.ok(&["activate", id]);
    }
    root.ok(&["rollback"]);
    assert_eq!(root.current().as_deref(), Some(b.as_str()));
    assert_eq!(root.state_of(&c), "rolled-back");
    assert_eq!(root.state_of(&a), "rollback-target");
    root.ok(&["rollback"]);
    assert_eq!(root.current().as_deref(), Some(a.as_str()));
    assert_eq!(root.state_of(&b), "rolled-back");
    assert_eq!(root.state_of(&c), "rolled-back");
    assert_eq!(root.state_of(&d), "inactive");
    root.fails(&["rollback"], 1);
    root.ok(&["activate", &c]);
    assert_eq!(root.state_of(&c), "current");
    assert_eq!(root.state_of(&a), "rollback-target");
    assert_eq!(root.state_of(&b), "rolled-back");

    // C and D share the commit prefix "cafe": ambiguous; "nope" is unknown.
    let err = root.fails(&["activate", "cafe"], 1);
    assert!(
        err.contains("ambiguous") && err.contains(&c) && err.contains(&d),
        "{err}"
    );
    let err = root.fails(&["activate", "nope"], 1);
    assert!(
        err.contains("no installed release matches") && err.contains(&a),
        "{err}"
    );
    assert_eq!(root.current().as_deref(), Some(c.as_str()));

    // A rollback target that is gone is refused, nothing changes.
    let gone = root.path.join("releases").join(&a);
    Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(&gone)
        .status()
        .unwrap();
    std::fs::remove_dir_all(&gone).unwrap();
    let err = root.fails(&["rollback"], 1);
    assert!(
        err.contains(&a) && err.contains("no longer installed"),
        "{err}"
    );
    assert_eq!(root.current().as_deref(), Some(c.as_str()));

    // An incomplete release (its manifest gone) is listed as such and refused.
    let broken = root.path.join("releases").join(&d);
    Command::new("chmod")
        .arg("u+w")
        .arg(&broken)
        .status()
        .unwrap();
    std::fs::remove_file(broken.join("release.json")).unwrap();
    assert_eq!(root.state_of(&d), "incomplete");
    let err = root.fails(&["rollback", "--to", &d], 1);
    assert!(err.contains(&d) && err.contains("incomplete"), "{err}");
    let err = root.fails(&["activate", &d], 1);
    assert!(
        err.contains("incomplete") && err.contains("install its artifact again"),
        "{err}"
    );
    assert_eq!(root.current().as_deref(), Some(c.as_str()));
}

#[test]
fn the_installed_release_runs_and_is_read_only() {
    let art = artifacts();
    let root = Root::new();
    let report = root.json(&["deploy", art.a.to_str().unwrap()]);
    let id = report["activate"]["id"].as_str().unwrap().to_string();
    assert_eq!(report["install"]["id"], id.as_str());
    assert_eq!(root.current().as_deref(), Some(id.as_str()));

    let current = root.path.join("current");
    let out = Command::new(current.join("venv/bin/python"))
        .args(["-c", "import django, mysite, mysite.release_info as r; print(django.get_version(), r.RELEASE_ID)"])
        .current_dir(current.join("app"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("5.2.19 {}", &art.commit_a[..12])
    );
    let out = Command::new(current.join("venv/bin/gunicorn"))
        .arg("--version")
        .current_dir(current.join("app"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("gunicorn (version 23.0.0)"),
        "{}",
        stdout(&out)
    );

    let dir = root.path.join("releases").join(&id);
    assert_eq!(mode_of(&dir), 0o555);
    assert_eq!(mode_of(&dir.join("app")), 0o555);
    assert_eq!(mode_of(&dir.join("app/mysite/settings.py")), 0o444);
    assert_eq!(mode_of(&dir.join("app/manage.py")), 0o555);
    assert_eq!(mode_of(&dir.join("release.json")), 0o444);
    assert_eq!(mode_of(&dir.join("venv/bin/gunicorn")), 0o555);
    assert_eq!(
        std::fs::read_link(dir.join("venv/bin/python3")).unwrap(),
        Path::new(&art.base_executable)
    );
    let verify = root.json(&["verify"]);
    assert_eq!(verify["ok"], true, "{verify}");
    assert_eq!(verify["id"], id.as_str());

    let events: Vec<String> = root
        .journal()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, vec!["installed", "activated"]);
    assert_eq!(root.journal()[0]["commit"], art.commit_a.as_str());
    // deploy of the same artifact again: reuse, already current, nothing pruned.
    let again = root.json(&["deploy", art.a.to_str().unwrap()]);
    assert_eq!(again["install"]["already_installed"], true);
    assert_eq!(again["activate"]["already_current"], true);
    assert_eq!(root.journal().len(), 2);
}

#[test]
fn an_observer_never_sees_current_missing_or_incomplete() {
    let art = artifacts();
    let root = Root::new();
    let a = root.install(&art.a);
    let b = root.install(&art.b);
    root.ok(&["activate", &a]);

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let observer = {
        let (stop, reads, base) = (stop.clone(), reads.clone(), root.path.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let current = base.join("current");
            while !stop.load(Ordering::Relaxed) {
                let target = std::fs::read_link(&current).map_err(|e| format!("readlink: {e}"))?;
                let name = target.file_name().unwrap().to_string_lossy().into_owned();
                if target != Path::new("releases").join(&name) {
                    return Err(format!("current -> {}", target.display()));
                }
                let manifest = base.join(&target).join("release.json");
                let meta = std::fs::metadata(&manifest)
                    .map_err(|e| format!("{}: {e}", manifest.display()))?;
                if meta.len() == 0 {
                    return Err(format!("{} is empty", manifest.display()));
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    let started = Instant::now();
    for i in 0..200 {
        let id = if i % 2 == 0 { &b } else { &a };
        root.ok(&["-q", "activate", id]);
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    observer
        .join()
        .unwrap()
        .expect("the observer saw a broken current");
    let reads = reads.load(Ordering::Relaxed);
    eprintln!(
        "200 activations in {:.2}s ({:.1} ms each), {reads} observer reads",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 5.0
    );
    assert!(reads > 200, "the observer barely ran ({reads} reads)");
    assert_eq!(root.current().as_deref(), Some(a.as_str()));
    assert_eq!(root.journal().len(), 2 + 1 + 200);
    assert!(!std::fs::read_dir(&root.path).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("current.tmp-")));
}

/// `install` of `artifact` fails with exit 1, its error contains every
/// needle, and nothing is left in releases/ (nor does current move).
fn refused(root: &Root, artifact: &Path, extra: &[&str], needles: &[&str]) {
    let before = root.release_dirs();
    let current = root.current();
    let mut args = vec!["install", artifact.to_str().unwrap()];
    args.extend_from_slice(extra);
    let err = root.fails(&args, 1);
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
    }
    assert_eq!(root.release_dirs(), before, "install left something behind");
    assert_eq!(root.current(), current);
}

#[test]
fn corrupt_or_unsafe_artifacts_are_refused_and_leave_nothing() {
    let art = artifacts();
    let root = Root::new();
    let dir = tempfile::tempdir().unwrap();
    let a = Members::read(&art.a);
    let variant = |name: &str, edit: &dyn Fn(&mut Members)| {
        let mut m = a.clone();
        edit(&mut m);
        m.write(&dir.path().join(format!("{name}.tar.zst")))
    };

    // A wrong --sha256 (the .sha256 beside it is right).
    refused(
        &root,
        &art.a,
        &["--sha256", &"0".repeat(64)],
        &["sha256", "--sha256", "nothing was installed"],
    );
    // A stale .sha256 beside the artifact.
    let copy = dir.path().join("copy.tar.zst");
    std::fs::copy(&art.a, &copy).unwrap();
    std::fs::write(
        dir.path().join("copy.tar.zst.sha256"),
        format!("{}  copy.tar.zst\n", "1".repeat(64)),
    )
    .unwrap();
    refused(&root, &copy, &[], &["copy.tar.zst.sha256", "1111"]);
    assert!(!root.path.join("releases").read_dir().unwrap().any(|_| true));

    // One flipped byte in one file, manifest kept.
    let flipped = variant("flipped", &|m| {
        m.member("app/mysite/settings.py").data[10] ^= 0x01;
        m.end_soon_after("app/mysite/settings.py");
    });
    refused(
        &root,
        &flipped,
        &[],
        &[
            "app/mysite/settings.py",
            "content differs from the manifest",
        ],
    );

    // An entry that is not in the manifest.
    let bad_file = |path: &str, data: &[u8]| Member {
        header: file_header(0o644),
        path: path.into(),
        link: None,
        data: data.to_vec(),
    };
    let extra = variant("extra", &|m| {
        m.insert_after("app", bad_file("app/evil.py", b"import os\n"));
        m.end_soon_after("app/evil.py");
    });
    refused(&root, &extra, &[], &["app/evil.py", "not in the manifest"]);

    // A manifest entry missing from the archive (and the archive ends early,
    // so many more are missing).
    let missing = variant("missing", &|m| {
        m.0.retain(|x| x.path != "app/manage.py");
        m.end_soon_after("app/mysite/settings.py");
    });
    refused(
        &root,
        &missing,
        &[],
        &[
            "app/manage.py",
            "missing from the archive",
            "missing in all",
        ],
    );

    // The same path twice.
    let twice = variant("twice", &|m| {
        let again = m.member("app/manage.py").clone();
        m.insert_after("app/manage.py", again);
        m.end_soon_after("app/manage.py");
    });
    refused(&root, &twice, &[], &["app/manage.py", "twice"]);

    // A setuid bit.
    let setuid = variant("setuid", &|m| {
        m.member("app/manage.py").header.set_mode(0o4755);
        m.end_soon_after("app/manage.py");
    });
    refused(&root, &setuid, &[], &["app/manage.py", "setuid"]);

    // A size beyond the manifest (content longer than listed).
    let longer = variant("longer", &|m| {
        m.member("app/manage.py").data.push(b'\n');
        m.end_soon_after("app/manage.py");
    });
    refused(&root, &longer, &[], &["app/manage.py", "beyond"]);

    // `..` and an absolute path, written raw.
    let dotdot = variant("dotdot", &|m| {
        m.insert_after("app", bad_file("app/../../../../tmp/evil", b"x"));
        m.end_soon_after("app");
    });
    refused(&root, &dotdot, &[], &["app/../../../../tmp/evil", "`..`"]);
    let absolute = variant("absolute", &|m| {
        m.insert_after("app", bad_file("/tmp/evil", b"x"));
        m.end_soon_after("app");
    });
    refused(&root, &absolute, &[], &["/tmp/evil", "absolute path"]);

    // A device node.
    let device = variant("device", &|m| {
        let mut dev = bad_file("app/dev", b"");
        dev.header.set_entry_type(tar::EntryType::Char);
        m.insert_after("app", dev);
        m.end_soon_after("app");
    });
    refused(&root, &device, &[], &["app/dev", "device"]);

    // A symlink out of the release, listed in a (valid) manifest too.
    let escape = variant("escape", &|m| {
        let mut manifest = m.manifest();
        manifest.files.push(Entry::symlink(
            "app/passwd".into(),
            "../../../etc/passwd".into(),
        ));
        m.set_manifest(manifest);
        let mut link = bad_file("app/passwd", b"");
        link.header.set_entry_type(tar::EntryType::Symlink);
        link.header.set_mode(0o777);
        link.link = Some("../../../etc/passwd".into());
        m.insert_after("app", link);
        m.end_soon_after("app/passwd");
    });
    refused(&root, &escape, &[], &["app/passwd", "leaves the release"]);

    // Not an artifact at all.
    let junk = dir.path().join("junk.tar.zst");
    std::fs::write(&junk, b"hello, this is not zstd").unwrap();
    refused(&root, &junk, &[], &["not a release artifact"]);

    // And the real content still installs into the same root, here from a
    // gzip artifact (the same tar, recompressed) when the tools are around.
    let gz = dir.path().join("mysite.tar.gz");
    let recompressed = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc '{}' | gzip -1 > '{}'",
            art.a.display(),
            gz.display()
        ))
        .status()
        .is_ok_and(|s| s.success());
    let id = root.install(if recompressed { &gz } else { &art.a });
    assert_eq!(root.release_dirs(), vec![id.clone()]);
    root.ok(&["activate", &id]);
    assert_eq!(root.json(&["verify"])["ok"], true);
}

#[test]
fn prune_keeps_the_newest_the_current_the_rollback_target_and_releases_in_use() {
    let art = artifacts();
    let root = Root::new();
    let a = root.install(&art.a);
    let b = root.install(&art.b);
    let c = root.install(&art.c);
    let d = root.install(&art.d);
    root.ok(&["activate", &b]);
    root.ok(&["activate", &a]);
    // current A (oldest), rollback target B, newest D; C is none of these.

    let dry = root.json(&["prune", "--keep", "1", "--dry-run"]);
    assert_eq!(dry["removed"], serde_json::json!([c.clone()]));
    assert_eq!(root.release_dirs().len(), 4);

    // A process working in C keeps it.
    let mut user = Command::new("sleep")
        .arg("60")
        .current_dir(root.path.join("releases").join(&c).join("app"))
        .spawn()
        .unwrap();
    let report = root.json(&["prune", "--keep", "1"]);
    assert_eq!(report["removed"], serde_json::json!([]));
    let kept_c = report["kept"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == c.as_str())
        .unwrap()
        .clone();
    assert!(
        kept_c["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("in use by pid {}", user.id())),
        "{kept_c}"
    );
    user.kill().unwrap();
    user.wait().unwrap();

    let report = root.json(&["prune", "--keep", "1"]);
    assert_eq!(report["removed"], serde_json::json!([c.clone()]));
    assert_eq!(root.release_dirs(), {
        let mut v = vec![a.clone(), b.clone(), d.clone()];
        v.sort();
        v
    });
    let reasons: Vec<(String, String)> = report["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["id"].as_str().unwrap().into(),
                k["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        reasons.contains(&(a.clone(), "current".into())),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&(b.clone(), "rollback target".into())),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&(d.clone(), "one of the 1 newest".into())),
        "{reasons:?}"
    );
    let last = root.journal().last().unwrap().clone();
    assert_eq!(last["event"], "pruned");
    assert_eq!(last["release"], c.as_str());
    // The journal-based rollback still works after pruning.
    root.ok(&["rollback"]);
    assert_eq!(root.current().as_deref(), Some(b.as_str()));

    // keep from release.toml
    // keep from release.toml; A was left by the rollback, so no target remains.
    root.write_config("keep = 0\n");
    let report = root.json(&["prune"]);
    assert_eq!(report["keep"], 0);
    assert_eq!(report["removed"], serde_json::json!([d.clone(), a.clone()]));
    assert_eq!(root.release_dirs(), vec![b.clone()]);
}

#[test]
fn verify_reports_drift_but_not_shared_links_or_a_repointed_interpreter() {
    let art = artifacts();
    let root = Root::new();
    std::fs::create_dir_all(&root.path).unwrap();
    root.write_config("shared = [\"app/media\", \"app/mysite/settings.py\"]\n");
    // The same interpreter under another path: the venv is re-pointed to it.
    let real_python = std::fs::canonicalize(&art.base_executable).unwrap();
    assert_ne!(real_python, Path::new(&art.base_executable));
    let report = root.json(&[
        "install",
        art.a.to_str().unwrap(),
        "--python",
        real_python.to_str().unwrap(),
    ]);
    let id = report["id"].as_str().unwrap().to_string();
    root.ok(&["activate", &id]);
    let dir = root.path.join("releases").join(&id);

    // Shared: relative links into <root>/shared; a file is seeded from the release.
    assert_eq!(
        std::fs::read_link(dir.join("app/media")).unwrap(),
        Path::new("../../../shared/app/media")
    );
    assert!(root.path.join("shared/app/media").is_dir());
    assert!(
        std::fs::read_to_string(root.path.join("shared/app/mysite/settings.py"))
            .unwrap()
            .contains("INSTALLED_APPS")
    );
    assert_eq!(
        std::fs::read_link(dir.join("venv/bin/python3")).unwrap(),
        real_python
    );
    let cfg = std::fs::read_to_string(dir.join("venv/pyvenv.cfg")).unwrap();
    assert!(
        cfg.contains(&format!(
            "home = {}",
            real_python.parent().unwrap().display()
        )),
        "{cfg}"
    );
    let out = Command::new(root.path.join("current/venv/bin/python"))
        .args(["-c", "import django, mysite.settings"])
        .current_dir(root.path.join("current/app"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(root.journal()[0]["python"], real_python.to_str().unwrap());
    let clean = root.json(&["verify", &id]);
    assert_eq!(clean["ok"], true, "{clean}");

    // Now change things behind release's back.
    let manage = dir.join("app/manage.py");
    Command::new("chmod")
        .arg("u+w")
        .arg(&manage)
        .status()
        .unwrap();
    std::fs::write(&manage, "print('changed')\n").unwrap();
    let static_dir = dir.join("app/mysite");
    Command::new("chmod")
        .arg("u+w")
        .arg(&static_dir)
        .status()
        .unwrap();
    std::fs::remove_file(static_dir.join("urls.py")).unwrap();
    std::fs::write(static_dir.join("backdoor.py"), "x = 1\n").unwrap();

    let out = root.run(&["--json", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let problems: Vec<(String, String)> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().into(),
                p["problem"].as_str().unwrap().into(),
            )
        })
        .collect();
    let has = |path: &str, word: &str| {
        problems
            .iter()
            .any(|(p, what)| p == path && what.contains(word))
    };
    assert!(has("app/manage.py", "content changed"), "{problems:?}");
    assert!(
        has("app/manage.py", "mode 0755, expected 0555"),
        "{problems:?}"
    );
    assert!(
        has("app/mysite", "mode 0755, expected 0555"),
        "{problems:?}"
    );
    assert!(has("app/mysite/urls.py", "missing"), "{problems:?}");
    assert!(has("app/mysite/backdoor.py", "extra file"), "{problems:?}");
    assert_eq!(problems.len(), 5, "{problems:?}");
    let human = root.run(&["verify"]);
    assert!(
        stdout(&human).contains("app/manage.py: content changed"),
        "{}",
        stdout(&human)
    );
    assert!(
        stderr(&human).contains("differs from its manifest"),
        "{}",
        stderr(&human)
    );

    // A drifted copy is not "already installed": a fresh copy is installed.
    let fresh = root.json(&[
        "install",
        art.a.to_str().unwrap(),
        "--python",
        real_python.to_str().unwrap(),
    ]);
    assert_eq!(fresh["already_installed"], false);
    assert_ne!(fresh["id"], id.as_str());
}

#[test]
fn the_interpreter_is_checked_and_can_be_replaced_or_rebuilt() {
    let art = artifacts();
    let root = Root::new();
    let dir = tempfile::tempdir().unwrap();
    // B, but built (so it says) with an interpreter this host does not have.
    let mut m = Members::read(&art.b);
    let mut manifest = m.manifest();
    let gone = "/opt/nowhere/bin/python3";
    manifest.python.base_executable = gone.into();
    for e in manifest.files.iter_mut() {
        if e.target.as_deref() == Some(art.base_executable.as_str()) {
            e.target = Some(gone.into());
        }
    }
    m.set_manifest(manifest);
    for member in m.0.iter_mut() {
        if member.link.as_deref() == Some(art.base_executable.as_str()) {
            member.link = Some(gone.into());
        }
    }
    let elsewhere = m.write(&dir.path().join("elsewhere.tar.zst"));
    let err = root.fails(&["install", elsewhere.to_str().unwrap()], 1);
    for needle in [
        gone,
        "does not exist",
        "cpython 3.11",
        "--python PATH",
        "--rebuild-venv",
    ] {
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
    }
    assert!(root.release_dirs().is_empty());

    // A mismatching --python is refused.
    let others = ["python3.13", "python3.12", "python3.10", "python3.9"];
    let runs = |p: &&&str| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Some(other) = others.iter().find(runs) {
        let err = root.fails(
            &["install", elsewhere.to_str().unwrap(), "--python", other],
            1,
        );
        assert!(err.contains("needs cpython 3.11"), "{err}");
    }

    // --rebuild-venv: a new venv from the release's wheels, offline, relocatable.
    let report = root.json(&[
        "install",
        elsewhere.to_str().unwrap(),
        "--rebuild-venv",
        "--python",
        &art.base_executable,
    ]);
    let id = report["id"].as_str().unwrap().to_string();
    root.ok(&["activate", &id]);
    let current = root.path.join("current");
    let out = Command::new(current.join("venv/bin/python"))
        .args([
            "-c",
            "import sys, django, mysite, celery; print(sys.prefix)",
        ])
        .current_dir(current.join("app"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), current.join("venv").to_str().unwrap());
    let out = Command::new(current.join("venv/bin/gunicorn"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("23.0.0"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let head = std::fs::read_to_string(current.join("venv/bin/gunicorn")).unwrap();
    assert!(head.starts_with("#!/bin/sh\n"), "not relocatable: {head}");
    assert_eq!(root.json(&["verify"])["ok"], true);
    let installed = root.journal()[0].clone();
    assert_eq!(installed["venv_rebuilt"], true, "{installed}");
}

#[test]
fn the_check_hook_runs_in_the_new_release_and_stops_a_bad_one() {
    let art = artifacts();
    let root = Root::new();
    let a = root.install(&art.a);
    let b = root.install(&art.b);
    root.ok(&["activate", &a]);
    root.write_config(
        "[hooks]\ncheck = \"echo checking $RELEASE_ID in $(pwd); python -c 'import mysite.wsgi' && test \\\"$VIRTUAL_ENV\\\" = \\\"$RELEASE_DIR/venv\\\" && exit 7\"\n",
    );
    let err = root.fails(&["activate", &b], 1);
    // The hook runs in the release root (app/ is on PYTHONPATH).
    let b_dir = root.path.join("releases").join(&b);
    assert!(
        err.contains(&format!("checking {b} in {}", b_dir.display())),
        "{err}"
    );
    assert!(
        err.contains("exit status: 7") && err.contains("current was not touched"),
        "{err}"
    );
    assert_eq!(root.current().as_deref(), Some(a.as_str()));
    let last = root.journal().last().unwrap().clone();
    assert_eq!(last["event"], "failed");
    assert_eq!(last["release"], b.as_str());
    assert_eq!(last["step"], "check");
    assert!(
        last["error"].as_str().unwrap().contains("check hook"),
        "{last}"
    );
    assert_eq!(root.state_of(&b), "inactive");

    root.write_config("[hooks]\ncheck = \"python -c 'import mysite.wsgi, mysite.extra'\"\n");
    root.ok(&["activate", &b]);
    assert_eq!(root.current().as_deref(), Some(b.as_str()));
    let err = root.fails(&["activate", &a], 1);
    assert!(err.contains("No module named 'mysite.extra'"), "{err}");
    assert_eq!(root.current().as_deref(), Some(b.as_str()));

    root.write_config("kep = 3\n");
    let err = root.fails(&["activate", &a], 1);
    assert!(
        err.contains("release.toml") && err.contains("unknown field"),
        "{err}"
    );
}

#[test]
fn concurrent_commands_wait_or_exit_4_and_the_journal_stays_whole() {
    let art = artifacts();
    let root = Root::new();
    let a = root.install(&art.a);
    let b = root.install(&art.b);
    root.ok(&["activate", &a]);
    // A slow check keeps the first activation holding the lock.
    root.write_config("[hooks]\ncheck = \"sleep 1.5\"\n");
    let mut slow = root
        .cmd(&["activate", &b])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = root.path.join(".lock");
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&lock).is_ok_and(|t| t.trim() == slow.id().to_string())
    });
    let err = root.fails(&["activate", &a], 4);
    assert!(
        err.contains(&format!("pid {}", slow.id())) && err.contains("--wait"),
        "{err}"
    );
    assert!(err.contains(".lock"), "{err}");
    let err = root.fails(&["--wait", "0.2", "rollback"], 4);
    assert!(err.contains("lock"), "{err}");
    // Read-only commands take no lock.
    root.ok(&["list"]);
    root.ok(&["status"]);
    // --wait: runs once the first one is done.
    let waited = root.ok(&["--wait", "30", "activate", &a]);
    assert!(slow.wait().unwrap().success());
    assert!(
        stderr(&waited).contains("waiting for the lock"),
        "{}",
        stderr(&waited)
    );
    assert_eq!(root.current().as_deref(), Some(a.as_str()));

    // Many at once, all waiting: every one succeeds, every line parses.
    root.write_config("");
    let children: Vec<_> = (0..12)
        .map(|i| {
            let id = if i % 2 == 0 { &b } else { &a };
            root.cmd(&["-q", "--wait", "60", "activate", id])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let journal = root.journal();
    let kinds = |k: &str| journal.iter().filter(|e| e["event"] == k).count();
    assert_eq!(kinds("installed"), 2);
    assert_eq!(kinds("failed"), 0);
    assert!(kinds("activated") >= 3);
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap(),
        "",
        "the pid stays after unlock"
    );
}

fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < until, "timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_torn_journal_line_and_leftovers_are_repaired_by_the_next_writer() {
    let art = artifacts();
    let root = Root::new();
    let a = root.install(&art.a);
    root.ok(&["activate", &a]);
    // An install killed mid-way leaves its incoming directory and nothing else.
    let mut killed = root
        .cmd(&["install", art.c.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let releases = root.path.join("releases");
    wait_until(Duration::from_secs(60), || {
        std::fs::read_dir(&releases).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".incoming-")
        })
    });
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert_eq!(root.release_dirs().len(), 2, "{:?}", root.release_dirs());
    assert_eq!(root.current().as_deref(), Some(a.as_str()));
    assert_eq!(root.state_of(&a), "current");
    // The next mutating command removes it (and installs cleanly).
    let b = root.install(&art.b);
    assert!(
        !root.release_dirs().iter().any(|d| d.starts_with('.')),
        "{:?}",
        root.release_dirs()
    );

    // A crash mid-append, a half-unpacked install, a half-made switch.
    let journal = root.path.join("history.jsonl");
    let whole = std::fs::read_to_string(&journal).unwrap();
    std::fs::write(&journal, format!("{whole}{{\"event\":\"activated\",\"rele")).unwrap();
    let incoming = root.path.join("releases/.incoming-dead/app/x");
    std::fs::create_dir_all(&incoming).unwrap();
    Command::new("chmod")
        .args(["-R", "a-w"])
        .arg(root.path.join("releases/.incoming-dead"))
        .status()
        .unwrap();
    std::os::unix::fs::symlink(format!("releases/{b}"), root.path.join("current.tmp-dead"))
        .unwrap();

    // Readers cope.
    assert_eq!(root.state_of(&a), "current");
    // The next writer cuts the torn line and cleans up.
    root.ok(&["activate", &b]);
    let events = root.journal();
    assert_eq!(events.len(), 4);
    assert_eq!(events[3]["event"], "activated");
    assert_eq!(events[3]["from"], a.as_str());
    assert!(!root.path.join("releases/.incoming-dead").exists());
    assert!(std::fs::symlink_metadata(root.path.join("current.tmp-dead")).is_err());
    let mut dirs = vec![a.clone(), b.clone()];
    dirs.sort();
    assert_eq!(root.release_dirs(), dirs);
}

#[test]
fn unsafe_roots_are_refused_with_the_fix() {
    let art = artifacts();
    let out = release().args(["list"]).output().unwrap();
    let err = fails_with(&out, 2);
    assert!(
        err.contains("--root") && err.contains("RELEASE_ROOT"),
        "{err}"
    );

    let root = Root::new();
    std::fs::create_dir_all(&root.path).unwrap();
    Command::new("chmod")
        .arg("0777")
        .arg(&root.path)
        .status()
        .unwrap();
    let err = root.fails(&["install", art.a.to_str().unwrap()], 1);
    assert!(
        err.contains("writable by group or others") && err.contains("chmod go-w"),
        "{err}"
    );
    Command::new("chmod")
        .arg("0755")
        .arg(&root.path)
        .status()
        .unwrap();

    let link = root.path.parent().unwrap().join("link");
    std::os::unix::fs::symlink(&root.path, &link).unwrap();
    let out = release()
        .arg("--root")
        .arg(&link)
        .arg("list")
        .output()
        .unwrap();
    let err = fails_with(&out, 1);
    assert!(
        err.contains("is a symlink") && err.contains(&format!("--root {}", root.path.display())),
        "{err}"
    );

    std::fs::create_dir_all(root.path.join("current")).unwrap();
    let err = root.fails(&["status"], 1);
    assert!(err.contains("not a symlink"), "{err}");
    std::fs::remove_dir(root.path.join("current")).unwrap();

    // RELEASE_ROOT works like --root.
    let out = release()
        .env("RELEASE_ROOT", &root.path)
        .args(["--json", "list"])
        .output()
        .unwrap();
    assert_eq!(json_ok(&out), serde_json::json!([]));
}

/// The first member of an artifact (its manifest), without reading the rest.
#[test]
fn list_and_status_stay_fast_with_500_releases() {
    let art = artifacts();
    let root = Root::new();
    let manifest = manifest_bytes(&art.a);
    let commit12 = &art.commit_a[..12];
    let releases = root.path.join("releases");
    std::fs::create_dir_all(&releases).unwrap();
    let mut journal = String::new();
    let start = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
    let mut ids = Vec::new();
    for i in 0..500 {
        let t = start + chrono::Duration::minutes(i);
        let id = format!("{commit12}-{}", t.format("%Y%m%dT%H%M%SZ"));
        let dir = releases.join(&id);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("release.json"), &manifest).unwrap();
        let at = t.format("%Y-%m-%dT%H:%M:%SZ");
        journal.push_str(&format!(
            "{{\"event\":\"installed\",\"release\":\"{id}\",\"from\":null,\"at\":\"{at}\",\"user\":\"ci\",\"host\":\"h\"}}\n"
        ));
        journal.push_str(&format!(
            "{{\"event\":\"activated\",\"release\":\"{id}\",\"from\":{},\"at\":\"{at}\",\"user\":\"ci\",\"host\":\"h\"}}\n",
            ids.last().map_or("null".to_string(), |p| format!("\"{p}\""))
        ));
        ids.push(id);
    }
    std::fs::write(root.path.join("history.jsonl"), journal).unwrap();
    std::os::unix::fs::symlink(format!("releases/{}", ids[499]), root.path.join("current"))
        .unwrap();

    let started = Instant::now();
    let rows = root.json(&["list"]);
    let list_time = started.elapsed();
    let started = Instant::now();
    let status = root.json(&["status"]);
    let status_time = started.elapsed();
    eprintln!("500 releases: list {list_time:?}, status {status_time:?}");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 500);
    assert_eq!(rows[0]["id"], ids[499].as_str());
    assert_eq!(rows[0]["state"], "current");
    assert_eq!(rows[1]["state"], "rollback-target");
    assert_eq!(rows[2]["state"], "inactive");
    assert_eq!(rows[499]["bytes"], rows[0]["bytes"]);
    assert_eq!(status["current"], ids[499].as_str());
    // Generous for a debug build on a busy machine; it reads 500 small
    // prefixes and one journal, never a tree.
    assert!(
        list_time < Duration::from_secs(3),
        "list took {list_time:?}"
    );
}

/// Disk blocks (bytes) used by `dir` beyond what `du` already counted for
/// `before` (du counts a hard-linked inode once, at its first path).
fn du_beyond(before: &Path, dir: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-s", "-B1"])
        .arg(before)
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "du failed: {}", stderr(&out));
    let text = stdout(&out);
    let last = text.lines().last().unwrap();
    last.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn an_install_next_to_the_live_release_links_its_unchanged_files() {
    use std::os::unix::fs::MetadataExt;
    let art = artifacts();
    let root = Root::new();
    let a = root.install(&art.a);
    root.ok(&["activate", &a]);
    let (_, manifest) = release::archive::read_manifest(&art.b).unwrap();
    let a_dir = root.path.join("releases").join(&a);

    // A file of the live release changed by hand (its mode here) is not
    // linked from: the new release gets its own, correct copy.
    let touched = "venv/pyvenv.cfg";
    std::fs::set_permissions(
        a_dir.join(touched),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();

    let report = root.json(&["install", art.b.to_str().unwrap()]);
    let b = report["id"].as_str().unwrap().to_string();
    let b_dir = root.path.join("releases").join(&b);
    assert_eq!(report["linked_from"], a.as_str(), "{report}");
    let files = manifest
        .files
        .iter()
        .filter(|e| e.kind == release::manifest::EntryType::File)
        .count() as u64;
    let linked = report["linked_files"].as_u64().unwrap();
    // B adds one module (and its pyc) to A and changes nothing else it
    // ships, so all but a handful of files are links.
    assert!(
        linked + 8 >= files && linked < files,
        "{linked} of {files} files linked"
    );

    let ino = |dir: &Path, path: &str| std::fs::symlink_metadata(dir.join(path)).unwrap().ino();
    let first = |prefix: &str| {
        manifest
            .files
            .iter()
            .find(|e| e.kind == release::manifest::EntryType::File && e.path.starts_with(prefix))
            .unwrap()
            .path
            .clone()
    };
    for path in [first("venv/lib/"), first("wheels/"), first("app/")] {
        assert_eq!(
            ino(&a_dir, &path),
            ino(&b_dir, &path),
            "{path} is not a link"
        );
    }
    assert_ne!(ino(&a_dir, touched), ino(&b_dir, touched));
    assert!(b_dir.join("app/mysite/extra.py").is_file());
    assert_eq!(
        std::fs::symlink_metadata(b_dir.join("app/mysite/extra.py"))
            .unwrap()
            .nlink(),
        1
    );

    // The new release costs the disk only what changed (directories and a
    // few small files), not the 60+ MB of the venv and the wheels.
    let a_bytes = du_beyond(Path::new("/dev/null"), &a_dir);
    let b_extra = du_beyond(&a_dir, &b_dir);
    assert!(
        b_extra * 5 < a_bytes,
        "release B uses {b_extra} bytes beyond A's {a_bytes}"
    );
    assert_eq!(root.json(&["verify", &b])["ok"], true);

    // Links survive the release they came from: prune A away, B still
    // verifies (its files keep their data), and is read-only as ever.
    std::fs::set_permissions(
        a_dir.join(touched),
        std::os::unix::fs::PermissionsExt::from_mode(0o444),
    )
    .unwrap();
    root.ok(&["activate", &b]);
    let c = root.install(&art.c);
    root.ok(&["activate", &c]);
    let pruned = root.json(&["prune", "--keep", "1"]);
    assert!(
        pruned.to_string().contains(&a),
        "prune did not remove {a}: {pruned}"
    );
    assert!(!a_dir.exists());
    assert_eq!(root.json(&["verify", &b])["ok"], true);
    assert_eq!(root.json(&["verify", &c])["ok"], true);
    assert_eq!(mode_of(&b_dir.join(first("venv/lib/"))) & 0o222, 0);
}

/// The paths `strace -y` shows `syscall` reaching in `log` before the first
/// line on which `until` is true, and that line.
fn traced_before<'a>(
    log: &'a str,
    syscall: &str,
    until: impl Fn(&str) -> bool,
) -> (Vec<&'a str>, &'a str) {
    let mut paths = Vec::new();
    for line in log.lines() {
        if until(line) {
            return (paths, line);
        }
        let call = format!("{syscall}(");
        if let Some(at) = line.find(&call) {
            let rest = &line[at + call.len()..];
            // `fsync(4</path>) = 0`, or `fsync(4</path> <unfinished ...>`
            // when another thread's call comes in between.
            if let Some(open) = rest.find('<') {
                let path = &rest[open + 1..];
                paths.push(&path[..path.find('>').unwrap_or(path.len())]);
            }
        }
    }
    panic!("no line ends the trace:\n{log}");
}

/// Both ways of making a release durable (docs/host.md, "Durability"),
/// forced with RELEASE_DURABILITY and watched with strace: before the
/// rename that makes the release visible, either one `syncfs` ran, or
/// `fsync` reached every file and directory of the tree and the shared
/// target the install seeded, with its parent. A value it does not take is
/// refused before anything is installed.
#[test]
fn an_install_is_durable_before_its_rename_with_either_strategy() {
    let art = artifacts();
    for strategy in ["fsync", "syncfs"] {
        let root = Root::new();
        std::fs::create_dir_all(&root.path).unwrap();
        root.write_config("shared = [\"app/media\"]\n");
        let log_path = root.path.with_file_name(format!("strace-{strategy}.log"));
        let out = Command::new("strace")
            .args([
                "-f",
                "-qq",
                "-y",
                "-e",
                "trace=fsync,syncfs,rename,renameat,renameat2",
                "-o",
            ])
            .arg(&log_path)
            .arg(BIN)
            .arg("--root")
            .arg(&root.path)
            .args(["-v", "install"])
            .arg(&art.a)
            .env("RELEASE_DURABILITY", strategy)
            .env_remove("RELEASE_ROOT")
            .stdin(Stdio::null())
            .output()
            .expect("strace runs (scripts/test-deps installs it)");
        assert!(
            out.status.success(),
            "install with {strategy}: {}",
            stderr(&out)
        );
        let said = stderr(&out);
        let expected = match strategy {
            "fsync" => "making it durable: an fsync of each file and directory (RELEASE_DURABILITY asks for it)",
            _ => "making it durable: one syncfs of the filesystem (RELEASE_DURABILITY asks for it)",
        };
        assert!(said.contains(expected), "{strategy}: {said}");
        let id = root.releases().pop().unwrap();
        let releases = root.path.join("releases");
        let log = std::fs::read_to_string(&log_path).unwrap();
        let (synced, rename) = traced_before(&log, "syncfs", |l| {
            l.contains("rename") && l.contains("/.incoming-") && l.contains(&id)
        });
        let (fsynced, _) = traced_before(&log, "fsync", |l| l == rename);
        let incoming = rename
            .split('"')
            .nth(1)
            .expect("the rename names .incoming-*")
            .to_string();
        if strategy == "syncfs" {
            assert_eq!(synced.len(), 1, "one syncfs before the rename:\n{log}");
            continue;
        }
        assert!(synced.is_empty(), "syncfs with {strategy}:\n{log}");
        let fsynced: std::collections::HashSet<&str> = fsynced.into_iter().collect();
        let mut missing = Vec::new();
        let mut seen = 0;
        for item in walkdir::WalkDir::new(releases.join(&id)) {
            let item = item.unwrap();
            if item.file_type().is_symlink() {
                continue;
            }
            seen += 1;
            let rel = item.path().strip_prefix(releases.join(&id)).unwrap();
            let then = Path::new(&incoming).join(rel);
            let then = then.to_str().unwrap().trim_end_matches('/');
            if !fsynced.contains(then) {
                missing.push(then.to_string());
            }
        }
        for shared in ["shared/app/media", "shared/app"] {
            let path = root.path.join(shared);
            if !fsynced.contains(path.to_str().unwrap()) {
                missing.push(path.display().to_string());
            }
        }
        assert!(seen > 1000, "only {seen} entries in release {id}");
        assert!(
            missing.is_empty(),
            "not fsynced before the rename ({} of {seen}): {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }

    let root = Root::new();
    let mut cmd = root.cmd(&["install", art.a.to_str().unwrap()]);
    let out = cmd.env("RELEASE_DURABILITY", "sometimes").output().unwrap();
    let err = fails_with(&out, 2);
    assert!(
        err.contains("RELEASE_DURABILITY=sometimes")
            && err.contains("auto (the default), syncfs or fsync"),
        "{err}"
    );
    assert!(root.releases().is_empty(), "{:?}", root.releases());
}

/// A fresh ext4 filesystem on a loop device (an image in the temporary
/// directory), unmounted and removed on drop; `None` when not root.
struct LoopExt4 {
    dir: tempfile::TempDir,
}

impl LoopExt4 {
    fn mount() -> Option<LoopExt4> {
        if !running_as_root("mounting an ext4 loop filesystem (the durability choice)") {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("release-ext4-")
            .tempdir()
            .unwrap();
        let image = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        for cmd in [
            Command::new("truncate").arg("-s").arg("1G").arg(&image),
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "nodiscard"])
                .arg(&image),
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mnt),
        ] {
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
        }
        Some(LoopExt4 { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        unmount(&self.path());
    }
}

/// The first number in `text` after `after`.
fn mib_after(text: &str, after: &str) -> u64 {
    let at = text
        .find(after)
        .unwrap_or_else(|| panic!("no {after:?} in {text}"));
    text[at + after.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .unwrap()
        .parse()
        .unwrap()
}

/// On ext4, install chooses by the data of its own filesystem still
/// waiting to be written (delayed allocation): with 300 MB another process
/// wrote there and the kernel has not written back, it fsyncs each file
/// (a `syncfs` would wait for those 300 MB); once they are on disk, one
/// `syncfs`. Both releases verify.
#[test]
fn on_a_busy_ext4_filesystem_install_fsyncs_each_file_instead_of_syncfs() {
    let Some(fs) = LoopExt4::mount() else {
        return;
    };
    let art = artifacts();
    let root = Root::at(fs.path().join("root"));
    let writer = fs.path().join("writer.dat");
    let install_v = |root: &Root| {
        let out = root.ok(&["-v", "install", art.a.to_str().unwrap()]);
        let said = stderr(&out);
        let line = said
            .lines()
            .find(|l| l.contains("making it durable: "))
            .unwrap_or_else(|| panic!("no durability line: {said}"))
            .to_string();
        assert!(line.contains(" MiB written to loop"), "{line}");
        line
    };
    // The kernel may write the 300 MB back before the install looks (its
    // flusher runs when the whole machine holds much dirty data): then the
    // install sees less and may rightly take syncfs. It must see them once.
    let mut busy = None;
    for attempt in 0..3 {
        let out = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", writer.display()))
            .args(["bs=1M", "count=300", "status=none"])
            .output()
            .unwrap();
        assert!(out.status.success(), "dd: {}", stderr(&out));
        let r = Root::at(fs.path().join(format!("busy{attempt}")));
        let line = install_v(&r);
        let _ = Command::new("sync").arg("-f").arg(&writer).status();
        std::fs::remove_file(&writer).unwrap();
        if mib_after(&line, "(") >= 250 {
            busy = Some((r, line));
            break;
        }
    }
    let (busy_root, line) =
        busy.expect("the writer's 300 MB were written back before every install looked");
    assert!(
        line.contains("an fsync of each file and directory"),
        "{line}"
    );
    let id = busy_root.releases().pop().unwrap();
    assert_eq!(busy_root.json(&["verify", &id])["ok"], true);

    let _ = Command::new("sync").arg("-f").arg(fs.path()).status();
    let line = install_v(&root);
    assert!(line.contains("one syncfs of the filesystem"), "{line}");
    assert!(mib_after(&line, "(") < 100, "{line}");
    let id = root.releases().pop().unwrap();
    assert_eq!(root.json(&["verify", &id])["ok"], true);
}
