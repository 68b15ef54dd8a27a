//! `release init`: the host layout with safe permissions and a commented
//! `release.toml` that names every key. An existing `release.toml` is never
//! overwritten.
//!
//! With `--wsgi` and/or `--celery` it also sets the host up for reloads
//! through `current`: the release.toml gets a `web` (gunicorn) and/or a
//! `worker` (celery) service, each with its `launch` line, and the systemd
//! units that run exactly those lines are printed, or written with
//! `--systemd DIR`. One [`Launch`] per service is the single source of both:
//! the shell line (`cd DIR && exec ARGV`) and the unit
//! (`WorkingDirectory=DIR`, `Environment=PWD=DIR`, `ExecStart=ARGV`).

use std::path::{Path, PathBuf};

use serde::Serialize;

use fs_err as fs;

use crate::error::{Error, Result, RootError};
use crate::fsutil;
use crate::host::layout::Host;
use crate::output::Printer;

const HEAD: &str = r#"# release.toml: settings of this host root. `release help config` prints the
# reference of every key (it ships with the binary).
# Every key is optional; the values shown commented out are the defaults.

# How many of the newest installs `release prune` (and `deploy`) keep, besides
# the current release, the rollback target and releases a process still uses.
# keep = 5

# Release paths replaced by links to <root>/shared/<same path>, kept across
# releases (uploads, env files, a sqlite database). Create shared files such
# as app/.env first.
# shared = ["app/media", "app/.env"]

# Keep <root>/static/, every file of every installed release's static/ (the
# live release's where two differ), for the web server to serve:
# location /static/ { alias <root>/static/; }. false: static files are served
# from elsewhere (a CDN) and release leaves <root>/static/ alone.
# serve_static = true

"#;

const SERVICES: &str = r#"# One table per process to reload after `current` moves. The reload is
# confirmed from the processes themselves (see the README's strategy table).
# [[service]]
# name = "web"
# pidfile = "/run/mysite/gunicorn.pid"
# reload = "gunicorn-upgrade"     # hup | gunicorn-upgrade | systemd:UNIT | supervisor:PROG | command:CMD
# timeout = "60s"                 # how long the reload may take to show
# required = true                 # false: a service that is down is skipped with a warning
# start = "systemctl start mysite-web"  # first deploy only: how release starts it when it is down
# launch = "cd /srv/mysite/current/app && exec …"  # first deploy only: shown when release cannot start it
#
# [[service]]
# name = "worker"
# pidfile = "/run/mysite/celery.pid"
# reload = "hup"
# timeout = "10m"                 # longer than your longest task: HUP waits for running tasks

"#;

const HEALTH: &str = r#"# Polled after the reloads; on failure the previous release is restored (exit 3).
# [health]
# url = "http://127.0.0.1:8000/healthz"   # any 2xx answer will do
# expect = "{release}"            # opt-in: the body must also contain it; {release} = commit12, {id} = directory name
# timeout = "30s"

"#;

const HOOKS_HEAD: &str = r#"# Hooks run with /bin/sh in the release (venv/bin first on PATH, app/ on
# PYTHONPATH). before_activate runs in the new release right before the
# switch (never on `release rollback`): migrations go there. after_activate
# runs after the switch, on rollbacks too; RELEASE_SWITCH is `activate` or
# `rollback` (docs: `release help config`).
"#;

const HOOKS_REST: &str = r#"# before_activate = "venv/bin/python app/manage.py migrate --noinput"   # failure: exit 1, nothing live changed
# after_activate = "venv/bin/python app/manage.py clearsessions"        # failure is a warning
# notify = "https://deploys.example.invalid/hook"    # POST of the journal event; never fatal

# When keys are listed, every install needs a minisign signature by one of them
# (ARTIFACT.minisig, or --signature): the second line of each key's .pub file.
# List two while rotating keys.
# [trust]
# minisign_keys = ["RWTPI//N+20ae0FWeNU2kFTlyCQEIbrPOxWG5kXNYcIe4ixdnaF4MOIm"]
"#;

/// The file a plain `release init` writes: every key, commented, with its default.
pub fn template() -> String {
    format!(
        "{HEAD}{SERVICES}{HEALTH}{HOOKS_HEAD}# [hooks]\n# check = \"venv/bin/python -c 'import mysite.wsgi'\"   # in the new release, before the switch\n{HOOKS_REST}"
    )
}

