//! Side-by-side benchmarks of `release` against what a user would do instead.
//!
//!     cargo bench --bench deploy            # everything (a few minutes)
//!     cargo bench --bench deploy -- quick   # fewer runs
//!
//! Every comparison runs both sides in this process, on this machine, several
//! times, and reports the medians and their ratio. The table is printed and
//! written to benches/RESULTS.md with the machine it ran on.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_release");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn main() {
    // `--activate-floor DIR`: what an activate cannot do without (see
    // `activate_floor`); the bench runs this binary as that floor.
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--activate-floor") {
        activate_floor(Path::new(&args[i + 1]));
        return;
    }
    let quick = std::env::args().any(|a| a == "quick");
    let runs = if quick { 3 } else { 5 };
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-') && a != "quick")
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    let work = tempfile::Builder::new()
        .prefix("release-bench-")
        .tempdir()
        .unwrap();
    let b = Bench::new(work.path());
    let load_before = load_average();
    let mut rows = Vec::new();
    if wanted("build") {
        rows.extend(b.build_rows(runs));
    }
    if wanted("install") {
        rows.extend(b.install_rows(runs));
    }
    if wanted("busy") {
        rows.extend(b.busy_rows(runs));
    }
    if wanted("url") {
        rows.extend(b.url_rows(runs));
    }
    if wanted("delta") {
        rows.extend(b.delta_rows(runs));
    }
    if wanted("activate") || wanted("list") {
        rows.extend(b.activate_and_list_rows(runs));
    }
    if wanted("large") {
        rows.extend(b.large_rows(runs.min(3)));
    }
    let table = render(&rows);
    println!("{table}");
    if only.is_empty() {
        let path = Path::new(REPO).join("benches/RESULTS.md");
        // The fleet section is `cargo bench --bench fleet`'s: keep it.
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let fleet = old
            .find("<!-- fleet bench")
            .map(|i| format!("\n{}", &old[i..]))
            .unwrap_or_default();
        let notes = format!(
            "Installs, their baselines and activations ran {}{}. Load average (1, 5, 15 min) before the runs: {load_before}; after: {}.\n",
            b.fs.what(),
            if b.fs.image.is_some() {
                format!(" ({} sparse image: `truncate`, `mkfs.ext4 -E nodiscard,lazy_itable_init=0,lazy_journal_init=0`, `mount -o loop`, no `discard`; created and removed by the bench, which needs root for it)", LoopFs::SIZE)
            } else {
                String::new()
            },
            load_average()
        );
        std::fs::write(&path, results_md(&table, quick, &notes) + &fleet).unwrap();
        eprintln!("wrote {}", path.display());
    }
}

/// One line of the table.
struct Row {
    what: String,
    ours: String,
    baseline: String,
    ratio: String,
    target: String,
    met: bool,
}

fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| comparison | release | baseline | ratio | target | met |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.what,
            r.ours,
            r.baseline,
            r.ratio,
            r.target,
            if r.target == "—" {
                "—"
            } else if r.met {
                "yes"
            } else {
                "**no**"
            }
        )
        .unwrap();
    }
    out
}

/// The load average as `uptime` shows it (the machine is shared).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

fn results_md(table: &str, quick: bool, notes: &str) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.to_string()))
        .unwrap_or_default();
    format!(
        "# Benchmark results\n\nProduced by `cargo bench --bench deploy{}` on {} UTC.\n\nMachine: {cpu}, {cores} cores, {mem}; {}.\n\nEach cell is the median of several runs of both sides in the same process; ratio = release / baseline (lower is better for times and sizes). {notes}\n{table}\nHow each baseline runs is described in `benches/deploy.rs`.\n",
        if quick { " -- quick" } else { "" },
        chrono::Utc::now().format("%Y-%m-%d %H:%M"),
        String::from_utf8_lossy(&Command::new("uname").arg("-sr").output().unwrap().stdout).trim()
    )
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

fn secs(d: f64) -> String {
    if d < 0.1 {
        format!("{:.1} ms", d * 1000.0)
    } else {
        format!("{d:.2} s")
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Wall time and CPU time (user + system, from GNU time) of `cmd`: on a
/// machine shared with other work the CPU time says what a change saves
/// when the wall time mostly measures the wait for a core.
fn timed_cpu(cmd: &mut Command) -> (f64, f64) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", "%U %S", "-o"])
        .arg(out.path())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    let wall = {
        let t = Instant::now();
        run(&mut timed);
        t.elapsed().as_secs_f64()
    };
    let text = std::fs::read_to_string(out.path()).unwrap();
    let cpu = text
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap())
        .sum();
    (wall, cpu)
}

