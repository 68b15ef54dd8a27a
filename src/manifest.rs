//! `release.json`: the manifest of an artifact (format 1).
//!
//! It is the first member of every artifact and is copied into every installed
//! release. `files` lists every other path of the artifact, sorted by path; the
//! `tree_sha256` digest is taken over a canonical text form of that list (see
//! [`tree_digest`]) so it identifies the content independently of compression.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const FORMAT: u32 = 1;
pub const MANIFEST_NAME: &str = "release.json";
/// A manifest larger than this is refused before it is read: about 400,000
/// entries (the fixture's 9,064 entries take 1.5 MB). It bounds the memory an
/// install spends on a hostile manifest.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;
/// A manifest declaring more entries than this is refused before its file
/// list is parsed.
pub const MAX_FILES: u64 = 1_000_000;
/// The top-level directories an artifact may contain.
pub const TOP_LEVEL: &[&str] = &["app", "venv", "wheels", "static"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub app: String,
    /// Full 40-hex commit hash.
    pub commit: String,
    /// The release key: the first 12 hex digits of the commit.
    pub release: String,
    /// Commit time; every mtime in the artifact.
    pub source_date_epoch: i64,
    /// True when built with --allow-dirty from a modified working tree.
    pub dirty: bool,
    pub builder: Builder,
    pub python: PythonInfo,
    pub requirements_sha256: String,
    /// The lock file the venv was built from (absent when it was a
    /// requirements file, whose digest is `requirements_sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Dependencies>,
    /// True when built with --allow-unpinned from requirements that do not
    /// pin every version; `resolved` then lists what they resolved to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unpinned: bool,
    /// `name==version` of every distribution installed, when `unpinned`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved: Vec<String>,
    /// Names (never values) of the variables of the build environment
    /// (`env` in the settings, `--env`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build_env: Vec<String>,
    /// Number of entries in `files`.
    pub file_count: u64,
    /// Sum of the sizes of the regular files in `files`.
    pub bytes: u64,
    pub tree_sha256: String,
    pub files: Vec<Entry>,
}

/// Which dependency file a release was built from, and what was selected from it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Dependencies {
    /// Relative to the app directory: `uv.lock`, `pylock.toml`, `requirements/prod.txt`.
    pub file: String,
    /// `pylock`, `uv.lock`, `poetry.lock` or `requirements`.
    pub format: String,
    /// sha256 of the file itself (`sha256sum` gives the same).
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extras: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The app itself was built as a wheel and installed into the venv.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub package: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Builder {
    pub tool: String,
    pub version: String,
    /// `uv <version>` or `pip <version>`: what installed the venv.
    pub installer: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PythonInfo {
    pub implementation: String,
    pub version: String,
    pub abi: String,
    pub platform: String,
    /// Absolute path `venv/bin/python` links to.
    pub base_executable: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    File,
    Dir,
    Symlink,
}

impl fmt::Display for EntryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryType::File => "file",
            EntryType::Dir => "dir",
            EntryType::Symlink => "symlink",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    /// Octal permission bits as a string, e.g. "0644".
    #[serde(with = "octal_mode")]
    pub mode: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Entry {
    pub fn dir(path: String) -> Self {
        Entry {
            path,
            kind: EntryType::Dir,
            mode: 0o755,
            size: None,
            sha256: None,
            target: None,
        }
    }

    pub fn file(path: String, executable: bool, size: u64, sha256: String) -> Self {
        Entry {
            path,
            kind: EntryType::File,
            mode: if executable { 0o755 } else { 0o644 },
            size: Some(size),
            sha256: Some(sha256),
            target: None,
        }
    }

    pub fn symlink(path: String, target: String) -> Self {
        Entry {
            path,
            kind: EntryType::Symlink,
            mode: 0o777,
            size: None,
            sha256: None,
            target: Some(target),
        }
    }

    pub fn size(&self) -> u64 {
        self.size.unwrap_or(0)
    }
}

mod octal_mode {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{mode:04o}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let text = String::deserialize(d)?;
        u32::from_str_radix(&text, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| D::Error::custom(format!("invalid mode {text:?}")))
    }
}