/// The service options of `release init` (see `cli::InitArgs`).
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// `module:app` gunicorn serves.
    pub wsgi: Option<String>,
    /// The celery app (`-A`).
    pub celery: Option<String>,
    /// Where the pidfiles go; default `/run/<name>`.
    pub run_dir: Option<PathBuf>,
    pub bind: String,
    pub workers: u32,
    /// URL path for `[health]`, e.g. `/healthz`.
    pub health: Option<String>,
    /// Unit name prefix; default: the root's directory name.
    pub name: Option<String>,
    /// `User=` of the units.
    pub user: Option<String>,
    /// Write the units here instead of printing them.
    pub systemd: Option<PathBuf>,
}

/// How one service is run through `current`: from `dir`, with `PWD=dir`
/// (gunicorn's USR2 re-exec starts from the logical `$PWD`), exec `argv`.
#[derive(Debug, Clone, Serialize)]
pub struct Launch {
    pub dir: PathBuf,
    pub argv: Vec<String>,
}

impl Launch {
    /// The shell line: what the release.toml's `launch` holds.
    pub fn shell(&self) -> String {
        format!("cd {} && exec {}", self.dir.display(), self.argv.join(" "))
    }
}

/// One generated service: its release.toml table, launch line and unit.
#[derive(Debug, Clone, Serialize)]
pub struct GeneratedService {
    pub name: String,
    pub pidfile: PathBuf,
    pub reload: String,
    pub launch: String,
    /// `<name>-web.service` / `<name>-worker.service`.
    pub unit_name: String,
    pub unit: String,
    /// Where the unit was written (`--systemd DIR`).
    pub unit_file: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct InitReport {
    pub root: PathBuf,
    pub config: PathBuf,
    /// False when a release.toml was already there (it is left as it is).
    pub config_written: bool,
    /// The services `--wsgi` / `--celery` set up (empty without them).
    pub services: Vec<GeneratedService>,
}

/// Characters allowed in what init puts into launch lines and units, so
/// that neither a shell nor systemd needs quoting (`%` would be a systemd
/// specifier, spaces and quotes would split or join words).
fn plain(what: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+@:,=".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{what} {value:?} has characters release init does not put into launch lines and units (only letters, digits and / . _ - + @ : , =)\n  fix: use a plain path or name, or write the launch line and unit by hand (README: \"Running the app so reloads work through current\")"
        )))
    }
}

fn services(host: &Host, options: &InitOptions) -> Result<Vec<GeneratedService>> {
    if options.wsgi.is_none() && options.celery.is_none() {
        for (given, flag) in [
            (options.run_dir.is_some(), "--run-dir"),
            (options.health.is_some(), "--health"),
            (options.systemd.is_some(), "--systemd"),
            (options.user.is_some(), "--user"),
        ] {
            if given {
                return Err(Error::Usage(format!(
                    "{flag} describes the services, but none was given\n  fix: add --wsgi MODULE:APP and/or --celery APP"
                )));
            }
        }
        return Ok(Vec::new());
    }
    let units = Units::new(host, options)?;
    let mut generated = Vec::new();
    if let Some(wsgi) = &options.wsgi {
        generated.push(units.web(wsgi));
    }
    if let Some(celery) = &options.celery {
        generated.push(units.worker(celery));
    }
    Ok(generated)
}

/// What the generated services share: where they run and how they are named.
struct Units<'a> {
    options: &'a InitOptions,
    root: &'a Path,
    name: String,
    run_dir: PathBuf,
    /// `<root>/current`.
    current: PathBuf,
    /// systemd creates /run/<x> for the units (both keep it: Preserve=yes).
    runtime_dir: Option<String>,
}

