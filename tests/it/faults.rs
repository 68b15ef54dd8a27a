//! Faults, with the real binary on real roots:
//!
//! * a command killed with SIGKILL at every crash point (src/crashpoint.rs,
//!   needs `--features crashpoints`, which `scripts/test` turns on): what it
//!   leaves must be a root whose `current` verifies, whose journal reads, and
//!   that the same command, run again, repairs and finishes;
//! * a full disk: a real tmpfs (root only) that fills up in the middle of an
//!   install, and one too small from the start;
//! * eight switches racing for one root, with and without `--wait`.

#[cfg(feature = "crashpoints")]
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

use crate::common::root::Root;
use crate::common::*;
use crate::host::artifacts;

/// What only the fault tests ask of a root.
impl Root {
    /// `list --json`, checked against `current`: exactly the link's release
    /// is listed as current, and every release directory is listed.
    fn list_consistent(&self) -> Vec<Value> {
        let rows = self.json(&["list"]);
        let rows = rows.as_array().unwrap().clone();
        let current: Vec<&str> = rows
            .iter()
            .filter(|r| r["state"] == "current")
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            current,
            self.current().into_iter().collect::<Vec<_>>(),
            "list --json disagrees with current: {rows:?}"
        );
        let mut listed: Vec<String> = rows
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        listed.sort();
        assert_eq!(listed, self.releases());
        rows
    }
}

#[cfg(feature = "crashpoints")]
impl Root {
    /// The release the journal's last switch made live.
    fn journal_live(&self) -> Option<String> {
        self.journal();
        self.journal_live_of(&self.journal_text())
    }

    /// The same, from the whole lines of `text`.
    fn journal_live_of(&self, text: &str) -> Option<String> {
        let mut live = None;
        for line in text.lines() {
            let e: Value = serde_json::from_str(line).unwrap();
            match e["event"].as_str().unwrap() {
                "activated" | "rolled_back" => live = e["release"].as_str().map(String::from),
                "failed" if e["reverted"] == true => live = e["from"].as_str().map(String::from),
                _ => {}
            }
        }
        live
    }
}

#[cfg(feature = "crashpoints")]
fn short(id: &str, a: &str, b: &str) -> String {
    if id == a {
        "A".into()
    } else if id == b {
        "B".into()
    } else {
        id.into()
    }
}

// ---------------------------------------------------------------------------
// Crash points

#[cfg(feature = "crashpoints")]
struct Row {
    point: &'static str,
    command: &'static str,
    found: String,
    outcome: String,
}