/// The canonical digest of a file list: sha256 over, for each entry in order,
/// `path NUL type NUL mode NUL size NUL (sha256|target|"") LF`, with the mode as
/// four octal digits and the size in decimal (0 for directories and symlinks).
pub fn tree_digest(files: &[Entry]) -> String {
    use std::io::Write;
    let mut hasher = Sha256::new();
    // The lines are gathered and hashed 64 KiB at a time.
    let mut text = Vec::with_capacity(64 * 1024 + 8 * 1024);
    for e in files {
        let digest_or_target = e
            .sha256
            .as_deref()
            .or(e.target.as_deref())
            .unwrap_or_default();
        let kind = match e.kind {
            EntryType::File => "file",
            EntryType::Dir => "dir",
            EntryType::Symlink => "symlink",
        };
        text.extend_from_slice(e.path.as_bytes());
        text.push(0);
        text.extend_from_slice(kind.as_bytes());
        write!(text, "\0{:04o}\0{}\0", e.mode, e.size()).expect("writes to a Vec");
        text.extend_from_slice(digest_or_target.as_bytes());
        text.push(b'\n');
        if text.len() >= 64 * 1024 {
            hasher.update(&text);
            text.clear();
        }
    }
    hasher.update(&text);
    hex::encode(hasher.finalize())
}

/// How a manifest's JSON ends: `entries`, the last of its file list (after
/// others, or not), one per line, and the closing brackets.
pub fn json_of_last_entries(entries: &[Entry], after_others: bool) -> Vec<u8> {
    let mut text = Vec::with_capacity(entries.len() * 160 + 8);
    for (i, f) in entries.iter().enumerate() {
        text.extend_from_slice(if i == 0 && !after_others {
            b"\n    "
        } else {
            b",\n    "
        });
        serde_json::to_writer(&mut text, f).expect("entry serialises");
    }
    text.extend_from_slice(if entries.is_empty() && !after_others {
        b"]\n}\n"
    } else {
        b"\n  ]\n}\n"
    });
    text
}

