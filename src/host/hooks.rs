//! Hooks from `[hooks]` in release.toml, run with `/bin/sh -c` inside a
//! release: cwd `<release>` (so the design's `venv/bin/python -c 'import
//! mysite.wsgi'` works as written), `PYTHONPATH` starting with `<release>/app`
//! (the app imports as it does under gunicorn --chdir), `PATH` starting with
//! `<release>/venv/bin`, `VIRTUAL_ENV`, `RELEASE_ID`, `RELEASE_DIR`,
//! `RELEASE_ROOT` and `RELEASE_SWITCH` (`activate` or `rollback`) set.
//! Also `[hooks] notify`: the journal event POSTed after an activation.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::tail;

/// How a hook failed: its exit status and the last lines of its output.
#[derive(Debug)]
pub struct HookFailure {
    pub status: String,
    pub tail: String,
}

pub fn run(
    command: &str,
    release_dir: &Path,
    release_id: &str,
    switch: &str,
) -> Result<(), HookFailure> {
    let venv = release_dir.join("venv");
    let mut paths = vec![venv.join("bin")];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    let path = std::env::join_paths(paths).unwrap_or_default();
    let mut python_path = vec![release_dir.join("app")];
    if let Some(existing) = std::env::var_os("PYTHONPATH") {
        python_path.extend(std::env::split_paths(&existing));
    }
    let python_path = std::env::join_paths(python_path).unwrap_or_default();
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .current_dir(release_dir)
        .env("PATH", path)
        .env("PYTHONPATH", python_path)
        .env("VIRTUAL_ENV", &venv)
        .env("RELEASE_ID", release_id)
        .env(
            "RELEASE_ROOT",
            release_dir
                .parent()
                .and_then(Path::parent)
                .unwrap_or(release_dir),
        )
        .env("RELEASE_DIR", release_dir)
        .env("RELEASE_SWITCH", switch)
        .env_remove("PYTHONHOME")
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            return Err(HookFailure {
                status: "could not start /bin/sh".into(),
                tail: format!("    {e}"),
            })
        }
    };
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(HookFailure {
        status: out.status.to_string(),
        tail: tail(&text, 20),
    })
}

/// POST a journal event to `[hooks] notify` and say how it went; a failure
/// is a warning, never fatal, and the warning says what state the deploy
/// itself is in (it depends on the event).
pub fn notify(
    config: &crate::host::config::HostConfig,
    event: &crate::host::journal::Event,
    printer: &crate::output::Printer,
) {
    let Some(url) = &config.hooks.notify else {
        return;
    };
    use crate::host::journal::What;
    let body = serde_json::to_value(event).unwrap_or_default();
    match post(url, &body) {
        Ok(()) => printer.progress(&format!("notified {url} ({})", event_name(event.kind()))),
        Err(why) => {
            let state = match event.what {
                What::Activated | What::RolledBack => {
                    format!("{} is live all the same", event.release)
                }
                What::Failed { reverted: true, .. } => {
                    format!("the activation of {} failed and was undone", event.release)
                }
                _ => format!(
                    "the activation of {} failed and current was not touched",
                    event.release
                ),
            };
            printer.warn(&format!(
                "could not report the `{}` event: {why}; {state}",
                event_name(event.kind())
            ));
        }
    }
}

fn event_name(kind: crate::host::journal::EventKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// POST a journal event as JSON; failures are returned for a warning, never fatal.
fn post(url: &str, event: &serde_json::Value) -> Result<(), NotifyFailed> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    agent
        .post(url)
        .send_json(event)
        .map(|_| ())
        .map_err(|e| NotifyFailed {
            url: url.to_string(),
            error: e.to_string(),
        })
}

/// The notify POST failed (a warning: the deploy is done).
#[derive(Debug)]
struct NotifyFailed {
    url: String,
    error: String,
}

impl std::fmt::Display for NotifyFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "notify {}: {}", self.url, self.error)
    }
}
