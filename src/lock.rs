//! One owner per run directory: an advisory lock on `<dir>/.lock`, taken before anything else
//! is written there and held until the process ends, so that a second run into the same
//! directory is refused instead of overwriting the first one's files.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file inside a run directory.
pub const LOCK: &str = ".lock";

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}: in use by another run (process {holder} holds {LOCK}); wait for it to end, or pick another --out", dir.display())]
    Held { dir: PathBuf, holder: String },
    #[error("{}: cannot lock: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// The lock on a run directory, released when dropped (or when the process ends, however).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Locks `dir` (which must exist) for this process, recording its id in the lock file.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK);
        let io = |source| LockError::Io { path: path.clone(), source };
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "unknown".to_string(),
                    pid => pid.to_string(),
                };
                return Err(LockError::Held { dir: dir.into(), holder });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).and_then(|_| file.rewind()).and_then(|_| write!(file, "{}", std::process::id())).map_err(io)?;
        Ok(DirLock { _file: file })
    }
}