impl Manifest {
    /// Serialise deterministically: header fields pretty-printed, one line per file entry.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let split = self.files.len();
        let mut json = self.json_before(split);
        json.extend_from_slice(&json_of_last_entries(&[], split > 0));
        json
    }

    /// [`to_json_bytes`](Self::to_json_bytes), given what it ends with from
    /// entry `split` on: `last` must be [`json_of_last_entries`] of
    /// `files[split..]` (the build makes it for the venv's and the wheels'
    /// entries while the static step runs).
    pub fn to_json_bytes_ending(&self, split: usize, last: &[u8]) -> Vec<u8> {
        let mut json = self.json_before(split);
        json.extend_from_slice(last);
        json
    }

    /// The JSON up to entry `split` (excluded).
    fn json_before(&self, split: usize) -> Vec<u8> {
        // The header fields, pretty-printed, from a copy without the files
        // (listing every field, so a new one cannot be left out).
        let Manifest {
            format,
            app,
            commit,
            release,
            source_date_epoch,
            dirty,
            builder,
            python,
            requirements_sha256,
            dependencies,
            unpinned,
            resolved,
            build_env,
            file_count,
            bytes,
            tree_sha256,
            files,
        } = self;
        let head = Manifest {
            format: *format,
            app: app.clone(),
            commit: commit.clone(),
            release: release.clone(),
            source_date_epoch: *source_date_epoch,
            dirty: *dirty,
            builder: builder.clone(),
            python: python.clone(),
            requirements_sha256: requirements_sha256.clone(),
            dependencies: dependencies.clone(),
            unpinned: *unpinned,
            resolved: resolved.clone(),
            build_env: build_env.clone(),
            file_count: *file_count,
            bytes: *bytes,
            tree_sha256: tree_sha256.clone(),
            files: Vec::new(),
        };
        let mut header = serde_json::to_value(&head).expect("manifest serialises");
        header.as_object_mut().map(|o| o.remove("files"));
        let mut out = serde_json::to_string_pretty(&header).expect("manifest serialises");
        // Drop the closing brace and append the file list, one entry per line.
        out.truncate(out.trim_end().len() - 1);
        out.truncate(out.trim_end().len());
        let mut text = format!("{out},\n  \"files\": [").into_bytes();
        text.reserve(files.len() * 160);
        for (i, f) in files[..split].iter().enumerate() {
            text.extend_from_slice(if i == 0 { b"\n    " } else { b",\n    " });
            serde_json::to_writer(&mut text, f).expect("entry serialises");
        }
        text
    }

    /// Parse and check the invariants every reader relies on.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, Invalid> {
        // The header first; the file list is skipped without being stored.
        #[derive(Deserialize)]
        struct Version {
            format: Option<serde_json::Value>,
            file_count: Option<serde_json::Value>,
        }
        let version: Version =
            serde_json::from_slice(bytes).map_err(|e| Invalid::NotJson(e.to_string()))?;
        match version.format {
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(FORMAT as u64) => {}
            Some(other) => return Err(Invalid::UnknownFormat(other.to_string())),
            None => return Err(Invalid::NoFormat),
        }
        if let Some(count) = version.file_count.as_ref().and_then(|c| c.as_u64()) {
            if count > MAX_FILES {
                return Err(Invalid::TooManyDeclared(count));
            }
        }
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| Invalid::Fields(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Parse the `release.json` of a release this host installed, unchanged
    /// since [`Manifest::from_json`] checked it then: its fields only.
    pub fn from_installed_json(bytes: &[u8]) -> Result<Manifest, Invalid> {
        serde_json::from_slice(bytes).map_err(|e| Invalid::Fields(e.to_string()))
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        let hex40 = self.commit.len() == 40 && self.commit.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex40 {
            return Err(Invalid::Commit(self.commit.clone()));
        }
        if self.release != self.commit[..12] {
            return Err(Invalid::Release(self.release.clone()));
        }
        if self.files.len() as u64 > MAX_FILES {
            return Err(Invalid::TooManyListed(self.files.len()));
        }
        if self.app.is_empty() || !self.app.chars().all(is_name_char) {
            return Err(Invalid::AppName(self.app.clone()));
        }
        // The one link allowed to leave the release points here (docs/design.md §4):
        // a relative path would let `venv/bin/*` links escape it.
        let base = &self.python.base_executable;
        if !base.starts_with('/') || base.chars().any(char::is_control) {
            return Err(Invalid::BaseExecutable(base.clone()));
        }
        if self.file_count != self.files.len() as u64 {
            return Err(Invalid::FileCount {
                declared: self.file_count,
                listed: self.files.len(),
            });
        }
        let mut bytes = 0u64;
        for pair in self.files.windows(2) {
            if pair[0].path >= pair[1].path {
                return Err(Invalid::Unsorted(pair[1].path.clone()));
            }
        }
        for e in &self.files {
            check_entry(e)?;
            bytes = bytes
                .checked_add(e.size())
                .ok_or_else(|| Invalid::SizesOverflow(e.path.clone()))?;
        }
        if bytes != self.bytes {
            return Err(Invalid::Bytes {
                declared: self.bytes,
                sum: bytes,
            });
        }
        if tree_digest(&self.files) != self.tree_sha256 {
            return Err(Invalid::TreeDigest);
        }
        Ok(())
    }

    /// Set `file_count`, `bytes` and `tree_sha256` from `files` (sizes sum
    /// saturating), for tools that edit a file list.
    pub fn recompute_totals(&mut self) {
        self.file_count = self.files.len() as u64;
        self.bytes = self
            .files
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.size()));
        self.tree_sha256 = tree_digest(&self.files);
    }

    /// Look an entry up by path (the list is sorted).
    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.files
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.files[i])
    }
}

/// The manifest's header fields, without the file list: what `release list`
/// needs from each installed release.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Summary {
    pub format: u32,
    pub app: String,
    pub commit: String,
    pub release: String,
    pub python: PythonInfo,
    pub file_count: u64,
    pub bytes: u64,
    pub tree_sha256: String,
}

