//! Services after a switch: reload each `[[service]]` so its processes move to
//! the new release, then run the `[health]` check. This is the seam of the
//! activation pipeline (see `activate.rs`): when [`reload_and_check`] fails,
//! activation switches `current` back, reloads again, journals `failed` and
//! exits 3.
//!
//! This version parses `[[service]]` and `[health]` (the keys are the
//! contract, see docs/host.md) but does not act on them yet: the reload
//! strategies of DESIGN.md §2 ("Reloading") come next. Until then it warns
//! that configured services must be reloaded by hand.

use serde::Serialize;

use crate::host::config::HostConfig;
use crate::output::Printer;

/// One service as `status` reports it (pid, alive, which release its
/// processes run). Empty until services are reloaded by `release`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub pid: Option<i32>,
    pub alive: bool,
    pub releases: Vec<String>,
}

/// Why the services did not come up on the new release.
#[derive(Debug, Clone)]
pub struct ReloadFailure {
    /// `reload` or `health`.
    pub step: &'static str,
    pub reason: String,
}

/// Reload every service onto `release` and wait for the health check.
pub fn reload_and_check(
    config: &HostConfig,
    release: &str,
    printer: &Printer,
) -> Result<(), ReloadFailure> {
    if !config.services.is_empty() || config.health.is_some() {
        let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        printer.warn(&format!(
            "[[service]]/[health] in release.toml are not acted on by this version: reload {} yourself so they run {release}",
            if names.is_empty() {
                "your services".to_string()
            } else {
                names.join(", ")
            }
        ));
    }
    Ok(())
}

/// The services of `status`; empty until reloads are implemented.
pub fn statuses(_config: &HostConfig) -> Vec<ServiceStatus> {
    Vec::new()
}
