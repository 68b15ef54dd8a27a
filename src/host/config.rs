//! `<root>/release.toml`: host settings. Optional; every key has a default.
//!
//! ```toml
//! keep = 5                                  # releases `prune` keeps (plus current + rollback target)
//! shared = ["app/media", "app/.env"]        # release path -> <root>/shared/<same path>
//! serve_static = true                       # keep <root>/static/, the union of the releases' static/
//! [[service]]                               # reloaded after the switch (host::reload)
//! name = "web"
//! pidfile = "/run/mysite/gunicorn.pid"
//! reload = "gunicorn-upgrade"               # hup | gunicorn-upgrade | systemd:UNIT | supervisor:PROG | command:CMD
//! timeout = "60s"
//! required = true
//! [health]                                  # polled after the reloads
//! url = "http://127.0.0.1:8000/healthz"
//! expect = "{release}"
//! timeout = "30s"
//! [hooks]
//! check = "python -c 'import mysite.wsgi'"  # run in the new release's app/ before the switch
//! after_activate = "..."                    # after the switch; a failure only warns
//! notify = "https://example.invalid/deploys" # POST of the journal event; never fatal
//! [trust]
//! minisign_keys = ["RWQ..."]                # when set, every install needs a signature by one
//! ```

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use fs_err as fs;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RootError};
use crate::manifest;

pub const DEFAULT_KEEP: usize = 5;
pub const DEFAULT_SERVICE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// `release help config`: the reference of every key, shipped in the binary
/// (a host has no docs/ directory). docs/host.md says the same at length.
pub const REFERENCE: &str = r#"release.toml: the settings of one host root (<root>/release.toml)

The file is optional and every key has a default. Unknown keys are errors, so
a typo never passes silently. It must not be writable by group or others.
`release init` writes one with every key commented out; `release init --wsgi
MODULE:APP --celery APP` also writes the services and prints their systemd
units.

TOP LEVEL
  keep = 5
      `release prune` (and `deploy`) keep the N newest installs, besides the
      current release, the rollback target and any release a process uses.
  shared = ["app/media", "app/.env"]
      Release paths replaced by links to <root>/shared/<same path>, the same
      in every release (uploads, env files, a sqlite database). Not a
      top-level directory; no overlaps. A missing target is created: a copy
      of the first release's file, else an empty directory.
  serve_static = true
      Keep <root>/static/: every file of every installed release's static/
      (hard links), the live release's version where two differ. Point the
      web server at it (`location /static/ { alias <root>/static/; }`): a
      page rendered by any installed release, on any host of a fleet, finds
      its assets. install adds, activate/rollback replace with the live
      release's (atomic renames), prune removes what no release has left,
      `release verify` checks it. false: release neither creates nor touches
      it (static files served from a CDN only).

[[service]]   one table per process to reload after `current` moves
  name = "web"                      required; unique
  pidfile = "/run/mysite/gunicorn.pid"
      The master's pidfile. Required for hup and gunicorn-upgrade; for the
      other strategies it lets the reload be confirmed from the processes.
  reload = "gunicorn-upgrade"       required:
      hup                 SIGHUP to the pidfile's pid (celery, uWSGI; gunicorn
                          gets new code but keeps its interpreter)
      gunicorn-upgrade    USR2, new master from current/venv, health check,
                          then TERM to the old master
      systemd:UNIT        systemctl reload UNIT
      supervisor:PROG     supervisorctl signal HUP PROG
      command:CMD         sh -c CMD, with RELEASE_ID, RELEASE, RELEASE_ROOT
  timeout = "60s"                   how long the reload may take to show
                                    (celery: longer than the longest task)
  required = true
      false: a service that is down is skipped with a warning. true: a
      service that is down stops an activation before the switch (exit 1),
      except on the first deploy (below).
  start = "systemctl start mysite-web"
      Optional. How release starts the service when it is down on the first
      deploy; it must start it and return. systemd:UNIT and supervisor:PROG
      services are started without it (systemctl/supervisorctl start).
  launch = "cd /srv/mysite/current/app && exec …"
      Optional, never run: the line that runs the service through current
      (`release init` writes it). Shown when the service is down on the first
      deploy and release cannot start it.

The first deploy (no release was live): services that are down do not stop
the switch. Those release can start are started, confirmed from their
processes and health-checked; the others are listed with their `launch`
line, the health check is skipped, and the command exits 0 with a warning.
A first deploy that fails after the switch removes `current` again and
stops what it started (exit 3).

