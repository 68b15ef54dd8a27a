//! Hostile artifacts and unsafe host roots (docs/design.md §4, docs/host.md
//! "Hostile artifacts and unsafe roots").
//!
//! `artifact::*`: one test per row of a table of archives an attacker could
//! hand to `release install`, generated from one real artifact (written here
//! with raw tar headers: nothing binary is committed). Each checks: exit 1;
//! stderr names the entry (or the artifact / manifest) and the rule; the root
//! and a sibling "outside" directory are exactly as before (no `.incoming-*`
//! left); the healthy release installed first stays current and verifies.
//! Each install runs under `prlimit` with 1 GiB of address space and a 256 MiB
//! file-size limit, so a decompression bomb that is read into memory or
//! written to disk fails its case (the install is killed, or fails for
//! another reason than the rule) instead of passing slowly. The path, type
//! and mode rules are also unit tests of the extractor (src/host/extract.rs).
//!
//! `root_case::*`: one test per unsafe root: each plants a root hygiene
//! problem (writable by others, symlinks planted in place of release's own
//! paths, a `current` pointing elsewhere), checks that the command refuses
//! with the path, the reason and the fix and changes nothing, and undoes it.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

use release::manifest::{tree_digest, Entry, Manifest};
use sha2::{Digest, Sha256};

use crate::common::members::{
    self, end_soon_after, index, insert_after, manifest_of, member, set_manifest, Editable,
};
use crate::common::root::Root;
use crate::common::*;

/// The commit every hostile variant claims, so that none of them is taken
/// for the healthy release already installed (which would make the install a
/// no-op before any member is read).
const COMMIT_H: &str = "0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad";
const GIB: u64 = 1 << 30;
/// Zeros are appended to a `.tar.zst` as repeated zstd frames of this size.
const ZEROS_CHUNK: u64 = 64 << 20;
/// Limits of every hostile install (prlimit): address space and file size.
const LIMIT_AS: u64 = GIB;
const LIMIT_FSIZE: u64 = 256 << 20;

/// The healthy artifact, built once.
fn healthy() -> &'static PathBuf {
    static ARTIFACT: OnceLock<PathBuf> = OnceLock::new();
    ARTIFACT.get_or_init(|| {
        let out = Path::new(REPO).join("target/hostile-it");
        App::new().build_ok(&out, &[])
    })
}

/// One tar member, written back from its fields (never from a stored header).
#[derive(Clone)]
struct M {
    kind: tar::EntryType,
    path: Vec<u8>,
    link: Option<Vec<u8>>,
    mode: u32,
    /// The size the header declares; `data` follows, then `size - data.len()`
    /// zero bytes (streamed as repeated zstd frames: a bomb).
    size: u64,
    data: Vec<u8>,
    device: (u32, u32),
}

impl M {
    fn file(path: &str, mode: u32, data: &[u8]) -> M {
        M {
            kind: tar::EntryType::Regular,
            path: path.as_bytes().to_vec(),
            link: None,
            mode,
            size: data.len() as u64,
            data: data.to_vec(),
            device: (0, 0),
        }
    }

    fn special(kind: tar::EntryType, path: &str, link: Option<&str>) -> M {
        M {
            kind,
            link: link.map(|l| l.as_bytes().to_vec()),
            mode: if kind == tar::EntryType::Symlink {
                0o777
            } else {
                0o644
            },
            ..M::file(path, 0o644, b"")
        }
    }
}

impl Editable for M {
    fn name(&self) -> String {
        String::from_utf8_lossy(&self.path)
            .trim_end_matches('/')
            .to_string()
    }

    fn data(&self) -> &[u8] {
        &self.data
    }

    /// New content, and the size the header declares with it.
    fn set_data(&mut self, data: Vec<u8>) {
        self.size = data.len() as u64;
        self.data = data;
    }
}

/// The members of the healthy artifact, with its manifest re-keyed to COMMIT_H.
fn base() -> &'static Vec<M> {
    static BASE: OnceLock<Vec<M>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut members: Vec<M> = members::read(healthy())
            .into_iter()
            .map(|m| M {
                kind: m.header.entry_type(),
                path: m.path.into_bytes(),
                link: m.link.map(String::into_bytes),
                mode: m.header.mode().unwrap(),
                size: m.data.len() as u64,
                data: m.data,
                device: (0, 0),
            })
            .collect();
        let mut manifest = Manifest::from_json(&members[0].data).unwrap();
        manifest.commit = COMMIT_H.into();
        manifest.release = COMMIT_H[..12].into();
        set_manifest(&mut members, manifest);
        members
    })
}

fn set_manifest_bytes(members: &mut [M], json: Vec<u8>) {
    members[0].set_data(json);
}

/// A copy of the base members, edited.
fn variant(edit: impl FnOnce(&mut Vec<M>)) -> Vec<M> {
    let mut members = base().clone();
    edit(&mut members);
    members
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A PAX record `LEN key=value\n`, LEN counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

// ---- writing archives -------------------------------------------------------

/// A tar stream in pieces: plain bytes, and runs of zeros too large to hold.
enum Piece {
    Tar(Vec<u8>),
    Zeros(u64),
}

fn header(kind: tar::EntryType, name: &[u8], link: &[u8], mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_767_225_600);
    h.set_uid(0);
    h.set_gid(0);
    let old = h.as_old_mut();
    let n = name.len().min(old.name.len());
    old.name[..n].copy_from_slice(&name[..n]);
    let n = link.len().min(old.linkname.len());
    old.linkname[..n].copy_from_slice(&link[..n]);
    h.set_cksum();
    h
}

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// A GNU long name ('L') or long link ('K') member carrying `value`.
fn gnu_long(out: &mut Vec<u8>, kind: tar::EntryType, value: &[u8]) {
    let mut data = value.to_vec();
    data.push(0);
    out.extend_from_slice(header(kind, b"././@LongLink", b"", 0o644, data.len() as u64).as_bytes());
    out.extend_from_slice(&data);
    pad(out);
}

/// Serialise members as tar (GNU long names where a name does not fit) and
/// end the archive properly.
fn pieces(members: &[M]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut out = Vec::new();
    for m in members {
        if m.path.len() > 100 {
            gnu_long(&mut out, tar::EntryType::GNULongName, &m.path);
        }
        let link = m.link.clone().unwrap_or_default();
        if link.len() > 100 {
            gnu_long(&mut out, tar::EntryType::GNULongLink, &link);
        }
        let mut h = header(m.kind, &m.path, &link, m.mode, m.size);
        if m.device != (0, 0) {
            h.set_device_major(m.device.0).unwrap();
            h.set_device_minor(m.device.1).unwrap();
            h.set_cksum();
        }
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&m.data);
        let zeros = m.size.saturating_sub(m.data.len() as u64);
        if zeros > 0 {
            assert!(m.data.is_empty() && zeros % ZEROS_CHUNK == 0);
            pieces.push(Piece::Tar(std::mem::take(&mut out)));
            pieces.push(Piece::Zeros(zeros));
        } else {
            pad(&mut out);
        }
    }
    out.extend_from_slice(&[0; 1024]);
    pieces.push(Piece::Tar(out));
    pieces
}

fn tar_bytes(members: &[M]) -> Vec<u8> {
    let mut all = Vec::new();
    for piece in pieces(members) {
        match piece {
            Piece::Tar(bytes) => all.extend_from_slice(&bytes),
            Piece::Zeros(_) => panic!("zeros only stream into .tar.zst"),
        }
    }
    all
}

/// One zstd frame holding ZEROS_CHUNK zero bytes (a few KB).
fn zeros_frame() -> &'static [u8] {
    static FRAME: OnceLock<Vec<u8>> = OnceLock::new();
    FRAME.get_or_init(|| zstd::bulk::compress(&vec![0u8; ZEROS_CHUNK as usize], 1).unwrap())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fmt {
    Zst,
    Gz,
}

impl Fmt {
    fn ext(self) -> &'static str {
        match self {
            Fmt::Zst => "tar.zst",
            Fmt::Gz => "tar.gz",
        }
    }
}

