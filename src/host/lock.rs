//! The root's lock: `flock(2)` on `<root>/.lock`, held by one mutating command
//! at a time (install, activate, deploy, rollback, prune). The holder writes its
//! pid into the file so a refused command can name it. The kernel drops the
//! lock when the holder exits, however it exits, so a crash never leaves the
//! root locked.

use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;

use crate::error::{Result, RootError};
use crate::fsutil;
use crate::output::Printer;

/// Proof that the lock is held; dropping it releases the lock.
#[derive(Debug)]
pub struct Lock {
    file: std::fs::File,
    path: PathBuf,
}

impl Lock {
    /// Take the lock; with `wait`, wait up to that many seconds for it,
    /// otherwise fail at once with [`RootError::Locked`] naming the holder's pid.
    pub fn acquire(path: &Path, wait: Option<f64>, printer: &Printer) -> Result<Lock> {
        let path = path.to_path_buf();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|e| fsutil::fs_err_io(e, &path))?;
        let deadline = wait.map(|secs| Instant::now() + Duration::from_secs_f64(secs.max(0.0)));
        let mut told = false;
        loop {
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    let holder = holder_pid(&file);
                    match deadline {
                        Some(deadline) if Instant::now() < deadline => {
                            if !told {
                                printer.progress(&format!(
                                    "waiting for the lock on {}{}",
                                    path.display(),
                                    describe(holder.as_deref())
                                ));
                                told = true;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        _ => {
                            return Err(RootError::Locked {
                                lock: path,
                                holder: describe(holder.as_deref()),
                            }
                            .into())
                        }
                    }
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(fsutil::fs_err_io(e.into(), &path).into()),
            }
        }
        let mut lock = Lock { file, path };
        lock.write_pid()?;
        Ok(lock)
    }

    fn write_pid(&mut self) -> Result<()> {
        let pid = format!("{}\n", std::process::id());
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file
            .write_all(pid.as_bytes())
            .map_err(|e| fsutil::fs_err_io(e, &self.path))?;
        Ok(())
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Forget our pid, then unlock explicitly rather than on close: a
        // child being started by another thread at this moment holds a copy
        // of the descriptor until its exec closes it, and with it the lock.
        // Unlocking releases it for every copy.
        let _ = self.file.set_len(0);
        let _ = rustix::fs::flock(&self.file, FlockOperation::Unlock);
    }
}

fn holder_pid(mut file: &std::fs::File) -> Option<String> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    let pid = text.trim();
    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then(|| pid.to_string())
}

fn describe(pid: Option<&str>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}