[health]   polled after the reloads; failure switches back (exit 3)
  url = "http://127.0.0.1:8000/healthz"   required in the table
      A 2xx answer is enough: which release the processes run is confirmed
      from /proc by the reloads, so any page of the app will do.
  expect = "{release}"    opt-in: the body must also contain it;
                          {release} = the new release's commit12, {id} = its
                          directory name. Never asked of the release switched
                          back to after a failure (a 2xx is enough there).
  timeout = "30s"

[hooks]   shell commands (/bin/sh -c) run in <root>/releases/<id>, with
          venv/bin first on PATH, app/ first on PYTHONPATH, VIRTUAL_ENV,
          RELEASE_ID, RELEASE_DIR, RELEASE_ROOT and RELEASE_SWITCH
          (activate | rollback)
  check = "venv/bin/python -c 'import mysite.wsgi'"
      Before the switch; a failure stops the activation (exit 1).
  before_activate = "venv/bin/python app/manage.py migrate --noinput"
      After `check` and the services' preflight, right before the switch,
      while the old release still serves; on `activate` and `deploy`, never
      on `rollback`. A failure stops the activation (exit 1): current and
      the services are untouched (what the command itself did before failing
      stays done). `--skip-before-activate` leaves it out for one run (every
      host of a fleet but the one that migrates). Migrations go here: the old
      code then runs against the new schema for a moment, and after a
      rollback for longer, so keep them backward compatible (add first,
      remove a release later). Rollback never unapplies them.
  after_activate = "venv/bin/python app/manage.py clearsessions"
      After a successful switch and reloads, on `activate`, `deploy` AND
      `rollback` (in the release switched to); a failure is a warning, the
      release stays live.
  notify = "https://deploys.example.invalid/hook"
      POST of each activation's journal event as JSON (also failures);
      never fatal, and release says whether it worked.

[trust]   signatures every install requires
  minisign_keys = ["RWTPI//N+20ae0FWeNU2kFTlyCQEIbrPOxWG5kXNYcIe4ixdnaF4MOIm"]
      minisign public keys: the second line of each .pub file (`tail -1
      minisign.pub`). When any is listed, every install and deploy (a file
      or a URL) needs a valid signature by one of them: ARTIFACT.minisig, or
      --signature FILE|URL. A file's is checked before anything is unpacked;
      a URL's at the end of the stream, before the rename into releases/.
      List two keys while rotating.

Durations: "500ms", "30s", "2m", "10m". Exit codes: 0 ok; 1 failed, current
untouched; 2 usage; 3 failed after the switch and undone; 4 locked.
"#;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// How many of the newest installs `prune` keeps.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// Release paths replaced by links into `<root>/shared/`.
    #[serde(default)]
    pub shared: Vec<String>,
    /// Services reloaded after a switch (`[[service]]`).
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    /// The health check after a reload.
    #[serde(default)]
    pub health: Option<HealthConfig>,
    #[serde(default)]
    pub hooks: Hooks,
    /// Keys whose signature every install requires (`[trust]`).
    #[serde(default)]
    pub trust: TrustConfig,
    /// Keep `<root>/static/`, the served union of the installed releases'
    /// static files (false: static files are served from elsewhere, a CDN).
    #[serde(default = "default_serve_static")]
    pub serve_static: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// minisign public keys (the base64 line of a `.pub` file); when any is
    /// listed, every install needs a valid signature by one of them.
    #[serde(default)]
    pub minisign_keys: Vec<String>,
}

impl TrustConfig {
    /// The parsed keys (checked when the file is loaded).
    pub fn keys(&self) -> crate::signature::Trust {
        crate::signature::Trust::parse(&self.minisign_keys).unwrap_or_default()
    }
}

fn default_keep() -> usize {
    DEFAULT_KEEP
}

fn default_serve_static() -> bool {
    true
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            keep: DEFAULT_KEEP,
            shared: Vec::new(),
            services: Vec::new(),
            health: None,
            hooks: Hooks::default(),
            trust: TrustConfig::default(),
            serve_static: true,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Shell command run inside the new release before the switch; failure aborts.
    pub check: Option<String>,
    /// Shell command run inside the new release after `check` and the
    /// services' preflight, right before `current` moves (migrations); a
    /// failure aborts with nothing live changed. Not run by rollback.
    pub before_activate: Option<String>,
    /// Shell command run after a successful activation.
    pub after_activate: Option<String>,
    /// URL the journal event is POSTed to after an activation (never fatal).
    pub notify: Option<String>,
}