/// Compress: each tar piece is one zstd frame and each run of zeros is the
/// same small frame repeated (zstd readers decode concatenated frames), so
/// gigabytes cost nothing to write.
fn compress(fmt: Fmt, pieces: Vec<Piece>) -> Vec<u8> {
    match fmt {
        Fmt::Zst => {
            let mut out = Vec::new();
            for piece in pieces {
                match piece {
                    Piece::Tar(bytes) => out.extend(zstd::bulk::compress(&bytes, 1).unwrap()),
                    Piece::Zeros(n) => {
                        for _ in 0..n / ZEROS_CHUNK {
                            out.extend_from_slice(zeros_frame());
                        }
                    }
                }
            }
            out
        }
        Fmt::Gz => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            for piece in pieces {
                match piece {
                    Piece::Tar(bytes) => gz.write_all(&bytes).unwrap(),
                    Piece::Zeros(_) => panic!("zeros only stream into .tar.zst"),
                }
            }
            gz.finish().unwrap()
        }
    }
}

// ---- the cases ---------------------------------------------------------------

struct Case {
    name: &'static str,
    fmt: Fmt,
    /// The artifact file's bytes.
    bytes: Vec<u8>,
    /// Every one must appear in stderr.
    expect: Vec<String>,
}

fn case(name: &'static str, fmt: Fmt, members: Vec<M>, expect: &[&str]) -> Case {
    Case {
        name,
        fmt,
        bytes: compress(fmt, pieces(&members)),
        expect: expect.iter().map(|s| s.to_string()).collect(),
    }
}

fn raw_case(name: &'static str, fmt: Fmt, bytes: Vec<u8>, expect: &[&str]) -> Case {
    Case {
        name,
        fmt,
        bytes,
        expect: expect.iter().map(|s| s.to_string()).collect(),
    }
}

/// A file member `path` listed in the manifest too.
fn add_listed_file(members: &mut Vec<M>, after: &str, path: &str, data: &[u8]) {
    let mut m = manifest_of(members);
    m.files.push(Entry::file(
        path.into(),
        false,
        data.len() as u64,
        sha256_hex(data),
    ));
    set_manifest(members, m);
    insert_after(members, after, M::file(path, 0o644, data));
}

/// A symlink member `path -> target` listed in the manifest too.
fn add_listed_symlink(members: &mut Vec<M>, after: &str, path: &str, target: &str) {
    let mut m = manifest_of(members);
    m.files.push(Entry::symlink(path.into(), target.into()));
    set_manifest(members, m);
    insert_after(
        members,
        after,
        M::special(tar::EntryType::Symlink, path, Some(target)),
    );
}

/// A manifest edited without validation (the case is the invalid manifest).
fn raw_manifest(members: &mut [M], edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&members[0].data).unwrap();
    edit(&mut v);
    set_manifest_bytes(members, serde_json::to_vec(&v).unwrap());
}

/// The manifest header of the base with `files` of `n` generated directories:
/// about 50 bytes of JSON per entry.
fn huge_manifest(n: usize) -> Vec<u8> {
    let m = manifest_of(base());
    let mut head = serde_json::to_value(&m).unwrap();
    let obj = head.as_object_mut().unwrap();
    obj.remove("files");
    obj.insert("file_count".into(), (n as u64).into());
    obj.insert("bytes".into(), 0.into());
    let mut text = serde_json::to_string(&head).unwrap();
    text.pop();
    text.push_str(",\"files\":[");
    for i in 0..n {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!(
            "{{\"path\":\"app/d{i:09}\",\"type\":\"dir\",\"mode\":\"0755\"}}"
        ));
    }
    text.push_str("]}");
    text.into_bytes()
}

