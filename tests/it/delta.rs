//! Delta artifacts (`build --delta-from`, docs/host.md "Delta artifacts"):
//! built from two real commits of the mysite fixture, installed next to the
//! real base release, compared with the full artifact's install. The hostile
//! deltas are in hostile.rs (`delta_*`).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::common::root::Root;
use crate::common::*;

/// Two releases of mysite that differ in one module, and a delta between them.
pub struct Pair {
    /// The previous release's full artifact (the delta's base).
    pub base: PathBuf,
    /// The new release's full artifact.
    pub full: PathBuf,
    pub delta: PathBuf,
    /// `build --json` of the new release.
    pub report: serde_json::Value,
}

/// The module the second commit changes.
pub const CHANGED: &str = "app/mysite/views.py";
/// A module it does not change (the delta takes it from the base).
pub const UNCHANGED: &str = "app/mysite/urls.py";

pub fn pair() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| {
        // Fresh: the build creates --out itself.
        let out = Path::new(REPO).join("target/delta-it");
        let _ = std::fs::remove_dir_all(&out);
        let app = App::new();
        let base = app.build_ok(&out.join("base"), &[]);
        let views = std::fs::read_to_string(app.path("mysite/views.py")).unwrap();
        app.write(
            "mysite/views.py",
            &format!("{views}\n# a code-only change\n"),
        );
        app.commit("change a view");
        let output = app.build(
            &out.join("new"),
            &shared_cache(),
            &["--installer", "pip", "--delta-from", base.to_str().unwrap()],
        );
        let report = json_ok(&output);
        Pair {
            base,
            full: PathBuf::from(report["artifact"].as_str().unwrap()),
            delta: PathBuf::from(report["delta"]["artifact"].as_str().unwrap()),
            report,
        }
    })
}

/// A release tree as (path → type, mode, content digest or link target),
/// without `install.json` (it records when and from what it was installed).
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for item in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
    {
        let item = item.unwrap();
        let rel = item
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel == "install.json" {
            continue;
        }
        let meta = item.path().symlink_metadata().unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let what = if meta.file_type().is_symlink() {
            format!(
                "link {}",
                std::fs::read_link(item.path()).unwrap().display()
            )
        } else if meta.is_dir() {
            "dir".to_string()
        } else {
            hex::encode(Sha256::digest(std::fs::read(item.path()).unwrap()))
        };
        out.insert(rel, format!("{mode:o} {what}"));
    }
    out
}

#[test]
fn build_writes_a_small_delta_beside_the_full_artifact() {
    let pair = pair();
    let base12 = &pair.report["delta"]["base_release"]
        .as_str()
        .unwrap()
        .to_string();
    let release12 = pair.report["release"].as_str().unwrap();
    let name = pair
        .delta
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(name, format!("mysite-{release12}.delta-{base12}.tar.zst"));
    assert_eq!(pair.delta.parent(), pair.full.parent());
    let sidecar = std::fs::read_to_string(format!("{}.sha256", pair.delta.display())).unwrap();
    let digest = hex::encode(Sha256::digest(std::fs::read(&pair.delta).unwrap()));
    assert_eq!(sidecar, format!("{digest}  {name}\n"));
    // Only the changed module and its pyc travel.
    assert_eq!(pair.report["delta"]["carried_files"], 2, "{}", pair.report);
    let carried: Vec<String> = members::read(&pair.delta)
        .iter()
        .filter(|m| m.header.entry_type().is_file())
        .map(|m| m.path.clone())
        .collect();
    assert!(carried.contains(&CHANGED.to_string()), "{carried:?}");
    assert!(!carried.contains(&UNCHANGED.to_string()), "{carried:?}");
    let (delta, full) = (
        std::fs::metadata(&pair.delta).unwrap().len(),
        std::fs::metadata(&pair.full).unwrap().len(),
    );
    assert!(delta * 20 < full, "delta {delta} bytes, full {full}");
    // The delta's manifest is the full artifact's, byte for byte.
    let members = members::read(&pair.delta);
    assert_eq!(members[0].path, "release-delta.json");
    assert_eq!(members[1].data, members::manifest_bytes(&pair.full));

    let inspect = json_ok(
        &release()
            .args(["--json", "inspect"])
            .arg(&pair.delta)
            .output()
            .unwrap(),
    );
    assert_eq!(inspect["delta"]["base"]["release"], *base12, "{inspect}");
    let human = stdout(&release().arg("inspect").arg(&pair.delta).output().unwrap());
    assert!(
        human.contains(&format!("delta     against release {base12}")),
        "{human}"
    );
}