impl HostConfig {
    /// Read `release.toml`; its absence means the defaults.
    pub fn load(path: &Path) -> Result<HostConfig> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HostConfig::default()),
            Err(e) => return Err(e.into()),
        };
        HostConfig::parse(&text, path)
    }

    /// Parse and check the text of `release.toml` (read from `path`).
    pub fn parse(text: &str, path: &Path) -> Result<HostConfig> {
        let bad = |message: String| RootError::BadHostConfig {
            path: path.to_path_buf(),
            message,
        };
        let config: HostConfig = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        config.validate().map_err(|why| bad(why.to_string()))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), BadSetting> {
        for (i, path) in self.shared.iter().enumerate() {
            manifest::check_path(path).map_err(|why| BadSetting::SharedPath {
                path: path.clone(),
                why,
            })?;
            if !path.contains('/') {
                return Err(BadSetting::SharedTopLevel(path.clone()));
            }
            for other in &self.shared[..i] {
                if other == path
                    || path.starts_with(&format!("{other}/"))
                    || other.starts_with(&format!("{path}/"))
                {
                    return Err(BadSetting::SharedOverlap(other.clone(), path.clone()));
                }
            }
        }
        crate::signature::Trust::parse(&self.trust.minisign_keys).map_err(BadSetting::TrustKey)?;
        let mut names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|p| p[0] == p[1]) {
            return Err(BadSetting::DuplicateService(pair[0].to_string()));
        }
        Ok(())
    }

    /// The relative target of the link at release path `path` (inside
    /// `releases/<id>/`) to `<root>/shared/<path>`.
    pub fn shared_link_target(path: &str) -> String {
        // From releases/<id>/<dirs of path>/ back up to the root.
        let depth = 2 + path.matches('/').count();
        format!("{}shared/{path}", "../".repeat(depth))
    }
}

/// `reload = "..."` of a `[[service]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Strategy {
    /// SIGHUP to the pid in `pidfile`.
    Hup,
    /// gunicorn: USR2, wait for the new master, health check, TERM the old one.
    GunicornUpgrade,
    /// `systemctl reload UNIT`.
    Systemd(String),
    /// `supervisorctl signal HUP PROG`.
    Supervisor(String),
    /// Any shell command.
    Command(String),
}

impl FromStr for Strategy {
    type Err = BadSetting;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let nonempty = |rest: &str, what: &'static str| {
            if rest.trim().is_empty() {
                Err(BadSetting::StrategyWithout {
                    strategy: s.to_string(),
                    what,
                })
            } else {
                Ok(rest.trim().to_string())
            }
        };
        match s.split_once(':') {
            None if s == "hup" => Ok(Strategy::Hup),
            None if s == "gunicorn-upgrade" => Ok(Strategy::GunicornUpgrade),
            Some(("systemd", unit)) => Ok(Strategy::Systemd(nonempty(unit, "unit name")?)),
            Some(("supervisor", prog)) => Ok(Strategy::Supervisor(nonempty(prog, "program name")?)),
            Some(("command", cmd)) => Ok(Strategy::Command(nonempty(cmd, "command")?)),
            _ => Err(BadSetting::UnknownStrategy(s.to_string())),
        }
    }
}

impl TryFrom<String> for Strategy {
    type Error = BadSetting;
    fn try_from(s: String) -> Result<Self, BadSetting> {
        s.parse()
    }
}

impl From<Strategy> for String {
    fn from(s: Strategy) -> String {
        s.to_string()
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Strategy::Hup => f.write_str("hup"),
            Strategy::GunicornUpgrade => f.write_str("gunicorn-upgrade"),
            Strategy::Systemd(u) => write!(f, "systemd:{u}"),
            Strategy::Supervisor(p) => write!(f, "supervisor:{p}"),
            Strategy::Command(c) => write!(f, "command:{c}"),
        }
    }
}

/// A duration in `release.toml`: "30s", "2m", "500ms".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Timeout(pub Duration);

