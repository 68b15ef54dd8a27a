//! Which releases running processes use, from `/proc/<pid>/cwd`, `exe` and
//! `maps`: the kernel reports those paths resolved, so a process started
//! through `current` shows the `releases/<id>/` it really runs from. Best
//! effort: processes we may not inspect are skipped.

use std::collections::BTreeMap;
use std::path::Path;

/// Release id → pids using it.
pub type InUse = BTreeMap<String, Vec<u32>>;

/// The release id a path lies in, if it is under one of `prefixes`
/// (`<root>/releases/`, resolved and as given).
fn release_of(path: &str, prefixes: &[String]) -> Option<String> {
    prefixes.iter().find_map(|prefix| {
        let rest = path.strip_prefix(prefix.as_str())?;
        let id = rest.split('/').next()?;
        (!id.is_empty() && !id.starts_with('.')).then(|| id.to_string())
    })
}

pub fn releases_in_use(releases_dir: &Path) -> InUse {
    let mut prefixes = vec![format!("{}/", releases_dir.display())];
    if let Ok(real) = std::fs::canonicalize(releases_dir) {
        let real = format!("{}/", real.display());
        if !prefixes.contains(&real) {
            prefixes.push(real);
        }
    }
    let mut in_use = InUse::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return in_use;
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let dir = entry.path();
        let mut found: Vec<String> = Vec::new();
        for link in ["cwd", "exe", "root"] {
            if let Ok(target) = std::fs::read_link(dir.join(link)) {
                if let Some(id) = release_of(&target.to_string_lossy(), &prefixes) {
                    found.push(id);
                }
            }
        }
        if let Ok(maps) = std::fs::read_to_string(dir.join("maps")) {
            for line in maps.lines() {
                // address perms offset dev inode   path
                if let Some(path) = line.split_whitespace().nth(5) {
                    if let Some(id) = release_of(path, &prefixes) {
                        found.push(id);
                    }
                }
            }
        }
        found.sort();
        found.dedup();
        for id in found {
            in_use.entry(id).or_default().push(pid);
        }
    }
    in_use
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_release_in_a_path() {
        let prefixes = vec!["/srv/app/releases/".to_string()];
        assert_eq!(
            release_of("/srv/app/releases/abc-1/venv/lib/x.so", &prefixes).as_deref(),
            Some("abc-1")
        );
        assert_eq!(
            release_of("/srv/app/releases/.incoming-1/x", &prefixes),
            None
        );
        assert_eq!(release_of("/srv/app/current/x", &prefixes), None);
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
        let in_use = releases_in_use(&releases);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(in_use["0123456789ab-20260101T000000Z"].contains(&child.id()));
    }
}
