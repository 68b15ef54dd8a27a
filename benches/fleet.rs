//! The fleet deploy against an Ansistrano-style baseline, on the same hosts
//! in the same run (root only: the hosts are sshd on loopback addresses):
//!
//!     cargo bench --bench fleet            # 25 hosts, 3 deploys of each side
//!     cargo bench --bench fleet -- quick   # 2 of each
//!     cargo bench --bench fleet -- hosts=10
//!
//! Both sides deploy the same fresh artifacts, alternately, to the same 25
//! hosts of the fleet test's harness (tests/it/fleet.rs: real sshd, real
//! gunicorn behind nginx, real ansible-playbook with ansible/ansible.cfg):
//!
//! * ours: `ansible/playbooks/deploy.yml`: preflight, stage (upload +
//!   `release install`, verified), canary, two batches (25%, the rest), each
//!   host's reload confirmed and health-checked, the fleet check through
//!   nginx after each batch, prune;
//! * baseline: `benches/fleet/ansistrano.yml`: upload, `unarchive`, symlink,
//!   `kill -HUP`, all hosts at once, nothing verified or waited for.
//!
//! The medians, their ratio and where ours spends its time (a callback,
//! `benches/fleet/callback_plugins/timings.py`, sums each task's wall time)
//! replace the fleet section of benches/RESULTS.md.

// The test harness is shared with tests/it/fleet.rs, whose #[test] is not built here.
#![allow(dead_code, unused_imports)]

#[path = "../tests/it/common/mod.rs"]
mod common;
#[path = "../tests/it/fleet.rs"]
mod fleet;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use common::*;
use fleet::*;

const BEGIN: &str = "<!-- fleet bench: written by `cargo bench --bench fleet` -->";
const END: &str = "<!-- /fleet bench -->";