#[test]
fn a_delta_installs_the_same_tree_as_the_full_artifact() {
    let pair = pair();
    let root = Root::new();
    let base_id = root.install(&pair.base);
    // An inode changed since the base was installed, but not its content
    // (as a link into a later release does): hashed, and taken.
    let touched = root.path.join("releases").join(&base_id).join(UNCHANGED);
    std::fs::set_permissions(&touched, std::fs::Permissions::from_mode(0o444)).unwrap();
    let out = root.ok(&["-v", "install", pair.delta.to_str().unwrap()]);
    let progress = stderr(&out);
    assert!(
        progress.contains(&format!(
            "unchanged files from release {base_id}; hashing the"
        )),
        "{progress}"
    );
    let id = stdout(&out).trim().to_string();
    let id = id.as_str();
    assert!(root.verifies(id));
    assert!(root.verifies(&base_id));

    let other = Root::new();
    other.install(&pair.base);
    let full_id = other.install(&pair.full);
    let ours = snapshot(&root.path.join("releases").join(id));
    let theirs = snapshot(&other.path.join("releases").join(&full_id));
    assert_eq!(ours.len(), theirs.len());
    assert!(ours == theirs, "the trees differ");
    // The same verify report, and the install reached the journal.
    let verify = |r: &Root, id: &str| {
        let mut v = r.json(&["verify", id]);
        v.as_object_mut().unwrap().remove("id");
        v.as_object_mut().unwrap().remove("path");
        v
    };
    assert_eq!(verify(&root, id), verify(&other, &full_id));
    assert!(root.journal_text().contains(id));
    // `deploy DELTA`: installed and made live in one step.
    let live = Root::new();
    let live_base = live.install(&pair.base);
    live.ok(&["activate", &live_base]);
    let deployed = live.json(&["deploy", pair.delta.to_str().unwrap()]);
    assert_eq!(deployed["install"]["delta"], true, "{deployed}");
    let deployed_id = deployed["activate"]["id"].as_str().unwrap();
    assert_eq!(live.current().as_deref(), Some(deployed_id));
    assert!(live.verifies(deployed_id));
    // Installing it again is a no-op, like a full artifact's.
    let again = root.json(&["install", pair.delta.to_str().unwrap()]);
    assert_eq!(again["already_installed"], true);
}

#[test]
fn a_delta_without_its_base_installed_is_refused() {
    let pair = pair();
    let root = Root::new();
    root.ok(&["init"]);
    let base12 = pair.report["delta"]["base_release"].as_str().unwrap();
    let release12 = pair.report["release"].as_str().unwrap();
    let err = root.fails(&["install", pair.delta.to_str().unwrap()], 1);
    assert!(
        err.contains(&format!("only next to release {base12}")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "install the full artifact (mysite-{release12}.tar.zst)"
        )),
        "{err}"
    );
    assert!(root.releases().is_empty());
    assert!(root.leftovers().is_empty());
    // A dry run says the same.
    let err = root.fails(&["install", "--dry-run", pair.delta.to_str().unwrap()], 1);
    assert!(
        err.contains(&format!("only next to release {base12}")),
        "{err}"
    );
}

#[test]
fn the_full_artifact_path_and_the_delta_path_are_printed() {
    let pair = pair();
    // The build's human output: both paths, one a line (as `--json` reports them).
    let app = App::new();
    let out = app.tmp.path().join("dist");
    let output = release()
        .current_dir(&app.dir)
        .args([
            "build",
            "-q",
            "--installer",
            "pip",
            "--no-index",
            "--find-links",
        ])
        .arg(wheelhouse())
        .arg("--out")
        .arg(&out)
        .arg("--cache-dir")
        .arg(shared_cache())
        .arg("--delta-from")
        .arg(members_manifest_file(&pair.base, app.tmp.path()))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<String> = stdout(&output).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].ends_with(".tar.zst") && !lines[0].contains(".delta-"));
    assert!(lines[1].contains(".delta-") && Path::new(&lines[1]).is_file());
}

/// PREVIOUS given as its `release.json`: written out of its artifact.
fn members_manifest_file(artifact: &Path, dir: &Path) -> PathBuf {
    let path = dir.join("release.json");
    std::fs::write(&path, members::manifest_bytes(artifact)).unwrap();
    path
}

#[test]
fn a_gzip_delta_of_a_gzip_build_installs_like_its_full_artifact() {
    // `--format gz` makes both artifacts gzip, the delta named `.tar.gz`.
    let app = App::new();
    let out = app.tmp.path().join("dist");
    let base = app.build_ok(&out.join("base"), &["--format", "gz"]);
    app.write("mysite/extra.py", "X = 4\n");
    app.commit("a code-only change");
    let report = json_ok(&app.build(
        &out.join("new"),
        &shared_cache(),
        &[
            "--installer",
            "pip",
            "--format",
            "gz",
            "--delta-from",
            base.to_str().unwrap(),
        ],
    ));
    let full = PathBuf::from(report["artifact"].as_str().unwrap());
    let delta = PathBuf::from(report["delta"]["artifact"].as_str().unwrap());
    let (release12, base12) = (
        report["release"].as_str().unwrap(),
        report["delta"]["base_release"].as_str().unwrap(),
    );
    assert_eq!(
        delta.file_name().unwrap().to_string_lossy(),
        format!("mysite-{release12}.delta-{base12}.tar.gz")
    );
    assert!(full.to_string_lossy().ends_with(".tar.gz"));
    let mut magic = [0u8; 2];
    std::io::Read::read_exact(&mut std::fs::File::open(&delta).unwrap(), &mut magic).unwrap();
    assert_eq!(magic, [0x1f, 0x8b], "the delta is not gzip");

    let root = Root::new();
    root.install(&base);
    let id = root.install(&delta);
    assert!(root.verifies(&id));
    let other = Root::new();
    let full_id = other.install(&full);
    assert!(
        snapshot(&root.path.join("releases").join(&id))
            == snapshot(&other.path.join("releases").join(&full_id)),
        "the gzip delta's tree differs from the full artifact's"
    );
}