impl Summary {
    /// Parse the header of a `release.json` without parsing its file list.
    ///
    /// [`Manifest::to_json_bytes`] writes every header field before `files`, so
    /// `prefix` (the first bytes of the file) usually holds the whole header; when
    /// it does not, `read_rest` supplies the complete file and that is parsed.
    pub fn parse(
        prefix: &[u8],
        read_rest: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) -> Result<Summary, Invalid> {
        const FILES_KEY: &[u8] = b",\n  \"files\": [";
        if let Some(at) = prefix.windows(FILES_KEY.len()).position(|w| w == FILES_KEY) {
            let mut header = prefix[..at].to_vec();
            header.extend_from_slice(b"\n}");
            if let Ok(summary) = serde_json::from_slice::<Summary>(&header) {
                return Ok(summary);
            }
        }
        let all = read_rest().map_err(|e| Invalid::Unreadable(e.to_string()))?;
        serde_json::from_slice(&all).map_err(|e| Invalid::NotAManifest(e.to_string()))
    }
}

/// Why a `release.json` is not a valid manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    NotJson(String),
    /// The `format` field holds this, not [`FORMAT`].
    UnknownFormat(String),
    NoFormat,
    /// `file_count` declares more than [`MAX_FILES`].
    TooManyDeclared(u64),
    /// The fields do not parse (serde's message).
    Fields(String),
    Commit(String),
    Release(String),
    TooManyListed(usize),
    AppName(String),
    BaseExecutable(String),
    FileCount {
        declared: u64,
        listed: usize,
    },
    /// The entry list is not sorted and unique at this path.
    Unsorted(String),
    Entry {
        path: String,
        why: &'static str,
    },
    SizesOverflow(String),
    Bytes {
        declared: u64,
        sum: u64,
    },
    TreeDigest,
    /// The header could not be read ([`Summary::parse`]).
    Unreadable(String),
    NotAManifest(String),
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use Invalid::*;
        match self {
            NotJson(e) => write!(f, "not valid JSON: {e}"),
            UnknownFormat(found) => write!(
                f,
                "unknown manifest format {found}; this release {} reads format {FORMAT} (upgrade `release` on this host)",
                env!("CARGO_PKG_VERSION")
            ),
            NoFormat => f.write_str("no `format` field"),
            TooManyDeclared(count) => write!(
                f,
                "it declares {count} files, more than the {MAX_FILES} a release may have; refused before reading the file list"
            ),
            Fields(e) => write!(f, "invalid manifest: {e}"),
            Commit(commit) => write!(f, "commit {commit:?} is not 40 hex digits"),
            Release(release) => {
                write!(f, "release {release:?} is not the commit's first 12 digits")
            }
            TooManyListed(count) => write!(
                f,
                "it lists {count} files, more than the {MAX_FILES} a release may have"
            ),
            AppName(app) => write!(f, "app name {app:?} is not a valid name"),
            BaseExecutable(base) => {
                write!(f, "python.base_executable {base:?} is not an absolute path")
            }
            FileCount { declared, listed } => write!(
                f,
                "file_count {declared} does not match the {listed} entries listed"
            ),
            Unsorted(path) => write!(f, "files are not sorted and unique at {path:?}"),
            Entry { path, why } => write!(f, "entry {path:?}: {why}"),
            SizesOverflow(path) => write!(
                f,
                "the file sizes add up to more than {} bytes (at {path:?})",
                u64::MAX
            ),
            Bytes { declared, sum } => write!(
                f,
                "bytes {declared} does not match the sum of file sizes {sum}"
            ),
            TreeDigest => f.write_str("tree_sha256 does not match the file list"),
            Unreadable(e) => f.write_str(e),
            NotAManifest(e) => write!(f, "not a valid manifest: {e}"),
        }
    }
}

/// Whether a symlink at `path` pointing at `target` stays inside the release
/// tree, judged lexically (every other link in the tree is held to the same rule,
/// so a chain of links cannot leave it either).
pub fn symlink_stays_inside(path: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return false;
    }
    let mut dirs: Vec<&str> = path.split('/').collect();
    dirs.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if dirs.pop().is_none() {
                    return false;
                }
            }
            c => dirs.push(c),
        }
    }
    true
}

pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Check one entry's path and fields against the format's rules.
fn check_entry(e: &Entry) -> Result<(), Invalid> {
    let bad = |why: &'static str| {
        Err(Invalid::Entry {
            path: e.path.clone(),
            why,
        })
    };
    if let Err(why) = check_path(&e.path) {
        return bad(why);
    }
    match e.kind {
        EntryType::File => {
            if e.mode != 0o644 && e.mode != 0o755 {
                return bad("file mode must be 0644 or 0755");
            }
            let Some(digest) = &e.sha256 else {
                return bad("file without sha256");
            };
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad("sha256 is not 64 hex digits");
            }
            if e.size.is_none() || e.target.is_some() {
                return bad("file needs a size and no target");
            }
        }
        EntryType::Dir => {
            if e.mode != 0o755 || e.size.is_some() || e.sha256.is_some() || e.target.is_some() {
                return bad("directory must have mode 0755 and no size, sha256 or target");
            }
        }
        EntryType::Symlink => {
            let Some(target) = &e.target else {
                return bad("symlink without target");
            };
            if target.is_empty() || target.contains('\0') {
                return bad("empty symlink target");
            }
            if e.size.is_some() || e.sha256.is_some() {
                return bad("symlink with size or sha256");
            }
        }
    }
    Ok(())
}

