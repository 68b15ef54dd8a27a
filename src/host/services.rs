//! Services after a switch: reload each `[[service]]` so its processes move to
//! the new release, then run the `[health]` check. This is the seam of the
//! activation pipeline (see `activate.rs`): [`preflight`] runs before the
//! switch (a service that cannot be reloaded stops the activation with nothing
//! changed); when [`reload_and_check`] fails after the switch, activation
//! switches `current` back, reloads again, journals `failed` and exits 3.
//!
//! The strategies themselves, and how a reload is confirmed from the
//! processes, live in `host::reload`; `status` reads `/proc` through
//! `host::procs`.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::{FailedStep, ServicesCause, ServicesFailure};
use crate::host::config::{HostConfig, ServiceConfig, Strategy};
use crate::host::layout::Host;
use crate::host::procs::{self, Pid};
use crate::host::release_id::ReleaseId;
use crate::host::reload::{self, ReloadOutcome, Running, Target};
use crate::output::Printer;

fn releases_dir(host: &Host) -> PathBuf {
    std::fs::canonicalize(&host.releases).unwrap_or_else(|_| host.releases.clone())
}

/// Before anything changes: every service's pidfile names a live process of
/// this app, or the service is down and may be: optional, or any service on
/// a first deploy (`first`: no release was live).
pub fn preflight(
    config: &HostConfig,
    host: &Host,
    first: bool,
) -> Result<Vec<Option<Running>>, ServicesFailure> {
    reload::preflight(&config.services, &host.root, first).map_err(|e| ServicesFailure {
        step: FailedStep::Preflight,
        cause: ServicesCause::Reload(Box::new(e)),
        started: Vec::new(),
    })
}

/// What the services did after a switch.
#[derive(Debug, Default)]
pub struct Reloaded {
    pub outcomes: Vec<ReloadOutcome>,
    /// Services left down on a first deploy, which `release` cannot start.
    pub not_running: Vec<String>,
    /// The health check was skipped because of `not_running`.
    pub health_skipped: bool,
}

fn target<'a>(
    host: &'a Host,
    releases_dir: &'a std::path::Path,
    release: &'a ReleaseId,
) -> Target<'a> {
    Target {
        root: &host.root,
        releases_dir,
        id: release.as_str(),
        release: &release.commit12,
    }
}

/// Reload every service onto `release` (a directory name under releases/),
/// each confirmed from its processes, then wait for the health check.
///
/// On a first deploy (`first`) a service that is down is started when
/// `release` knows how ([`reload::start_command`]), and confirmed like a
/// reload; one it cannot start is left down with a warning that gives its
/// launch line, and the health check is then skipped (nothing would answer).
pub fn reload_and_check(
    config: &HostConfig,
    host: &Host,
    release: &ReleaseId,
    first: bool,
    printer: &Printer,
) -> Result<Reloaded, ServicesFailure> {
    let releases_dir = releases_dir(host);
    let target = target(host, &releases_dir, release);
    let running = preflight(config, host, first)?;
    let mut done = Reloaded::default();
    let mut started = Vec::new();
    let failed = |step, e, started: &Vec<String>| ServicesFailure {
        step,
        cause: ServicesCause::Reload(Box::new(e)),
        started: started.clone(),
    };
    for (service, running) in config.services.iter().zip(&running) {
        // Down on a first deploy: a service without a pidfile cannot be seen
        // to be down, so it is started when release can, else reloaded.
        let down_at_first = first && running.is_none();
        let outcome = if down_at_first && reload::start_command(service).is_some() {
            printer.progress(&format!(
                "starting {} (not running; first deploy)",
                service.name
            ));
            let outcome = waiting(printer, service, release, || {
                reload::start(service, &target)
            });
            started.push(service.name.clone());
            outcome.map_err(|e| failed(FailedStep::Start, e, &started))?
        } else if down_at_first && service.pidfile.is_some() {
            done.not_running.push(service.name.clone());
            printer.warn(&format!(
                "service {} is not running; this is the first release on this root, so it was activated anyway; {}",
                service.name,
                reload::launch_hint(service)
            ));
            continue;
        } else {
            printer.progress(&format!("reloading {} ({})", service.name, service.reload));
            let health = config.health.as_ref();
            waiting(printer, service, release, || {
                reload::reload(service, running.as_ref(), &target, health)
            })
            .map_err(|e| failed(FailedStep::Reload, e, &started))?
        };
        match &outcome.skipped {
            Some(why) => printer.warn(&format!("service {} skipped: {why}", service.name)),
            None => printer.progress(&format!(
                "  {} {} {release} in {:.2}s (pid {}, workers {:?})",
                service.name,
                if outcome.started { "started on" } else { "on" },
                outcome.seconds,
                outcome.pid.map_or("?".into(), |p| p.to_string()),
                outcome.workers
            )),
        }
        done.outcomes.push(outcome);
    }
    health(config, &target, &mut done, &started, printer)?;
    Ok(done)
}