fn cases(outside: &Path) -> Vec<Case> {
    use tar::EntryType as T;
    use Fmt::{Gz, Zst};
    let outside_s = outside.to_str().unwrap().to_string();
    let mut cases = Vec::new();

    // -- paths
    cases.push(case(
        "`..` traversal into a sibling directory",
        Zst,
        variant(|m| {
            insert_after(
                m,
                "app",
                M::file("app/../../../../outside/dotdot", 0o644, b"pwned\n"),
            );
            end_soon_after(m, "app");
        }),
        &["app/../../../../outside/dotdot", "`..`"],
    ));
    cases.push(case(
        "`..` as the first component",
        Gz,
        variant(|m| {
            insert_after(m, "app", M::file("../outside/dotdot", 0o644, b"pwned\n"));
            end_soon_after(m, "app");
        }),
        &["../outside/dotdot", "`..`"],
    ));
    let absolute = format!("{outside_s}/absolute");
    cases.push(case(
        "absolute path into a sibling directory",
        Zst,
        variant(|m| {
            insert_after(m, "app", M::file(&absolute, 0o644, b"pwned\n"));
            end_soon_after(m, "app");
        }),
        &[&absolute, "absolute path"],
    ));
    cases.push(case(
        "manifest lists a `..` path",
        Gz,
        variant(|m| {
            raw_manifest(m, |v| {
                let files = v["files"].as_array_mut().unwrap();
                files.push(
                    serde_json::json!({"path": "app/../../x", "type": "dir", "mode": "0755"}),
                );
                files.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
                v["file_count"] = (v["files"].as_array().unwrap().len() as u64).into();
            });
            end_soon_after(m, "app");
        }),
        &["release.json", "app/../../x", "`..`"],
    ));
    cases.push(case(
        "non-UTF-8 name",
        Zst,
        variant(|m| {
            let mut bad = M::file("app/x", 0o644, b"x");
            bad.path = b"app/\xff\xfe.py".to_vec();
            insert_after(m, "app", bad);
            end_soon_after(m, "app");
        }),
        &["app/\u{fffd}\u{fffd}.py", "not UTF-8"],
    ));
    cases.push(case(
        "control character in a name",
        Gz,
        variant(|m| {
            insert_after(m, "app", M::file("app/evil\u{1b}[2J.py", 0o644, b"x"));
            end_soon_after(m, "app");
        }),
        &["app/evil\\u{1b}[2J.py", "control character"],
    ));
    let long_path = format!("app/{}", format!("{}/", "a".repeat(199)).repeat(25)) + "x.py";
    cases.push(case(
        "5000-byte path (GNU long name)",
        Zst,
        variant(|m| {
            insert_after(m, "app", M::file(&long_path, 0o644, b"x"));
            end_soon_after(m, "app");
        }),
        &["app/aaaa", "longer than 4096 bytes"],
    ));
    cases.push(case(
        "5000-byte path (PAX path record)",
        Gz,
        variant(|m| {
            let pax = pax_record("path", long_path.as_bytes());
            let mut x = M::file("PaxHeaders/x.py", 0o644, &pax);
            x.kind = T::XHeader;
            insert_after(m, "app", x);
            insert_after(m, "PaxHeaders/x.py", M::file("app/short.py", 0o644, b"x"));
            end_soon_after(m, "app");
        }),
        &["app/aaaa", "longer than 4096 bytes"],
    ));
    let long_component = format!("app/{}.py", "b".repeat(300));
    cases.push(case(
        "300-byte path component",
        Zst,
        variant(|m| {
            insert_after(m, "app", M::file(&long_component, 0o644, b"x"));
            end_soon_after(m, "app");
        }),
        &["app/bbbb", "component longer than 255 bytes"],
    ));
    for (name, fmt, path, rule) in [
        (
            "`./` prefix (another spelling of a listed path)",
            Gz,
            "./app/manage.py",
            "outside app/",
        ),
        (
            "empty component (another spelling of a listed path)",
            Zst,
            "app//manage.py",
            "empty path component",
        ),
        (
            "`.` component (another spelling of a listed path)",
            Gz,
            "app/./manage.py",
            "`.` or `..` component",
        ),
    ] {
        cases.push(case(
            name,
            fmt,
            variant(|m| {
                member(m, "app/manage.py").path = path.as_bytes().to_vec();
                end_soon_after(m, path);
            }),
            &[path, rule],
        ));
    }

    // -- links
    let far = format!("{}outside", "../".repeat(1700));
    cases.push(case(
        "5100-byte symlink target out of the release (GNU long link)",
        Zst,
        variant(|m| {
            add_listed_symlink(m, "app", "app/far", &far);
            end_soon_after(m, "app/far");
        }),
        &["app/far", "leaves the release"],
    ));
    cases.push(case(
        "symlink out of the release, then a file written through it",
        Zst,
        variant(|m| {
            add_listed_symlink(m, "app", "app/escape", "../../../../outside");
            add_listed_file(m, "app/escape", "app/escape/pwned", b"pwned\n");
            end_soon_after(m, "app/escape/pwned");
        }),
        &["app/escape", "leaves the release"],
    ));
    cases.push(case(
        "absolute symlink to a sibling directory",
        Gz,
        variant(|m| {
            add_listed_symlink(m, "app", "app/etc", &outside_s);
            end_soon_after(m, "app/etc");
        }),
        &["app/etc", "leaves the release"],
    ));
    cases.push(case(
        "symlink inside the release, then a file written through it",
        Zst,
        variant(|m| {
            add_listed_symlink(m, "app", "app/inner", "mysite");
            add_listed_file(m, "app/inner", "app/inner/pwned.py", b"pwned\n");
            end_soon_after(m, "app/inner/pwned.py");
        }),
        &[
            "app/inner/pwned.py",
            "is not a directory unpacked before it",
        ],
    ));
    cases.push(case(
        "symlink not in the manifest",
        Gz,
        variant(|m| {
            insert_after(
                m,
                "app",
                M::special(T::Symlink, "app/passwd", Some("/etc/passwd")),
            );
            end_soon_after(m, "app");
        }),
        &["app/passwd", "not in the manifest"],
    ));
    cases.push(case(
        "symlink target differs from the manifest",
        Zst,
        variant(|m| {
            let link = m
                .iter_mut()
                .find(|x| x.kind == T::Symlink && x.name().starts_with("venv/bin/"))
                .unwrap();
            link.link = Some(b"/bin/sh".to_vec());
        }),
        &[
            "venv/bin/",
            "symlink points to \"/bin/sh\", the manifest says",
        ],
    ));
    cases.push(case(
        "hard link to a file outside (relative)",
        Zst,
        variant(|m| {
            insert_after(
                m,
                "app",
                M::special(T::Link, "app/hl", Some("../../../../outside/bait")),
            );
            end_soon_after(m, "app");
        }),
        &["app/hl", "hard link"],
    ));
    let bait = format!("{outside_s}/bait");
    cases.push(case(
        "hard link to a file outside (absolute)",
        Gz,
        variant(|m| {
            insert_after(m, "app", M::special(T::Link, "app/hl", Some(&bait)));
            end_soon_after(m, "app");
        }),
        &["app/hl", "hard link"],
    ));

    // -- types and modes
    for (name, fmt, kind, path, device, rule) in [
        (
            "character device",
            Zst,
            T::Char,
            "app/null",
            (1, 3),
            "device node",
        ),
        (
            "block device",
            Gz,
            T::Block,
            "app/sda",
            (8, 0),
            "device node",
        ),
        ("fifo", Zst, T::Fifo, "app/fifo", (0, 0), "fifo"),
    ] {
        cases.push(case(
            name,
            fmt,
            variant(|m| {
                let mut dev = M::special(kind, path, None);
                dev.device = device;
                insert_after(m, "app", dev);
                end_soon_after(m, "app");
            }),
            &[path, rule],
        ));
    }
    for (name, fmt, path, bit, rule) in [
        ("setuid file", Zst, "app/manage.py", 0o4000, "setuid"),
        ("setgid file", Gz, "app/manage.py", 0o2000, "setgid"),
        ("sticky directory", Zst, "app/mysite", 0o1000, "sticky"),
    ] {
        cases.push(case(
            name,
            fmt,
            variant(|m| {
                member(m, path).mode |= bit;
                end_soon_after(m, path);
            }),
            &[path, rule],
        ));
    }

    // -- the manifest against the members
    cases.push(case(
        "duplicate path",
        Gz,
        variant(|m| {
            let again = member(m, "app/manage.py").clone();
            insert_after(m, "app/manage.py", again);
            end_soon_after(m, "app/manage.py");
        }),
        &["app/manage.py", "twice"],
    ));
    cases.push(case(
        "member missing from the manifest",
        Zst,
        variant(|m| {
            insert_after(m, "app", M::file("app/evil.py", 0o644, b"import os\n"));
            end_soon_after(m, "app/evil.py");
        }),
        &["app/evil.py", "not in the manifest"],
    ));
    cases.push(case(
        "manifest entry missing from the archive",
        Zst,
        variant(|m| {
            let i = index(m, "app/manage.py");
            m.remove(i);
        }),
        &["app/manage.py", "missing from the archive"],
    ));
    cases.push(case(
        "manifest hash mismatch",
        Zst,
        variant(|m| {
            let mut manifest = manifest_of(m);
            let e = manifest
                .files
                .iter_mut()
                .find(|e| e.path == "app/manage.py")
                .unwrap();
            e.sha256 = Some("ab".repeat(32));
            set_manifest(m, manifest);
            end_soon_after(m, "app/manage.py");
        }),
        &["app/manage.py", "content differs from the manifest"],
    ));
    cases.push(case(
        "content changed, manifest kept",
        Gz,
        variant(|m| {
            member(m, "app/manage.py").data[5] ^= 1;
            end_soon_after(m, "app/manage.py");
        }),
        &["app/manage.py", "content differs from the manifest"],
    ));
    cases.push(case(
        "manifest size mismatch",
        Zst,
        variant(|m| {
            let mut manifest = manifest_of(m);
            let e = manifest
                .files
                .iter_mut()
                .find(|e| e.path == "app/manage.py")
                .unwrap();
            e.size = Some(e.size() + 1);
            set_manifest(m, manifest);
            end_soon_after(m, "app/manage.py");
        }),
        &["app/manage.py", "the manifest lists"],
    ));
    cases.push(case(
        "member larger than the manifest",
        Gz,
        variant(|m| {
            let x = member(m, "app/manage.py");
            x.data.extend_from_slice(&[b'#'; 100]);
            x.size += 100;
            end_soon_after(m, "app/manage.py");
        }),
        &["app/manage.py", "beyond"],
    ));
    cases.push(case(
        "manifest totals do not add up",
        Zst,
        variant(|m| {
            raw_manifest(m, |v| {
                let bytes = v["bytes"].as_u64().unwrap();
                v["bytes"] = (bytes + 1).into();
            });
            end_soon_after(m, "app");
        }),
        &["release.json", "does not match the sum"],
    ));

    // -- the container
    for (name, fmt) in [
        ("truncated stream (zst)", Zst),
        ("truncated stream (gz)", Gz),
    ] {
        let mut bytes = compress(fmt, pieces(base()));
        bytes.truncate(bytes.len() / 5);
        cases.push(raw_case(name, fmt, bytes, &["truncated"]));
    }
    cases.push(raw_case(
        "wrong magic (a zip file)",
        Zst,
        b"PK\x03\x04\x14\x00\x00\x00\x08\x00 not an artifact".to_vec(),
        &["not a release artifact", "not zstd or gzip"],
    ));
    cases.push(raw_case(
        "uncompressed tar",
        Gz,
        tar_bytes(&base()[..3]),
        &["not a release artifact", "not zstd or gzip"],
    ));
    cases.push(raw_case(
        "empty file",
        Zst,
        Vec::new(),
        &["not a release artifact", "shorter than"],
    ));
    cases.push(case(
        "manifest missing",
        Zst,
        variant(|m| {
            m.remove(0);
            end_soon_after(m, "app");
        }),
        &["release.json", "first member"],
    ));
    cases.push(case(
        "manifest not first",
        Gz,
        variant(|m| {
            m.swap(0, 1);
            end_soon_after(m, "app");
        }),
        &["release.json", "first member"],
    ));
    cases.push(case(
        "manifest not JSON",
        Zst,
        variant(|m| {
            set_manifest_bytes(m, b"format = 1\napp = \"mysite\"\n".to_vec());
            end_soon_after(m, "app");
        }),
        &["release.json", "not valid JSON"],
    ));
    cases.push(case(
        "manifest of an unknown format version",
        Gz,
        variant(|m| {
            raw_manifest(m, |v| v["format"] = 2.into());
            end_soon_after(m, "app");
        }),
        &["release.json", "unknown manifest format 2"],
    ));
    cases.push(case(
        "manifest is a directory",
        Zst,
        variant(|m| {
            m[0] = M::special(T::Directory, "release.json", None);
            m[0].mode = 0o755;
            end_soon_after(m, "app");
        }),
        &["release.json", "not a regular file"],
    ));
    cases.push(case(
        "manifest claims 10^9 files",
        Gz,
        variant(|m| {
            raw_manifest(m, |v| v["file_count"] = 1_000_000_000u64.into());
            end_soon_after(m, "app");
        }),
        &["release.json", "1000000000 files"],
    ));
    cases.push(case(
        "manifest with a 1.4-million-entry file list (74 MiB)",
        Zst,
        variant(|m| {
            set_manifest_bytes(m, huge_manifest(1_400_000));
            end_soon_after(m, "app");
        }),
        &["release.json", "more than the"],
    ));

    // -- decompression bombs (zeros streamed as repeated zstd frames)
    let available = {
        let stat = rustix::fs::statvfs(outside).unwrap();
        stat.f_bavail * stat.f_frsize
    };
    let huge = 16u64 << 40;
    assert!(available < huge, "the disk has more than 16 TiB free");
    cases.push(case(
        "bomb: a member the manifest lists as 16 TiB",
        Zst,
        variant(|m| {
            let mut manifest = manifest_of(m);
            manifest
                .files
                .push(Entry::file("app/bomb".into(), false, huge, "00".repeat(32)));
            set_manifest(m, manifest);
            let mut bomb = M::file("app/bomb", 0o644, b"");
            bomb.size = 2 * GIB;
            insert_after(m, "app", bomb);
            end_soon_after(m, "app");
        }),
        &["not enough free space", "`app/bomb`", "whole filesystem"],
    ));
    cases.push(case(
        "bomb: manifest sizes that overflow 64 bits",
        Zst,
        variant(|m| {
            raw_manifest(m, |v| {
                let files = v["files"].as_array_mut().unwrap();
                let i = files
                    .iter()
                    .position(|e| e["path"] == "app/manage.py")
                    .unwrap();
                let old = files[i]["size"].as_u64().unwrap();
                files[i]["size"] = u64::MAX.into();
                let total = v["bytes"].as_u64().unwrap() - old;
                v["bytes"] = total.saturating_add(u64::MAX).into();
                let entries: Vec<Entry> = serde_json::from_value(v["files"].clone()).unwrap();
                v["tree_sha256"] = tree_digest(&entries).into();
            });
            let x = member(m, "app/manage.py");
            x.data.clear();
            x.size = 2 * GIB;
            end_soon_after(m, "app/manage.py");
        }),
        &["release.json", "add up to more than"],
    ));
    cases.push(case(
        "bomb: 2 GiB member the manifest lists as small",
        Zst,
        variant(|m| {
            let x = member(m, "app/manage.py");
            x.data.clear();
            x.size = 2 * GIB;
            end_soon_after(m, "app/manage.py");
        }),
        &["app/manage.py", "beyond"],
    ));
    cases.push(case(
        "bomb: 2 GiB member not in the manifest",
        Zst,
        variant(|m| {
            let mut bomb = M::file("app/zeros", 0o644, b"");
            bomb.size = 2 * GIB;
            insert_after(m, "app", bomb);
            end_soon_after(m, "app");
        }),
        &["app/zeros", "not in the manifest"],
    ));
    cases.push(case(
        "bomb: 2 GiB member after a complete release",
        Zst,
        variant(|m| {
            let mut bomb = M::file("wheels/zz-zeros.whl", 0o644, b"");
            bomb.size = 2 * GIB;
            m.push(bomb);
        }),
        &["wheels/zz-zeros.whl", "not in the manifest"],
    ));
    cases.push(case(
        "bomb: 2 GiB GNU long name",
        Zst,
        variant(|m| {
            let mut long = M::special(T::GNULongName, "././@LongLink", None);
            long.size = 2 * GIB;
            insert_after(m, "app", long);
            insert_after(m, "././@LongLink", M::file("app/short.py", 0o644, b"x"));
            end_soon_after(m, "app");
        }),
        &["after `app`", "GNU long name", "2147483648 bytes"],
    ));
    cases.push(case(
        "bomb: 2 GiB PAX header",
        Zst,
        variant(|m| {
            let mut pax = M::special(T::XHeader, "PaxHeaders/x", None);
            pax.size = 2 * GIB;
            insert_after(m, "app", pax);
            insert_after(m, "PaxHeaders/x", M::file("app/short.py", 0o644, b"x"));
            end_soon_after(m, "app");
        }),
        &["after `app`", "PAX", "2147483648 bytes"],
    ));
    cases.push(case(
        "bomb: 2 GiB release.json",
        Zst,
        variant(|m| {
            m[0].data.clear();
            m[0].size = 2 * GIB;
            end_soon_after(m, "app");
        }),
        &["release.json", "2147483648 bytes"],
    ));
    cases.push(case(
        "PAX size record (desynchronises the stream)",
        Gz,
        variant(|m| {
            let mut x = M::file("PaxHeaders/manage.py", 0o644, &pax_record("size", b"0"));
            x.kind = T::XHeader;
            let i = index(m, "app/manage.py");
            m.insert(i, x);
            end_soon_after(m, "app/manage.py");
        }),
        &["after `", "PAX", "`size`"],
    ));
    let long_name = |name: &str| {
        let mut l = M::file("././@LongLink", 0o644, format!("{name}\0").as_bytes());
        l.kind = T::GNULongName;
        l
    };
    cases.push(case(
        "two GNU long names for one member",
        Zst,
        variant(|m| {
            insert_after(m, "app", long_name("app/one.py"));
            m.insert(index(m, "app") + 2, long_name("app/two.py"));
            m.insert(index(m, "app") + 3, M::file("app/x.py", 0o644, b"x"));
            end_soon_after(m, "app");
        }),
        &["after `app`", "already has a long name"],
    ));
    cases.push(case(
        "a GNU long name with no member after it",
        Gz,
        variant(|m| {
            let i = index(m, "app");
            m.truncate(i + 1);
            m.push(long_name("app/x.py"));
        }),
        &["after `app`", "no member after it"],
    ));
    cases.push(case(
        "PAX global header",
        Zst,
        variant(|m| {
            let mut g = M::file("pax_global_header", 0o644, &pax_record("comment", b"hi"));
            g.kind = T::XGlobalHeader;
            insert_after(m, "app", g);
            end_soon_after(m, "app");
        }),
        &["after `app`", "PAX global header"],
    ));
    cases
}