/// Kill `command` at `point` on a root where A is installed and live (and,
/// for activate / rollback, B is installed; for rollback, B is live after
/// A); check what it left; run it again; check that everything is repaired.
#[cfg(feature = "crashpoints")]
fn crash_at(point: &'static str, command: &'static str) -> Row {
    let art = artifacts();
    let started = Instant::now();
    let root = Root::in_memory();
    let a = root.install(&art.a);
    // Every step runs: a check hook, a shared path (seeded by the first install).
    std::fs::write(
        root.path.join("release.toml"),
        "shared = [\"app/media\"]\n[hooks]\ncheck = \"test -f release.json\"\n",
    )
    .unwrap();
    root.json(&["activate", &a]);
    let mut b = None;
    if command != "install" {
        b = Some(root.install(&art.b));
    }
    if command == "rollback" {
        root.json(&["activate", b.as_deref().unwrap()]);
    }
    let artifact_b = art.b.to_str().unwrap().to_string();
    let args: Vec<&str> = match command {
        "install" => vec!["install", &artifact_b],
        "activate" => vec!["activate", b.as_deref().unwrap()],
        "rollback" => vec!["rollback"],
        other => panic!("no command {other}"),
    };
    let journal_before = root.journal().len();
    let releases_before = root.releases();

    // 1. Killed at the point.
    let out = root
        .cmd(&args)
        .env("RELEASE_CRASHPOINT", point)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{command} at {point}: not killed by SIGKILL ({}):\nstderr: {}",
        out.status,
        stderr(&out)
    );

    // 2. What it left: a live release that verifies, a journal readers can
    //    read (a torn last line only where the point tears it), leftovers.
    let b_now = b.clone().or_else(|| {
        root.releases()
            .into_iter()
            .find(|r| !releases_before.contains(r))
    });
    let b_name = b_now.clone().unwrap_or_default();
    let current = root.current().expect("current exists after the kill");
    let allowed: Vec<&str> = match command {
        "install" => vec![&a],
        _ => vec![&a, &b_name],
    };
    assert!(
        allowed.contains(&current.as_str()),
        "{command} at {point}: current is {current}"
    );
    assert!(
        root.verifies(&current),
        "{command} at {point}: current {current} does not verify"
    );
    let text = root.journal_text();
    let torn = !text.is_empty() && !text.ends_with('\n');
    assert_eq!(
        torn,
        point == "journal:torn",
        "{command} at {point}: torn journal: {torn}"
    );
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    for line in whole.lines() {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("{command} at {point}: bad journal line {line:?}: {e}"));
    }
    // Each point sits where its name says: past the rename, `current` (or
    // releases/<id>) has changed; past the journal line, it is journaled.
    let step = point.rsplit(':').next().unwrap();
    // The served static/ is updated after the journal line.
    let journaled = ["journaled", "reloaded"].contains(&step) || step.starts_with("static-");
    let renamed = ["renamed", "fsynced", "torn"].contains(&step) || journaled;
    if command == "install" {
        assert_eq!(b_now.is_some(), renamed, "{command} at {point}: releases/B");
    } else {
        let before = if command == "activate" { &a } else { &b_name };
        let switched = &current != before;
        assert_eq!(
            switched, renamed,
            "{command} at {point}: current is {current}"
        );
    }
    assert_eq!(
        whole.lines().count() - journal_before,
        usize::from(journaled),
        "{command} at {point}: new journal lines"
    );
    // The served static/ holds only files of installed releases, whatever
    // step was killed.
    assert_eq!(
        root.served_not_from_releases(),
        Vec::<String>::new(),
        "{command} at {point}: served files of no installed release"
    );
    // Readers cope with all of it.
    root.list_consistent();
    let mut found = vec![format!("current={}", short(&current, &a, &b_name))];
    if command == "install" {
        if let Some(b) = &b_now {
            found.push(format!("releases/B complete={}", root.verifies(b)));
        }
    }
    let new_lines = whole.lines().count() - journal_before;
    if new_lines > 0 {
        found.push(format!("+{new_lines} journal line"));
    }
    let live = root.journal_live_of(whole).unwrap_or_default();
    if live != current {
        found.push(format!("journal: {} live", short(&live, &a, &b_name)));
    }
    if torn {
        found.push("torn journal line".into());
    }
    if !root.verifies_all() {
        found.push("static/ behind".into());
    }
    for left in root.leftovers() {
        found.push(left.split('-').next().unwrap().to_string() + "-*");
    }

    // 3. The same command again: cleans up, repairs the journal, finishes.
    //    Except a rollback killed after its journal line: it was complete,
    //    and running it again is a second rollback, refused here (A was the
    //    first release) with nothing changed.
    let complete_rollback = command == "rollback" && root.journal_live().as_ref() == Some(&a);
    let mut again = vec!["--json"];
    again.extend_from_slice(&args);
    let out = root.run(&again);
    let report = if complete_rollback {
        let err = fails_with(&out, 1);
        assert!(err.contains("nothing to roll back to"), "{err}");
        // What docs/host.md recommends after a crash instead: idempotent.
        let to = root.json(&["rollback", "--to", &a]);
        assert_eq!(to["already_current"], true, "{to}");
        Value::Null
    } else {
        json_ok(&out)
    };
    assert!(
        root.leftovers().is_empty(),
        "{command} at {point}: left {:?} after the next command",
        root.leftovers()
    );
    let events = root.journal();
    let releases = root.releases();
    let b = b.unwrap_or_else(|| report["id"].as_str().unwrap().to_string());
    let mut want_releases = vec![a.clone(), b.clone()];
    want_releases.sort();
    assert_eq!(releases, want_releases, "{command} at {point}");
    let want_current = match command {
        "install" => &a,
        "activate" => &b,
        _ => &a,
    };
    assert_eq!(
        root.current().as_ref(),
        Some(want_current),
        "{command} at {point}"
    );
    assert!(root.verifies(want_current));
    assert!(root.verifies(&b));
    // static/ is whole again: every file of A and B served, the current
    // release's where they differ, no temporary link left.
    assert!(
        root.verifies_all(),
        "{command} at {point}: {}",
        stdout(&root.run(&["verify"]))
    );
    let mut union = root.release_static(&a);
    union.extend(root.release_static(&b));
    union.sort();
    union.dedup();
    assert_eq!(root.served_static(), union, "{command} at {point}");
    // The journal agrees with current, and records every install once.
    assert_eq!(
        root.journal_live().as_ref(),
        Some(want_current),
        "{command} at {point}: the journal's live release is not current"
    );
    for id in &releases {
        let installs = events
            .iter()
            .filter(|e| e["event"] == "installed" && e["release"] == id.as_str())
            .count();
        assert_eq!(installs, 1, "{command} at {point}: {id} installed events");
    }
    root.list_consistent();
    // One switch each, never two.
    let switches = |kind: &str, id: &str| {
        events
            .iter()
            .filter(|e| e["event"] == kind && e["release"] == id)
            .count()
    };
    match command {
        "activate" => {
            assert_eq!(switches("activated", &b), 1, "{command} at {point}");
            assert_eq!(root.state_of(&a), "rollback-target");
        }
        "rollback" => {
            assert_eq!(switches("rolled_back", &a), 1, "{command} at {point}");
            assert_eq!(root.state_of(&b), "rolled-back");
        }
        _ => assert_eq!(switches("activated", &b), 0),
    }
    let outcome = if complete_rollback {
        "recovered (was complete; a 2nd rollback: exit 1)"
    } else if report["already_installed"] == true {
        "recovered (already installed)"
    } else if report["already_current"] == true {
        "recovered (already current)"
    } else if stderr(&out).contains("finishing it") {
        "recovered (switch finished)"
    } else {
        "recovered"
    };
    Row {
        point,
        command,
        found: found.join(", "),
        outcome: format!("{outcome} {:.1}s", started.elapsed().as_secs_f64()),
    }
}