impl<'a> Units<'a> {
    fn new(host: &'a Host, options: &'a InitOptions) -> Result<Units<'a>> {
        let root = &host.root;
        let name = match &options.name {
            Some(name) => name.clone(),
            None => root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "app".into()),
        };
        let run_dir = options
            .run_dir
            .clone()
            .map(|d| std::path::absolute(&d).unwrap_or(d))
            .unwrap_or_else(|| Path::new("/run").join(&name));
        plain("the root", &root.to_string_lossy())?;
        plain("--run-dir", &run_dir.to_string_lossy())?;
        plain("the name", &name)?;
        plain("--bind", &options.bind)?;
        for value in [&options.wsgi, &options.celery, &options.user]
            .into_iter()
            .flatten()
        {
            plain("the value", value)?;
        }
        let runtime_dir = run_dir
            .strip_prefix("/run")
            .ok()
            .filter(|rest| rest.components().count() == 1)
            .map(|rest| rest.display().to_string());
        Ok(Units {
            options,
            root,
            name,
            current: root.join("current"),
            run_dir,
            runtime_dir,
        })
    }

    fn bin(&self, tool: &str) -> String {
        self.current
            .join("venv/bin")
            .join(tool)
            .display()
            .to_string()
    }

    fn app(&self) -> PathBuf {
        self.current.join("app")
    }

    /// The gunicorn service.
    fn web(&self, wsgi: &str) -> GeneratedService {
        let (app, pidfile) = (self.app(), self.run_dir.join("gunicorn.pid"));
        let launch = Launch {
            dir: app.clone(),
            argv: vec![
                self.bin("gunicorn"),
                "--chdir".into(),
                app.display().to_string(),
                "--bind".into(),
                self.options.bind.clone(),
                "--pid".into(),
                pidfile.display().to_string(),
                "--workers".into(),
                self.options.workers.to_string(),
                wsgi.to_string(),
            ],
        };
        GeneratedService {
            name: "web".into(),
            reload: "gunicorn-upgrade".into(),
            launch: launch.shell(),
            unit_name: format!("{}-web.service", self.name),
            unit: self.unit("web (gunicorn)", "network.target", &launch, &pidfile, "30"),
            unit_file: None,
            pidfile,
        }
    }

    /// The celery worker service.
    fn worker(&self, celery: &str) -> GeneratedService {
        let (app, pidfile) = (self.app(), self.run_dir.join("celery.pid"));
        // --workdir is one of celery's global options: before `worker`.
        let launch = Launch {
            dir: app.clone(),
            argv: vec![
                self.bin("celery"),
                "--workdir".into(),
                app.display().to_string(),
                "-A".into(),
                celery.to_string(),
                "worker".into(),
                "--pidfile".into(),
                pidfile.display().to_string(),
                "--loglevel".into(),
                "info".into(),
            ],
        };
        GeneratedService {
            name: "worker".into(),
            reload: "hup".into(),
            launch: launch.shell(),
            unit_name: format!("{}-worker.service", self.name),
            unit: self.unit(
                "worker (celery)",
                "network.target redis-server.service",
                &launch,
                &pidfile,
                "600",
            ),
            unit_file: None,
            pidfile,
        }
    }

    /// A systemd unit that runs `launch` through `current`.
    fn unit(&self, what: &str, after: &str, launch: &Launch, pidfile: &Path, stop: &str) -> String {
        let mut text = format!(
            "# Written by `release init` for {root}: {what}, run through {current}\n# so that `release` reloads reach each new release.\n[Unit]\nDescription={name} {what}\nAfter={after}\n\n[Service]\nType=simple\n",
            root = self.root.display(),
            current = self.current.display(),
            name = self.name,
        );
        match &self.options.user {
            Some(user) => text.push_str(&format!("User={user}\n")),
            None => text
                .push_str("# User=  (the app's own user; without it the service runs as root)\n"),
        }
        text.push_str(&format!(
            "WorkingDirectory={dir}\nEnvironment=PWD={dir}\n",
            dir = launch.dir.display()
        ));
        if let Some(runtime) = &self.runtime_dir {
            text.push_str(&format!(
                "RuntimeDirectory={runtime}\nRuntimeDirectoryPreserve=yes\n"
            ));
        }
        text.push_str(&format!(
            "PIDFile={}\nExecStart={}\nExecReload=/bin/kill -HUP $MAINPID\nKillMode=mixed\nTimeoutStopSec={stop}\nRestart=on-failure\n\n[Install]\nWantedBy=multi-user.target\n",
            pidfile.display(),
            launch.argv.join(" ")
        ));
        text
    }
}