// ---- checking ----------------------------------------------------------------

/// Every path under `dir` with its type, mode, size, link count, link target
/// and (for files outside installed releases) content digest.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.unwrap();
        let rel = entry
            .path()
            .strip_prefix(dir)
            .unwrap()
            .display()
            .to_string();
        let meta = entry.path().symlink_metadata().unwrap();
        let kind = meta.file_type();
        let desc = if kind.is_symlink() {
            format!(
                "link -> {}",
                std::fs::read_link(entry.path()).unwrap().display()
            )
        } else if kind.is_dir() {
            format!("dir {:o} uid {}", meta.mode() & 0o7777, meta.uid())
        } else {
            let digest = if rel.starts_with("releases/") {
                String::new()
            } else {
                sha256_hex(&std::fs::read(entry.path()).unwrap())
            };
            format!(
                "file {:o} {} bytes {} links {digest}",
                meta.mode() & 0o7777,
                meta.size(),
                meta.nlink()
            )
        };
        map.insert(rel, desc);
    }
    map
}

fn diff(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => out.push(format!("removed {k}")),
            Some(w) if w != v => out.push(format!("changed {k}: {v} -> {w}")),
            _ => {}
        }
    }
    for k in after.keys().filter(|k| !before.contains_key(*k)) {
        out.push(format!("created {k}"));
    }
    out
}

