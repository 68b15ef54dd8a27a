//! Reloading one service after `current` moves, and confirming it: a reload
//! counts as done when the service shows it (new worker pids, a promoted new
//! master, a re-exec'd worker whose working directory is the new release),
//! never merely because a signal was sent. Also the health check. The
//! `[[service]]` and `[health]` settings are in `host::config`; running every
//! service of an activation is `host::services`. What each strategy picks up
//! is documented in docs/host.md ("Reloads").

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde::Serialize;

use crate::error::tail;
use crate::host::config::{HealthConfig, ServiceConfig, Strategy};
use crate::host::procs::{self, Pid, PidfileProblem};

const POLL: Duration = Duration::from_millis(50);

/// The release services must end up on.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub root: &'a Path,
    /// `<root>/releases`
    pub releases_dir: &'a Path,
    /// Directory name under releases/.
    pub id: &'a str,
    /// commit12, as the app reports it.
    pub release: &'a str,
}

/// What a confirmed reload looked like.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    pub service: String,
    pub strategy: String,
    /// Master pid after the reload.
    pub pid: Option<Pid>,
    pub workers: Vec<Pid>,
    pub seconds: f64,
    /// Set when the service was skipped (not running, `required = false`,
    /// or down on a first deploy with no way to start it).
    pub skipped: Option<String>,
    /// The service was down and `release` started it (first deploy).
    pub started: bool,
}

/// A reload that did not happen or could not be confirmed.
#[derive(Debug, Clone)]
pub struct ReloadError {
    pub service: String,
    pub message: String,
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "service {}: {}", self.service, self.message)
    }
}

/// A running service as found before the switch.
#[derive(Debug, Clone)]
pub struct Running {
    pub pid: Pid,
    pub workers: Vec<Pid>,
}

/// Check, before anything changes, that every service can be reloaded:
/// its pidfile names a live process that belongs to this root. Returns
/// per service `Some(running)` or `None` for a service that is down and may
/// be: optional (`required = false`), or any service on a first deploy
/// (`first`: no release was live, so there is nothing to keep serving).
pub fn preflight(
    services: &[ServiceConfig],
    root: &Path,
    first: bool,
) -> Result<Vec<Option<Running>>, ReloadError> {
    services
        .iter()
        .map(|s| preflight_one(s, root, first))
        .collect()
}

fn preflight_one(
    service: &ServiceConfig,
    root: &Path,
    first: bool,
) -> Result<Option<Running>, ReloadError> {
    let err = |message: String| ReloadError {
        service: service.name.clone(),
        message,
    };
    let pid = match (&service.reload, &service.pidfile) {
        (Strategy::Hup | Strategy::GunicornUpgrade, None) => {
            return Err(err(format!(
                "reload = \"{}\" needs `pidfile`; add the master's pidfile to this [[service]] in release.toml",
                service.reload
            )))
        }
        (_, None) => return Ok(None),
        (_, Some(pidfile)) => match procs::read_pidfile(pidfile) {
            Ok(pid) => pid,
            Err(PidfileProblem::Missing | PidfileProblem::Dead(_))
                if !service.required || first =>
            {
                return Ok(None);
            }
            Err(problem) => {
                return Err(err(format!(
                    "pidfile {} {problem}\n  fix: start the service (it picks up `current` when it starts), correct `pidfile`, or set `required = false` on it to deploy while it is down",
                    pidfile.display()
                )))
            }
        },
    };
    if !belongs_to_root(pid, root) {
        return Err(err(format!(
            "pid {pid} from {} is `{}`, which does not use {} (not in its command line, working directory or memory maps); the pidfile is probably stale and the pid reused\n  fix: restart the service so it rewrites its pidfile, or correct `pidfile`",
            service.pidfile.as_deref().unwrap_or(Path::new("?")).display(),
            procs::cmdline(pid),
            root.display()
        )));
    }
    Ok(Some(Running {
        pid,
        workers: procs::children(pid),
    }))
}