fn timed(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    run(cmd);
    t.elapsed().as_secs_f64()
}

fn sh(script: &str, cwd: &Path) -> Command {
    let mut c = Command::new("bash");
    c.args(["-euo", "pipefail", "-c", script]).current_dir(cwd);
    c
}

fn git(dir: &Path, args: &[&str]) {
    run(Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=b", "-c", "user.email=b@example.invalid"])
        .args(args)
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z"));
}

fn copy_tree(from: &Path, to: &Path) {
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// Bytes of disk a directory uses (`du -s --block-size=1`).
fn disk_usage(paths: &[&Path]) -> Vec<u64> {
    let out = run(Command::new("du")
        .args(["-s", "--block-size=1"])
        .args(paths));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

struct Bench {
    work: PathBuf,
    wheelhouse: PathBuf,
    app: PathBuf,
    /// Where installs, their baselines and activations run: a fresh ext4
    /// loop filesystem when the bench runs as root (see [`LoopFs`]).
    fs: LoopFs,
}

impl Bench {
    fn new(work: &Path) -> Bench {
        let wheelhouse = Path::new(REPO).join("target/wheelhouse");
        run(Command::new(Path::new(REPO).join("scripts/wheelhouse")).arg(&wheelhouse));
        let app = work.join("mysite");
        copy_tree(&Path::new(REPO).join("fixtures/mysite"), &app);
        git(&app, &["init", "-q"]);
        git(&app, &["add", "-A"]);
        git(&app, &["commit", "-qm", "bench"]);
        let fs = LoopFs::create(work);
        Bench {
            work: work.to_path_buf(),
            wheelhouse,
            app,
            fs,
        }
    }

    fn release_build(&self, out: &Path, cache: &Path) -> Command {
        self.release_build_with(out, cache, "pip")
    }

    /// `release build` installing the venv with `installer` (uv comes from
    /// target/tools, where scripts/test-deps puts it).
    fn release_build_with(&self, out: &Path, cache: &Path, installer: &str) -> Command {
        let mut c = Command::new(BIN);
        let path = std::env::var("PATH").unwrap_or_default();
        c.env("PATH", format!("{}/target/tools/bin:{path}", REPO));
        c.current_dir(&self.app)
            .args([
                "build",
                "-q",
                "--installer",
                installer,
                "--no-index",
                "--find-links",
            ])
            .arg(&self.wheelhouse)
            .arg("--out")
            .arg(out)
            .arg("--cache-dir")
            .arg(cache);
        c
    }

    /// The platter-style pipeline a user would script: wheels, venv, install
    /// from the wheels, the same static step, one tarball.
    fn platter(&self, out: &Path, pip_cache: &Path) -> Command {
        let script = format!(
            r#"
            rm -rf "{out}" && mkdir -p "{out}"
            export PIP_CACHE_DIR="{cache}" PIP_DISABLE_PIP_VERSION_CHECK=1
            python3 -m pip wheel -q -r requirements.txt -w "{out}/wheels" --no-index --find-links "{wh}"
            python3 -m venv "{out}/venv"
            "{out}/venv/bin/pip" install -q --no-index --find-links "{out}/wheels" --find-links "{wh}" -r requirements.txt
            STATIC_ROOT="{out}/static" "{out}/venv/bin/python" manage.py collectstatic --noinput -v0
            git archive HEAD | tar -x -C "{out}" --one-top-level=app
            tar czf "{out}.tar.gz" -C "{out}" app venv wheels static
            "#,
            out = out.display(),
            cache = pip_cache.display(),
            wh = self.wheelhouse.display()
        );
        sh(&script, &self.app)
    }

    fn build_rows(&self, runs: usize) -> Vec<Row> {
        let w = self.work.join("build");
        // Cold: empty caches on both sides.
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for i in 0..runs.min(3) {
            ours.push(timed(&mut self.release_build(
                &w.join(format!("o{i}")),
                &w.join(format!("cache{i}")),
            )));
            base.push(timed(&mut self.platter(
                &w.join(format!("p{i}")),
                &w.join(format!("pipcache{i}")),
            )));
        }
        let (cold_o, cold_b) = (median(ours), median(base));
        // Cold again, the venv installed by uv (what `--installer auto` picks
        // when uv is on PATH), against the same baseline runs.
        let uv = Path::new(REPO).join("target/tools/bin/uv").is_file();
        let mut ours_uv = Vec::new();
        for i in 0..runs.min(3) {
            if uv {
                ours_uv.push(timed(&mut self.release_build_with(
                    &w.join(format!("u{i}")),
                    &w.join(format!("ucache{i}")),
                    "uv",
                )));
            }
        }
        // Warm: caches present (ours: the venv cache; baseline: pip's cache).
        // CPU time (user + system, children included) beside the wall time.
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for i in 0..runs {
            ours.push(timed_cpu(
                &mut self.release_build(&w.join(format!("wo{i}")), &w.join("cache0")),
            ));
            base.push(timed_cpu(
                &mut self.platter(&w.join(format!("wp{i}")), &w.join("pipcache0")),
            ));
        }
        let walls = |v: &[(f64, f64)]| median(v.iter().map(|x| x.0).collect());
        let cpus = |v: &[(f64, f64)]| median(v.iter().map(|x| x.1).collect());
        let (warm_o, warm_b) = (walls(&ours), walls(&base));
        let (warm_o_cpu, warm_b_cpu) = (cpus(&ours), cpus(&base));
        // Size: our default artifact against tar czf of the same tree.
        let artifact = std::fs::read_dir(w.join("wo0"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(".tar.zst"))
            .unwrap();
        let tree = w.join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        run(Command::new("tar")
            .arg("-xf")
            .arg(&artifact)
            .arg("-C")
            .arg(&tree));
        let czf = w.join("tree.tar.gz");
        run(&mut sh(
            &format!("tar czf {} -C {} .", czf.display(), tree.display()),
            &w,
        ));
        let (zst, gz) = (
            std::fs::metadata(&artifact).unwrap().len(),
            std::fs::metadata(&czf).unwrap().len(),
        );
        vec![
            Row {
                what: "`release build`, cold (empty cache, wheels from a local wheelhouse) vs pip wheel → venv → pip install → collectstatic → tar czf".into(),
                ours: secs(cold_o),
                baseline: secs(cold_b),
                ratio: format!("{:.2}× ({:.1}× faster)", cold_o / cold_b, cold_b / cold_o),
                target: "≥ 2× faster".into(),
                met: cold_b / cold_o >= 2.0,
            },
            Row {
                what: if uv {
                    "`release build --installer uv` (the default when uv is on PATH), cold, vs the same pip pipeline".into()
                } else {
                    "`release build --installer uv`: uv not in target/tools (run scripts/test-deps)".into()
                },
                ours: if uv { secs(median(ours_uv.clone())) } else { "-".into() },
                baseline: secs(cold_b),
                ratio: if uv {
                    let o = median(ours_uv.clone());
                    format!("{:.2}× ({:.1}× faster)", o / cold_b, cold_b / o)
                } else {
                    "-".into()
                },
                target: "≥ 2× faster".into(),
                met: uv && cold_b / median(ours_uv.clone()) >= 2.0,
            },
            Row {
                what: "`release build`, warm (requirements unchanged) vs the same pipeline with pip's cache warm".into(),
                ours: format!("{} (CPU {})", secs(warm_o), secs(warm_o_cpu)),
                baseline: format!("{} (CPU {})", secs(warm_b), secs(warm_b_cpu)),
                ratio: format!("{:.2}× ({:.1}× faster)", warm_o / warm_b, warm_b / warm_o),
                target: "≥ 30× faster".into(),
                met: warm_b / warm_o >= 30.0,
            },
            Row {
                what: "artifact size, default format (.tar.zst) vs `tar czf` of the same tree".into(),
                ours: mb(zst),
                baseline: mb(gz),
                ratio: format!("{:.2}×", zst as f64 / gz as f64),
                target: "≤ 0.8×".into(),
                met: (zst as f64 / gz as f64) <= 0.8,
            },
        ]
    }

    /// Two artifacts of the fixture: A, and B = A plus a code change.
    fn two_artifacts(&self) -> (PathBuf, PathBuf) {
        let out = self.work.join("artifacts");
        let cache = self.work.join("build/cache0");
        let find = |dir: &Path| {
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.to_string_lossy().ends_with(".tar.zst"))
                .unwrap()
        };
        if !out.join("a").exists() {
            run(&mut self.release_build(&out.join("a"), &cache));
            std::fs::write(self.app.join("mysite/bench_change.py"), "CHANGED = True\n").unwrap();
            git(&self.app, &["add", "-A"]);
            git(&self.app, &["commit", "-qm", "change"]);
            run(&mut self.release_build(&out.join("b"), &cache));
        }
        (find(&out.join("a")), find(&out.join("b")))
    }

    fn install(&self, root: &Path, artifact: &Path) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--root")
            .arg(root)
            .args(["install", "-q"])
            .arg(artifact);
        c
    }

    fn install_rows(&self, runs: usize) -> Vec<Row> {
        let (a, b) = self.two_artifacts();
        let w = self.fs.dir.join("install");
        // Alternating: install, bare tar, tar + `sync -f`, each into a fresh
        // directory; the CPU time (user + system, tar's zstd included) beside
        // the wall time.
        let (mut ours, mut base, mut synced) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs {
            let root = w.join(format!("root{i}"));
            ours.push(timed_cpu(&mut self.install(&root, &a)));
            let dir = w.join(format!("tar{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            base.push(timed_cpu(
                Command::new("tar")
                    .arg("--zstd")
                    .arg("-xf")
                    .arg(&a)
                    .arg("-C")
                    .arg(&dir),
            ));
            let dir = w.join(format!("tarsync{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            synced.push(timed_cpu(
                sh("tar --zstd -xf \"$0\" -C \"$1\" && sync -f \"$1\"", &w)
                    .arg(&a)
                    .arg(&dir),
            ));
        }
        let wall_cpu = |v: Vec<(f64, f64)>| {
            let (w, c): (Vec<f64>, Vec<f64>) = v.into_iter().unzip();
            (median(w), median(c))
        };
        let ((full_o, full_o_cpu), (full_b, full_b_cpu), (full_s, full_s_cpu)) =
            (wall_cpu(ours), wall_cpu(base), wall_cpu(synced));

        // B next to A (shares every unchanged file) vs B into an empty root.
        let (mut next, mut fresh, mut usage) = (Vec::new(), Vec::new(), 0);
        for i in 0..runs {
            let root = w.join(format!("pair{i}"));
            run(&mut self.install(&root, &a));
            next.push(timed(&mut self.install(&root, &b)));
            let lone = w.join(format!("lone{i}"));
            fresh.push(timed(&mut self.install(&lone, &b)));
            let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("releases"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                .collect();
            dirs.sort();
            let a_dir = dirs
                .iter()
                .find(|d| !d.to_string_lossy().contains(&release_of(&b)))
                .unwrap();
            let b_dir = dirs
                .iter()
                .find(|d| d.to_string_lossy().contains(&release_of(&b)))
                .unwrap();
            // du counts a hardlinked file once: B's figure is what B adds.
            usage = disk_usage(&[a_dir, b_dir])[1];
        }
        let (next_o, fresh_o) = (median(next), median(fresh));
        vec![
            Row {
                what: format!("`release install` with full verification vs `tar --zstd -xf` (no verification), mysite artifact, {}", self.fs.what()),
                ours: format!("{} (CPU {})", secs(full_o), secs(full_o_cpu)),
                baseline: format!("{} (CPU {})", secs(full_b), secs(full_b_cpu)),
                ratio: format!("{:.2}× (CPU {:.2}×)", full_o / full_b, full_o_cpu / full_b_cpu),
                target: "≤ 1.0×".into(),
                met: full_o / full_b <= 1.0,
            },
            Row {
                what: "the same install vs `tar --zstd -xf && sync -f` (tar made durable)".into(),
                ours: format!("{} (CPU {})", secs(full_o), secs(full_o_cpu)),
                baseline: format!("{} (CPU {})", secs(full_s), secs(full_s_cpu)),
                ratio: format!("{:.2}× (CPU {:.2}×)", full_o / full_s, full_o_cpu / full_s_cpu),
                target: "—".into(),
                met: true,
            },
            Row {
                what: "install of a release whose dependencies did not change, next to the previous one, vs full extraction of it".into(),
                ours: format!("{} ({} of new disk)", secs(next_o), mb(usage)),
                baseline: secs(fresh_o),
                ratio: format!("{:.2}× ({:.1}× faster)", next_o / fresh_o, fresh_o / next_o),
                target: "≥ 5× faster; disk ≈ changed bytes".into(),
                met: fresh_o / next_o >= 5.0,
            },
        ]
    }

    /// Delta artifacts (`build --delta-from`), for B = A plus a new module
    /// (a code-only change): the delta's size against B's full artifact;
    /// installing the delta next to A against installing B's full artifact
    /// next to A (each into a fresh root holding A, alternating); and the
    /// build that writes both artifacts against the warm build of B alone.
    fn delta_rows(&self, runs: usize) -> Vec<Row> {
        let (a, b) = self.two_artifacts();
        let w = self.fs.dir.join("delta");
        let cache = self.work.join("build/cache0");
        eprintln!("delta rows: load average before: {}", load_average());
        let (mut with_delta, mut full_only) = (Vec::new(), Vec::new());
        for i in 0..runs {
            with_delta.push(timed_cpu(
                self.release_build(&w.join(format!("d{i}")), &cache)
                    .arg("--delta-from")
                    .arg(&a),
            ));
            full_only.push(timed_cpu(
                &mut self.release_build(&w.join(format!("f{i}")), &cache),
            ));
        }
        let delta = std::fs::read_dir(w.join("d0"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.to_string_lossy().ends_with(".tar.zst") && p.to_string_lossy().contains(".delta-")
            })
            .expect("the build wrote a delta");
        let (delta_bytes, full_bytes) = (
            std::fs::metadata(&delta).unwrap().len(),
            std::fs::metadata(&b).unwrap().len(),
        );
        let (mut by_delta, mut by_full) = (Vec::new(), Vec::new());
        for i in 0..runs {
            let root = w.join(format!("rd{i}"));
            run(&mut self.install(&root, &a));
            by_delta.push(timed_cpu(&mut self.install(&root, &delta)));
            let root = w.join(format!("rf{i}"));
            run(&mut self.install(&root, &a));
            by_full.push(timed_cpu(&mut self.install(&root, &b)));
        }
        eprintln!("delta rows: load average after: {}", load_average());
        let walls = |v: &[(f64, f64)]| median(v.iter().map(|x| x.0).collect());
        let cpus = |v: &[(f64, f64)]| median(v.iter().map(|x| x.1).collect());
        let (bd, bf) = (walls(&with_delta), walls(&full_only));
        let (bd_cpu, bf_cpu) = (cpus(&with_delta), cpus(&full_only));
        let (id, if_) = (walls(&by_delta), walls(&by_full));
        let (id_cpu, if_cpu) = (cpus(&by_delta), cpus(&by_full));
        let size = delta_bytes as f64 / full_bytes as f64;
        vec![
            Row {
                what: "delta artifact of a code-only change (`build --delta-from A`) vs the full artifact of the same release".into(),
                ours: format!("{:.0} KB", delta_bytes as f64 / 1000.0),
                baseline: mb(full_bytes),
                ratio: format!("{:.2}%", size * 100.0),
                target: "≤ 2%".into(),
                met: size <= 0.02,
            },
            Row {
                what: format!("`release install DELTA` next to A vs `release install` of the full artifact next to A, {}", self.fs.what()),
                ours: format!("{} (CPU {})", secs(id), secs(id_cpu)),
                baseline: format!("{} (CPU {})", secs(if_), secs(if_cpu)),
                ratio: format!("{:.2}× (CPU {:.2}×)", id / if_, id_cpu / if_cpu),
                target: "≤ 0.5×".into(),
                met: id / if_ <= 0.5,
            },
            Row {
                what: "`release build --delta-from A` (full artifact and delta), warm, vs the warm build alone".into(),
                ours: format!("{} (CPU {})", secs(bd), secs(bd_cpu)),
                baseline: format!("{} (CPU {})", secs(bf), secs(bf_cpu)),
                ratio: format!("{:.2}× (CPU {:.2}×)", bd / bf, bd_cpu / bf_cpu),
                target: "≤ 1.0×".into(),
                met: bd / bf <= 1.0,
            },
        ]
    }

    /// An install while another process writes 1 GB to the same filesystem
    /// (`dd` of zeros, buffered: dirty pages the kernel has not written yet)
    /// against the same install alone, alternating. The install starts when
    /// the writer has written half; the writer's file is synced and removed
    /// (untimed) before the next run. Each install runs with `-v`, which
    /// says how it made the release durable (docs/host.md, "Durability"):
    /// the row counts the runs of each side that used `syncfs`.
    fn busy_rows(&self, runs: usize) -> Vec<Row> {
        let (a, _) = self.two_artifacts();
        let w = self.fs.dir.join("busy");
        std::fs::create_dir_all(&w).unwrap();
        let (mut alone, mut busy) = (Vec::new(), Vec::new());
        let (mut alone_syncfs, mut busy_syncfs) = (0, 0);
        let install = |root: &Path, syncfs: &mut usize| {
            let mut cmd = Command::new(BIN);
            cmd.arg("--root").arg(root).args(["install", "-v"]).arg(&a);
            let t = Instant::now();
            let out = run(&mut cmd);
            let took = t.elapsed().as_secs_f64();
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(said.contains("making it durable: "), "{said}");
            if said.contains("making it durable: one syncfs") {
                *syncfs += 1;
            }
            took
        };
        for i in 0..runs {
            alone.push(install(&w.join(format!("alone{i}")), &mut alone_syncfs));
            let data = w.join("writer.dat");
            let mut writer = Command::new("dd")
                .arg("if=/dev/zero")
                .arg(format!("of={}", data.display()))
                .args(["bs=1M", "count=1024", "status=none"])
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while std::fs::metadata(&data).map_or(0, |m| m.len()) < 512 << 20 {
                assert!(Instant::now() < deadline, "dd did not write 512 MB in 60 s");
                std::thread::sleep(Duration::from_millis(2));
            }
            busy.push(install(&w.join(format!("busy{i}")), &mut busy_syncfs));
            assert!(writer.wait().unwrap().success(), "dd failed");
            run(Command::new("sync").arg("-f").arg(&data));
            std::fs::remove_file(&data).unwrap();
            run(Command::new("sync").arg("-f").arg(&w));
        }
        let (o, b) = (median(busy), median(alone));
        let how = |syncfs: usize| match syncfs {
            0 => "fsync of each file".to_string(),
            n if n == runs => "`syncfs`".to_string(),
            n => format!("`syncfs` in {n} of {runs} runs, else fsync of each file"),
        };
        vec![Row {
            what: format!("`release install` while another process writes 1 GB to the same filesystem vs the same install alone, {}", self.fs.what()),
            ours: format!("{} ({})", secs(o), how(busy_syncfs)),
            baseline: format!("{} ({})", secs(b), how(alone_syncfs)),
            ratio: format!("{:.2}×", o / b),
            target: "≤ 1.5×".into(),
            met: o / b <= 1.5,
        }]
    }

    /// `release install URL` from a loopback web server (nginx when it is
    /// installed, else Python's http.server; the row says which) against
    /// `release install FILE` of the same artifact, alternating, each into a
    /// fresh root.
    fn url_rows(&self, runs: usize) -> Vec<Row> {
        let (a, _) = self.two_artifacts();
        let w = self.fs.dir.join("url");
        let served = w.join("served");
        std::fs::create_dir_all(&served).unwrap();
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(&a, served.join(&name)).unwrap();
        std::fs::copy(
            format!("{}.sha256", a.display()),
            served.join(format!("{name}.sha256")),
        )
        .unwrap();
        let server = WebServer::start(&w, &served);
        let url = format!("http://127.0.0.1:{}/{name}", server.port);
        let (mut by_url, mut by_file) = (Vec::new(), Vec::new());
        for i in 0..runs {
            by_url.push(timed(
                &mut self.install(&w.join(format!("u{i}")), Path::new(&url)),
            ));
            by_file.push(timed(&mut self.install(&w.join(format!("f{i}")), &a)));
        }
        let (u, f) = (median(by_url), median(by_file));
        vec![Row {
            what: format!(
                "`release install URL` ({} on loopback) vs `release install FILE` of the same artifact",
                server.kind
            ),
            ours: secs(u),
            baseline: secs(f),
            ratio: format!("{:.2}×", u / f),
            target: "≤ 1.1×".into(),
            met: u / f <= 1.1,
        }]
    }

    fn activate_and_list_rows(&self, runs: usize) -> Vec<Row> {
        let (a, b) = self.two_artifacts();
        let root = self.fs.dir.join("activate");
        run(&mut self.install(&root, &a));
        run(&mut self.install(&root, &b));
        let ids = [release_of(&a), release_of(&b)];
        // The floor, alternating with the activations: a process start (this
        // bench binary) and the two syncs an activate needs, in a directory
        // of the same filesystem.
        let floor_dir = self.fs.dir.join("floor");
        std::fs::create_dir_all(&floor_dir).unwrap();
        let me = std::env::current_exe().unwrap();
        let (mut times, mut floor) = (Vec::new(), Vec::new());
        for i in 0..(runs * 10) {
            times.push(timed(Command::new(BIN).arg("--root").arg(&root).args([
                "activate",
                "-q",
                &ids[i % 2],
            ])));
            floor.push(timed(
                Command::new(&me).arg("--activate-floor").arg(&floor_dir),
            ));
        }
        let (activate, floor) = (median(times), median(floor));

        // 500 installed releases: copies of one release tree are cheap with
        // hardlinks (`cp -al`), and `list` must not walk them anyway.
        let many = self.work.join("many");
        run(&mut self.install(&many, &a));
        let releases = many.join("releases");
        let first = std::fs::read_dir(&releases)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .unwrap();
        let name = first.file_name().unwrap().to_string_lossy().into_owned();
        let (commit12, _) = name.split_once('-').unwrap();
        let mut journal = std::fs::read_to_string(many.join("history.jsonl")).unwrap();
        let line = journal.lines().next().unwrap().to_string();
        for i in 1..500 {
            let id = format!(
                "{commit12}-20260101T{:02}{:02}{:02}Z",
                i / 3600,
                (i / 60) % 60,
                i % 60
            );
            run(Command::new("cp")
                .arg("-al")
                .arg(&first)
                .arg(releases.join(&id)));
            journal.push_str(&line.replace(&name, &id));
            journal.push('\n');
        }
        std::fs::write(many.join("history.jsonl"), journal).unwrap();
        let mut times = Vec::new();
        for _ in 0..(runs * 4) {
            times.push(timed(
                Command::new(BIN)
                    .arg("--root")
                    .arg(&many)
                    .args(["list", "--json"])
                    .stdout(Stdio::null()),
            ));
        }
        let list = median(times);
        vec![
            Row {
                what: format!("`release activate`, no services (switch + journal + fsync) vs its floor: a process start, a symlink renamed, `fsync` of the directory, a line appended and `fdatasync`ed; {}", self.fs.what()),
                ours: secs(activate),
                baseline: secs(floor),
                ratio: format!("{:.2}×", activate / floor),
                target: "≤ 2× the floor".into(),
                met: activate / floor <= 2.0,
            },
            Row {
                what: "`release list` with 500 installed releases".into(),
                ours: secs(list),
                baseline: "—".into(),
                ratio: "—".into(),
                target: "< 50 ms".into(),
                met: list < 0.05,
            },
        ]
    }

    /// A synthetic app of about 200 MB in 20,000 files of mixed sizes.
    fn large_rows(&self, runs: usize) -> Vec<Row> {
        let src = self.work.join("large");
        std::fs::create_dir_all(&src).unwrap();
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut total = 0u64;
        for i in 0..20_000u64 {
            // Mostly small files, some large, skewed small: averages ~10.5 KB,
            // so 20,000 files come to about 210 MB.
            let size = match next() % 100 {
                0..=69 => 512 + next() % 4096,
                70..=94 => 8192 + next() % 16384,
                _ => 32768 + next() % 131_072,
            };
            let dir = src.join(format!("pkg{:03}", i % 400));
            std::fs::create_dir_all(&dir).unwrap();
            // Half compressible text, half random bytes.
            let bytes: Vec<u8> = if i % 2 == 0 {
                (0..size)
                    .map(|j| {
                        b"def function_name(argument):\n    return argument\n"[(j % 48) as usize]
                    })
                    .collect()
            } else {
                (0..size).map(|_| next() as u8).collect()
            };
            total += size;
            std::fs::write(dir.join(format!("f{i}.dat")), bytes).unwrap();
        }
        std::fs::write(src.join("requirements.txt"), "").unwrap();
        git(&src, &["init", "-q"]);
        git(&src, &["add", "-A"]);
        git(&src, &["commit", "-qm", "large"]);
        let out = self.work.join("large-out");
        let mut c = Command::new(BIN);
        c.current_dir(&src)
            .args([
                "build",
                "-q",
                "--installer",
                "pip",
                "--no-index",
                "--name",
                "large",
                "--out",
            ])
            .arg(&out)
            .arg("--cache-dir")
            .arg(self.work.join("large-cache"));
        run(&mut c);
        let artifact = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(".tar.zst"))
            .unwrap();
        let (mut ours, mut base, mut rss) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs {
            let root = self.fs.dir.join(format!("large-root{i}"));
            let t = Instant::now();
            let peak = peak_rss_kb(&mut self.install(&root, &artifact));
            ours.push(t.elapsed().as_secs_f64());
            rss.push(peak as f64);
            let dir = self.fs.dir.join(format!("large-tar{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            base.push(timed(
                Command::new("tar")
                    .arg("--zstd")
                    .arg("-xf")
                    .arg(&artifact)
                    .arg("-C")
                    .arg(&dir),
            ));
            let _ = std::fs::remove_dir_all(&dir);
        }
        let (o, b, r) = (median(ours), median(base), median(rss));
        vec![
            Row {
                what: format!("`release install` vs `tar --zstd -xf`, synthetic artifact ({} in 20,000 files)", mb(total)),
                ours: secs(o),
                baseline: secs(b),
                ratio: format!("{:.2}×", o / b),
                target: "≤ 1.0×".into(),
                met: o / b <= 1.0,
            },
            Row {
                what: "peak RSS of `release install`, synthetic artifact".into(),
                ours: format!("{:.1} MB", r / 1024.0),
                baseline: "—".into(),
                ratio: "—".into(),
                target: "< 64 MB".into(),
                met: r / 1024.0 < 64.0,
            },
        ]
    }
}

/// The least an activate does, as a process of its own: point a `current`
/// symlink elsewhere by rename, fsync the directory, append a line to a
/// journal and fdatasync it.
fn activate_floor(dir: &Path) {
    use std::io::Write as _;
    let tmp = dir.join("current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink("releases/x", &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("current")).unwrap();
    std::fs::File::open(dir).unwrap().sync_all().unwrap();
    let mut journal = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("history.jsonl"))
        .unwrap();
    journal
        .write_all(b"{\"event\":\"activated\",\"release\":\"x\"}\n")
        .unwrap();
    journal.sync_data().unwrap();
}

/// A fresh ext4 filesystem on a loop device, created for the run and
/// removed after it (as root; otherwise a directory of the bench's own
/// temporary directory). The VM's own disk slows down for seconds after
/// large deletions (discards; see docs/host.md), which made install and tar
/// figures drift between runs; a fresh filesystem without `discard` is the
/// same for every run and both sides.
struct LoopFs {
    dir: PathBuf,
    image: Option<PathBuf>,
}

impl LoopFs {
    const SIZE: &str = "8G";

    fn create(work: &Path) -> LoopFs {
        let dir = work.join("fs");
        std::fs::create_dir_all(&dir).unwrap();
        if !rustix::process::geteuid().is_root() {
            eprintln!(
                "not root: installs run in {} (no loop filesystem)",
                dir.display()
            );
            return LoopFs { dir, image: None };
        }
        let image = work.join("fs.img");
        run(Command::new("truncate")
            .args(["-s", Self::SIZE])
            .arg(&image));
        // No discard at mkfs or mount time; inode tables and the journal
        // initialised now, so no background thread writes during the runs.
        run(Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-E",
                "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
            ])
            .arg(&image));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&dir));
        LoopFs {
            dir,
            image: Some(image),
        }
    }

    /// How the rows say where they ran.
    fn what(&self) -> &'static str {
        if self.image.is_some() {
            "on a fresh ext4 loop filesystem"
        } else {
            "on the bench's temporary directory (not root: no loop filesystem)"
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if let Some(image) = &self.image {
            let _ = Command::new("umount").arg(&self.dir).status();
            let _ = std::fs::remove_file(image);
        }
    }
}

