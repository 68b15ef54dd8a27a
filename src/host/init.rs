//! `release init`: the host layout with safe permissions and a commented
//! `release.toml` that names every key. An existing `release.toml` is never
//! overwritten.

use serde::Serialize;

use fs_err as fs;

use crate::error::Result;
use crate::fsutil;
use crate::host::layout::Host;

/// The file `init` writes: every key, commented, with its default.
pub const TEMPLATE: &str = r#"# release.toml: settings of this host root (docs/host.md has every detail).
# Every key is optional; the values shown commented out are the defaults.

# How many of the newest installs `release prune` (and `deploy`) keep, besides
# the current release, the rollback target and releases a process still uses.
# keep = 5

# Release paths replaced by links to <root>/shared/<same path>, kept across
# releases (uploads, env files). Create shared files such as app/.env first.
# shared = ["app/media", "app/.env"]

# One table per process to reload after `current` moves. The reload is
# confirmed from the processes themselves (see the README's strategy table).
# [[service]]
# name = "web"
# pidfile = "/run/mysite/gunicorn.pid"
# reload = "gunicorn-upgrade"     # hup | gunicorn-upgrade | systemd:UNIT | supervisor:PROG | command:CMD
# timeout = "60s"                 # how long the reload may take to show
# required = true                 # false: a service that is down is skipped with a warning
#
# [[service]]
# name = "worker"
# pidfile = "/run/mysite/celery.pid"
# reload = "hup"
# timeout = "10m"                 # longer than your longest task: HUP waits for running tasks

# Polled after the reloads; on failure the previous release is restored (exit 3).
# [health]
# url = "http://127.0.0.1:8000/healthz"   # any 2xx answer will do
# expect = "{release}"            # opt-in: the body must also contain it; {release} = commit12, {id} = directory name
# timeout = "30s"

# [hooks]
# check = "venv/bin/python -c 'import mysite.wsgi'"   # in the new release, before the switch
# before_activate = "venv/bin/python app/manage.py migrate --noinput"   # in the new release, right before the switch; failure changes nothing live
# after_activate = "venv/bin/python app/manage.py clearsessions"        # after the switch and the health check; failure is a warning
# notify = "https://deploys.example.invalid/hook"    # POST of the journal event; never fatal
"#;

#[derive(Debug, Serialize)]
pub struct InitReport {
    pub root: std::path::PathBuf,
    pub config: std::path::PathBuf,
    /// False when a release.toml was already there (it is left as it is).
    pub config_written: bool,
}

pub fn init(host: &Host) -> Result<InitReport> {
    host.create()?;
    let shared = host.root.join("shared");
    if fs::symlink_metadata(&shared).is_err() {
        fs::create_dir(&shared)?;
        fsutil::set_mode(&shared, 0o755)?;
    }
    let config_written = fs::symlink_metadata(&host.config).is_err();
    if config_written {
        fsutil::write_atomic(&host.config, TEMPLATE.as_bytes())?;
    }
    fsutil::fsync_dir(&host.root)?;
    Ok(InitReport {
        root: host.root.clone(),
        config: host.config.clone(),
        config_written,
    })
}

impl InitReport {
    pub fn human(&self) -> String {
        format!(
            "{}\n  {} {}\n  next: edit it, then `release --root {} deploy ARTIFACT`\n",
            self.root.display(),
            if self.config_written {
                "wrote"
            } else {
                "kept the existing"
            },
            self.config.display(),
            self.root.display()
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_template_parses_and_every_commented_key_is_a_real_one() {
        // Uncommenting every line gives a valid release.toml.
        let uncommented: String = super::TEMPLATE
            .lines()
            .filter(|l| {
                l.starts_with("# ") && !l.starts_with("# release.toml") && !l.starts_with("# Every")
            })
            .map(|l| &l[2..])
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let parsed: crate::host::config::HostConfig =
            toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(parsed.services.len(), 2);
        assert!(parsed.health.is_some() && parsed.hooks.notify.is_some());
    }
}