/// Rules for a path inside an artifact: relative, `/`-separated, no empty, `.` or
/// `..` components, no control characters, under one of the top-level directories.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.len() > 4096 {
        return Err("path longer than 4096 bytes");
    }
    if path.starts_with('/') {
        return Err("absolute path");
    }
    if path.chars().any(|c| c.is_control()) {
        return Err("control character in path");
    }
    let mut components = path.split('/');
    let top = components.next().unwrap_or_default();
    if !TOP_LEVEL.contains(&top) {
        return Err("outside app/, venv/, wheels/ and static/");
    }
    for c in path.split('/') {
        match c {
            "" => return Err("empty path component"),
            "." | ".." => return Err("`.` or `..` component"),
            _ if c.len() > 255 => return Err("path component longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

/// A valid manifest of `files` (sorted, totals computed) for unit tests:
/// commit 0123456789ab…, CPython 3.11 at /usr/bin/python3.11.
#[cfg(test)]
pub(crate) fn for_tests(mut files: Vec<Entry>) -> Manifest {
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut m = Manifest {
        format: FORMAT,
        app: "demo".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        release: "0123456789ab".into(),
        source_date_epoch: 1_700_000_000,
        dirty: false,
        builder: Builder {
            tool: "release".into(),
            version: "0".into(),
            installer: "pip 23".into(),
        },
        python: PythonInfo {
            implementation: "cpython".into(),
            version: "3.11.7".into(),
            abi: "cp311".into(),
            platform: "linux_x86_64".into(),
            base_executable: "/usr/bin/python3.11".into(),
        },
        requirements_sha256: "00".repeat(32),
        dependencies: None,
        unpinned: false,
        resolved: Vec::new(),
        build_env: Vec::new(),
        file_count: 0,
        bytes: 0,
        tree_sha256: String::new(),
        files,
    };
    m.recompute_totals();
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        for_tests(vec![
            Entry::dir("app".into()),
            Entry::file("app/a.py".into(), false, 3, "ab".repeat(32)),
            Entry::symlink("venv/bin/python".into(), "/usr/bin/python3.11".into()),
        ])
    }

    #[test]
    fn round_trips_through_json() {
        let m = sample();
        let bytes = m.to_json_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\n    {\"path\":\"app/a.py\",\"type\":\"file\",\"mode\":\"0644\""));
        assert_eq!(Manifest::from_json(&bytes).unwrap(), m);
    }

    #[test]
    fn the_json_is_the_same_whatever_its_end_was_made_from() {
        for m in [sample(), for_tests(Vec::new())] {
            let whole = m.to_json_bytes();
            for split in 0..=m.files.len() {
                let last = json_of_last_entries(&m.files[split..], split > 0);
                assert_eq!(m.to_json_bytes_ending(split, &last), whole, "split {split}");
            }
        }
    }

    #[test]
    fn rejects_tampered_lists() {
        let mut m = sample();
        m.files[1].size = Some(4);
        m.bytes = 4;
        assert_eq!(m.validate().unwrap_err(), Invalid::TreeDigest);
        let mut m = sample();
        m.files.swap(0, 1);
        assert!(m.validate().unwrap_err().to_string().contains("sorted"));
    }

    #[test]
    fn rejects_unknown_format_and_bad_json() {
        let err = Manifest::from_json(b"{\"format\": 2}").unwrap_err();
        assert_eq!(err, Invalid::UnknownFormat("2".into()));
        assert!(err.to_string().contains("unknown manifest format 2"));
        assert!(matches!(
            Manifest::from_json(b"nope").unwrap_err(),
            Invalid::NotJson(_)
        ));
    }

    #[test]
    fn summary_reads_the_header_only() {
        let m = sample();
        let bytes = m.to_json_bytes();
        let cut = bytes.len() - 20;
        let summary = Summary::parse(&bytes[..cut], || panic!("needs the whole file")).unwrap();
        assert_eq!(summary.commit, m.commit);
        assert_eq!(summary.bytes, 3);
        assert_eq!(summary.python, m.python);
        // Another layout: falls back to the whole file.
        let compact = serde_json::to_vec(&m).unwrap();
        let summary = Summary::parse(&compact[..10], || Ok(compact.clone())).unwrap();
        assert_eq!(summary.tree_sha256, m.tree_sha256);
    }

    #[test]
    fn rejects_a_relative_interpreter_path() {
        // A venv/bin link to a relative base_executable passed the extractor's
        // interpreter exception and pointed outside the release (the fuzz
        // target `archive` checks for it; this is its input's manifest).
        let json = br#"{"format":1,"app":"fuzz","commit":"0123456789abcdef0123456789abcdef01234567","release":"0123456789ab","source_date_epoch":0,"dirty":false,"builder":{"tool":"release","version":"0","installer":"pip"},"python":{"implementation":"cpython","version":"3.11.2","abi":"cp311","platform":"linux_x86_64","base_executable":"../../../../etc"},"requirements_sha256":"0000000000000000000000000000000000000000000000000000000000000000","file_count":3,"bytes":0,"tree_sha256":"0d0224dcebdb1bdb2c198c21b3906140e01841aa744b97a4ec20f9fac8bf1229","files":[{"path":"venv","type":"dir","mode":"0755"},{"path":"venv/bin","type":"dir","mode":"0755"},{"path":"venv/bin/python","type":"symlink","mode":"0777","target":"../../../../etc"}]}"#;
        let err = Manifest::from_json(json).unwrap_err();
        assert_eq!(err, Invalid::BaseExecutable("../../../../etc".into()));
        let mut m: Manifest = serde_json::from_slice(json).unwrap();
        m.python.base_executable = "/usr/bin/python3".into();
        m.files[2].target = Some("/usr/bin/python3".into());
        m.tree_sha256 = tree_digest(&m.files);
        assert_eq!(m.validate(), Ok(()));
    }

    #[test]
    fn symlink_rules() {
        assert!(symlink_stays_inside("venv/lib64", "lib"));
        assert!(symlink_stays_inside("app/x", "../venv/bin/python"));
        assert!(!symlink_stays_inside("app/x", "../../etc/passwd"));
        assert!(!symlink_stays_inside("app/x", "/etc/passwd"));
        assert!(!symlink_stays_inside("app/a/b", "../../../x"));
    }

    #[test]
    fn path_rules() {
        assert!(check_path("app/x.py").is_ok());
        for bad in [
            "/etc/passwd",
            "app/../x",
            "etc/x",
            "app//x",
            "app/\u{1}",
            "app/./x",
            "",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
    }
}