/// A process of this app mentions the root in its command line, or works in or
/// maps files from it.
fn belongs_to_root(pid: Pid, root: &Path) -> bool {
    let canonical = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mentions = |pid: Pid| {
        let cmd = procs::cmdline(pid);
        cmd.contains(&*root.to_string_lossy()) || cmd.contains(&*canonical.to_string_lossy())
    };
    let uses = |pid: Pid| {
        let r = procs::releases_used(pid, &canonical.join("releases"));
        !r.all().is_empty()
            || r.cwd
                .as_deref()
                .is_some_and(|c| c.starts_with(&canonical) || c.starts_with(root))
    };
    mentions(pid)
        || uses(pid)
        || procs::children(pid)
            .into_iter()
            .any(|k| mentions(k) || uses(k))
}

/// Reload one service and wait until it shows the new release.
pub fn reload(
    service: &ServiceConfig,
    running: Option<&Running>,
    target: &Target<'_>,
    health: Option<&HealthConfig>,
) -> Result<ReloadOutcome, ReloadError> {
    let started = Instant::now();
    let err = |message: String| ReloadError {
        service: service.name.clone(),
        message,
    };
    let deadline = started + service.timeout();
    let outcome = |pid: Option<Pid>, workers: Vec<Pid>| ReloadOutcome {
        service: service.name.clone(),
        strategy: service.reload.to_string(),
        pid,
        workers,
        seconds: started.elapsed().as_secs_f64(),
        skipped: None,
        started: false,
    };
    if running.is_none() && service.pidfile.is_some() {
        return Ok(ReloadOutcome {
            skipped: Some("not running (required = false)".into()),
            ..outcome(None, vec![])
        });
    }
    match &service.reload {
        Strategy::GunicornUpgrade => {
            let running = running.expect("preflight found the master");
            let pidfile = service
                .pidfile
                .as_deref()
                .expect("preflight checked pidfile");
            let (pid, workers) =
                gunicorn_upgrade(pidfile, running, target, health, deadline).map_err(err)?;
            Ok(outcome(Some(pid), workers))
        }
        strategy => {
            match strategy {
                Strategy::Hup => {
                    let running = running.expect("preflight found the process");
                    procs::signal(running.pid, Signal::HUP)
                        .map_err(|e| err(format!("cannot send HUP to pid {}: {e}", running.pid)))?;
                }
                Strategy::Systemd(unit) => {
                    run_trigger(Command::new("systemctl").args(["reload", unit]), target)
                        .map_err(err)?;
                }
                Strategy::Supervisor(prog) => {
                    run_trigger(
                        Command::new("supervisorctl").args(["signal", "HUP", prog]),
                        target,
                    )
                    .map_err(err)?;
                }
                Strategy::Command(cmd) => {
                    run_trigger(Command::new("/bin/sh").args(["-c", cmd]), target).map_err(err)?;
                }
                Strategy::GunicornUpgrade => unreachable!(),
            }
            match running {
                Some(running) => {
                    let workers = confirm_in_place(running, target, deadline).map_err(err)?;
                    Ok(outcome(Some(running.pid), workers))
                }
                // Without a pidfile the trigger's success (and the health
                // check that follows) is all there is to go by.
                None => Ok(outcome(None, vec![])),
            }
        }
    }
}