#[cfg(feature = "crashpoints")]
#[test]
fn a_command_killed_at_any_crash_point_is_repaired_by_the_next_one() {
    use std::io::Write;
    artifacts();
    let started = Instant::now();
    let mut rows = Vec::new();
    // RELEASE_TEST_CRASHPOINTS=SUBSTRING runs only the matching points.
    let only = std::env::var("RELEASE_TEST_CRASHPOINTS").unwrap_or_default();
    for point in release::crashpoint::ALL {
        if !point.name().contains(&only) {
            continue;
        }
        for command in point.commands() {
            rows.push(crash_at(point.name(), command));
        }
    }
    // The table goes to the real stderr, past the test harness's capture.
    let mut table = format!(
        "\n{:<26} {:<9} {:<62} {}\n",
        "CRASH POINT", "COMMAND", "FOUND AFTER SIGKILL", "NEXT RUN"
    );
    for r in &rows {
        table += &format!(
            "{:<26} {:<9} {:<62} {}\n",
            r.point, r.command, r.found, r.outcome
        );
    }
    table += &format!(
        "{} kills, all recovered, in {:.1}s\n",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    std::io::stderr().write_all(table.as_bytes()).unwrap();
}

// ---------------------------------------------------------------------------
// Full disk

/// A tmpfs of a fixed size, mounted on a temporary directory and unmounted
/// on drop (also when the test panics).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with a note on stderr) when not root: mounting needs root,
    /// and CI runs as root.
    fn mount(size_mib: u64) -> Option<Tmpfs> {
        if !running_as_root(&format!(
            "mounting a {size_mib} MiB tmpfs (the full-disk tests)"
        )) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("release-tmpfs-")
            .tempdir()
            .unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_mib}m,mode=0755"))
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -t tmpfs failed: {}",
            stderr(&out)
        );
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> u64 {
        let s = rustix::fs::statvfs(self.path()).unwrap();
        s.f_bavail * s.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount(self.path());
    }
}

const MIB: u64 = 1024 * 1024;