/// Run `wait` (a start or a reload) with a spinner saying what it waits for.
fn waiting<T>(
    printer: &Printer,
    service: &ServiceConfig,
    release: &ReleaseId,
    wait: impl FnOnce() -> T,
) -> T {
    let spinner = printer.spinner(&format!("waiting for {} to show {release}", service.name));
    let outcome = wait();
    spinner.finish_and_clear();
    outcome
}

/// The health check after the reloads, skipped (with a warning) when a
/// service was left down on a first deploy: nothing would answer.
fn health(
    config: &HostConfig,
    target: &Target<'_>,
    done: &mut Reloaded,
    started: &[String],
    printer: &Printer,
) -> Result<(), ServicesFailure> {
    let Some(health) = &config.health else {
        return Ok(());
    };
    if done.not_running.is_empty() {
        printer.progress(&format!("health check {}", health.url));
        return reload::health_check(health, target).map_err(|e| ServicesFailure {
            step: FailedStep::Health,
            cause: ServicesCause::Health(Box::new(e)),
            started: started.to_vec(),
        });
    }
    done.health_skipped = true;
    let verb = if done.not_running.len() == 1 {
        "is"
    } else {
        "are"
    };
    printer.warn(&format!(
        "health check {} skipped: {} {verb} not running",
        health.url,
        done.not_running.join(", ")
    ));
    Ok(())
}

/// Stop the services a failed first deploy started (see
/// [`ServicesFailure::started`]), so that nothing runs the release it undid.
pub fn stop_started(
    config: &HostConfig,
    host: &Host,
    release: &ReleaseId,
    names: &[String],
    printer: &Printer,
) {
    let releases_dir = releases_dir(host);
    let target = target(host, &releases_dir, release);
    for service in config.services.iter().filter(|s| names.contains(&s.name)) {
        match reload::stop_started(service, &target) {
            Ok(()) => printer.progress(&format!("stopped {} again", service.name)),
            Err(why) => printer.warn(&format!(
                "service {} was started by this deploy and could not be stopped: {why}; stop it by hand",
                service.name
            )),
        }
    }
}

/// What a process is to its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The pidfile's pid.
    Master,
    /// A child of the master.
    Worker,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Master => "master",
            Role::Worker => "worker",
        })
    }
}

/// One process of a service, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessStatus {
    pub pid: Pid,
    pub role: Role,
    /// The release its working directory is in.
    pub release: Option<String>,
    /// Every release it uses: working directory, executable, mapped files.
    pub releases: Vec<String>,
    /// Start time, RFC 3339 UTC.
    pub started_at: Option<String>,
}

/// One service as `status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub reload: String,
    pub pidfile: Option<PathBuf>,
    pub pid: Option<Pid>,
    pub alive: bool,
    /// Why there is no live pid (missing or stale pidfile).
    pub problem: Option<String>,
    pub processes: Vec<ProcessStatus>,
    /// True when some process still runs an older release.
    pub stale: bool,
    /// What is stale and how to fix it.
    pub notes: Vec<String>,
}