impl TryFrom<String> for Timeout {
    type Error = BadSetting;
    fn try_from(s: String) -> Result<Self, BadSetting> {
        humantime::parse_duration(&s)
            .map(Timeout)
            .map_err(|e| BadSetting::Duration {
                text: s,
                error: e.to_string(),
            })
    }
}

/// A value release.toml may not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadSetting {
    SharedPath {
        path: String,
        why: &'static str,
    },
    /// A shared path that would replace a whole top-level directory.
    SharedTopLevel(String),
    SharedOverlap(String, String),
    DuplicateService(String),
    UnknownStrategy(String),
    /// `systemd:` and the like without what follows the colon.
    StrategyWithout {
        strategy: String,
        what: &'static str,
    },
    Duration {
        text: String,
        error: String,
    },
    TrustKey(crate::signature::BadKey),
}

impl std::fmt::Display for BadSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadSetting::SharedPath { path, why } => write!(f, "shared path {path:?}: {why}"),
            BadSetting::SharedTopLevel(path) => write!(
                f,
                "shared path {path:?} would replace a whole top-level directory; name a path inside it, like \"app/media\""
            ),
            BadSetting::SharedOverlap(a, b) => write!(f, "shared paths {a:?} and {b:?} overlap"),
            BadSetting::DuplicateService(name) => {
                write!(f, "two [[service]] tables are named {name:?}")
            }
            BadSetting::UnknownStrategy(s) => write!(
                f,
                "unknown reload strategy {s:?}: use hup, gunicorn-upgrade, systemd:UNIT, supervisor:PROG or command:CMD"
            ),
            BadSetting::StrategyWithout { strategy, what } => write!(
                f,
                "reload = {strategy:?} needs a {what} after the colon"
            ),
            BadSetting::Duration { text, error } => write!(
                f,
                "invalid duration {text:?} ({error}); write e.g. \"30s\" or \"2m\""
            ),
            BadSetting::TrustKey(bad) => write!(f, "{bad}"),
        }
    }
}

impl From<Timeout> for String {
    fn from(t: Timeout) -> String {
        humantime::format_duration(t.0).to_string()
    }
}

/// One `[[service]]` of release.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    /// The master's pidfile. Required for `hup` and `gunicorn-upgrade`; for the
    /// other strategies it lets the reload be confirmed.
    pub pidfile: Option<PathBuf>,
    pub reload: Strategy,
    /// How long the reload may take to show [default: 60s].
    pub timeout: Option<Timeout>,
    /// When false, a service that is not running is skipped with a warning
    /// instead of stopping the activation [default: true].
    #[serde(default = "yes")]
    pub required: bool,
    /// A shell command that starts the service and returns (e.g. `systemctl
    /// start mysite-web`). Run only on a first deploy (no release was live)
    /// when the service is not running; then the start is confirmed like a
    /// reload. `systemd:UNIT` and `supervisor:PROG` services are started
    /// without it.
    pub start: Option<String>,
    /// The line that runs this service through `current` (what `release
    /// init` generates). Never run: shown when the service is down on a first
    /// deploy and `release` cannot start it.
    pub launch: Option<String>,
}

fn yes() -> bool {
    true
}

impl ServiceConfig {
    pub fn timeout(&self) -> Duration {
        self.timeout.map_or(DEFAULT_SERVICE_TIMEOUT, |t| t.0)
    }
}

/// `[health]` of release.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    pub url: String,
    /// Opt-in: the body must also contain this; `{release}` is the new
    /// release's commit12 (what the app reads from its own release.json),
    /// `{id}` its directory name. Without it, any 2xx answer will do: which
    /// release the processes run is confirmed from /proc by the reloads.
    #[serde(default)]
    pub expect: Option<String>,
    pub timeout: Option<Timeout>,
}

impl HealthConfig {
    pub fn timeout(&self) -> Duration {
        self.timeout.map_or(DEFAULT_HEALTH_TIMEOUT, |t| t.0)
    }

