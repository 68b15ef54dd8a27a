//! Running processes, read from `/proc`: pidfiles, liveness, children,
//! signals, and the one rule for "a process uses a release" that `prune`,
//! `status` and the reloads share: its working directory, executable, root or
//! any mapped file lies under `<root>/releases/<id>/`. The kernel reports those
//! paths resolved, so a process started through `current` shows the release it
//! really runs from. Best effort: processes we may not inspect are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use fs_err as fs;

pub use crate::pid::{Pid, PidfileProblem};

/// Read a pidfile and check that the process is alive.
pub fn read_pidfile(path: &Path) -> Result<Pid, PidfileProblem> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(PidfileProblem::Missing),
        Err(e) => return Err(PidfileProblem::Garbage(e.to_string())),
    };
    let pid: Pid = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| PidfileProblem::Garbage(text.trim().chars().take(40).collect()))?;
    if alive(pid) {
        Ok(pid)
    } else {
        Err(PidfileProblem::Dead(pid))
    }
}

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone)]
pub struct Stat {
    pub state: char,
    pub ppid: Pid,
    /// Start time in clock ticks after boot.
    pub starttime: u64,
}

pub fn stat(pid: Pid) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        starttime: fields.get(19)?.parse().ok()?,
    })
}

/// Running and not a zombie.
pub fn alive(pid: Pid) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// The command line, arguments joined by spaces.
pub fn cmdline(pid: Pid) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Live direct children of `pid`, ascending.
pub fn children(pid: Pid) -> Vec<Pid> {
    all_pids()
        .into_iter()
        .filter(|child| {
            stat(*child).is_some_and(|s| s.ppid == pid && s.state != 'Z' && s.state != 'X')
        })
        .collect()
}

/// The directory prefixes under which a path is in a release: `<releases_dir>/`
/// as given and, when it differs, resolved.
fn release_prefixes(releases_dir: &Path) -> Vec<String> {
    let mut prefixes = vec![format!("{}/", releases_dir.display())];
    if let Ok(real) = std::fs::canonicalize(releases_dir) {
        let real = format!("{}/", real.display());
        if !prefixes.contains(&real) {
            prefixes.push(real);
        }
    }
    prefixes
}

/// The release id a path lies in, if it is under one of `prefixes`; the
/// hidden directories beside the releases (`.incoming-*`, `.removing-*`) are
/// not releases.
fn release_of(path: &Path, prefixes: &[String]) -> Option<String> {
    let path = path.to_string_lossy();
    prefixes.iter().find_map(|prefix| {
        let rest = path.strip_prefix(prefix.as_str())?;
        let id = rest.split('/').next()?;
        (!id.is_empty() && !id.starts_with('.')).then(|| id.to_string())
    })
}

/// The releases (directory names under `releases_dir`) that a process uses:
/// its working directory, its executable, its root and every mapped file.
pub fn releases_used(pid: Pid, releases_dir: &Path) -> ProcessReleases {
    releases_used_with(pid, &release_prefixes(releases_dir))
}

fn releases_used_with(pid: Pid, prefixes: &[String]) -> ProcessReleases {
    let link = |name: &str| std::fs::read_link(format!("/proc/{pid}/{name}")).ok();
    let (cwd, exe, root) = (link("cwd"), link("exe"), link("root"));
    let mut mapped = BTreeSet::new();
    if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        for line in maps.lines() {
            // address perms offset dev inode pathname
            if let Some(path) = line.split_whitespace().nth(5) {
                if let Some(name) = release_of(Path::new(path), prefixes) {
                    mapped.insert(name);
                }
            }
        }
    }
    let of = |path: &Option<PathBuf>| path.as_deref().and_then(|p| release_of(p, prefixes));
    ProcessReleases {
        cwd_release: of(&cwd),
        exe_release: of(&exe),
        root_release: of(&root),
        mapped,
        cwd,
    }
}

#[derive(Debug, Clone, Default)]
pub struct ProcessReleases {
    pub cwd: Option<PathBuf>,
    pub cwd_release: Option<String>,
    pub exe_release: Option<String>,
    pub root_release: Option<String>,
    pub mapped: BTreeSet<String>,
}

impl ProcessReleases {
    /// Every release this process uses.
    pub fn all(&self) -> BTreeSet<String> {
        let mut all = self.mapped.clone();
        all.extend(self.cwd_release.iter().cloned());
        all.extend(self.exe_release.iter().cloned());
        all.extend(self.root_release.iter().cloned());
        all
    }
}

/// Release id → the pids that use it.
pub type InUse = BTreeMap<String, Vec<Pid>>;

/// Every live process's releases under `releases_dir`, by release.
pub fn releases_in_use(releases_dir: &Path) -> InUse {
    let prefixes = release_prefixes(releases_dir);
    let mut in_use = InUse::new();
    for pid in all_pids() {
        for id in releases_used_with(pid, &prefixes).all() {
            in_use.entry(id).or_default().push(pid);
        }
    }
    in_use
}

/// The pids in `/proc`, ascending.
fn all_pids() -> Vec<Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<Pid> = dir
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<Pid>().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// Seconds since the epoch at which `pid` started (to the clock tick).
pub fn start_time(pid: Pid) -> Option<f64> {
    let ticks = stat(pid)?.starttime;
    let hz = rustix::param::clock_ticks_per_second();
    let uptime: f64 = fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    Some(now - uptime + ticks as f64 / hz as f64)
}

/// Send a signal; an error when the process does not exist or may not be signalled.
pub fn signal(pid: Pid, sig: rustix::process::Signal) -> std::io::Result<()> {
    let pid =
        rustix::process::Pid::from_raw(pid).ok_or_else(|| std::io::Error::other("invalid pid"))?;
    rustix::process::kill_process(pid, sig).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_release_in_a_path() {
        let prefixes = vec!["/srv/app/releases/".to_string()];
        let of = |p: &str| release_of(Path::new(p), &prefixes);
        assert_eq!(
            of("/srv/app/releases/abc-1/venv/lib/x.so").as_deref(),
            Some("abc-1")
        );
        assert_eq!(of("/srv/app/releases/.incoming-1/x"), None);
        assert_eq!(of("/srv/app/current/x"), None);
        assert_eq!(of("/srv/app/releases/"), None);
    }

    #[test]
    fn sees_a_process_working_in_a_release() {
        let tmp = tempfile::tempdir().unwrap();
        let releases = tmp.path().join("releases");
        let release = releases.join("0123456789ab-20260101T000000Z");
        std::fs::create_dir_all(&release).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(&release)
            .spawn()
            .unwrap();
        let pid = child.id() as Pid;
        let in_use = releases_in_use(&releases);
        let used = releases_used(pid, &releases);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(in_use["0123456789ab-20260101T000000Z"].contains(&pid));
        assert_eq!(
            used.cwd_release.as_deref(),
            Some("0123456789ab-20260101T000000Z")
        );
    }
}
