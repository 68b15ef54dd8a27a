//! Helpers shared by the fuzz targets and the seed-corpus generator.
//!
//! The `archive` target reads one mode byte, then the rest of the input:
//!
//! * bits 0-1: `0` the rest is an artifact file as it is (compressed bytes,
//!   exactly what `install` reads); `1` the rest is a plain tar stream that the
//!   harness compresses with zstd; `2` or `3` the same with gzip. Mutating a
//!   plain tar reaches the extractor far more often than mutating compressed
//!   bytes.
//! * bit 2: before compressing, parse the first member as a manifest without
//!   validating it and recompute `file_count`, `bytes` and `tree_sha256`, so a
//!   mutated file list still gets past the digest check.
//! * bit 4: recompute the checksum of every tar header first, so mutated
//!   headers get past the tar reader's checksum test.
//! * bit 3: also copy each member's actual size and sha256 (files) or link
//!   target (symlinks) into its manifest entry first, so mutated contents get
//!   as far as being written.

use std::io::{Read, Write};

use release::manifest::{EntryType, Manifest, MANIFEST_NAME};
use sha2::{Digest, Sha256};

pub const MODE_FORMAT_MASK: u8 = 0b11;
pub const MODE_FIX_SUMMARY: u8 = 0b100;
pub const MODE_FIX_ENTRIES: u8 = 0b1000;
pub const MODE_FIX_CHECKSUMS: u8 = 0b1_0000;

/// Turn a fuzz input into the bytes of an artifact file.
pub fn artifact_bytes(data: &[u8]) -> Option<Vec<u8>> {
    let (&mode, rest) = data.split_first()?;
    let format = mode & MODE_FORMAT_MASK;
    if format == 0 {
        return Some(rest.to_vec());
    }
    let mut tar = rest.to_vec();
    if mode & MODE_FIX_CHECKSUMS != 0 {
        fix_checksums(&mut tar);
    }
    if mode & (MODE_FIX_SUMMARY | MODE_FIX_ENTRIES) != 0 {
        if let Some(fixed) = fix_up(&tar, mode & MODE_FIX_ENTRIES != 0) {
            tar = fixed;
        }
    }
    Some(compress(&tar, format == 1))
}

/// Compress a tar stream with zstd (fast level) or gzip.
pub fn compress(tar: &[u8], zstd: bool) -> Vec<u8> {
    if zstd {
        zstd::encode_all(tar, 1).expect("zstd into memory")
    } else {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(tar).expect("gzip into memory");
        enc.finish().expect("gzip into memory")
    }
}

/// Recompute the checksum of each header of a plain tar stream, walking from
/// header to header by the sizes they declare; stops at the first block of
/// zeros or a size it cannot read.
pub fn fix_checksums(tar: &mut [u8]) {
    let mut at = 0usize;
    while let Some(block) = tar.get_mut(at..at + 512) {
        if block.iter().all(|&b| b == 0) {
            return;
        }
        let mut header = tar::Header::new_old();
        header.as_mut_bytes().copy_from_slice(block);
        header.set_cksum();
        block.copy_from_slice(header.as_bytes());
        let Ok(size) = header.entry_size() else {
            return;
        };
        let Some(next) = usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_next_multiple_of(512))
            .and_then(|s| s.checked_add(at + 512))
        else {
            return;
        };
        at = next;
    }
}

/// Rewrite the first member (`release.json`) of a plain tar stream so its
/// summary fields (and, with `entries`, its entries) agree with the archive.
/// None when the stream does not start with a parseable manifest.
pub fn fix_up(tar: &[u8], entries: bool) -> Option<Vec<u8>> {
    let mut archive = tar::Archive::new(tar);
    let mut members = archive.entries().ok()?;
    let mut first = members.next()?.ok()?;
    if first.path_bytes().as_ref() != MANIFEST_NAME.as_bytes() {
        return None;
    }
    let header_at = usize::try_from(first.raw_header_position()).ok()?;
    let data_at = usize::try_from(first.raw_file_position()).ok()?;
    let size = usize::try_from(first.size()).ok()?;
    let end = data_at.checked_add(size)?.checked_next_multiple_of(512)?;
    if end > tar.len() || header_at + 512 > tar.len() {
        return None;
    }
    let mut json = Vec::new();
    first.read_to_end(&mut json).ok()?;
    drop(first);
    let mut manifest: Manifest = serde_json::from_slice(&json).ok()?;

    if entries {
        for member in members {
            let Ok(mut member) = member else { break };
            let path = String::from_utf8_lossy(&member.path_bytes()).into_owned();
            let path = path.strip_suffix('/').unwrap_or(&path).to_string();
            let Ok(i) = manifest
                .files
                .binary_search_by(|e| e.path.as_str().cmp(&path))
            else {
                continue;
            };
            let entry = &mut manifest.files[i];
            match entry.kind {
                EntryType::File => {
                    let mut content = Vec::new();
                    if member.read_to_end(&mut content).is_err() {
                        break;
                    }
                    entry.size = Some(content.len() as u64);
                    entry.sha256 = Some(hex::encode(Sha256::digest(&content)));
                }
                EntryType::Symlink => {
                    if let Some(link) = member.link_name_bytes() {
                        entry.target = Some(String::from_utf8_lossy(&link).into_owned());
                    }
                }
                EntryType::Dir => {}
            }
        }
    }

    manifest.recompute_totals();
    let json = manifest.to_json_bytes();

    let mut header = tar::Header::new_old();
    header
        .as_mut_bytes()
        .copy_from_slice(&tar[header_at..header_at + 512]);
    header.set_size(json.len() as u64);
    header.set_cksum();
    let mut out = Vec::with_capacity(tar.len() + json.len());
    out.extend_from_slice(&tar[..header_at]);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&json);
    out.resize(out.len().next_multiple_of(512), 0);
    out.extend_from_slice(&tar[end..]);
    Some(out)
}
