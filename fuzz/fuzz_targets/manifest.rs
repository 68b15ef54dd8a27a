//! Fuzz the manifest parser: `Manifest::from_json`, `validate`, the canonical
//! serialisation, `tree_digest`, the path and symlink rules, and the
//! header-only `Summary` parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use release::manifest::{
    check_path, symlink_stays_inside, tree_digest, EntryType, Manifest, Summary, FORMAT,
};

fuzz_target!(|data: &[u8]| {
    // The strict parser must never panic; what it accepts must hold up.
    if let Ok(manifest) = Manifest::from_json(data) {
        check_valid(&manifest);
    }
    // A lenient parse with the summary fields recomputed gets mutated file
    // lists past the digest check, so `validate` sees them.
    // (`format` is checked by `from_json` before it parses, not by `validate`.)
    if let Ok(mut manifest) = serde_json::from_slice::<Manifest>(data) {
        manifest.format = FORMAT;
        manifest.recompute_totals();
        if manifest.validate().is_ok() {
            check_valid(&manifest);
        }
    }
    // The summary parser on any bytes, whole or cut anywhere.
    let cut = data.first().map_or(0, |&b| b as usize * data.len() / 256);
    let _ = Summary::parse(data, || Ok(data.to_vec()));
    let _ = Summary::parse(&data[..cut], || Ok(data.to_vec()));
});

/// Invariants of a manifest that passed `validate`.
fn check_valid(m: &Manifest) {
    // Canonical JSON round trip, and the serialisation is a fixed point.
    let json = m.to_json_bytes();
    let back = Manifest::from_json(&json).expect("a valid manifest's own JSON parses");
    assert_eq!(
        &back, m,
        "round trip through to_json_bytes changed the manifest"
    );
    assert_eq!(back.to_json_bytes(), json, "serialisation is not canonical");
    assert_eq!(tree_digest(&m.files), m.tree_sha256);

    // The header-only summary agrees with the whole manifest, wherever the
    // prefix it is given ends.
    let full: Summary = serde_json::from_slice(&json).expect("summary of a valid manifest");
    assert_eq!(full.commit, m.commit);
    assert_eq!(full.bytes, m.bytes);
    assert_eq!(full.tree_sha256, m.tree_sha256);
    for cut in [
        json.len(),
        json.len() / 2,
        json.len() / 3,
        64.min(json.len()),
    ] {
        let summary = Summary::parse(&json[..cut], || Ok(json.clone())).expect("summary parses");
        assert_eq!(summary, full, "summary from a {cut}-byte prefix differs");
    }

    // The sizes the free-space check adds up never wrap around.
    let need = release::host::install::space_needed(m, false);
    assert!(need >= m.bytes, "space needed {need} < bytes {}", m.bytes);
    assert!(release::host::install::space_needed(m, true) >= need);

    let mut total = 0u64;
    for (i, e) in m.files.iter().enumerate() {
        assert!(
            check_path(&e.path).is_ok(),
            "validated path {:?} fails check_path",
            e.path
        );
        assert_eq!(m.entry(&e.path), Some(e));
        assert!(i == 0 || m.files[i - 1].path < e.path);
        total = total.saturating_add(e.size());
        match e.kind {
            EntryType::File => {
                assert!(e.mode == 0o644 || e.mode == 0o755);
                assert_eq!(e.sha256.as_ref().map(String::len), Some(64));
            }
            EntryType::Dir => assert_eq!(e.size, None),
            EntryType::Symlink => {
                let target = e.target.as_deref().expect("symlink has a target");
                let inside = symlink_stays_inside(&e.path, target);
                assert_eq!(
                    inside,
                    resolves_inside(&e.path, target),
                    "symlink_stays_inside({:?}, {target:?})",
                    e.path
                );
            }
        }
    }
    assert_eq!(total, m.bytes);
}

/// An independent model of `symlink_stays_inside`: resolve the link lexically
/// against a root with std's path components and see whether it stays under it.
fn resolves_inside(path: &str, target: &str) -> bool {
    use std::path::{Component, Path, PathBuf};
    if target.is_empty() || target.contains('\0') || Path::new(target).is_absolute() {
        return false;
    }
    let root = Path::new("/R");
    let mut at: PathBuf = root.join(path);
    at.pop();
    for c in Path::new(target).components() {
        match c {
            Component::ParentDir => {
                if at == root {
                    return false;
                }
                at.pop();
            }
            Component::Normal(n) => at.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    at.starts_with(root)
}
