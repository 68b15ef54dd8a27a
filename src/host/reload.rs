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

use crate::error::{tail, HealthAnswer, HealthError, ReloadError, ReloadProblem, StartSeen};
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
    let err = |problem: ReloadProblem| ReloadError {
        service: service.name.clone(),
        problem,
    };
    let pid = match (&service.reload, &service.pidfile) {
        (Strategy::Hup | Strategy::GunicornUpgrade, None) => {
            return Err(err(ReloadProblem::NeedsPidfile {
                strategy: service.reload.to_string(),
            }))
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
                return Err(err(ReloadProblem::Pidfile {
                    path: pidfile.clone(),
                    problem,
                }))
            }
        },
    };
    if !belongs_to_root(pid, root) {
        return Err(err(ReloadProblem::NotOurs {
            pid,
            pidfile: service.pidfile.clone().unwrap_or_default(),
            cmdline: procs::cmdline(pid),
            root: root.to_path_buf(),
        }));
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
    let err = |problem: ReloadProblem| ReloadError {
        service: service.name.clone(),
        problem,
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
                    send(running.pid, Signal::HUP, "HUP").map_err(err)?;
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

fn run_trigger(cmd: &mut Command, target: &Target<'_>) -> Result<(), ReloadProblem> {
    let out = cmd
        .env("RELEASE_ID", target.id)
        .env("RELEASE", target.release)
        .env("RELEASE_ROOT", target.root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ReloadProblem::TriggerNotRunnable {
            command: format!("{cmd:?}"),
            error: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(ReloadProblem::TriggerFailed {
        command: format!("{cmd:?}"),
        status: out.status.to_string(),
        tail: tail(&text, 10),
    })
}

/// Send `signal` (named `name` in errors) to `pid`.
fn send(pid: Pid, signal: Signal, name: &'static str) -> Result<(), ReloadProblem> {
    procs::signal(pid, signal).map_err(|e| ReloadProblem::Signal {
        signal: name,
        pid,
        error: e.to_string(),
    })
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
    let err = |problem: ReloadProblem| ReloadError {
        service: service.name.clone(),
        problem,
    };
    let argv = start_command(service).ok_or_else(|| err(ReloadProblem::CannotStart))?;
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
                Box::new(StartSeen::Elsewhere {
                    pid,
                    pidfile: pidfile.clone(),
                    cwd_release: master,
                    release: target.id.to_string(),
                })
            }
            Err(problem) => Box::new(StartSeen::Pidfile {
                path: pidfile.clone(),
                problem,
            }),
        };
        if Instant::now() >= deadline {
            return Err(err(ReloadProblem::StartNotShown {
                command: argv.join(" "),
                timeout: service.timeout(),
                last,
            }));
        }
        sleep(POLL);
    }
}

/// Stop a service `release` started on a first deploy that it then undid:
/// `systemctl stop` / `supervisorctl stop`, else TERM to the pidfile's pid.
/// Best effort; returns what went wrong.
pub fn stop_started(service: &ServiceConfig, target: &Target<'_>) -> Result<(), ReloadProblem> {
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
                return Err(ReloadProblem::NothingToStop);
            };
            let Ok(pid) = procs::read_pidfile(pidfile) else {
                return Ok(());
            };
            send(pid, Signal::TERM, "TERM")?;
            while procs::alive(pid) {
                if Instant::now() >= deadline {
                    return Err(ReloadProblem::DidNotStop { pid });
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
fn run_bounded(
    cmd: &mut Command,
    target: &Target<'_>,
    deadline: Instant,
) -> Result<(), ReloadProblem> {
    use std::io::{Read, Seek};
    use std::os::unix::process::CommandExt;
    let shown = format!("{cmd:?}");
    let not_runnable = |e: std::io::Error| ReloadProblem::TriggerNotRunnable {
        command: shown.clone(),
        error: e.to_string(),
    };
    let mut log = tempfile::tempfile().map_err(not_runnable)?;
    let out = log.try_clone().map_err(not_runnable)?;
    let err_out = log.try_clone().map_err(not_runnable)?;
    let mut child = cmd
        .env("RELEASE_ID", target.id)
        .env("RELEASE", target.release)
        .env("RELEASE_ROOT", target.root)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err_out)
        .process_group(0)
        .spawn()
        .map_err(not_runnable)?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => sleep(POLL),
            Ok(None) | Err(_) => {
                if let Some(group) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ = rustix::process::kill_process_group(group, Signal::KILL);
                }
                let _ = child.wait();
                return Err(ReloadProblem::TriggerTimedOut { command: shown });
            }
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut text = String::new();
    let _ = log.rewind().and_then(|()| log.read_to_string(&mut text));
    Err(ReloadProblem::TriggerFailed {
        command: shown,
        status: status.to_string(),
        tail: tail(&text, 10),
    })
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
) -> Result<Vec<Pid>, ReloadProblem> {
    let before: BTreeSet<Pid> = running.workers.iter().copied().collect();
    let pid = running.pid;
    let cwd_known = cwd_release(pid, target).is_some();
    if before.is_empty() && !cwd_known {
        return Err(ReloadProblem::Unconfirmable { pid });
    }
    loop {
        if !procs::alive(pid) {
            return Err(ReloadProblem::Exited { pid });
        }
        let kids = procs::children(pid);
        let replaced =
            before.is_empty() || (!kids.is_empty() && kids.iter().all(|k| !before.contains(k)));
        let on_target = |p: Pid| cwd_release(p, target).is_none_or(|r| r == target.id);
        let master_ok = !cwd_known || cwd_release(pid, target).as_deref() == Some(target.id);
        if replaced && master_ok && kids.iter().all(|k| on_target(*k)) {
            return Ok(kids);
        }
        if Instant::now() >= deadline {
            return Err(ReloadProblem::NotShown {
                workers: kids,
                before: before.into_iter().collect(),
                cwd_release: cwd_release(pid, target),
            });
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
) -> Result<(Pid, Vec<Pid>), ReloadProblem> {
    let old = running.pid;
    let pidfile2 = PathBuf::from(format!("{}.2", pidfile.display()));
    if let Err(PidfileProblem::Dead(_) | PidfileProblem::Garbage(_)) =
        procs::read_pidfile(&pidfile2)
    {
        let _ = std::fs::remove_file(&pidfile2);
    }
    send(old, Signal::USR2, "USR2")?;
    // 1. The new master: a live child of the old one, named in <pidfile>.2.
    let new = new_master(running, &pidfile2, deadline)
        .map_err(|(forked, why)| abandon(old, forked, why))?;
    // 2. Its workers run, from the new release.
    new_workers(new, target, deadline).map_err(|why| {
        let stop = (!matches!(why, ReloadProblem::NewMasterDied { .. })).then_some(new);
        abandon(old, stop, why)
    })?;
    // 3. The new release answers (old and new workers share the socket now).
    if let Some(health) = health {
        if let Err(why) = health_check(health, target) {
            return Err(abandon(
                old,
                Some(new),
                ReloadProblem::HealthDuringUpgrade(why),
            ));
        }
    }
    // 4. Retire the old master gracefully; the new one promotes itself.
    send(old, Signal::TERM, "TERM")?;
    loop {
        let promoted = procs::read_pidfile(pidfile).is_ok_and(|p| p == new);
        if !procs::alive(old) && promoted {
            return Ok((new, procs::children(new)));
        }
        if !procs::alive(new) {
            return Err(ReloadProblem::NewMasterExitedLate { new });
        }
        if Instant::now() >= deadline {
            return Err(ReloadProblem::OldMasterStuck {
                old,
                new,
                pidfile: pidfile.to_path_buf(),
            });
        }
        sleep(POLL);
    }
}

/// Stop a new master that failed (`new`, when there is one), so the old one
/// stays in charge alone.
fn abandon(old: Pid, new: Option<Pid>, why: ReloadProblem) -> ReloadProblem {
    if let Some(new) = new {
        let _ = procs::signal(new, Signal::TERM);
        let until = Instant::now() + Duration::from_secs(10);
        while procs::alive(new) && Instant::now() < until {
            sleep(POLL);
        }
    }
    ReloadProblem::Abandoned {
        why: Box::new(why),
        old,
    }
}

/// The new master after USR2: the pid `<pidfile>.2` names. On failure, also
/// the master forked so far (to stop).
fn new_master(
    running: &Running,
    pidfile2: &Path,
    deadline: Instant,
) -> Result<Pid, (Option<Pid>, ReloadProblem)> {
    let old = running.pid;
    loop {
        if !procs::alive(old) {
            return Err((None, ReloadProblem::OldMasterExited { old }));
        }
        if let Ok(pid) = procs::read_pidfile(pidfile2) {
            if pid != old {
                return Ok(pid);
            }
        }
        if Instant::now() >= deadline {
            let forked = procs::children(old)
                .into_iter()
                .find(|p| !running.workers.contains(p) && procs::cmdline(*p).contains("gunicorn"));
            let why = ReloadProblem::NoNewMaster {
                pidfile: pidfile2.to_path_buf(),
            };
            return Err((forked, why));
        }
        sleep(POLL);
    }
}

/// Wait until the new master has booted workers, all in the new release.
fn new_workers(new: Pid, target: &Target<'_>, deadline: Instant) -> Result<(), ReloadProblem> {
    loop {
        if !procs::alive(new) {
            return Err(ReloadProblem::NewMasterDied { new });
        }
        let kids = procs::children(new);
        let on_target = |p: Pid| cwd_release(p, target).is_none_or(|r| r == target.id);
        if !kids.is_empty() && kids.iter().all(|k| on_target(*k)) && workers_booted(&kids) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ReloadProblem::NoWorkersOnRelease {
                new,
                release: target.id.to_string(),
            });
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
pub fn health_check(health: &HealthConfig, target: &Target<'_>) -> Result<(), HealthError> {
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
                last = HealthAnswer::Unexpected {
                    url: health.url.clone(),
                    status,
                    body: body.chars().take(200).collect(),
                    expected: expected.clone(),
                };
            }
            Err(e) => {
                last = HealthAnswer::Unreachable {
                    url: health.url.clone(),
                    error: e.to_string(),
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(HealthError {
                last,
                waited: health.timeout(),
            });
        }
        sleep(Duration::from_millis(100));
    }
}
