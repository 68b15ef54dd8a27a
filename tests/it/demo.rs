//! The README's first command, `scripts/demo`, end to end and non-interactive:
//! it must finish and leave no process behind.

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// Pids of live processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        });
        if cmd.contains(needle) && !zombie {
            found.push((pid, cmd));
        }
    }
    found
}

#[test]
fn the_demo_runs_end_to_end_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = tmp.path().join("demo");
    let out = Command::new(Path::new(REPO).join("scripts/demo"))
        .env("RELEASE_BIN", BIN)
        .env("DEMO_DIR", &demo)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "demo failed:\n{text}");
    for step in [
        "release build (first commit)",
        "release deploy",
        "starting gunicorn on http://127.0.0.1:",
        "activate the second release",
        "release rollback",
        "the site serves again",
        "demo finished",
    ] {
        assert!(text.contains(step), "missing step {step:?}:\n{text}");
    }
    // list and status were shown between the steps.
    assert!(text.matches("rollback-target").count() >= 1, "{text}");
    assert!(text.contains("service   web (gunicorn-upgrade)"), "{text}");
    // Everything the demo started is gone.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let left = processes_mentioning(&demo.display().to_string());
    assert!(left.is_empty(), "the demo left processes running: {left:?}");
}