fn run_trigger(cmd: &mut Command, target: &Target<'_>) -> Result<(), String> {
    let out = cmd
        .env("RELEASE_ID", target.id)
        .env("RELEASE", target.release)
        .env("RELEASE_ROOT", target.root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(format!(
        "{cmd:?} failed ({}):\n{}",
        out.status,
        tail(&text, 10)
    ))
}

/// The command that starts `service` when it is down, if `release` knows one:
/// its `start`, else `systemctl start UNIT` or `supervisorctl start PROG`.
pub fn start_command(service: &ServiceConfig) -> Option<Vec<String>> {
    let argv = |a: &[&str]| Some(a.iter().map(|s| s.to_string()).collect());
    match (&service.start, &service.reload) {
        (Some(cmd), _) => argv(&["/bin/sh", "-c", cmd]),
        (None, Strategy::Systemd(unit)) => argv(&["systemctl", "start", unit]),
        (None, Strategy::Supervisor(prog)) => argv(&["supervisorctl", "start", prog]),
        _ => None,
    }
}

/// What to tell the operator about a service that is down on a first deploy
/// and that `release` cannot start: its `launch` line, or where to find one.
pub fn launch_hint(service: &ServiceConfig) -> String {
    match &service.launch {
        Some(line) => format!("start it with:\n    {line}"),
        None => {
            "start it through current (the README's launch lines; `release init --wsgi/--celery` generates them), or give this [[service]] `launch = \"…\"` to have it shown here, or `start = \"…\"` to have release start it"
            .to_string()
        }
    }
}

/// Start a service that is down (on a first deploy) with
/// [`start_command`], then wait, as for a reload, until its processes show
/// the target release: the pidfile names a live process of this root working
/// in the target release, and every child does too. Without a pidfile the
/// command's exit status is all there is to go by (the health check follows).
pub fn start(service: &ServiceConfig, target: &Target<'_>) -> Result<ReloadOutcome, ReloadError> {
    let started = Instant::now();
    let err = |message: String| ReloadError {
        service: service.name.clone(),
        message,
    };
    let argv = start_command(service)
        .ok_or_else(|| err("release does not know how to start it".into()))?;
    let deadline = started + service.timeout();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    run_bounded(&mut cmd, target, deadline).map_err(err)?;
    let outcome = |pid: Option<Pid>, workers: Vec<Pid>| ReloadOutcome {
        service: service.name.clone(),
        strategy: service.reload.to_string(),
        pid,
        workers,
        seconds: started.elapsed().as_secs_f64(),
        skipped: None,
        started: true,
    };
    let Some(pidfile) = &service.pidfile else {
        return Ok(outcome(None, vec![]));
    };
    loop {
        let last = match procs::read_pidfile(pidfile) {
            Ok(pid) => {
                let kids = procs::children(pid);
                let on_target = |p: Pid| cwd_release(p, target).is_none_or(|r| r == target.id);
                let master = cwd_release(pid, target);
                if master.as_deref() == Some(target.id) && kids.iter().all(|k| on_target(*k)) {
                    return Ok(outcome(Some(pid), kids));
                }
                format!(
                    "pid {pid} from {} works in {}, not in release {}; start it with its working directory through current (gunicorn --chdir, celery --workdir)",
                    pidfile.display(),
                    master.unwrap_or_else(|| "no release".into()),
                    target.id
                )
            }
            Err(problem) => format!("pidfile {} {problem}", pidfile.display()),
        };
        if Instant::now() >= deadline {
            return Err(err(format!(
                "started with `{}`, but within {:?}: {last}\n  fix: check the service's log; raise `timeout` on the [[service]] if it is just slow",
                argv.join(" "),
                service.timeout()
            )));
        }
        sleep(POLL);
    }
}

/// Stop a service `release` started on a first deploy that it then undid:
/// `systemctl stop` / `supervisorctl stop`, else TERM to the pidfile's pid.
/// Best effort; returns what went wrong.
pub fn stop_started(service: &ServiceConfig, target: &Target<'_>) -> Result<(), String> {
    let deadline = Instant::now() + service.timeout();
    match (&service.start, &service.reload) {
        (None, Strategy::Systemd(unit)) => run_bounded(
            Command::new("systemctl").args(["stop", unit]),
            target,
            deadline,
        ),
        (None, Strategy::Supervisor(prog)) => run_bounded(
            Command::new("supervisorctl").args(["stop", prog]),
            target,
            deadline,
        ),
        _ => {
            let Some(pidfile) = &service.pidfile else {
                return Err("it has no pidfile, so release cannot tell what to stop".into());
            };
            let Ok(pid) = procs::read_pidfile(pidfile) else {
                return Ok(());
            };
            procs::signal(pid, Signal::TERM).map_err(|e| format!("TERM to pid {pid}: {e}"))?;
            while procs::alive(pid) {
                if Instant::now() >= deadline {
                    return Err(format!("pid {pid} did not exit after TERM"));
                }
                sleep(POLL);
            }
            Ok(())
        }
    }
}

/// Run a start or stop command with the release's variables, its output to a
/// temporary file (a daemon it leaves behind may keep the descriptors), in a
/// process group of its own that is killed if it has not returned by
/// `deadline`.
fn run_bounded(cmd: &mut Command, target: &Target<'_>, deadline: Instant) -> Result<(), String> {
    use std::io::{Read, Seek};
    use std::os::unix::process::CommandExt;
    let shown = format!("{cmd:?}");
    let mut log = tempfile::tempfile().map_err(|e| format!("cannot run {shown}: {e}"))?;
    let out = log
        .try_clone()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let err_out = log
        .try_clone()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let mut child = cmd
        .env("RELEASE_ID", target.id)
        .env("RELEASE", target.release)
        .env("RELEASE_ROOT", target.root)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err_out)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => sleep(POLL),
            Ok(None) | Err(_) => {
                if let Some(group) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ = rustix::process::kill_process_group(group, Signal::KILL);
                }
                let _ = child.wait();
                return Err(format!(
                    "{shown} did not return within the timeout and was killed (a start command must start the service and return, as `systemctl start` does)"
                ));
            }
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut text = String::new();
    let _ = log.rewind().and_then(|()| log.read_to_string(&mut text));
    Err(format!("{shown} failed ({status}):\n{}", tail(&text, 10)))
}

