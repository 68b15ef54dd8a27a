//! `release inspect ARTIFACT`: the manifest summary, read from the first member.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::{self, Format};
use crate::error::Result;
use crate::manifest::{Dependencies, PythonInfo};
use crate::signature::SignatureInfo;

#[derive(Debug, Serialize)]
pub struct Inspection {
    pub artifact: PathBuf,
    pub format: Format,
    pub app: String,
    pub commit: String,
    pub release: String,
    pub source_date_epoch: i64,
    pub dirty: bool,
    pub builder: String,
    pub python: PythonInfo,
    pub requirements_sha256: String,
    /// The lock file the venv was built from; absent for a requirements file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Dependencies>,
    /// Built with --allow-unpinned; `resolved` lists what the requirements resolved to.
    pub unpinned: bool,
    pub resolved: Vec<String>,
    /// Names of the build environment's variables.
    pub build_env: Vec<String>,
    pub files: u64,
    pub bytes: u64,
    pub tree_sha256: String,
    /// `<artifact>.minisig`, when there is one: the key id that signed it
    /// (checked against a key by `install` on a host that requires one).
    pub signature: Option<Signature>,
    /// A delta artifact (`build --delta-from`): the release it applies to
    /// and the files it carries; absent for a full artifact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
}

#[derive(Debug, Serialize)]
pub struct Delta {
    pub base: archive::DeltaBase,
    /// Regular files in the delta; the manifest's others come from the base.
    pub carried_files: u64,
    pub carried_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Signature {
    pub path: PathBuf,
    #[serde(flatten)]
    pub info: SignatureInfo,
}

pub fn inspect(path: &Path) -> Result<Inspection> {
    let (format, reader) = archive::open(path)?;
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive::raw_entries(&mut archive)?;
    let head = archive::read_head(path, &mut entries)?;
    let delta = match head.delta {
        // A delta is small: count what it carries.
        Some(header) => {
            let (mut carried_files, mut carried_bytes) = (0, 0);
            for entry in entries {
                let entry = entry?;
                if entry.header().entry_type().is_file() {
                    carried_files += 1;
                    carried_bytes += entry.size();
                }
            }
            Some(Delta {
                base: header.base,
                carried_files,
                carried_bytes,
            })
        }
        None => None,
    };
    let m = head.manifest;
    let signature = SignatureInfo::beside(path)?.map(|(path, info)| Signature { path, info });
    Ok(Inspection {
        signature,
        artifact: path.to_path_buf(),
        format,
        app: m.app,
        commit: m.commit,
        release: m.release,
        source_date_epoch: m.source_date_epoch,
        dirty: m.dirty,
        builder: format!(
            "{} {} ({})",
            m.builder.tool, m.builder.version, m.builder.installer
        ),
        python: m.python,
        requirements_sha256: m.requirements_sha256,
        dependencies: m.dependencies,
        unpinned: m.unpinned,
        resolved: m.resolved,
        build_env: m.build_env,
        files: m.file_count,
        bytes: m.bytes,
        tree_sha256: m.tree_sha256,
        delta,
    })
}

impl Inspection {
    pub fn human(&self) -> String {
        let when = chrono::DateTime::from_timestamp(self.source_date_epoch, 0)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default();
        let mut extra = String::new();
        if let Some(d) = &self.dependencies {
            let mut selection = Vec::new();
            if !d.extras.is_empty() {
                selection.push(format!("extras {}", d.extras.join(" ")));
            }
            if !d.groups.is_empty() {
                selection.push(format!("groups {}", d.groups.join(" ")));
            }
            if d.package {
                selection.push("the app as a wheel".to_string());
            }
            extra.push_str(&format!(
                "locked    {} (sha256 {}){}\n",
                d.file,
                d.sha256,
                if selection.is_empty() {
                    String::new()
                } else {
                    format!(", {}", selection.join(", "))
                }
            ));
        }
        if self.unpinned {
            extra.push_str(&format!(
                "unpinned  yes: requirements resolved to {}\n",
                self.resolved.join(" ")
            ));
        }
        if !self.build_env.is_empty() {
            extra.push_str(&format!("build env {}\n", self.build_env.join(" ")));
        }
        format!(
            "artifact  {}\napp       {}\nrelease   {}\ncommit    {}{}\ncommitted {}\npython    {} {} ({}, {}) at {}\nbuilder   {}\n{extra}files     {} ({} bytes unpacked)\ntree      {}\n",
            self.artifact.display(),
            self.app,
            self.release,
            self.commit,
            if self.dirty { " (dirty working tree)" } else { "" },
            when,
            self.python.implementation,
            self.python.version,
            self.python.abi,
            self.python.platform,
            self.python.base_executable,
            self.builder,
            self.files,
            self.bytes,
            self.tree_sha256,
        ) + &match &self.signature {
            Some(s) => format!(
                "signed    key id {} ({}, {}; verified by install against [trust])\n",
                s.info.key_id,
                if s.info.prehashed { "prehashed" } else { "legacy format" },
                s.path.display()
            ),
            None => "signed    no (no .minisig beside it)\n".to_string(),
        } + &match &self.delta {
            Some(d) => format!(
                "delta     against release {} (commit {}): carries {} changed files ({} bytes); the others come from release {}, which must be installed where this installs\n",
                d.base.release, d.base.commit, d.carried_files, d.carried_bytes, d.base.release
            ),
            None => String::new(),
        }
    }
}
