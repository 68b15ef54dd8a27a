//! Fuzz the archive reader and the host's extractor, as `release install`
//! chains them: `archive::decompress` (zstd/gzip by magic) -> `tar::Archive`
//! -> `archive::read_manifest_entry` -> `host::extract::Extractor` unpacking
//! every other member into `<tempdir>/dest`.
//!
//! After each run, whether the extractor accepted the archive or not:
//! nothing exists in the tempdir but `dest`; everything under `dest` is a
//! manifest entry of the same type (never a device, fifo or hard link), no
//! larger than the manifest says, with the read-only install mode and no
//! setuid/setgid/sticky bit; every symlink has the manifest's target and stays
//! inside the release, or is a `venv/bin/` link to the manifest's absolute
//! interpreter path. When the extractor succeeds, `dest` holds exactly the
//! manifest's entries with their sizes and sha256s.
//!
//! The input format (a mode byte, then a compressed artifact or a plain tar
//! the harness compresses) is described in `fuzz/src/lib.rs`.
#![no_main]

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use release::host::extract::Extractor;
use release::host::layout::installed_mode;
use release::manifest::{symlink_stays_inside, EntryType, Manifest};
use sha2::{Digest, Sha256};

/// Stand-in for the free space `install` checks before extracting: a
/// manifest that needs more is refused there, so it is not extracted here.
const FREE_SPACE: u64 = 64 * 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = release_fuzz::artifact_bytes(data) else {
        return;
    };
    run(&bytes);
});

fn run(bytes: &[u8]) {
    let artifact = Path::new("fuzz.tar.zst");
    let Ok((_format, decoder)) = release::archive::decompress(artifact, bytes) else {
        return;
    };
    let mut archive = tar::Archive::new(decoder);
    let Ok(mut entries) = archive.entries() else {
        return;
    };
    let Ok((manifest, json)) = release::archive::read_manifest_entry(artifact, &mut entries) else {
        return;
    };
    assert_eq!(Manifest::from_json(&json).as_ref(), Ok(&manifest));
    if release::host::install::space_needed(&manifest, false) > FREE_SPACE {
        return;
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = tmp.path().join("dest");
    std::fs::create_dir(&dest).expect("create dest");
    let result = Extractor::new(artifact, &manifest, &dest).run(entries);
    if verbose() {
        match &result {
            Ok(out) => eprintln!("extracted: {} files, {} bytes", out.files, out.bytes),
            Err(e) => eprintln!("refused: {e}"),
        }
    }

    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("read tempdir")
        .map(|e| e.expect("tempdir entry").file_name())
        .collect();
    assert_eq!(names, ["dest"], "something was written beside dest");

    let found = walk(&dest);
    for (path, (kind, meta)) in &found {
        let Some(want) = manifest.entry(path) else {
            panic!("{path:?} was written but is not in the manifest");
        };
        assert_eq!(*kind, want.kind, "{path:?} has the wrong type");
        if *kind != EntryType::Symlink {
            let mode = meta.permissions().mode();
            assert_eq!(mode & 0o7000, 0, "{path:?} has mode {mode:o}");
        }
        match kind {
            EntryType::File => {
                assert_eq!(meta.nlink(), 1, "{path:?} is hard-linked");
                assert!(
                    meta.len() <= want.size(),
                    "{path:?} is larger than declared"
                );
                let mode = meta.permissions().mode() & 0o777;
                let allowed = installed_mode(EntryType::File, want.mode);
                assert_eq!(mode & !allowed, 0, "{path:?} has mode {mode:o}");
            }
            EntryType::Dir => {}
            EntryType::Symlink => {
                let target = std::fs::read_link(dest.join(path)).expect("read_link");
                let target = target.to_str().expect("UTF-8 link target");
                assert_eq!(Some(target), want.target.as_deref());
                let interpreter = path.starts_with("venv/bin/")
                    && target == manifest.python.base_executable
                    && target.starts_with('/');
                assert!(
                    interpreter || symlink_stays_inside(path, target),
                    "symlink {path:?} -> {target:?} leaves the release"
                );
            }
        }
    }

    if let Ok(out) = result {
        assert_eq!(
            found.len(),
            manifest.files.len(),
            "entries missing after success"
        );
        let files: Vec<_> = manifest
            .files
            .iter()
            .filter(|e| e.kind == EntryType::File)
            .collect();
        assert_eq!(out.files, files.len() as u64);
        assert_eq!(out.bytes, manifest.bytes);
        for e in files {
            let mut content = Vec::new();
            std::fs::File::open(dest.join(&e.path))
                .and_then(|mut f| f.read_to_end(&mut content))
                .expect("read an extracted file");
            assert_eq!(content.len() as u64, e.size());
            assert_eq!(
                Some(hex::encode(Sha256::digest(&content))).as_deref(),
                e.sha256.as_deref()
            );
        }
    }
}

/// `RELEASE_FUZZ_VERBOSE=1`: say what the extractor did with each input (to
/// see how far a corpus gets: `fuzz/target/*/release/archive CORPUS/*`).
fn verbose() -> bool {
    static VERBOSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("RELEASE_FUZZ_VERBOSE").is_some())
}

/// Every path under `root` (relative, `/`-separated) with its type, never
/// following symlinks. Anything but a file, directory or symlink fails.
fn walk(root: &Path) -> BTreeMap<String, (EntryType, std::fs::Metadata)> {
    let mut found = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let at = if dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&dir)
        };
        for entry in std::fs::read_dir(&at).expect("read_dir") {
            let entry = entry.expect("dir entry");
            let name = entry.file_name().into_string().expect("UTF-8 name");
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let meta = std::fs::symlink_metadata(entry.path()).expect("lstat");
            let ft = meta.file_type();
            let kind = if ft.is_symlink() {
                EntryType::Symlink
            } else if ft.is_dir() {
                stack.push(path.clone());
                EntryType::Dir
            } else if ft.is_file() {
                EntryType::File
            } else {
                panic!("{path:?} is neither a file, a directory nor a symlink");
            };
            found.insert(path, (kind, meta));
        }
    }
    found
}
