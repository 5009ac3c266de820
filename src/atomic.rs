//! Crash-safe file writes: readers see either the old file or the complete new one, never a
//! partial write, so an interrupted download or checkpoint save cannot leave a corrupt file
//! that a later run would trust.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// Atomically replaces `path` with `bytes` (see [`write_atomic_with`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Atomically replaces `path` with whatever `write` produces, streaming through a buffer.
///
/// If `write` fails, the temporary file is removed and `path` is left untouched.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    // Same directory as the target, so the final rename never crosses filesystems.
    let dir = parent_dir(path);
    let mut tmp = temp_builder().tempfile_in(dir)?;
    {
        let mut buffered = BufWriter::new(tmp.as_file_mut());
        write(&mut buffered)?;
        buffered.flush()?;
    }
    // The data must be on disk before the rename publishes it, or a crash could expose an
    // empty or partial file under the final name.
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir);
    Ok(())
}

/// `Path::parent` is empty for a bare file name; that means the current directory.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// How the temporary files of [`write_atomic_with`] begin, so that those a killed process
/// left behind can be told from anything else ([`remove_stale_temps`]).
pub const TEMP_PREFIX: &str = ".resnet-mnist-tmp";

/// Removes the temporary files a killed writer left in `dir`; returns how many. Only for a
/// directory this process owns (a run directory it has locked): another writer's temporary
/// file may be live.
pub fn remove_stale_temps(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Temp files are private (0600) by default; ask for 0666 minus the umask instead, so the
/// result has the same permissions as a file written with `fs::write`.
fn temp_builder() -> tempfile::Builder<'static, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder
}

/// Makes the rename itself durable. Best effort: some filesystems refuse to sync directories,
/// and the file contents are already safe at this point.
#[cfg(unix)]
fn sync_dir(dir: &Path) {
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_entries(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(dir_entries(dir.path()), 1, "no temp file left behind");
    }

    #[test]
    fn failed_write_keeps_old_file_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("boom"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(dir_entries(dir.path()), 1);
    }

    #[cfg(unix)]
    #[test]
    fn permissions_match_fs_write() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
        let dir = tempfile::tempdir().unwrap();
        let (atomic, plain) = (dir.path().join("atomic"), dir.path().join("plain"));
        write_atomic(&atomic, b"x").unwrap();
        std::fs::write(&plain, b"x").unwrap();
        assert_eq!(mode(&atomic), mode(&plain));
    }
}
