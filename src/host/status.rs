//! `release status`: what is live under a root — the current release, when
//! and by whom it was activated, the rollback target — and each configured
//! service's processes, with the release each one runs from. Read-only: it
//! takes no lock.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::Result;
use crate::host::config::HostConfig;
use crate::host::layout::{Current, Host};
use crate::host::release_id::ReleaseId;
use crate::host::releases;
use crate::host::services::{self, ServiceStatus};
use crate::host::state::ReleaseHistory;
use crate::host::statics;
use crate::output::Printer;

#[derive(Debug, Serialize)]
pub struct Status {
    pub root: PathBuf,
    /// The current release id, or null.
    pub current: Option<ReleaseId>,
    pub commit: Option<String>,
    /// When it was last activated (from the journal) and by whom.
    pub since: Option<String>,
    pub by: Option<String>,
    pub path: Option<PathBuf>,
    pub rollback_target: Option<ReleaseId>,
    pub releases: usize,
    /// Each configured service (filled in when services are reloaded).
    pub services: Vec<ServiceStatus>,
    /// The served `<root>/static/` (host::statics): its files and bytes;
    /// null when there is none.
    #[serde(rename = "static")]
    pub served_static: Option<statics::Served>,
}

impl Status {
    pub fn human(&self, color: bool) -> String {
        let Some(current) = &self.current else {
            return format!(
                "no release is current under {} ({} installed)\n",
                self.root.display(),
                self.releases
            );
        };
        let mut text = format!("current   {current}\n");
        if let Some(commit) = &self.commit {
            text.push_str(&format!("commit    {commit}\n"));
        }
        text.push_str(&format!(
            "since     {} by {}\n",
            self.since.as_deref().unwrap_or("(not in the journal)"),
            self.by.as_deref().unwrap_or("?")
        ));
        if let Some(path) = &self.path {
            text.push_str(&format!("path      {}\n", path.display()));
        }
        text.push_str(&format!(
            "rollback  {}\n",
            self.rollback_target
                .as_ref()
                .map_or("(none)", ReleaseId::as_str)
        ));
        if let Some(served) = &self.served_static {
            text.push_str(&served.human());
        }
        text.push_str(&services::human(&self.services, color));
        text
    }
}

pub fn status(host: &Host, config: &HostConfig, printer: &Printer) -> Result<Status> {
    let installed = releases::installed(host)?;
    let current = host.current()?;
    let history = ReleaseHistory::read(host, printer)?;
    if let Current::Foreign(link) = &current {
        printer.warn(&format!(
            "{} points to {}, which is not a release under releases/",
            host.current.display(),
            link.display()
        ));
    }
    let id = current.id();
    let release = id.and_then(|id| installed.iter().find(|r| &r.id == id));
    if id.is_some() && release.is_none() {
        printer.warn(&format!(
            "{} points to a release that is not installed (dangling link)",
            host.current.display()
        ));
    }
    let activation = id.and_then(|id| history.last_activation(id));
    Ok(Status {
        root: host.root.clone(),
        current: id.cloned(),
        commit: release.map(|r| r.commit().to_string()),
        since: activation.map(|a| a.at.clone()),
        by: activation.map(|a| a.user.clone()),
        path: release.map(|r| r.dir.clone()),
        rollback_target: history.rollback_target(id).cloned(),
        releases: installed.len(),
        services: services::statuses(
            config,
            host,
            id.map(ReleaseId::as_str),
            activation
                .and_then(|a| chrono::DateTime::parse_from_rfc3339(&a.at).ok())
                .map(|t| t.timestamp_millis() as f64 / 1000.0),
        ),
        served_static: statics::served(host),
    })
}
