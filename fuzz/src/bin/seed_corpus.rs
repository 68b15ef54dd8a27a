//! Write the seed corpora of the fuzz targets: a few tiny valid artifacts
//! built with the library's own `ArtifactWriter` and manifest types (zstd and
//! gzip), in every input mode of the `archive` target, and their manifests for
//! the `manifest` target.
//!
//! Usage: `seed-corpus DIR` writes `DIR/archive/*` and `DIR/manifest/*`.

use std::path::{Path, PathBuf};

use release::archive::{ArtifactWriter, Format};
use release::manifest::{tree_digest, Builder, Entry, Manifest, PythonInfo, FORMAT};
use release_fuzz::{MODE_FIX_CHECKSUMS, MODE_FIX_ENTRIES, MODE_FIX_SUMMARY};
use sha2::{Digest, Sha256};

const INTERPRETER: &str = "/usr/bin/python3";

/// One tree: (path, content) for files, (path, None) for directories,
/// (path, "->target") for symlinks.
type Tree = &'static [(&'static str, Option<&'static str>)];

const TREES: &[(&str, Tree)] = &[
    ("empty", &[]),
    (
        "small",
        &[
            ("app", None),
            ("app/wsgi.py", Some("print('hello')\n")),
            ("app/link.py", Some("->wsgi.py")),
        ],
    ),
    (
        "venv",
        &[
            ("app", None),
            ("app/__init__.py", Some("")),
            ("venv", None),
            ("venv/bin", None),
            ("venv/bin/python", Some("->/usr/bin/python3")),
            ("venv/bin/tool", Some("#!/bin/sh\nexec true\n")),
            ("venv/lib64", Some("->bin")),
            ("static", None),
            ("static/site.css", Some("body{}\n")),
        ],
    ),
];

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: seed-corpus DIR"));
    let archive_dir = out.join("archive");
    let manifest_dir = out.join("manifest");
    std::fs::create_dir_all(&archive_dir).expect("create corpus dir");
    std::fs::create_dir_all(&manifest_dir).expect("create corpus dir");
    let work = tempfile::tempdir().expect("tempdir");
    let mut count = 0;
    for (name, tree) in TREES {
        let manifest = manifest_for(tree);
        let json = manifest.to_json_bytes();
        write(&manifest_dir.join(format!("{name}.json")), &json);
        let compact = serde_json::to_vec(&manifest).expect("serialise");
        write(&manifest_dir.join(format!("{name}-compact.json")), &compact);

        let sources = work.path().join(name);
        for (path, content) in tree.iter() {
            let at = sources.join(path);
            match content {
                None => std::fs::create_dir_all(&at).expect("mkdir"),
                Some(text) if !text.starts_with("->") => {
                    std::fs::write(&at, text).expect("write source")
                }
                Some(_) => {}
            }
        }
        for format in [Format::Zst, Format::Gz] {
            let file = work.path().join(format!("{name}.{}", format.extension()));
            let artifact = build(&manifest, &json, &sources, &file, format);
            let mut seeds = vec![(format.to_string(), [&[0], &artifact[..]].concat())];
            if format == Format::Zst {
                let tar = plain_tar(&artifact);
                for mode in [
                    1,
                    2,
                    1 | MODE_FIX_SUMMARY,
                    2 | MODE_FIX_SUMMARY | MODE_FIX_ENTRIES,
                    1 | MODE_FIX_CHECKSUMS | MODE_FIX_SUMMARY | MODE_FIX_ENTRIES,
                ] {
                    seeds.push((format!("tar-{mode}"), [&[mode], &tar[..]].concat()));
                }
            }
            for (kind, seed) in seeds {
                // Every seed must reach the end of the extractor, or it seeds little.
                let bytes = release_fuzz::artifact_bytes(&seed).expect("seed has a mode byte");
                extracts(&bytes).unwrap_or_else(|e| panic!("seed {name}-{kind} is refused: {e}"));
                write(&archive_dir.join(format!("{name}-{kind}")), &seed);
            }
        }
        count += 1;
    }
    regressions(&archive_dir, &manifest_dir, work.path());
    eprintln!("seed corpus of {count} trees written to {}", out.display());
}

