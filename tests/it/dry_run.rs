//! `--dry-run` on install, activate, deploy and rollback: each says what the
//! command would do (JSON pinned here and in docs/host.md), changes nothing
//! and takes no lock.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::common::*;

fn keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

const INSTALL_PLAN: &[&str] = &[
    "dry_run",
    "id",
    "commit",
    "files",
    "bytes",
    "already_installed",
    "linked_from",
    "linked_files",
    "linked_bytes",
    "need_bytes",
];
const SWITCH_PLAN: &[&str] = &[
    "dry_run",
    "id",
    "commit",
    "from",
    "event",
    "already_current",
];

/// Everything under the root a command could change: each path with its
/// file content or link target, and the journal.
fn state(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let ty = e.file_type().unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if ty.is_symlink() {
                out.push((
                    rel,
                    format!("-> {}", std::fs::read_link(&path).unwrap().display()),
                ));
            } else if ty.is_dir() {
                out.push((rel.clone(), "dir".into()));
                // A release tree is read-only: its top level is enough.
                if !rel.starts_with("releases") || rel.components().count() < 2 {
                    dirs.push(path);
                }
            } else {
                out.push((rel, std::fs::read_to_string(&path).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn dry_runs_say_what_would_happen_change_nothing_and_take_no_lock() {
    let app = App::new();
    let dist = app.tmp.path().join("dist");
    let a = app.build_ok(&dist, &[]);
    app.write("mysite/extra.py", "X = 2\n");
    app.commit("release B");
    let b = app.build_ok(&dist, &[]);
    let root = app.tmp.path().join("srv/mysite");
    let run = |args: &[&str]| -> Output {
        release()
            .arg("--root")
            .arg(&root)
            .arg("--json")
            .args(args)
            .output()
            .unwrap()
    };
    let a_s = a.to_str().unwrap();
    let b_s = b.to_str().unwrap();

    // A root that does not exist yet: the plan, and still no root.
    let plan = json_ok(&run(&["install", "--dry-run", a_s]));
    assert_eq!(keys(&plan), INSTALL_PLAN);
    assert_eq!(plan["already_installed"], false);
    assert!(plan["id"].is_null() && plan["need_bytes"].as_u64().unwrap() > 0);
    let plan = json_ok(&run(&["deploy", "--dry-run", a_s]));
    assert_eq!(keys(&plan), ["install", "activate", "prune"]);
    assert_eq!(keys(&plan["activate"]), SWITCH_PLAN);
    assert!(plan["prune"].is_null() && plan["activate"]["from"].is_null());
    assert!(!root.exists(), "a dry run created the root");

    let a_id = json_ok(&run(&["deploy", a_s]))["activate"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b_id = json_ok(&run(&["install", b_s]))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = state(&root);

    // Another command holds the lock for the whole time: dry runs do not
    // wait for it or fail with exit 4.
    let mut holder = Command::new("flock")
        .arg(root.join(".lock"))
        .args(["sleep", "60"])
        .process_group(0)
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(run(&["activate", b_id.as_str()]).status.code(), Some(4));

    let plan = json_ok(&run(&["install", "--dry-run", b_s]));
    assert_eq!(keys(&plan), INSTALL_PLAN);
    assert_eq!(plan["already_installed"], true);
    assert_eq!(plan["id"], b_id.as_str());
    assert!(plan["need_bytes"].is_null());

    let plan = json_ok(&run(&["activate", "--dry-run", &b_id[..12]]));
    assert_eq!(keys(&plan), SWITCH_PLAN);
    assert_eq!(
        (
            &plan["id"],
            &plan["from"],
            &plan["event"],
            &plan["already_current"]
        ),
        (
            &Value::from(b_id.as_str()),
            &Value::from(a_id.as_str()),
            &Value::from("activated"),
            &Value::from(false)
        )
    );
    let plan = json_ok(&run(&["activate", "--dry-run", &a_id]));
    assert_eq!(plan["already_current"], true);

    let plan = json_ok(&run(&["deploy", "--dry-run", b_s]));
    assert_eq!(plan["install"]["id"], b_id.as_str());
    assert_eq!(plan["activate"]["id"], b_id.as_str());
    assert_eq!(plan["activate"]["from"], a_id.as_str());
    assert_eq!(keys(&plan["prune"]), ["keep", "dry_run", "removed", "kept"]);

    // Nothing to roll back to from the first release: refused, as for real.
    let out = run(&["rollback", "--dry-run"]);
    let err = fails_with(&out, 1);
    assert!(err.contains("nothing to roll back to"), "{err}");
    let plan = json_ok(&run(&["rollback", "--dry-run", "--to", &b_id]));
    assert_eq!(keys(&plan), SWITCH_PLAN);
    assert_eq!(plan["event"], "rolled_back");
    assert_eq!(plan["id"], b_id.as_str());

    // A bad artifact is refused by a dry run as by the install.
    let bad = app.tmp.path().join("bad.tar.zst");
    std::fs::copy(&b, &bad).unwrap();
    std::fs::write(
        app.tmp.path().join("bad.tar.zst.sha256"),
        format!("{}  bad.tar.zst\n", "0".repeat(64)),
    )
    .unwrap();
    let err = fails_with(&run(&["install", "--dry-run", bad.to_str().unwrap()]), 1);
    assert!(err.contains("sha256 is"), "{err}");

    // flock and the sleep holding the lock: the whole group.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", holder.id())])
        .status();
    let _ = holder.wait();
    assert_eq!(state(&root), before, "a dry run changed the root");

    // A required service that is down: activate --dry-run stops where the
    // activation stops, with its error (exit 1), and changes nothing.
    std::fs::write(
        root.join("release.toml"),
        format!(
            "[[service]]\nname = \"web\"\npidfile = \"{}\"\nreload = \"hup\"\n",
            app.tmp.path().join("gone.pid").display()
        ),
    )
    .unwrap();
    let before = state(&root);
    let err = fails_with(&run(&["activate", "--dry-run", &b_id]), 1);
    assert!(err.contains("gone.pid"), "{err}");
    assert_eq!(state(&root), before);
    let real = fails_with(&run(&["activate", &b_id]), 1);
    assert_eq!(
        err, real,
        "the dry run's refusal differs from the activation's"
    );
}
