//! What running processes really use, read from `/proc`: pidfiles, liveness,
//! children, and which release directory a process's cwd, executable and
//! memory maps resolve into.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fs_err as fs;

pub type Pid = i32;

/// Why a pidfile could not give a live process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidfileProblem {
    Missing,
    Garbage(String),
    /// The pid is not running (a stale pidfile from a crash or a stopped service).
    Dead(Pid),
}

impl std::fmt::Display for PidfileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PidfileProblem::Missing => f.write_str("does not exist (is the service running?)"),
            PidfileProblem::Garbage(text) => write!(f, "does not hold a pid: {text:?}"),
            PidfileProblem::Dead(pid) => {
                write!(f, "names pid {pid}, which is not running (stale pidfile)")
            }
        }
    }
}

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

/// Live direct children of `pid`.
pub fn children(pid: Pid) -> Vec<Pid> {
    let mut kids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return kids;
    };
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<Pid>().ok())
        else {
            continue;
        };
        if let Some(s) = stat(child) {
            if s.ppid == pid && s.state != 'Z' && s.state != 'X' {
                kids.push(child);
            }
        }
    }
    kids.sort_unstable();
    kids
}

/// The release directories (names under `releases_dir`) that a process uses:
/// its working directory, its executable and every mapped file.
pub fn releases_used(pid: Pid, releases_dir: &Path) -> ProcessReleases {
    let name_of = |path: &Path| -> Option<String> {
        let rel = path.strip_prefix(releases_dir).ok()?;
        let first = rel.components().next()?;
        Some(first.as_os_str().to_string_lossy().into_owned())
    };
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let mut mapped = BTreeSet::new();
    if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        for line in maps.lines() {
            // address perms offset dev inode pathname
            if let Some(path) = line.split_whitespace().nth(5) {
                if let Some(name) = name_of(Path::new(path)) {
                    mapped.insert(name);
                }
            }
        }
    }
    ProcessReleases {
        cwd_release: cwd.as_deref().and_then(name_of),
        exe_release: exe.as_deref().and_then(name_of),
        mapped,
        cwd,
    }
}

#[derive(Debug, Clone, Default)]
pub struct ProcessReleases {
    pub cwd: Option<PathBuf>,
    pub cwd_release: Option<String>,
    pub exe_release: Option<String>,
    pub mapped: BTreeSet<String>,
}

impl ProcessReleases {
    /// Every release this process touches.
    pub fn all(&self) -> BTreeSet<String> {
        let mut all = self.mapped.clone();
        all.extend(self.cwd_release.iter().cloned());
        all.extend(self.exe_release.iter().cloned());
        all
    }
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

/// Send a signal by number; `false` when the process does not exist.
pub fn signal(pid: Pid, sig: rustix::process::Signal) -> std::io::Result<()> {
    let pid =
        rustix::process::Pid::from_raw(pid).ok_or_else(|| std::io::Error::other("invalid pid"))?;
    rustix::process::kill_process(pid, sig).map_err(std::io::Error::from)
}