/// Where a process works, as a release directory name, if it is in one.
fn cwd_release(pid: Pid, target: &Target<'_>) -> Option<String> {
    procs::releases_used(pid, target.releases_dir).cwd_release
}

/// After a signal that reloads in place (gunicorn HUP: new workers, same
/// master; celery HUP: re-exec, same pid, new pool): wait until every worker
/// that existed before is gone, new ones run, and every process whose working
/// directory is in a release is in the new one.
fn confirm_in_place(
    running: &Running,
    target: &Target<'_>,
    deadline: Instant,
) -> Result<Vec<Pid>, String> {
    let before: BTreeSet<Pid> = running.workers.iter().copied().collect();
    let pid = running.pid;
    let cwd_known = cwd_release(pid, target).is_some();
    if before.is_empty() && !cwd_known {
        return Err(format!(
            "pid {pid} has no worker processes and its working directory is not in a release, so a reload cannot be confirmed\n  fix: start it with its working directory through current (gunicorn --chdir, celery --workdir)"
        ));
    }
    loop {
        if !procs::alive(pid) {
            return Err(format!(
                "pid {pid} exited during the reload (see the service's log)"
            ));
        }
        let kids = procs::children(pid);
        let replaced =
            before.is_empty() || (!kids.is_empty() && kids.iter().all(|k| !before.contains(k)));
        let on_target = |p: Pid| cwd_release(p, target).is_none_or(|r| r == target.id);
        let master_ok = !cwd_known || cwd_release(pid, target).as_deref() == Some(target.id);
        if replaced && master_ok && kids.iter().all(|k| on_target(*k)) {
            return Ok(kids);
        }
        let last = format!(
            "workers now {kids:?} (before {before:?}), working directory in {}",
            cwd_release(pid, target).unwrap_or_else(|| "no release".into())
        );
        if Instant::now() >= deadline {
            return Err(format!(
                "the reload did not show within the timeout: {last}\n  fix: check the service's log; raise `timeout` on the [[service]] if it is just slow"
            ));
        }
        sleep(POLL);
    }
}