/// Parse the number before `unit` that follows `after` in `text`.
fn number_after(text: &str, after: &str) -> u64 {
    let rest = &text[text
        .find(after)
        .unwrap_or_else(|| panic!("no {after:?} in {text}"))
        + after.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {after:?} in {text}"))
}

/// The names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Fill the filesystem of `path` with a new file at `path` until `leave`
/// bytes are free (to the page when `leave` is 0); returns the error that
/// stopped it, if any.
fn fill(path: &Path, leave: u64) -> Option<std::io::Error> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        let s = rustix::fs::statvfs(path).unwrap();
        if leave > 0 && s.f_bavail * s.f_frsize <= leave {
            return None;
        }
        if let Err(e) = file.write_all(&chunk) {
            return Some(e);
        }
    }
}

#[test]
fn the_space_check_refuses_a_release_that_cannot_fit_and_writes_nothing() {
    let art = artifacts();

    // 1. A filesystem smaller than the release: ~64 MiB of files, 48 MiB.
    let Some(small) = Tmpfs::mount(48) else {
        return;
    };
    let root = Root::at(small.path().join("srv"));
    let free = small.free();
    let err = fails_with(&root.run(&["install", art.a.to_str().unwrap()]), 1);
    for needle in [
        "not enough free space".to_string(),
        root.path.join("releases").display().to_string(),
        format!("{} MiB are available", free.div_ceil(MIB)),
        "more than the whole filesystem holds (48 MiB)".into(),
        "give releases/ a larger filesystem".into(),
    ] {
        assert!(err.contains(&needle), "{needle:?} missing from: {err}");
    }
    let needs = number_after(&err, "it needs about ");
    assert!(needs > 48, "{err}");
    // Nothing written: the root and releases/ (made before the lock, see
    // docs/host.md) and the lock file, nothing else.
    assert!(names(&root.path.join("releases")).is_empty());
    assert_eq!(names(&root.path), [".lock", "releases"]);
    assert_eq!(small.free(), free, "something was written");
    drop(small);

    // 2. Room in the filesystem, but not free: A is live and another file
    //    takes all but 16 MiB. Installing B (which needs its changed files
    //    plus the 32 MiB margin, the rest is hard-linked from A) is refused
    //    with the prune fix, and nothing changes.
    let Some(tmpfs) = Tmpfs::mount(200) else {
        return;
    };
    let root = Root::at(tmpfs.path().join("srv"));
    let a = root.install(&art.a);
    root.json(&["activate", &a]);
    let journal = root.journal_text();
    assert!(fill(&tmpfs.path().join("ballast"), 16 * MIB).is_none());
    let free = tmpfs.free();
    let err = fails_with(&root.run(&["install", art.b.to_str().unwrap()]), 1);
    for needle in [
        "not enough free space".to_string(),
        format!("{} MiB are available", free.div_ceil(MIB)),
        "nothing was installed".into(),
        "release prune --keep N".into(),
    ] {
        assert!(err.contains(&needle), "{needle:?} missing from: {err}");
    }
    let needs = number_after(&err, "it needs about ");
    assert!(needs > free.div_ceil(MIB) && needs < 200, "{err}");
    assert_eq!(names(&root.path.join("releases")), std::slice::from_ref(&a));
    assert!(root.leftovers().is_empty(), "{:?}", root.leftovers());
    assert_eq!(root.journal_text(), journal);
    assert_eq!(root.current().as_deref(), Some(a.as_str()));
    assert!(root.verifies(&a));
    assert_eq!(tmpfs.free(), free, "something was written");
}

/// SIGKILLs a process when the test panics.
#[cfg(feature = "crashpoints")]
struct KillOnPanic(u32);

#[cfg(feature = "crashpoints")]
impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

/// The state letter of a process in /proc/PID/stat (`T` when stopped).
#[cfg(feature = "crashpoints")]
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

