//! The venv-and-wheels frame of a zstd artifact, kept in the build cache.
//!
//! A zstd artifact ends in a compressed frame of its own that holds the
//! venv's and the wheels' members (`ArtifactWriter::finish_with_tail`).
//! Those members carry [`archive::DEPENDENCY_MTIME`], not the commit's
//! time, and their content is the cache entry's, so the frame is the same
//! bytes for every commit built from that entry: the first build that
//! compresses it keeps a copy in the entry, and later builds append that
//! copy instead of compressing the venv and the wheels again.
//!
//! A copy is named by a digest of everything its bytes depend on: the
//! format of this file, this tool's version, the zstd library's version and
//! level, and every member (path, type, mode, size, sha256 or link target).
//! Its sha256 is kept beside it and checked before each use; a copy that
//! does not match is not used (the frame is compressed anew and the copy
//! replaced), so a damaged cache cannot put other bytes into an artifact
//! than a fresh compression would.

use std::io::{self, BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use fs_err as fs;
use sha2::{Digest, Sha256};

use crate::archive::{self, HashingReader};
use crate::error::Result;
use crate::fsutil;
use crate::manifest::{self, Entry};

/// Where the copies live inside a cache entry.
const DIR: &str = "frames";

/// The compressed venv-and-wheels frame for `entries` (sorted, as they end
/// the artifact): the cache entry's copy when it has a sound one, else
/// compressed now (into `work_dir`) and a copy kept for the next build.
/// `reused` is set when the copy was used.
pub fn tail(
    entries: &[Entry],
    env_dir: &Path,
    work_dir: &Path,
    stop: &AtomicBool,
    reused: &AtomicBool,
) -> Result<fs::File> {
    let key = key(entries);
    if let Some(file) = cached(env_dir, &key) {
        reused.store(true, std::sync::atomic::Ordering::Relaxed);
        return Ok(file);
    }
    let mut file = super::write_tail(entries, env_dir, work_dir, archive::Format::Zst, stop)?;
    // Only a head start for the next build: a cache that cannot be written
    // (read-only, full) costs that build the compression, nothing else.
    let _ = keep(env_dir, &key, &mut file);
    Ok(file)
}

/// How the manifest's JSON ends when `entries` (the venv's and the
/// wheels', sorted, after the app's) end its file list
/// ([`manifest::json_of_last_entries`]), and those bytes as a zstd frame
/// ([`archive::raw_frame`]): the cache entry's copy when it has a sound
/// one, else compressed now and a copy kept. Nine tenths of a manifest are
/// these entries, and their frame is the same bytes for every commit built
/// from the entry, like the venv-and-wheels frame: a warm build compresses
/// only the rest of the manifest after the static step.
pub fn manifest_end(entries: &[Entry], env_dir: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let raw = manifest::json_of_last_entries(entries, true);
    let mut h = Sha256::new();
    h.update(b"release manifest-end frame 1\0");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(b"\0");
    h.update(zstd::zstd_safe::version_string().as_bytes());
    h.update(format!("\0{}\0", archive::ZSTD_LEVEL).as_bytes());
    h.update(&raw);
    let key = format!("manifest-{}", hex::encode(h.finalize()));
    if let Some(mut file) = cached(env_dir, &key) {
        let mut frame = Vec::new();
        if file.read_to_end(&mut frame).is_ok() {
            return Ok((raw, frame));
        }
    }
    let frame = archive::raw_frame(&raw)?;
    // A head start for the next build only, as for the other frame.
    let (path, digest) = paths(env_dir, &key);
    let _ = fs::create_dir_all(env_dir.join(DIR))
        .map_err(crate::error::Error::from)
        .and_then(|()| fsutil::write_atomic(&path, &frame))
        .and_then(|()| {
            let sha256 = hex::encode(Sha256::digest(&frame));
            fsutil::write_atomic(&digest, format!("{sha256}\n").as_bytes())
        });
    Ok((raw, frame))
}

/// The name of the copy of the frame holding `entries`.
fn key(entries: &[Entry]) -> String {
    let mut h = Sha256::new();
    h.update(b"release venv-and-wheels frame 1\0");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(b"\0");
    h.update(zstd::zstd_safe::version_string().as_bytes());
    h.update(format!("\0{}\0{}\0", archive::ZSTD_LEVEL, archive::DEPENDENCY_MTIME).as_bytes());
    for e in entries {
        let line = serde_json::to_vec(e).expect("an entry serialises");
        h.update(&line);
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

fn paths(env_dir: &Path, key: &str) -> (PathBuf, PathBuf) {
    let dir = env_dir.join(DIR);
    (
        dir.join(format!("{key}.tar.zst")),
        dir.join(format!("{key}.sha256")),
    )
}

/// The copy, opened, when its bytes have the sha256 recorded beside it.
fn cached(env_dir: &Path, key: &str) -> Option<fs::File> {
    let (frame, digest) = paths(env_dir, key);
    let want = fs::read_to_string(&digest).ok()?;
    let mut file = fs::File::open(&frame).ok()?;
    let mut reader = HashingReader::new(BufReader::with_capacity(1 << 20, &mut file), u64::MAX);
    io::copy(&mut reader, &mut io::sink()).ok()?;
    if reader.digest() != want.trim() {
        return None;
    }
    file.rewind().ok()?;
    Some(file)
}

/// Copy the frame just written into the cache entry (each file under a
/// temporary name, then renamed: a reader sees a whole copy or none).
fn keep(env_dir: &Path, key: &str, file: &mut fs::File) -> Result<()> {
    let (frame, digest) = paths(env_dir, key);
    let dir = frame.parent().expect("frames/ is a directory");
    fs::create_dir_all(dir)?;
    let suffix = fsutil::random_suffix();
    let tmp = dir.join(format!(".{key}.{suffix}"));
    let copied = (|| -> Result<String> {
        file.rewind()?;
        let mut out = fs::File::create(&tmp)?;
        let mut reader =
            HashingReader::new(BufReader::with_capacity(1 << 20, &mut *file), u64::MAX);
        io::copy(&mut reader, &mut out)?;
        let sha256 = reader.digest();
        file.rewind()?;
        Ok(sha256)
    })();
    let sha256 = match copied {
        Ok(sha256) => sha256,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, &frame)?;
    fsutil::write_atomic(&digest, format!("{sha256}\n").as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        vec![
            Entry::dir("venv".into()),
            Entry::file("venv/a.py".into(), false, 3, "ab".repeat(32)),
        ]
    }

    #[test]
    fn the_key_follows_every_member() {
        let a = entries();
        let mut b = entries();
        b[1] = Entry::file("venv/a.py".into(), true, 3, "ab".repeat(32));
        assert_ne!(key(&a), key(&b), "a mode change must change the key");
        assert_eq!(key(&a), key(&entries()));
    }

    #[test]
    fn a_copy_is_used_only_with_its_recorded_digest() {
        let env = tempfile::tempdir().unwrap();
        let frame = env.path().join("frame");
        std::fs::write(&frame, b"compressed bytes").unwrap();
        let mut file = fs::File::open(&frame).unwrap();
        keep(env.path(), "k", &mut file).unwrap();
        let mut back = String::new();
        cached(env.path(), "k")
            .expect("a sound copy is used")
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, "compressed bytes");
        // Damaged (one byte changed): not used.
        let (copy, _) = paths(env.path(), "k");
        std::fs::write(&copy, b"compressed bytez").unwrap();
        assert!(cached(env.path(), "k").is_none());
        assert!(cached(env.path(), "other").is_none());
    }
}