/// The release.toml for the generated services: their tables, `[health]`
/// when a path was given, the check hook importing the WSGI (or celery)
/// module, and every other key commented as in [`template`].
fn config_text(options: &InitOptions, services: &[GeneratedService]) -> String {
    let mut text = String::from(HEAD);
    text.push_str(
        "# The services `release init` set up. On the first deploy they are not\n# running yet: `release deploy` switches anyway and prints each `launch`\n# line; with `start` it starts them itself. See `release help config`.\n",
    );
    for service in services {
        let timeout = if service.name == "worker" {
            "timeout = \"10m\"    # longer than your longest task: HUP waits for running tasks"
        } else {
            "timeout = \"60s\""
        };
        text.push_str(&format!(
            "[[service]]\nname = \"{}\"\npidfile = \"{}\"\nreload = \"{}\"\n{timeout}\n",
            service.name,
            service.pidfile.display(),
            service.reload,
        ));
        if options.systemd.is_some() {
            text.push_str(&format!(
                "start = \"systemctl start {}\"\n",
                service.unit_name
            ));
        }
        text.push_str(&format!("launch = \"{}\"\n\n", service.launch));
    }
    match &options.health {
        Some(path) => text.push_str(&format!(
            "# Polled after the reloads; on failure the previous release is restored (exit 3).\n[health]\nurl = \"http://{}{}{path}\"\n# expect = \"{{release}}\"          # opt-in: the body must also contain it (a 2xx alone is enough); {{release}} = commit12, {{id}} = directory name\ntimeout = \"30s\"\n\n",
            options.bind,
            if path.starts_with('/') { "" } else { "/" },
        )),
        None => text.push_str(HEALTH),
    }
    let module = options
        .wsgi
        .as_deref()
        .map(|w| w.split(':').next().unwrap_or(w))
        .or(options.celery.as_deref())
        .unwrap_or("mysite.wsgi");
    text.push_str(HOOKS_HEAD);
    text.push_str(&format!(
        "[hooks]\ncheck = \"venv/bin/python -c 'import {module}'\"   # in the new release, before the switch\n"
    ));
    text.push_str(HOOKS_REST);
    text
}

pub fn init(host: &Host, options: &InitOptions, printer: &Printer) -> Result<InitReport> {
    if let Some(path) = &options.health {
        plain("--health", path)?;
    }
    let mut services = services(host, options)?;
    host.create()?;
    let shared = host.root.join("shared");
    if fs::symlink_metadata(&shared).is_err() {
        fs::create_dir(&shared)?;
        fsutil::set_mode(&shared, 0o755)?;
    }
    let config_written = fs::symlink_metadata(&host.config).is_err();
    if config_written {
        let text = if services.is_empty() {
            template()
        } else {
            config_text(options, &services)
        };
        fsutil::write_atomic(&host.config, text.as_bytes())?;
    } else if !services.is_empty() {
        printer.warn(&format!(
            "{} exists and was kept as it is: add the services below to it by hand if they are not there",
            host.config.display()
        ));
    }
    fsutil::fsync_dir(&host.root)?;
    if let Some(dir) = &options.systemd {
        for service in &mut services {
            let path = dir.join(&service.unit_name);
            match fs::read_to_string(&path) {
                Ok(existing) if existing == service.unit => {}
                Ok(_) => {
                    return Err(RootError::UnitDiffers {
                        path,
                        root: host.root.clone(),
                    }
                    .into())
                }
                Err(_) => {
                    fs::create_dir_all(dir)?;
                    fsutil::write_atomic(&path, service.unit.as_bytes())?;
                }
            }
            service.unit_file = Some(path);
        }
    }
    Ok(InitReport {
        root: host.root.clone(),
        config: host.config.clone(),
        config_written,
        services,
    })
}