#[cfg(feature = "crashpoints")]
#[test]
fn a_disk_that_fills_during_an_install_fails_clearly_and_changes_nothing() {
    let art = artifacts();
    // Room for A and, by the space check, for B: ~64 MiB of files each,
    // plus the check's 32 MiB margin.
    let Some(tmpfs) = Tmpfs::mount(320) else {
        return;
    };
    let root = Root::at(tmpfs.path().join("srv"));
    let a = root.install(&art.a);
    root.json(&["activate", &a]);
    let journal = root.journal_text();

    // How the disk fills up after the space check, deterministically: the
    // install stops itself (SIGSTOP at the `install:incoming-created` point,
    // right after the statvfs check passed and the incoming directory was
    // made); another writer then fills the filesystem to the last page, as a
    // growing log file would; SIGCONT lets the install go on, and the first
    // file it writes hits ENOSPC. (To the last page, because most of B is
    // hard-linked from the live A and needs no room: only what changed is
    // written.)
    let mut child = root
        .cmd(&["install", art.b.to_str().unwrap()])
        .env("RELEASE_STOPPOINT", "install:incoming-created")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A stopped install must not outlive a failed assertion (nor keep the
    // tmpfs busy): this guard drops before the tmpfs guard.
    let _reaper = KillOnPanic(child.id());
    let until = Instant::now() + std::time::Duration::from_secs(120);
    while proc_state(child.id()) != Some('T') {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("install ended ({status}) before its stop point");
        }
        assert!(Instant::now() < until, "install never stopped");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let before = root.leftovers();
    assert_eq!(before.len(), 1, "{before:?}");
    let ballast = tmpfs.path().join("ballast");
    let full = fill(&ballast, 0).expect("the filler stops at ENOSPC");
    assert_eq!(full.raw_os_error(), Some(28), "{full}");
    assert_eq!(tmpfs.free(), 0);
    let cont = Command::new("kill")
        .args(["-CONT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(cont.success());
    let out = child.wait_with_output().unwrap();
    let err = fails_with(&out, 1);
    let releases = root.path.join("releases");
    for needle in [
        format!("the filesystem of {} is full", releases.display()),
        "No space left on device".to_string(),
        format!("{}/", releases.display()),
        "needs about".to_string(),
        "MiB are free now".to_string(),
        "nothing was installed".to_string(),
        "release prune --keep N".to_string(),
    ] {
        assert!(err.contains(&needle), "{needle:?} missing from: {err}");
    }
    // Nothing changed: no incoming directory, no partial release, the same
    // journal, current untouched and whole.
    assert!(root.leftovers().is_empty(), "{:?}", root.leftovers());
    assert_eq!(root.releases(), std::slice::from_ref(&a));
    assert_eq!(root.journal_text(), journal);
    assert_eq!(root.current().as_deref(), Some(a.as_str()));
    assert!(root.verifies(&a));
    eprintln!(
        "full disk mid-install: {}",
        err.lines().find(|l| l.starts_with("error:")).unwrap()
    );

    // The fix works: with room again, the same install goes through.
    std::fs::remove_file(&ballast).unwrap();
    let b = root.install(&art.b);
    assert!(root.verifies(&b));
    root.list_consistent();
}

// ---------------------------------------------------------------------------
// Concurrency

/// What one racing command reported.
struct Outcome {
    args: Vec<String>,
    code: i32,
    report: Option<Value>,
    stderr: String,
}

fn race_round(root: &Root, ids: &[String; 3], round: usize, wait: bool) -> Vec<Outcome> {
    let x = &ids[round % 3];
    let y = &ids[(round + 1) % 3];
    let commands: Vec<Vec<String>> = (0..8)
        .map(|i| match i % 4 {
            0 => vec!["activate".to_string(), x.clone()],
            2 => vec!["activate".to_string(), y.clone()],
            _ => vec!["rollback".to_string()],
        })
        .collect();
    let children: Vec<_> = commands
        .iter()
        .map(|args| {
            let mut all = vec!["--json"];
            if wait {
                all.extend(["--wait", "60"]);
            }
            all.extend(args.iter().map(String::as_str));
            root.cmd(&all)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .zip(commands)
        .map(|(child, args)| {
            let out = child.wait_with_output().unwrap();
            let code = out
                .status
                .code()
                .unwrap_or_else(|| panic!("{args:?}: {}", out.status));
            Outcome {
                report: (code == 0).then(|| json_ok(&out)),
                stderr: stderr(&out),
                args,
                code,
            }
        })
        .collect()
}

#[test]
fn eight_racing_switches_serialize_and_the_journal_tells_the_truth() {
    let art = artifacts();
    let root = Root::in_memory();
    let ids = [
        root.install(&art.a),
        root.install(&art.b),
        root.install(&art.c),
    ];
    root.json(&["activate", &ids[0]]);
    root.json(&["activate", &ids[1]]);
    let started = Instant::now();
    let mut summary = Vec::new();
    for round in 0..6 {
        let wait = round < 4;
        // A check hook that takes a moment keeps the lock held long enough
        // for the others to run into it.
        let check = if wait { "sleep 0.05" } else { "sleep 0.3" };
        std::fs::write(
            root.path.join("release.toml"),
            format!("[hooks]\ncheck = \"{check}\"\n"),
        )
        .unwrap();
        let before = root.journal().len();
        let current_before = root.current().unwrap();
        let outcomes = race_round(&root, &ids, round, wait);

        // The journal: every line whole; the new events are switches only,
        // and they chain: each starts where the one before it ended.
        let events = root.journal();
        let switches: Vec<&Value> = events[before..].iter().collect();
        let mut live = current_before.clone();
        for e in &switches {
            assert!(
                e["event"] == "activated" || e["event"] == "rolled_back",
                "round {round}: unexpected event {e}"
            );
            assert_eq!(
                e["from"],
                live.as_str(),
                "round {round}: {e} does not chain"
            );
            live = e["release"].as_str().unwrap().to_string();
        }
        // current is where the last journaled switch went.
        assert_eq!(root.current().as_ref(), Some(&live), "round {round}");
        assert!(root.verifies(&live));

        // Every reported switch is in the journal, once; nothing else is.
        let mut unmatched: Vec<&Value> = switches.clone();
        let (mut switched, mut already, mut refused, mut locked) = (0, 0, 0, 0);
        for o in &outcomes {
            match o.code {
                0 => {
                    let r = o.report.as_ref().unwrap();
                    let event = if o.args[0] == "activate" {
                        "activated"
                    } else {
                        "rolled_back"
                    };
                    assert_eq!(r["event"], event, "{:?}: {r}", o.args);
                    if o.args[0] == "activate" {
                        assert_eq!(r["id"], o.args[1].as_str());
                    }
                    if r["already_current"] == true {
                        already += 1;
                        assert_eq!(r["from"], r["id"], "{r}");
                        let id = r["id"].as_str().unwrap();
                        assert!(
                            id == current_before || switches.iter().any(|e| e["release"] == id),
                            "round {round}: {:?} says {id} was already current, but it never was",
                            o.args
                        );
                        continue;
                    }
                    switched += 1;
                    let i = unmatched
                        .iter()
                        .position(|e| {
                            e["event"] == event && e["release"] == r["id"] && e["from"] == r["from"]
                        })
                        .unwrap_or_else(|| {
                            panic!(
                                "round {round}: {:?} reported {r} but the journal has no such switch: {switches:?}",
                                o.args
                            )
                        });
                    unmatched.remove(i);
                }
                1 => {
                    refused += 1;
                    assert_eq!(o.args[0], "rollback", "{:?}: {}", o.args, o.stderr);
                    assert!(o.stderr.contains("nothing to roll back to"), "{}", o.stderr);
                }
                4 => {
                    locked += 1;
                    assert!(!wait, "{:?} exited 4 with --wait 60: {}", o.args, o.stderr);
                    assert!(o.stderr.contains("holds the lock"), "{}", o.stderr);
                }
                code => panic!("{:?} exited {code}: {}", o.args, o.stderr),
            }
        }
        assert!(
            unmatched.is_empty(),
            "round {round}: journaled switches no command reported: {unmatched:?}"
        );
        assert_eq!(switched, switches.len());
        if !wait {
            assert!(locked > 0, "round {round}: nobody ran into the lock");
        }
        root.list_consistent();
        summary.push(format!(
            "round {round} ({}): {switched} switched, {already} already current, {refused} refused (nothing to roll back), {locked} locked out (exit 4)",
            if wait { "--wait 60" } else { "no --wait" }
        ));
    }
    eprintln!(
        "{}\n6 rounds of 8 in {:.1}s",
        summary.join("\n"),
        started.elapsed().as_secs_f64()
    );
}
