//! Artifact members for the tests: the one reader of an artifact's tar
//! members, and the editing every test that rewrites an artifact shares
//! (find a member, insert one after another, cut the archive short, replace
//! the manifest). [`Members`] writes an edited artifact back with the `tar`
//! crate; the hostile tests write theirs field by field (see hostile.rs) and
//! edit them through [`Editable`] too.

use std::io::Read;
use std::path::{Path, PathBuf};

use release::manifest::Manifest;
use sha2::{Digest, Sha256};

/// One member as read from an artifact.
#[derive(Clone)]
pub struct Member {
    pub header: tar::Header,
    /// The path as stored (a directory's may end in `/`).
    pub path: String,
    pub link: Option<String>,
    pub data: Vec<u8>,
}

/// Every member of a `.tar.zst` or `.tar.gz` artifact, in order.
pub fn read(artifact: &Path) -> Vec<Member> {
    read_first(artifact, usize::MAX)
}

/// The first `n` members.
fn read_first(artifact: &Path, n: usize) -> Vec<Member> {
    let file = std::fs::File::open(artifact).unwrap();
    let reader: Box<dyn Read> = if artifact.to_string_lossy().ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(zstd::Decoder::new(file).unwrap())
    };
    let mut archive = tar::Archive::new(reader);
    let mut members = Vec::new();
    for entry in archive.entries().unwrap().take(n) {
        let mut entry = entry.unwrap();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        members.push(Member {
            header: entry.header().clone(),
            path: String::from_utf8(entry.path_bytes().into_owned()).unwrap(),
            link: entry
                .link_name_bytes()
                .map(|l| String::from_utf8(l.into_owned()).unwrap()),
            data,
        });
    }
    members
}

/// The bytes of an artifact's first member, `release.json`.
pub fn manifest_bytes(artifact: &Path) -> Vec<u8> {
    read_first(artifact, 1).swap_remove(0).data
}

/// What editing needs of a member: its path (without a trailing `/`) and its
/// content, which for the first member is the manifest.
pub trait Editable: Clone {
    fn name(&self) -> String;
    fn data(&self) -> &[u8];
    fn set_data(&mut self, data: Vec<u8>);
}

impl Editable for Member {
    fn name(&self) -> String {
        self.path.trim_end_matches('/').to_string()
    }

    fn data(&self) -> &[u8] {
        &self.data
    }

    fn set_data(&mut self, data: Vec<u8>) {
        self.data = data;
    }
}

/// The index of the member at `path`.
pub fn index<M: Editable>(members: &[M], path: &str) -> usize {
    members
        .iter()
        .position(|m| m.name() == path)
        .unwrap_or_else(|| panic!("no member {path}"))
}

pub fn member<'a, M: Editable>(members: &'a mut [M], path: &str) -> &'a mut M {
    let i = index(members, path);
    &mut members[i]
}

/// Put `member` right after the member `after`.
pub fn insert_after<M: Editable>(members: &mut Vec<M>, after: &str, member: M) {
    let i = index(members, after);
    members.insert(i + 1, member);
}

/// End the archive a few members after `path`: the refusal must come at or
/// before it (if it did not, the install would still fail, but on the
/// entries missing from the archive, and the message check would catch it).
/// Keeps the edited artifacts small.
pub fn end_soon_after<M: Editable>(members: &mut Vec<M>, path: &str) {
    let i = index(members, path);
    members.truncate(i + 20);
}

pub fn manifest_of<M: Editable>(members: &[M]) -> Manifest {
    Manifest::from_json(members[0].data()).unwrap()
}

/// Store `m` (sorted, totals and tree digest recomputed, validated) as the
/// first member.
pub fn set_manifest<M: Editable>(members: &mut [M], mut m: Manifest) {
    m.files.sort_by(|a, b| a.path.cmp(&b.path));
    m.recompute_totals();
    m.validate().unwrap();
    members[0].set_data(m.to_json_bytes());
}

/// The members of an artifact, to be edited and written back.
#[derive(Clone)]
pub struct Members(pub Vec<Member>);

impl Members {
    pub fn read(artifact: &Path) -> Members {
        Members(read(artifact))
    }

    pub fn manifest(&self) -> Manifest {
        manifest_of(&self.0)
    }

    pub fn set_manifest(&mut self, m: Manifest) {
        set_manifest(&mut self.0, m);
    }

    /// A copy under another commit.
    pub fn with_commit(&self, commit: &str) -> Members {
        let mut copy = self.clone();
        let mut m = copy.manifest();
        m.commit = commit.into();
        m.release = commit[..12].into();
        copy.set_manifest(m);
        copy
    }

    pub fn index(&self, path: &str) -> usize {
        index(&self.0, path)
    }

    pub fn insert_after(&mut self, after: &str, member: Member) {
        insert_after(&mut self.0, after, member);
    }

    pub fn end_soon_after(&mut self, path: &str) {
        end_soon_after(&mut self.0, path);
    }

    pub fn member(&mut self, path: &str) -> &mut Member {
        member(&mut self.0, path)
    }

    /// Write a zstd artifact (fast level) and its `.sha256`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let file = std::fs::File::create(&tmp).unwrap();
        let mut builder = tar::Builder::new(zstd::Encoder::new(file, 1).unwrap());
        for m in &self.0 {
            let mut header = m.header.clone();
            if header.entry_type().is_symlink() {
                builder
                    .append_link(&mut header, &m.path, m.link.as_deref().unwrap())
                    .unwrap();
            } else if m.path.contains("..") || m.path.starts_with('/') {
                // Paths the tar crate refuses to write: set the raw name bytes.
                let name = &mut header.as_old_mut().name;
                name.fill(0);
                name[..m.path.len()].copy_from_slice(m.path.as_bytes());
                header.set_size(m.data.len() as u64);
                header.set_cksum();
                builder.append(&header, &m.data[..]).unwrap();
            } else {
                header.set_size(m.data.len() as u64);
                builder
                    .append_data(&mut header, &m.path, &m.data[..])
                    .unwrap();
            }
        }
        builder.into_inner().unwrap().finish().unwrap();
        std::fs::rename(&tmp, path).unwrap();
        let digest = hex::encode(Sha256::digest(std::fs::read(path).unwrap()));
        let name = path.file_name().unwrap().to_string_lossy();
        std::fs::write(
            format!("{}.sha256", path.display()),
            format!("{digest}  {name}\n"),
        )
        .unwrap();
        path.to_path_buf()
    }
}