/// gunicorn's binary upgrade: USR2 makes the master fork and exec a new master
/// (through `current`, so the new release's venv) that writes `<pidfile>.2`;
/// once the new master has workers on the new release (and the health check
/// sees the new release when one is configured), TERM the old master, which
/// stops gracefully; the new master then renames its pidfile to `<pidfile>`.
/// If anything fails before the old master is told to stop, the new master is
/// stopped and the old one keeps serving.
fn gunicorn_upgrade(
    pidfile: &Path,
    running: &Running,
    target: &Target<'_>,
    health: Option<&HealthConfig>,
    deadline: Instant,
) -> Result<(Pid, Vec<Pid>), String> {
    let old = running.pid;
    let pidfile2 = PathBuf::from(format!("{}.2", pidfile.display()));
    if let Err(PidfileProblem::Dead(_) | PidfileProblem::Garbage(_)) =
        procs::read_pidfile(&pidfile2)
    {
        let _ = std::fs::remove_file(&pidfile2);
    }
    procs::signal(old, Signal::USR2).map_err(|e| format!("cannot send USR2 to pid {old}: {e}"))?;

    // Stop a new master that failed, so the old one stays in charge alone.
    let abandon = |new: Option<Pid>, why: String| -> String {
        if let Some(new) = new {
            let _ = procs::signal(new, Signal::TERM);
            let until = Instant::now() + Duration::from_secs(10);
            while procs::alive(new) && Instant::now() < until {
                sleep(POLL);
            }
        }
        format!("{why}; the old master (pid {old}) keeps serving")
    };

    // 1. The new master: a live child of the old one, named in <pidfile>.2.
    let new = loop {
        if !procs::alive(old) {
            return Err(format!("the old master (pid {old}) exited after USR2"));
        }
        if let Ok(pid) = procs::read_pidfile(&pidfile2) {
            if pid != old {
                break pid;
            }
        }
        let forked: Vec<Pid> = procs::children(old)
            .into_iter()
            .filter(|p| !running.workers.contains(p) && procs::cmdline(*p).contains("gunicorn"))
            .collect();
        if Instant::now() >= deadline {
            return Err(abandon(
                forked.first().copied(),
                format!(
                    "no new master wrote {} within the timeout",
                    pidfile2.display()
                ),
            ));
        }
        sleep(POLL);
    };

    // 2. Its workers run, from the new release.
    loop {
        if !procs::alive(new) {
            return Err(abandon(
                None,
                format!("the new master (pid {new}) exited: its workers failed to boot (see gunicorn's log)"),
            ));
        }
        let kids = procs::children(new);
        let on_target = |p: Pid| cwd_release(p, target).is_none_or(|r| r == target.id);
        if !kids.is_empty() && kids.iter().all(|k| on_target(*k)) && workers_booted(&kids) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(abandon(
                Some(new),
                format!(
                    "the new master (pid {new}) has no workers on release {} within the timeout",
                    target.id
                ),
            ));
        }
        sleep(POLL);
    }

    // 3. The new release answers (old and new workers share the socket now).
    if let Some(health) = health {
        if let Err(why) = health_check(health, target) {
            return Err(abandon(
                Some(new),
                format!("health check during the upgrade failed: {why}"),
            ));
        }
    }

    // 4. Retire the old master gracefully; the new one promotes itself.
    procs::signal(old, Signal::TERM)
        .map_err(|e| format!("cannot send TERM to the old master {old}: {e}"))?;
    loop {
        let promoted = procs::read_pidfile(pidfile).is_ok_and(|p| p == new);
        if !procs::alive(old) && promoted {
            return Ok((new, procs::children(new)));
        }
        if !procs::alive(new) {
            return Err(format!(
                "the new master (pid {new}) exited while the old one stopped"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the old master (pid {old}) did not stop, or the new one (pid {new}) did not take over {}, within the timeout",
                pidfile.display()
            ));
        }
        sleep(POLL);
    }
}

/// A gunicorn worker has booted when it has been alive for a moment: a worker
/// whose app fails to import exits at once, and its master then halts.
fn workers_booted(kids: &[Pid]) -> bool {
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    kids.iter()
        .all(|k| procs::start_time(*k).is_some_and(|t| now - t >= 1.0))
}

/// Poll the health URL until it answers 2xx (and, when `expect` is set, its
/// body contains the expected text).
pub fn health_check(health: &HealthConfig, target: &Target<'_>) -> Result<(), String> {
    let expected = health.expected(target.release, target.id);
    let deadline = Instant::now() + health.timeout();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut last;
    loop {
        match agent.get(&health.url).call() {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let body = response.body_mut().read_to_string().unwrap_or_default();
                let wanted = expected.as_deref().is_none_or(|e| body.contains(e));
                if (200..300).contains(&status) && wanted {
                    return Ok(());
                }
                last = format!(
                    "{} answered {status} with {:?}, expected a 2xx{}",
                    health.url,
                    body.chars().take(200).collect::<String>(),
                    expected
                        .as_deref()
                        .map(|e| format!(" containing {e:?} (`expect` in [health])"))
                        .unwrap_or_default()
                );
            }
            Err(e) => last = format!("{}: {e}", health.url),
        }
        if Instant::now() >= deadline {
            return Err(format!("{last} (gave up after {:?})", health.timeout()));
        }
        sleep(Duration::from_millis(100));
    }
}