/// What each configured service's processes really run. `current` is the
/// current release id, `activated_at` when it became current (epoch seconds).
pub fn statuses(
    config: &HostConfig,
    host: &Host,
    current: Option<&str>,
    activated_at: Option<f64>,
) -> Vec<ServiceStatus> {
    let releases_dir = releases_dir(host);
    config
        .services
        .iter()
        .map(|s| service_status(s, &releases_dir, current, activated_at))
        .collect()
}

fn service_status(
    service: &ServiceConfig,
    releases_dir: &std::path::Path,
    current: Option<&str>,
    activated_at: Option<f64>,
) -> ServiceStatus {
    let mut status = ServiceStatus {
        name: service.name.clone(),
        reload: service.reload.to_string(),
        pidfile: service.pidfile.clone(),
        pid: None,
        alive: false,
        problem: None,
        processes: Vec::new(),
        stale: false,
        notes: Vec::new(),
    };
    let Some(pidfile) = &service.pidfile else {
        status.problem = Some("no pidfile configured; its processes cannot be inspected".into());
        return status;
    };
    let pid = match procs::read_pidfile(pidfile) {
        Ok(pid) => pid,
        Err(problem) => {
            status.problem = Some(format!("pidfile {} {problem}", pidfile.display()));
            return status;
        }
    };
    status.pid = Some(pid);
    status.alive = true;
    let mut pids = vec![(pid, Role::Master)];
    pids.extend(procs::children(pid).into_iter().map(|k| (k, Role::Worker)));
    for (pid, role) in pids {
        let used = procs::releases_used(pid, releases_dir);
        let started = procs::start_time(pid);
        let process = ProcessStatus {
            pid,
            role,
            release: used.cwd_release.clone(),
            releases: used.all().into_iter().collect(),
            started_at: started
                .and_then(|t| chrono::DateTime::from_timestamp_millis((t * 1000.0) as i64))
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        };
        if let Some(current) = current {
            let old: Vec<&String> = process
                .releases
                .iter()
                .filter(|r| r.as_str() != current)
                .collect();
            if !old.is_empty() {
                status.stale = true;
                status.notes.push(format!(
                    "{role} {pid} still runs {} (current is {current})",
                    old.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            // A gunicorn master keeps the interpreter and everything it imported
            // (gunicorn itself, its dependencies, a preloaded app) across HUP.
            let gunicorn_master = role == Role::Master && procs::cmdline(pid).contains("gunicorn");
            // (Start times are known to a clock tick; allow for it.)
            if gunicorn_master && started.zip(activated_at).is_some_and(|(s, a)| s < a - 0.05) {
                status.stale = true;
                status.notes.push(format!(
                    "master {pid} started before {current} was activated: its interpreter and imported packages are from an older release (HUP does not renew them); use reload = \"gunicorn-upgrade\" or restart it"
                ));
            }
        }
        status.processes.push(process);
    }
    if service.reload == Strategy::Hup && status.processes.iter().all(|p| p.release.is_none()) {
        status.notes.push(
            "no process works inside a release: start it with --chdir/--workdir through current so reloads can be confirmed".into(),
        );
    }
    status
}

/// Human lines for `release status`.
pub fn human(services: &[ServiceStatus], color: bool) -> String {
    let mut text = String::new();
    for s in services {
        let head = match (s.pid, &s.problem) {
            (Some(pid), _) => format!("pid {pid}, alive"),
            (None, Some(problem)) => problem.clone(),
            (None, None) => "not running".into(),
        };
        text.push_str(&format!(
            "service   {} ({}): {head}{}\n",
            s.name,
            s.reload,
            if s.stale {
                format!(
                    "  {}",
                    crate::output::paint(color, crate::output::Style::Bad, "STALE")
                )
            } else {
                String::new()
            }
        ));
        for p in &s.processes {
            text.push_str(&format!(
                "          {:<6} {:>7}  {}\n",
                p.role.to_string(),
                p.pid,
                p.release
                    .as_deref()
                    .unwrap_or("(working directory not in a release)")
            ));
        }
        for note in &s.notes {
            text.push_str(&format!("          ! {note}\n"));
        }
    }
    text
}