/// `release --root ROOT install ARTIFACT` under prlimit.
fn limited_install(root: &Path, artifact: &Path) -> Output {
    Command::new("prlimit")
        .arg(format!("--as={LIMIT_AS}"))
        .arg(format!("--fsize={LIMIT_FSIZE}"))
        .arg("--")
        .arg(BIN)
        .arg("--root")
        .arg(root)
        .arg("install")
        .arg(artifact)
        .env_remove("RELEASE_ROOT")
        .env_remove("RELEASE_CACHE_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run prlimit (util-linux)")
}

/// The first line of the error (for the table).
fn error_line(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error"))
        .unwrap_or_else(|| stderr.lines().next().unwrap_or(""));
    let line: String = line.chars().take(150).collect();
    line
}

/// A host root next to a sibling directory `outside` (with a bait file) that
/// hostile paths and links aim at.
struct Site {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    /// The root, to run commands on.
    host: Root,
}

impl Site {
    /// A fresh site in `dir` (whatever was there is removed first).
    fn in_dir(dir: &Path) -> Site {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        Site::in_tmp(
            tempfile::Builder::new()
                .prefix("rh-")
                .tempdir_in(dir)
                .unwrap(),
        )
    }

    fn in_tmp(tmp: tempfile::TempDir) -> Site {
        let srv = tmp.path().join("srv");
        let outside = srv.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("bait"), "bait\n").unwrap();
        Site {
            host: Root::at(srv.join("mysite")),
            root: srv.join("mysite"),
            outside,
            _tmp: tmp,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.host.run(args)
    }

    /// Install and activate the healthy artifact; returns its id.
    fn healthy(&self) -> String {
        let out = self.run(&["--json", "deploy", healthy().to_str().unwrap()]);
        let report = json_ok(&out);
        report["activate"]["id"].as_str().unwrap().to_string()
    }

    fn current(&self) -> Option<PathBuf> {
        std::fs::read_link(self.root.join("current")).ok()
    }

    fn verify_ok(&self) {
        let report = json_ok(&self.run(&["--json", "verify"]));
        assert_eq!(report["ok"], true, "{report}");
    }
}

/// The site the hostile-artifact tests share: one root (in target/, so it
/// needs no cleanup by a destructor) with the healthy release live, and the
/// cases generated once against its `outside` directory. Each test takes the
/// lock, installs its artifact and checks the site is as it was; the last
/// test of a full run removes the site (a partial run leaves it for the next
/// run to replace).
struct Shared {
    site: Site,
    /// The healthy release, live throughout.
    id: String,
    current: PathBuf,
    cases: Vec<Case>,
    /// Tests finished (passed or not).
    done: usize,
}

fn shared() -> std::sync::MutexGuard<'static, Shared> {
    static SHARED: OnceLock<std::sync::Mutex<Shared>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        let site = Site::in_dir(&Path::new(REPO).join("target/hostile-it/site"));
        let id = site.healthy();
        let current = site.current().unwrap();
        assert_eq!(current, Path::new("releases").join(&id));
        let cases = cases(&site.outside);
        std::sync::Mutex::new(Shared {
            site,
            id,
            current,
            cases,
            done: 0,
        })
    });
    // A failed case panics while holding the lock; the site is still sound
    // for the next case (each case checks it is unchanged).
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Install the case named `name`; it must be refused and change nothing.
fn refuse_hostile(name: &str) {
    let mut shared = shared();
    let problems = check_case(&shared, name);
    shared.done += 1;
    if shared.done == HOSTILE_CASES.len() {
        let _ = std::fs::remove_dir_all(shared.site.root.parent().unwrap().parent().unwrap());
    }
    drop(shared);
    assert!(problems.is_empty(), "{name}: {}", problems.join("\n  "));
}

/// What is wrong with how the install of case `name` went.
fn check_case(shared: &Shared, name: &str) -> Vec<String> {
    let site = &shared.site;
    let case = shared
        .cases
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no hostile case {name:?}"));
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join(format!("hostile.{}", case.fmt.ext()));
    std::fs::write(&artifact, &case.bytes).unwrap();
    // A matching .sha256: the attacker controls both, so each case is
    // decided by the member checks, not by the digest.
    std::fs::write(
        format!("{}.sha256", artifact.display()),
        format!(
            "{}  {}\n",
            sha256_hex(&case.bytes),
            artifact.file_name().unwrap().to_string_lossy()
        ),
    )
    .unwrap();
    let root_before = snapshot(&site.root);
    let outside_before = snapshot(&site.outside);
    let t = Instant::now();
    let out = limited_install(&site.root, &artifact);
    let seconds = t.elapsed().as_secs_f64();
    let err = stderr(&out);
    eprintln!(
        "{name} ({}): {seconds:.2}s: {}",
        case.fmt.ext(),
        error_line(&err)
    );
    let mut problems = Vec::new();
    if out.status.code() != Some(1) {
        problems.push(format!("exit {:?}, expected 1", out.status));
    }
    for needle in &case.expect {
        if !err.contains(needle.as_str()) {
            problems.push(format!("stderr lacks {needle:?}"));
        }
    }
    if !err.contains("hostile.") {
        problems.push("stderr does not name the artifact".into());
    }
    problems.extend(diff(&root_before, &snapshot(&site.root)));
    problems.extend(
        diff(&outside_before, &snapshot(&site.outside))
            .into_iter()
            .map(|d| format!("outside: {d}")),
    );
    // The healthy release is still current and intact after every case.
    if site.current().as_ref() != Some(&shared.current) {
        problems.push(format!("current is now {:?}", site.current()));
    }
    let verify = site.run(&["--json", "verify"]);
    if !verify.status.success() {
        problems.push(format!("verify failed: {}", stdout(&verify)));
    }
    let releases = site.host.releases();
    if releases != [shared.id.clone()] {
        problems.push(format!("releases/ holds {releases:?}"));
    }
    if seconds > 120.0 {
        problems.push(format!("took {seconds:.1}s"));
    }
    if !problems.is_empty() {
        problems.push(format!("stderr: {}", err.trim()));
    }
    problems
}

/// One `#[test]` per hostile case, named after it, so each can be run and
/// reported alone (`cargo test --features crashpoints --test it hostile::artifact::`);
/// and a test that the list and the table agree.
macro_rules! hostile_artifacts {
    ($($test:ident: $name:literal,)*) => {
        /// The names of the cases, as the table gives them.
        const HOSTILE_CASES: &[&str] = &[$($name),*];

        mod artifact {
            $(
                #[test]
                fn $test() {
                    super::refuse_hostile($name);
                }
            )*
        }
    };
}

/// The macro's list is the table: no case without its test, no test
/// without its case.
#[test]
fn every_hostile_artifact_case_has_its_own_test() {
    let mut table: Vec<&str> = shared().cases.iter().map(|c| c.name).collect();
    let mut listed = HOSTILE_CASES.to_vec();
    table.sort_unstable();
    listed.sort_unstable();
    assert_eq!(table, listed);
}