/// The release id prefix (commit12) in an artifact's file name.
fn release_of(artifact: &Path) -> String {
    let name = artifact.file_name().unwrap().to_string_lossy().into_owned();
    let stem = name.trim_end_matches(".tar.zst");
    stem.rsplit('-').next().unwrap().to_string()
}

/// Run a command and sample its peak resident set (VmHWM) until it exits.
fn peak_rss_kb(cmd: &mut Command) -> u64 {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_path) {
            if let Some(kb) = text
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak = peak.max(kb);
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{cmd:?} failed");
            return peak;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A web server on loopback serving one directory; stopped on drop.
struct WebServer {
    child: std::process::Child,
    port: u16,
    kind: &'static str,
}

impl WebServer {
    fn start(work: &Path, dir: &Path) -> WebServer {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let nginx = Command::new("nginx")
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success());
        let (child, kind) = if nginx {
            let prefix = work.join("nginx");
            std::fs::create_dir_all(prefix.join("logs")).unwrap();
            let conf = prefix.join("nginx.conf");
            let user = if rustix::process::getuid().is_root() {
                "user root;"
            } else {
                ""
            };
            std::fs::write(
                &conf,
                format!(
                    "{user}\ndaemon off;\nworker_processes 1;\npid {pid};\nerror_log {log} warn;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n  sendfile on;\n  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n  fastcgi_temp_path {tmp};\n  uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n  server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
                    pid = prefix.join("nginx.pid").display(),
                    log = prefix.join("logs/error.log").display(),
                    tmp = prefix.display(),
                    root = dir.display(),
                ),
            )
            .unwrap();
            let child = Command::new("nginx")
                .arg("-p")
                .arg(&prefix)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(prefix.join("logs/error.log"))
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            (child, "nginx")
        } else {
            let child = Command::new("python3")
                .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
                .arg(dir)
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            (child, "Python's http.server")
        };
        let server = WebServer { child, port, kind };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{kind} did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        // SIGTERM: nginx's master then stops its worker too (SIGKILL would
        // leave the worker listening).
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
    }
}