impl InitReport {
    pub fn human(&self) -> String {
        let mut text = format!(
            "{}\n  {} {}\n",
            self.root.display(),
            if self.config_written {
                "wrote"
            } else {
                "kept the existing"
            },
            self.config.display(),
        );
        if self.services.is_empty() {
            text.push_str(&format!(
                "  next: edit it (`release help config` describes every key), then `release --root {} deploy ARTIFACT`\n",
                self.root.display()
            ));
            return text;
        }
        let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
        let units: Vec<&str> = self.services.iter().map(|s| s.unit_name.as_str()).collect();
        for service in &self.services {
            if let Some(file) = &service.unit_file {
                text.push_str(&format!("  wrote {}\n", file.display()));
            }
        }
        text.push_str(&format!(
            "\nnext: `release --root {} deploy ARTIFACT`. On this first deploy {} not running yet;\n",
            self.root.display(),
            if names.len() == 1 {
                format!("{} is", names[0])
            } else {
                format!("{} are", names.join(" and "))
            }
        ));
        if self.services.iter().all(|s| s.unit_file.is_some()) {
            text.push_str(&format!(
                "release switches anyway and starts them with `systemctl start` (run `systemctl daemon-reload` first,\nand `systemctl enable {}` to start them at boot).\n",
                units.join(" ")
            ));
            return text;
        }
        text.push_str(
            "release switches anyway and prints how to start them. Then start them under systemd with the\nunits below (`systemctl daemon-reload && systemctl enable --now UNIT`), or run these launch lines:\n",
        );
        for service in &self.services {
            text.push_str(&format!("  {}:  {}\n", service.name, service.launch));
        }
        for service in &self.services {
            text.push_str(&format!(
                "\n# /etc/systemd/system/{}\n{}",
                service.unit_name, service.unit
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uncommented(text: &str) -> String {
        // Uncommenting every commented key line gives a valid release.toml.
        text.lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .filter(|l| !l.starts_with("release.toml") && !l.starts_with("Every"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn the_template_parses_and_every_commented_key_is_a_real_one() {
        let text = uncommented(&template());
        let parsed: crate::host::config::HostConfig =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(parsed.services.len(), 2);
        assert!(parsed.services[0].start.is_some() && parsed.services[0].launch.is_some());
        assert!(parsed.health.is_some() && parsed.hooks.notify.is_some());
        assert!(crate::signature::Trust::parse(&parsed.trust.minisign_keys)
            .unwrap()
            .required());
        assert!(parsed.hooks.after_activate.is_some());
    }

    #[test]
    fn generated_services_parse_and_their_units_run_the_launch_lines() {
        let host = Host::at(Some(Path::new("/srv/mysite"))).unwrap();
        let options = InitOptions {
            wsgi: Some("mysite.wsgi:application".into()),
            celery: Some("mysite".into()),
            bind: "127.0.0.1:8000".into(),
            workers: 2,
            health: Some("/healthz".into()),
            ..InitOptions::default()
        };
        let services = services(&host, &options).unwrap();
        let text = config_text(&options, &services);
        let config: crate::host::config::HostConfig =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.services.len(), 2);
        assert_eq!(
            config.services[0].pidfile.as_deref(),
            Some(Path::new("/run/mysite/gunicorn.pid"))
        );
        assert_eq!(config.health.unwrap().url, "http://127.0.0.1:8000/healthz");
        assert!(config.services.iter().all(|s| s.start.is_none()));
        // Commented keys stay valid too.
        let all: crate::host::config::HostConfig = toml::from_str(&uncommented(&text)).unwrap();
        assert!(all.hooks.notify.is_some());
        for (service, generated) in config.services.iter().zip(&services) {
            let launch = service.launch.as_deref().unwrap();
            let (cd, exec) = launch.split_once(" && exec ").unwrap();
            assert_eq!(cd, "cd /srv/mysite/current/app");
            assert!(generated.unit.contains(&format!("\nExecStart={exec}\n")));
            assert!(generated
                .unit
                .contains("\nWorkingDirectory=/srv/mysite/current/app\n"));
            assert!(generated.unit.contains("\nRuntimeDirectory=mysite\n"));
        }
        assert!(services[0]
            .launch
            .contains("--chdir /srv/mysite/current/app"));
        assert!(services[1]
            .launch
            .contains("celery --workdir /srv/mysite/current/app -A mysite worker"));
        // With --systemd, release starts them itself on the first deploy.
        let with_units = InitOptions {
            systemd: Some("/etc/systemd/system".into()),
            ..options
        };
        let config: crate::host::config::HostConfig =
            toml::from_str(&config_text(&with_units, &services)).unwrap();
        assert_eq!(
            config.services[1].start.as_deref(),
            Some("systemctl start mysite-worker.service")
        );
    }

    #[test]
    fn values_that_would_need_quoting_are_refused() {
        let host = Host::at(Some(Path::new("/srv/my site"))).unwrap();
        let options = InitOptions {
            wsgi: Some("mysite.wsgi:application".into()),
            bind: "127.0.0.1:8000".into(),
            workers: 2,
            ..InitOptions::default()
        };
        assert!(services(&host, &options).is_err());
        let host = Host::at(Some(Path::new("/srv/mysite"))).unwrap();
        let options = InitOptions {
            wsgi: Some("mysite.wsgi:application; rm -rf /".into()),
            ..options
        };
        assert!(services(&host, &options).is_err());
    }
}