hostile_artifacts! {
    dotdot_traversal_into_a_sibling_directory: "`..` traversal into a sibling directory",
    dotdot_as_the_first_component: "`..` as the first component",
    absolute_path_into_a_sibling_directory: "absolute path into a sibling directory",
    manifest_lists_a_dotdot_path: "manifest lists a `..` path",
    non_utf_8_name: "non-UTF-8 name",
    control_character_in_a_name: "control character in a name",
    n5000_byte_path_gnu_long_name: "5000-byte path (GNU long name)",
    n5000_byte_path_pax_path_record: "5000-byte path (PAX path record)",
    n300_byte_path_component: "300-byte path component",
    dot_slash_prefix_another_spelling_of_a_listed_path: "`./` prefix (another spelling of a listed path)",
    empty_component_another_spelling_of_a_listed_path: "empty component (another spelling of a listed path)",
    dot_component_another_spelling_of_a_listed_path: "`.` component (another spelling of a listed path)",
    n5100_byte_symlink_target_out_of_the_release_gnu_long_link: "5100-byte symlink target out of the release (GNU long link)",
    symlink_out_of_the_release_then_a_file_written_through_it: "symlink out of the release, then a file written through it",
    absolute_symlink_to_a_sibling_directory: "absolute symlink to a sibling directory",
    symlink_inside_the_release_then_a_file_written_through_it: "symlink inside the release, then a file written through it",
    symlink_not_in_the_manifest: "symlink not in the manifest",
    symlink_target_differs_from_the_manifest: "symlink target differs from the manifest",
    hard_link_to_a_file_outside_relative: "hard link to a file outside (relative)",
    hard_link_to_a_file_outside_absolute: "hard link to a file outside (absolute)",
    character_device: "character device",
    block_device: "block device",
    fifo: "fifo",
    setuid_file: "setuid file",
    setgid_file: "setgid file",
    sticky_directory: "sticky directory",
    duplicate_path: "duplicate path",
    member_missing_from_the_manifest: "member missing from the manifest",
    manifest_entry_missing_from_the_archive: "manifest entry missing from the archive",
    manifest_hash_mismatch: "manifest hash mismatch",
    content_changed_manifest_kept: "content changed, manifest kept",
    manifest_size_mismatch: "manifest size mismatch",
    member_larger_than_the_manifest: "member larger than the manifest",
    manifest_totals_do_not_add_up: "manifest totals do not add up",
    truncated_stream_zst: "truncated stream (zst)",
    truncated_stream_gz: "truncated stream (gz)",
    wrong_magic_a_zip_file: "wrong magic (a zip file)",
    uncompressed_tar: "uncompressed tar",
    empty_file: "empty file",
    manifest_missing: "manifest missing",
    manifest_not_first: "manifest not first",
    manifest_not_json: "manifest not JSON",
    manifest_of_an_unknown_format_version: "manifest of an unknown format version",
    manifest_is_a_directory: "manifest is a directory",
    manifest_claims_1e9_files: "manifest claims 10^9 files",
    manifest_with_a_1_4_million_entry_file_list_74_mib: "manifest with a 1.4-million-entry file list (74 MiB)",
    bomb_a_member_the_manifest_lists_as_16_tib: "bomb: a member the manifest lists as 16 TiB",
    bomb_manifest_sizes_that_overflow_64_bits: "bomb: manifest sizes that overflow 64 bits",
    bomb_2_gib_member_the_manifest_lists_as_small: "bomb: 2 GiB member the manifest lists as small",
    bomb_2_gib_member_not_in_the_manifest: "bomb: 2 GiB member not in the manifest",
    bomb_2_gib_member_after_a_complete_release: "bomb: 2 GiB member after a complete release",
    bomb_2_gib_gnu_long_name: "bomb: 2 GiB GNU long name",
    bomb_2_gib_pax_header: "bomb: 2 GiB PAX header",
    bomb_2_gib_release_json: "bomb: 2 GiB release.json",
    pax_size_record_desynchronises_the_stream: "PAX size record (desynchronises the stream)",
    two_gnu_long_names_for_one_member: "two GNU long names for one member",
    a_gnu_long_name_with_no_member_after_it: "a GNU long name with no member after it",
    pax_global_header: "PAX global header",
}

// ---- unsafe roots --------------------------------------------------------------

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), None).unwrap();
}

fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

type Step = Box<dyn Fn(&Site)>;

struct Hygiene {
    name: &'static str,
    /// Make the root unsafe.
    plant: Step,
    /// Put it back.
    undo: Step,
    /// The command (`{art}` is the healthy artifact, `{id}` its release id).
    args: &'static [&'static str],
    /// `--root` to pass instead of the root (a symlink to it).
    root_arg: Option<PathBuf>,
    code: i32,
    /// Every one must appear in stderr (`{root}`, `{outside}` substituted).
    expect: &'static [&'static str],
}