    /// The text the health URL must answer with for release `release`
    /// (commit12) installed as `id`.
    pub fn expected(&self, release: &str, id: &str) -> Option<String> {
        self.expect
            .as_ref()
            .map(|e| e.replace("{release}", release).replace("{id}", id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HostConfig> {
        HostConfig::parse(text, Path::new("release.toml"))
    }

    fn refusal(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_design_sketch_parses() {
        let config = parse(
            r#"
keep = 3
shared = ["app/media", "app/.env"]
[[service]]
name = "web"
pidfile = "/run/mysite/gunicorn.pid"
reload = "gunicorn-upgrade"
[[service]]
name = "worker"
pidfile = "/run/mysite/celery.pid"
reload = "hup"
[[service]]
name = "beat"
reload = "systemd:celerybeat.service"
[health]
url = "http://127.0.0.1:8000/healthz"
expect = "{release}"
timeout = "30s"
[hooks]
check = "python -c 'import mysite.wsgi'"
after_activate = "true"
notify = "https://example.invalid/deploys"
"#,
        )
        .unwrap();
        assert_eq!(config.keep, 3);
        assert_eq!(config.services[0].reload, Strategy::GunicornUpgrade);
        assert_eq!(
            config.services[2].reload,
            Strategy::Systemd("celerybeat.service".into())
        );
        assert_eq!(
            config.health.unwrap().timeout(),
            std::time::Duration::from_secs(30)
        );
        assert_eq!(
            config.hooks.check.as_deref(),
            Some("python -c 'import mysite.wsgi'")
        );
    }

    #[test]
    fn defaults_and_refusals() {
        let empty = parse("").unwrap();
        assert_eq!(
            (empty.keep, empty.shared.len(), empty.services.len()),
            (5, 0, 0)
        );
        assert!(empty.serve_static);
        assert!(!parse("serve_static = false").unwrap().serve_static);
        assert!(parse("serve_static = \"no\"").is_err());
        assert!(refusal("kep = 3").contains("unknown field"));
        assert!(refusal("shared = [\"app\"]").contains("top-level"));
        assert!(parse("shared = [\"../etc\"]").is_err());
        assert!(refusal("shared = [\"app/m\", \"app/m/x\"]").contains("overlap"));
        assert!(refusal("[[service]]\nname = \"w\"\nreload = \"usr1\"").contains("unknown reload"));
        assert!(refusal("[[service]]\nname = \"w\"\nreload = \"hup\"\n[[service]]\nname = \"w\"\nreload = \"hup\"")
            .contains("two [[service]]"));
    }

    #[test]
    fn the_reference_names_every_key() {
        for key in [
            "keep =",
            "shared =",
            "[[service]]",
            "name =",
            "pidfile =",
            "reload =",
            "timeout =",
            "required =",
            "start =",
            "launch =",
            "[health]",
            "url =",
            "expect =",
            "[hooks]",
            "check =",
            "before_activate =",
            "after_activate =",
            "notify =",
            "RELEASE_SWITCH",
            "[trust]",
            "minisign_keys =",
        ] {
            assert!(REFERENCE.contains(key), "release help config lacks {key}");
        }
    }

    #[test]
    fn shared_link_targets_climb_to_the_root() {
        assert_eq!(
            HostConfig::shared_link_target("app/media"),
            "../../../shared/app/media"
        );
        assert_eq!(
            HostConfig::shared_link_target("app/a/b"),
            "../../../../shared/app/a/b"
        );
    }

    #[test]
    fn parses_strategies() {
        assert_eq!("hup".parse::<Strategy>().unwrap(), Strategy::Hup);
        assert_eq!(
            "systemd:mysite.service".parse::<Strategy>().unwrap(),
            Strategy::Systemd("mysite.service".into())
        );
        assert_eq!(
            "command:kill -HUP $(cat /run/x.pid)"
                .parse::<Strategy>()
                .unwrap(),
            Strategy::Command("kill -HUP $(cat /run/x.pid)".into())
        );
        assert!("systemd:".parse::<Strategy>().is_err());
        assert_eq!(
            "usr2".parse::<Strategy>().unwrap_err(),
            BadSetting::UnknownStrategy("usr2".into())
        );
        assert!("usr2"
            .parse::<Strategy>()
            .unwrap_err()
            .to_string()
            .contains("gunicorn-upgrade"));
    }

    #[test]
    fn parses_service_tables() {
        let s: ServiceConfig = toml::from_str(
            "name = \"web\"\npidfile = \"/run/web.pid\"\nreload = \"gunicorn-upgrade\"\ntimeout = \"90s\"\n",
        )
        .unwrap();
        assert_eq!(s.reload, Strategy::GunicornUpgrade);
        assert_eq!(s.timeout(), Duration::from_secs(90));
        assert!(s.required);
    }
}
