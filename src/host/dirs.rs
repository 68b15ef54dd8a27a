//! Directory-relative access to a release tree: an install creates, links
//! and checks thousands of entries, each a few directories deep under
//! `<root>/releases/<id>/`. Resolving every one of those paths from `/`
//! again costs a walk of a dozen components per call; [`DirFds`] keeps the
//! chain of directories down to the last parent used open, so each call
//! (`mkdirat`, `linkat`, `openat`, `statat`) resolves one name.
//!
//! Each directory is opened with `O_PATH | O_DIRECTORY | O_NOFOLLOW`, one
//! component at a time from the tree's root: no path is resolved through a
//! symlink, at any depth.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// Flags a directory of the tree is opened with.
fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// The open directories of one tree: its root, and the chain from it down to
/// the last directory asked for.
pub struct DirFds {
    root_path: PathBuf,
    root: OwnedFd,
    /// `(path relative to the root, fd)`, each entry the parent of the next.
    chain: Vec<(String, OwnedFd)>,
}

impl DirFds {
    /// Open the tree at `root` (which itself may be reached through links).
    pub fn open(root: &Path) -> io::Result<DirFds> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| crate::fsutil::fs_err_io(e.into(), root))?;
        Ok(DirFds {
            root_path: root.to_path_buf(),
            root: fd,
            chain: Vec::new(),
        })
    }

    /// The tree's root directory.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Where `relative` is, for messages.
    pub fn path_of(&self, relative: &str) -> PathBuf {
        self.root_path.join(relative)
    }

    /// The directory at `parent` (relative to the root, `""` for the root),
    /// opened one component at a time without following symlinks, reusing
    /// the directories of the last call that lead to it.
    pub fn dir(&mut self, parent: &str) -> io::Result<BorrowedFd<'_>> {
        if parent.is_empty() {
            return Ok(self.root.as_fd());
        }
        while let Some((open, _)) = self.chain.last() {
            let leads_there = parent == open
                || (parent.starts_with(open.as_str())
                    && parent.as_bytes().get(open.len()) == Some(&b'/'));
            if leads_there {
                break;
            }
            self.chain.pop();
        }
        let mut done = self.chain.last().map_or(0, |(open, _)| open.len());
        while done < parent.len() {
            let start = if done == 0 { 0 } else { done + 1 };
            let end = parent[start..]
                .find('/')
                .map_or(parent.len(), |i| start + i);
            let at = self
                .chain
                .last()
                .map_or(self.root.as_fd(), |(_, fd)| fd.as_fd());
            let fd = rustix::fs::openat(at, &parent[start..end], dir_flags(), Mode::empty())
                .map_err(|e| {
                    crate::fsutil::fs_err_io(e.into(), &self.root_path.join(&parent[..end]))
                })?;
            self.chain.push((parent[..end].to_string(), fd));
            done = end;
        }
        Ok(self
            .chain
            .last()
            .map_or(self.root.as_fd(), |(_, fd)| fd.as_fd()))
    }
}

/// `path`'s parent (`""` at the top) and its last component.
pub fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_reached_without_following_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b/c")).unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b.d")).unwrap();
        std::fs::write(tmp.path().join("a/b/c/f"), b"x").unwrap();
        std::os::unix::fs::symlink("b", tmp.path().join("a/l")).unwrap();
        let mut dirs = DirFds::open(tmp.path()).unwrap();
        let stat = |fd: BorrowedFd<'_>, name: &str| {
            rustix::fs::statat(fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok()
        };
        assert!(stat(dirs.dir("a/b/c").unwrap(), "f"));
        // Back up to a sibling, and down again.
        assert!(dirs.dir("a/b.d").is_ok());
        assert!(stat(dirs.dir("a/b/c").unwrap(), "f"));
        assert!(stat(dirs.dir("").unwrap(), "a"));
        // A symlink on the way is refused, not followed.
        let err = dirs.dir("a/l/c").unwrap_err();
        assert!(err.to_string().contains("a/l"), "{err}");
        assert_eq!(split("a/b/c"), ("a/b", "c"));
        assert_eq!(split("a"), ("", "a"));
    }
}