/// The median; of an even count, the mean of the middle two.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = xs.len();
    if n % 2 == 0 {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    } else {
        xs[n / 2]
    }
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: the fleet bench runs sshd on loopback addresses and logs in as root; run it as root");
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "quick");
    let runs = if quick { 2 } else { 3 };
    let hosts: usize = args
        .iter()
        .find_map(|a| a.strip_prefix("hosts="))
        .map_or(25, |n| n.parse().expect("hosts=N"));

    let app = App::new();
    let dir = app.tmp.path().to_path_buf();
    let dist = dir.join("dist");
    // One fresh artifact per deploy (a warm-up and `runs` timed ones), so
    // every deploy of either side unpacks a new release.
    let first = app.build_ok(&dist, &[]);
    let mut artifacts = Vec::new();
    for i in 0..=runs {
        app.write("mysite/extra.py", &format!("X = {i}\n"));
        app.commit(&format!("release {i}"));
        artifacts.push(app.build_ok(&dist, &[]));
    }

    let mut fleet = Fleet::start(&dir.join("hosts"), hosts);
    for h in &mut fleet.hosts {
        json_ok(&h.release(&["--json", "deploy", first.to_str().unwrap()]));
        h.web = Some(common::running::Gunicorn::start_at(&h.root, &h.run, h.port));
        let web = h.web.as_ref().unwrap();
        std::fs::write(
            h.root.join("release.toml"),
            format!(
                "keep = 3\n\n[[service]]\nname = \"web\"\npidfile = \"{}\"\nreload = \"hup\"\ntimeout = \"60s\"\n\n[health]\nurl = \"{}\"\nexpect = \"{{release}}\"\ntimeout = \"60s\"\n",
                web.pidfile.display(),
                web.url("/healthz")
            ),
        )
        .unwrap();
    }
    let nginx = Nginx::start(
        &dir,
        &fleet.hosts.iter().map(|h| h.port).collect::<Vec<_>>(),
        None,
    );
    let check_url = format!("http://127.0.0.1:{}/healthz", nginx.port);
    let timings = dir.join("timings.json");
    let callbacks = Path::new(REPO).join("benches/fleet/callback_plugins");
    let env = [
        ("ANSIBLE_CALLBACK_PLUGINS", callbacks.to_str().unwrap()),
        ("ANSIBLE_CALLBACKS_ENABLED", "timings"),
        ("FLEET_TIMINGS", timings.to_str().unwrap()),
    ];
    let ours_book = Path::new(REPO).join("ansible/playbooks/deploy.yml");
    let base_book = Path::new(REPO).join("benches/fleet/ansistrano.yml");
    let ours = |artifact: &PathBuf| {
        let run = fleet.playbook_at(
            &ours_book,
            &json!({"release_artifact": artifact, "release_check_url": check_url}),
            &[],
            &env,
        );
        run.ok();
        let profile: Value =
            serde_json::from_str(&std::fs::read_to_string(&timings).unwrap()).unwrap();
        (run.seconds, profile)
    };
    let base = |artifact: &PathBuf| {
        let run = fleet.playbook_at(&base_book, &json!({"release_artifact": artifact}), &[], &[]);
        run.ok();
        run.seconds
    };
    // Let the HUPed workers finish booting before the next timed run (the
    // baseline does not wait for them; they would slow the next run).
    let settle = || std::thread::sleep(Duration::from_secs(10));

    eprintln!("fleet bench: {hosts} hosts up; warm-up run of each side");
    ours(&artifacts[0]);
    settle();
    base(&artifacts[0]);
    settle();
    let load_before = loadavg();
    let (mut ours_s, mut base_s, mut profiles) = (Vec::new(), Vec::new(), Vec::new());
    for artifact in &artifacts[1..] {
        let (s, profile) = ours(artifact);
        eprintln!("fleet bench: deploy.yml {s:.1}s");
        ours_s.push(s);
        profiles.push(profile);
        settle();
        let s = base(artifact);
        eprintln!("fleet bench: ansistrano-style {s:.1}s");
        base_s.push(s);
        settle();
    }
    for h in &fleet.hosts {
        let served = h.web.as_ref().unwrap().get("/healthz").1;
        assert_eq!(
            served,
            h.current()[..12],
            "{} does not serve its current release",
            h.name
        );
    }

    let load_after = loadavg();
    let (o, b) = (median(ours_s.clone()), median(base_s.clone()));
    // Where ours spent its time, by task: the run nearest the median.
    let mid = (0..ours_s.len())
        .min_by(|&i, &j| {
            let (di, dj) = ((ours_s[i] - o).abs(), (ours_s[j] - o).abs());
            di.partial_cmp(&dj).unwrap()
        })
        .unwrap();
    let mut tasks: Vec<(String, f64)> = profiles[mid]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
        .collect();
    tasks.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    let mut profile = String::new();
    for (name, s) in tasks.iter().take(8) {
        profile.push_str(&format!("| {name} | {s:.1} s |\n"));
    }
    let met = format!(
        "ratio {}; 60 s {}",
        if o / b <= 1.5 { "yes" } else { "**no**" },
        if o < 60.0 { "yes" } else { "**no**" }
    );
    let section = format!(
        "{BEGIN}\n## Fleet deploy ({hosts} hosts)\n\nProduced by `cargo bench --bench fleet{}` on {} UTC, ansible-core {} \
         (ansible/ansible.cfg: pipelining, ControlPersist, forks 50). Each host is an sshd on its own \
         loopback address with its own root and gunicorn (started with the launch line `release init` writes, `reload = \"hup\"`), behind one nginx; \
         both sides deploy the same fresh artifacts alternately, {runs} timed runs each after a warm-up. \
         Load average (1, 5, 15 min) before the timed runs: {load_before}; after: {load_after}.\n\n\
         | | deploy.yml | Ansistrano-style baseline | ratio | target | met |\n|---|---|---|---|---|---|\n\
         | wall time, median (runs: {}; {}) | {o:.1} s | {b:.1} s | {:.2}× | ≤ 1.5× and < 60 s | {} |\n\n\
         deploy.yml: preflight, stage (upload + verified install), canary, batches of 25% and the rest, each host's \
         reload confirmed and health-checked, the fleet check through nginx after each batch, prune. \
         Baseline (`benches/fleet/ansistrano.yml`): upload, `unarchive`, symlink, `kill -HUP`, all at once, nothing \
         verified or waited for.\n\nWhere deploy.yml spent its time in the run nearest its median (wall time per task, summed over batches):\n\n\
         | task | wall time |\n|---|---|\n{profile}\n{END}\n",
        if quick { " -- quick" } else { "" },
        chrono::Utc::now().format("%Y-%m-%d %H:%M"),
        ansible_version(),
        ours_s.iter().map(|s| format!("{s:.1}")).collect::<Vec<_>>().join(", "),
        base_s.iter().map(|s| format!("{s:.1}")).collect::<Vec<_>>().join(", "),
        o / b,
        met,
    );
    println!("{section}");
    let path = Path::new(REPO).join("benches/RESULTS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(i), Some(j)) => format!(
            "{}{section}{}",
            &old[..i],
            old[j + END.len()..].trim_start_matches('\n')
        ),
        _ => format!("{}\n\n{section}", old.trim_end()),
    };
    std::fs::write(&path, new).unwrap();
    eprintln!("wrote {}", path.display());
    drop(nginx);
    drop(fleet);
}

/// /proc/loadavg's first three fields: what else this machine was doing.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(", ")
}

fn ansible_version() -> String {
    let out = std::process::Command::new(Path::new(REPO).join("target/ansible/bin/python"))
        .args(["-c", "import ansible.release as r; print(r.__version__)"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