fn hygiene_cases(site: &Site) -> Vec<Hygiene> {
    let root = site.root.clone();
    let outside = site.outside.clone();
    let mode = |rel: &'static str, planted: u32, normal: u32| -> (Step, Step) {
        let (a, b) = (root.join(rel), root.join(rel));
        (
            Box::new(move |_| chmod(&a, planted)),
            Box::new(move |_| chmod(&b, normal)),
        )
    };
    // Move a path of the root into outside/ and leave a symlink to it.
    let link_out = |rel: &'static str| -> (Step, Step) {
        let (path, real) = (
            root.join(rel),
            outside.join(format!("real-{}", rel.trim_start_matches('.'))),
        );
        let (path2, real2) = (path.clone(), real.clone());
        (
            Box::new(move |_| {
                std::fs::rename(&path, &real).unwrap();
                symlink(&real, &path);
            }),
            Box::new(move |_| {
                std::fs::remove_file(&path2).unwrap();
                std::fs::rename(&real2, &path2).unwrap();
            }),
        )
    };
    let owner = |rel: &'static str| -> (Step, Step) {
        let (a, b) = (root.join(rel), root.join(rel));
        (
            Box::new(move |_| chown(&a, 65534)),
            Box::new(move |_| chown(&b, 0)),
        )
    };
    // Replace `current` by something else, keeping the real link aside.
    let replace_current = |make: Box<dyn Fn(&Path)>| -> (Step, Step) {
        let current = root.join("current");
        let saved = root.parent().unwrap().join("current.saved");
        let (current2, saved2) = (current.clone(), saved.clone());
        (
            Box::new(move |_| {
                std::fs::rename(&current, &saved).unwrap();
                make(&current);
            }),
            Box::new(move |_| {
                let meta = std::fs::symlink_metadata(&current2).unwrap();
                if meta.is_dir() {
                    std::fs::remove_dir(&current2).unwrap();
                } else {
                    std::fs::remove_file(&current2).unwrap();
                }
                std::fs::rename(&saved2, &current2).unwrap();
            }),
        )
    };
    let mut cases = Vec::new();
    let mut add = |name, (plant, undo): (Step, Step), args, code, expect| {
        cases.push(Hygiene {
            name,
            plant,
            undo,
            args,
            root_arg: None,
            code,
            expect,
        });
    };
    add(
        "root writable by group (0775)",
        mode("", 0o775, 0o755),
        &["install", "{art}"],
        1,
        &["{root} is writable by group or others", "chmod go-w {root}"],
    );
    add(
        "root writable by others (0757)",
        mode("", 0o757, 0o755),
        &["list"],
        1,
        &["{root} is writable by group or others", "chmod go-w {root}"],
    );
    add(
        "releases/ writable by group",
        mode("releases", 0o775, 0o755),
        &["activate", "{id}"],
        1,
        &[
            "{root}/releases is writable by group or others",
            "chmod go-w {root}/releases",
        ],
    );
    add(
        "releases/ owned by another user",
        owner("releases"),
        &["prune"],
        1,
        &["{root}/releases belongs to uid 65534", "chown"],
    );
    add(
        "releases/ is a symlink",
        link_out("releases"),
        &["verify"],
        1,
        &["{root}/releases is a symlink", "fix:"],
    );
    add(
        "current is a directory",
        replace_current(Box::new(|p| std::fs::create_dir(p).unwrap())),
        &["prune"],
        1,
        &[
            "{root}/current is a directory, not a symlink",
            "mv {root}/current",
        ],
    );
    add(
        "current is a regular file",
        replace_current(Box::new(|p| std::fs::write(p, "x").unwrap())),
        &["status"],
        1,
        &[
            "{root}/current is a file, not a symlink",
            "mv {root}/current",
        ],
    );
    let out = outside.clone();
    add(
        "current planted: absolute link to another directory",
        replace_current(Box::new(move |p| symlink(&out, p))),
        &["activate", "{id}"],
        1,
        &[
            "{root}/current points to {outside}",
            "neither follow nor replace",
            "mv {root}/current {root}/current.planted",
        ],
    );
    add(
        "current planted: relative link out of the root",
        replace_current(Box::new(|p| symlink(Path::new("../outside"), p))),
        &["rollback"],
        1,
        &[
            "{root}/current points to ../outside",
            "mv {root}/current {root}/current.planted",
        ],
    );
    add(
        "current planted: install refuses too",
        replace_current(Box::new(|p| symlink(Path::new("../outside"), p))),
        &["install", "{art}"],
        1,
        &["{root}/current points to ../outside", "mv {root}/current"],
    );
    add(
        "current planted: status still reports, with a warning",
        replace_current(Box::new(|p| symlink(Path::new("../outside"), p))),
        &["status"],
        0,
        &["{root}/current points to ../outside"],
    );
    add(
        "current planted: verify does not follow it",
        replace_current(Box::new(|p| symlink(Path::new("../outside"), p))),
        &["verify"],
        1,
        &[
            "{root}/current points to ../outside",
            "does not follow",
            "release verify ID",
        ],
    );
    add(
        "shared/ is a symlink",
        link_out("shared"),
        &["install", "{art}"],
        1,
        &[
            "{root}/shared is a symlink (to {outside}/real-shared)",
            "mv {root}/shared {root}/shared.link",
        ],
    );
    add(
        "shared/ writable by group",
        mode("shared", 0o775, 0o755),
        &["deploy", "{art}"],
        1,
        &[
            "{root}/shared is writable by group or others",
            "chmod go-w {root}/shared",
        ],
    );
    add(
        "release.toml is a symlink",
        link_out("release.toml"),
        &["install", "{art}"],
        1,
        &[
            "{root}/release.toml is a symlink",
            "cp --remove-destination {outside}/real-release.toml {root}/release.toml",
        ],
    );
    add(
        "release.toml writable by others",
        mode("release.toml", 0o646, 0o644),
        &["activate", "{id}"],
        1,
        &[
            "{root}/release.toml is writable by group or others",
            "hooks",
            "chmod go-w {root}/release.toml",
        ],
    );
    add(
        "release.toml owned by another user",
        owner("release.toml"),
        &["status"],
        1,
        &["{root}/release.toml belongs to uid 65534", "chown"],
    );
    add(
        "history.jsonl is a symlink",
        link_out("history.jsonl"),
        &["activate", "{id}"],
        1,
        &["{root}/history.jsonl is a symlink", "journal", "fix:"],
    );
    add(
        "history.jsonl writable by group",
        mode("history.jsonl", 0o664, 0o644),
        &["rollback"],
        1,
        &[
            "{root}/history.jsonl is writable by group or others",
            "chmod go-w {root}/history.jsonl",
        ],
    );
    let journal = root.join("history.jsonl");
    let journal_saved = root.parent().unwrap().join("history.saved");
    let (j2, s2) = (journal.clone(), journal_saved.clone());
    add(
        "history.jsonl is a directory",
        (
            Box::new(move |_| {
                std::fs::rename(&journal, &journal_saved).unwrap();
                std::fs::create_dir(&journal).unwrap();
            }),
            Box::new(move |_| {
                std::fs::remove_dir(&j2).unwrap();
                std::fs::rename(&s2, &j2).unwrap();
            }),
        ),
        &["status"],
        1,
        &[
            "{root}/history.jsonl is not a regular file",
            "mv {root}/history.jsonl",
        ],
    );
    add(
        ".lock is a symlink",
        link_out(".lock"),
        &["prune"],
        1,
        &["{root}/.lock is a symlink", "fix:"],
    );
    add(
        ".lock writable by others",
        mode(".lock", 0o666, 0o644),
        &["install", "{art}"],
        1,
        &[
            "{root}/.lock is writable by group or others",
            "chmod go-w {root}/.lock",
        ],
    );
    let fake = root.join("releases/0bad0bad0bad-20260101T000000Z");
    let (fake2, out2) = (fake.clone(), outside.clone());
    add(
        "releases/<id> is a symlink",
        (
            Box::new(move |_| symlink(&out2, &fake)),
            Box::new(move |_| std::fs::remove_file(&fake2).unwrap()),
        ),
        &["install", "{art}"],
        1,
        &[
            "{root}/releases/0bad0bad0bad-20260101T000000Z is a symlink",
            "rm {root}/releases/0bad0bad0bad-20260101T000000Z",
        ],
    );
    // The root itself a symlink: pass the link as --root.
    let link = root.parent().unwrap().join("link");
    let (link1, link2, root2) = (link.clone(), link.clone(), root.clone());
    cases.push(Hygiene {
        name: "root is a symlink",
        plant: Box::new(move |_| symlink(&root2, &link1)),
        undo: Box::new(move |_| std::fs::remove_file(&link2).unwrap()),
        args: &["status"],
        root_arg: Some(link),
        code: 1,
        expect: &["is a symlink", "--root {root}"],
    });
    cases
}

/// The site the unsafe-root tests share (as for the hostile artifacts): the
/// healthy release live, `shared/` and `release.toml` in place, and what the
/// root and `outside` hold then. Each case plants its problem, runs its
/// command, checks the refusal, and undoes it.
struct RootSite {
    site: Site,
    id: String,
    baseline: BTreeMap<String, String>,
    outside_baseline: BTreeMap<String, String>,
    done: usize,
}