/// Inputs that reproduced the bugs of docs/fuzzing.md: refused now, and a
/// crash of the target if they are ever accepted again.
fn regressions(archive_dir: &Path, manifest_dir: &Path, work: &Path) {
    // A venv/bin link to a relative "interpreter" that leaves the release.
    let (_, tree) = TREES[2];
    let escape = "../../../../etc";
    let mut manifest = manifest_for(tree);
    manifest.python.base_executable = escape.into();
    for e in &mut manifest.files {
        if e.path == "venv/bin/python" {
            e.target = Some(escape.into());
        }
    }
    manifest.tree_sha256 = tree_digest(&manifest.files);
    let json = manifest.to_json_bytes();
    let sources = work.join("venv");
    let file = work.join("regression-relative-interpreter.tar.zst");
    let artifact = build(&manifest, &json, &sources, &file, Format::Zst);
    let name = "regression-relative-interpreter";
    write(&archive_dir.join(name), &[&[0], &artifact[..]].concat());
    write(&manifest_dir.join(format!("{name}.json")), &json);

    // A file of u64::MAX bytes: the free-space sum wrapped.
    let (_, tree) = TREES[1];
    let mut manifest = manifest_for(tree);
    for e in &mut manifest.files {
        if e.size.is_some() {
            e.size = Some(u64::MAX);
        }
    }
    manifest.bytes = u64::MAX;
    manifest.tree_sha256 = tree_digest(&manifest.files);
    let name = "regression-huge-size.json";
    write(&manifest_dir.join(name), &manifest.to_json_bytes());
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn manifest_for(tree: Tree) -> Manifest {
    let mut files: Vec<Entry> = tree
        .iter()
        .map(|(path, content)| match content {
            None => Entry::dir(path.to_string()),
            Some(text) => match text.strip_prefix("->") {
                Some(target) => Entry::symlink(path.to_string(), target.to_string()),
                None => Entry::file(
                    path.to_string(),
                    path.contains("/bin/"),
                    text.len() as u64,
                    hex::encode(Sha256::digest(text.as_bytes())),
                ),
            },
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let commit = "0123456789abcdef0123456789abcdef01234567".to_string();
    Manifest {
        format: FORMAT,
        app: "seed".into(),
        release: commit[..12].to_string(),
        commit,
        source_date_epoch: 1_700_000_000,
        dirty: false,
        builder: Builder {
            tool: "release".into(),
            version: "0.1.0".into(),
            installer: "pip 24.0".into(),
        },
        python: PythonInfo {
            implementation: "cpython".into(),
            version: "3.11.2".into(),
            abi: "cp311".into(),
            platform: "linux_x86_64".into(),
            base_executable: INTERPRETER.into(),
        },
        requirements_sha256: "00".repeat(32),
        dependencies: None,
        unpinned: false,
        resolved: Vec::new(),
        build_env: Vec::new(),
        file_count: files.len() as u64,
        bytes: files.iter().map(Entry::size).sum(),
        tree_sha256: tree_digest(&files),
        files,
    }
}

fn build(manifest: &Manifest, json: &[u8], sources: &Path, file: &Path, format: Format) -> Vec<u8> {
    let out = fs_err::File::create(file).expect("create artifact");
    let mut writer =
        ArtifactWriter::new(out, format, manifest.source_date_epoch).expect("artifact writer");
    writer.append_manifest(json).expect("append manifest");
    for entry in &manifest.files {
        writer
            .append(entry, &sources.join(&entry.path))
            .expect("append entry");
    }
    writer.finish().expect("finish artifact");
    std::fs::read(file).expect("read artifact")
}

/// Install-style extraction of an artifact's bytes into a fresh directory.
fn extracts(bytes: &[u8]) -> release::error::Result<()> {
    let path = Path::new("seed");
    let (_, decoder) = release::archive::decompress(path, bytes)?;
    let mut archive = tar::Archive::new(decoder);
    let mut entries = archive.entries()?;
    let (manifest, _) = release::archive::read_manifest_entry(path, &mut entries)?;
    let dest = tempfile::tempdir()?;
    release::host::extract::Extractor::new(path, &manifest, dest.path()).run(entries)?;
    Ok(())
}

/// The tar stream inside a compressed artifact.
fn plain_tar(artifact: &[u8]) -> Vec<u8> {
    let (_, mut decoder) =
        release::archive::decompress(Path::new("seed"), artifact).expect("decompress seed");
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut decoder, &mut tar).expect("decompress seed");
    tar
}