fn root_site() -> std::sync::MutexGuard<'static, RootSite> {
    static SHARED: OnceLock<std::sync::Mutex<RootSite>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        let site = Site::in_dir(&Path::new(REPO).join("target/hostile-it/roots"));
        let id = site.healthy();
        std::fs::create_dir(site.root.join("shared")).unwrap();
        std::fs::write(site.root.join("release.toml"), "keep = 5\n").unwrap();
        std::sync::Mutex::new(RootSite {
            baseline: snapshot(&site.root),
            outside_baseline: snapshot(&site.outside),
            site,
            id,
            done: 0,
        })
    });
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Plant the unsafe root `name`, run its command: it must be refused (or
/// warn and run) as the table says and change nothing; then undo it.
fn refuse_unsafe_root(name: &str) {
    let mut shared = root_site();
    let problems = check_root_case(&shared, name);
    shared.done += 1;
    if shared.done == UNSAFE_ROOT_CASES.len() {
        let _ = std::fs::remove_dir_all(shared.site.root.parent().unwrap().parent().unwrap());
    }
    drop(shared);
    assert!(problems.is_empty(), "{name}: {}", problems.join("\n  "));
}

fn check_root_case(shared: &RootSite, name: &str) -> Vec<String> {
    let site = &shared.site;
    let case = hygiene_cases(site)
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no unsafe-root case {name:?}"));
    if case.name.contains("another user") && !running_as_root(&format!("{name} (chown)")) {
        return Vec::new();
    }
    let art = healthy().to_str().unwrap().to_string();
    let fill = |s: &str| {
        s.replace("{root}", site.root.to_str().unwrap())
            .replace("{outside}", site.outside.to_str().unwrap())
            .replace("{art}", &art)
            .replace("{id}", &shared.id)
    };
    (case.plant)(site);
    let root_before = snapshot(&site.root);
    let outside_before = snapshot(&site.outside);
    let args: Vec<String> = case.args.iter().map(|a| fill(a)).collect();
    let root_arg = case.root_arg.clone().unwrap_or_else(|| site.root.clone());
    let out = release()
        .arg("--root")
        .arg(&root_arg)
        .args(&args)
        .output()
        .unwrap();
    let err = stderr(&out);
    eprintln!("{name} (release {}): {}", case.args[0], error_line(&err));
    let mut problems = Vec::new();
    if out.status.code() != Some(case.code) {
        problems.push(format!("exit {:?}, expected {}", out.status, case.code));
    }
    for needle in case.expect {
        let needle = fill(needle);
        if !err.contains(&needle) {
            problems.push(format!("stderr lacks {needle:?}"));
        }
    }
    problems.extend(diff(&root_before, &snapshot(&site.root)));
    problems.extend(
        diff(&outside_before, &snapshot(&site.outside))
            .into_iter()
            .map(|d| format!("outside: {d}")),
    );
    (case.undo)(site);
    let undone = diff(&shared.baseline, &snapshot(&site.root));
    assert!(undone.is_empty(), "{name}: undo left {undone:?}");
    assert!(diff(&shared.outside_baseline, &snapshot(&site.outside)).is_empty());
    if !problems.is_empty() {
        problems.push(format!("stderr: {}", err.trim()));
    }
    problems
}

/// One `#[test]` per unsafe-root case (hostile::root_case::<case>), as for
/// the artifacts.
macro_rules! unsafe_roots {
    ($($test:ident: $name:literal,)*) => {
        /// The names of the cases, as the table gives them.
        const UNSAFE_ROOT_CASES: &[&str] = &[$($name),*];

        mod root_case {
            $(
                #[test]
                fn $test() {
                    super::refuse_unsafe_root($name);
                }
            )*
        }
    };
}

unsafe_roots! {
    root_writable_by_group_0775: "root writable by group (0775)",
    root_writable_by_others_0757: "root writable by others (0757)",
    releases_writable_by_group: "releases/ writable by group",
    releases_owned_by_another_user: "releases/ owned by another user",
    releases_is_a_symlink: "releases/ is a symlink",
    current_is_a_directory: "current is a directory",
    current_is_a_regular_file: "current is a regular file",
    current_planted_absolute_link_to_another_directory: "current planted: absolute link to another directory",
    current_planted_relative_link_out_of_the_root: "current planted: relative link out of the root",
    current_planted_install_refuses_too: "current planted: install refuses too",
    current_planted_status_still_reports_with_a_warning: "current planted: status still reports, with a warning",
    current_planted_verify_does_not_follow_it: "current planted: verify does not follow it",
    shared_is_a_symlink: "shared/ is a symlink",
    shared_writable_by_group: "shared/ writable by group",
    release_toml_is_a_symlink: "release.toml is a symlink",
    release_toml_writable_by_others: "release.toml writable by others",
    release_toml_owned_by_another_user: "release.toml owned by another user",
    history_jsonl_is_a_symlink: "history.jsonl is a symlink",
    history_jsonl_writable_by_group: "history.jsonl writable by group",
    history_jsonl_is_a_directory: "history.jsonl is a directory",
    lock_is_a_symlink: ".lock is a symlink",
    lock_writable_by_others: ".lock writable by others",
    releases_id_is_a_symlink: "releases/<id> is a symlink",
    root_is_a_symlink: "root is a symlink",
}

/// The macro's list is the table.
#[test]
fn every_unsafe_root_case_has_its_own_test() {
    let shared = root_site();
    let mut table: Vec<&str> = hygiene_cases(&shared.site).iter().map(|c| c.name).collect();
    let mut listed = UNSAFE_ROOT_CASES.to_vec();
    table.sort_unstable();
    listed.sort_unstable();
    assert_eq!(table, listed);
}

/// Between the cases (each undone) the root is safe and works as before.
#[test]
fn a_safe_root_works_between_the_unsafe_cases() {
    let shared = root_site();
    let site = &shared.site;
    assert_eq!(site.current(), Some(Path::new("releases").join(&shared.id)));
    site.verify_ok();
    let out = site.run(&["install", healthy().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

// ---- deltas --------------------------------------------------------------------

/// Hostile deltas (docs/host.md "Delta artifacts"): each runs on a fresh
/// site whose live release is the healthy one, the base of the real delta
/// built by `delta::pair`, and checks exit 1, the message, and that nothing
/// in the root changed (the live release still verifies).
mod delta_case {
    use super::*;
    use crate::common::members::{Member, Members};
    use crate::delta::{pair, CHANGED, UNCHANGED};

    /// A site with the delta's base live.
    fn site() -> (Site, String) {
        let site = Site::in_tmp(
            tempfile::Builder::new()
                .prefix("rh-delta-")
                .tempdir()
                .unwrap(),
        );
        let id = site.healthy();
        let base12 = pair().report["delta"]["base_release"].as_str().unwrap();
        assert!(
            id.starts_with(base12),
            "the healthy release {id} is not the delta's base"
        );
        (site, id)
    }

    /// Install `delta` (an edited copy of the real one, with a matching
    /// .sha256); it must be refused naming each of `expect`, and change nothing.
    fn refused(site: &Site, id: &str, delta: &Members, expect: &[&str]) {
        let dir = tempfile::tempdir().unwrap();
        let artifact = delta.write(&dir.path().join("hostile.delta-x.tar.zst"));
        let before = snapshot(&site.root);
        let out = limited_install(&site.root, &artifact);
        let err = fails_with(&out, 1);
        for needle in expect {
            assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
        }
        assert_eq!(diff(&before, &snapshot(&site.root)), Vec::<String>::new());
        assert_eq!(site.current(), Some(Path::new("releases").join(id)));
        assert_eq!(site.host.releases(), vec![id.to_string()]);
        site.verify_ok();
    }

    #[test]
    fn a_member_for_a_file_the_manifest_lists_unchanged() {
        let (site, id) = site();
        let mut delta = Members::read(&pair().delta);
        let base = Members::read(&pair().base);
        let original = base.0.iter().find(|m| m.path == UNCHANGED).unwrap();
        let carried = delta.0.iter().find(|m| m.path == CHANGED).unwrap();
        let smuggled = Member {
            path: UNCHANGED.to_string(),
            data: original.data.clone(),
            ..carried.clone()
        };
        delta.insert_after("app/mysite", smuggled);
        refused(
            &site,
            &id,
            &delta,
            &[
                &format!("entry `{UNCHANGED}` refused"),
                "is carried by the delta, but the manifest lists it unchanged",
            ],
        );
    }

    #[test]
    fn a_base_that_is_not_installed() {
        let (site, id) = site();
        let mut delta = Members::read(&pair().delta);
        let mut header: serde_json::Value = serde_json::from_slice(&delta.0[0].data).unwrap();
        header["base"]["commit"] = COMMIT_H.into();
        header["base"]["release"] = COMMIT_H[..12].into();
        delta.0[0].data = serde_json::to_vec(&header).unwrap();
        let release12 = pair().report["release"].as_str().unwrap();
        refused(
            &site,
            &id,
            &delta,
            &[
                &format!(
                    "only next to release {} (commit {COMMIT_H})",
                    &COMMIT_H[..12]
                ),
                &format!("install the full artifact (mysite-{release12}.tar.zst)"),
            ],
        );
    }

    /// An operator's hot fix in the live release: made writable, edited
    /// (same size), made read-only again. The delta would link the edited
    /// file into the new release; the content check refuses it.
    #[test]
    fn a_base_file_edited_on_the_host() {
        let (site, id) = site();
        let file = site.root.join("releases").join(&id).join(UNCHANGED);
        let dir = file.parent().unwrap();
        let mut text = std::fs::read(&file).unwrap();
        text[0] = if text[0] == b'#' { b' ' } else { b'#' };
        chmod(dir, 0o755);
        chmod(&file, 0o644);
        std::fs::write(&file, &text).unwrap();
        let delta = Members::read(&pair().delta);
        // Left writable: refused on its mode, before anything is unpacked.
        refused_after_edit(
            &site,
            &delta,
            &[UNCHANGED, "changed on this host (mode 0644"],
        );
        // Made read-only again: refused on its content.
        chmod(&file, 0o444);
        chmod(dir, 0o555);
        refused_after_edit(
            &site,
            &delta,
            &[
                UNCHANGED,
                "its content has sha256",
                &format!("release verify {id}"),
            ],
        );
        assert_eq!(site.current(), Some(Path::new("releases").join(&id)));
        assert_eq!(site.host.releases(), vec![id.to_string()]);
    }

    /// As [`refused`], on a site whose live release no longer verifies.
    fn refused_after_edit(site: &Site, delta: &Members, expect: &[&str]) {
        let dir = tempfile::tempdir().unwrap();
        let artifact = delta.write(&dir.path().join("hostile.delta-x.tar.zst"));
        let before = snapshot(&site.root);
        let err = fails_with(&limited_install(&site.root, &artifact), 1);
        for needle in expect {
            assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
        }
        assert_eq!(diff(&before, &snapshot(&site.root)), Vec::<String>::new());
    }
}
