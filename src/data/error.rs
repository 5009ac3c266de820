//! Errors from loading a dataset. Every variant names the file or directory involved and says
//! what is wrong in plain words, because the usual fix is for a person to replace a file.

use std::io;
use std::path::{Path, PathBuf};

use super::{DatasetKind, FILE_NAMES};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error("{}: cannot write: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },

    #[error("{}: is a directory or other non-file, expected an IDX file", path.display())]
    NotAFile { path: PathBuf },

    #[error("{}: has a .gz name but is not gzip data (it does not start with 1f 8b)", path.display())]
    NotGzip { path: PathBuf },

    #[error("{}: corrupt gzip data: {source}", path.display())]
    Gzip { path: PathBuf, source: io::Error },

    #[error("{}: decompresses to more than {} MiB, far more than any IDX file of these data sets", path.display(), limit >> 20)]
    TooLarge { path: PathBuf, limit: usize },

    #[error(
        "{}: truncated: {len} bytes is too short for the {header_len}-byte IDX header",
        path.display()
    )]
    HeaderTruncated { path: PathBuf, len: usize, header_len: usize },

    #[error(
        "{}: wrong magic number 0x{found:08x}, expected 0x{expected:08x} (an IDX {what} file)",
        path.display()
    )]
    WrongMagic { path: PathBuf, found: u32, expected: u32, what: &'static str },

    #[error("{}: images are {rows}x{cols} pixels, expected 28x28", path.display())]
    WrongDimensions { path: PathBuf, rows: u32, cols: u32 },

    #[error(
        "{}: truncated: header says {count} {items} ({expected} bytes) but the file has {actual} bytes",
        path.display()
    )]
    Truncated { path: PathBuf, count: u32, items: &'static str, expected: u64, actual: u64 },

    #[error(
        "{}: {} trailing bytes: header says {count} {items} ({expected} bytes) but the file has {actual} bytes",
        path.display(),
        actual - expected
    )]
    TrailingBytes { path: PathBuf, count: u32, items: &'static str, expected: u64, actual: u64 },

    #[error("{}: label {label} at index {index} is out of range 0..=9", path.display())]
    LabelOutOfRange { path: PathBuf, label: u8, index: usize },

    #[error(
        "{} has {n_images} images but {} has {n_labels} labels",
        images.display(),
        labels.display()
    )]
    CountMismatch { images: PathBuf, labels: PathBuf, n_images: usize, n_labels: usize },

    #[error("{}", missing_files_message(*.kind, .dir, .missing))]
    MissingFiles { kind: DatasetKind, dir: PathBuf, missing: Vec<&'static str> },

    #[error("{}", download_failed_message(*.kind, .dir, .file, .attempts))]
    Download {
        kind: DatasetKind,
        dir: PathBuf,
        file: String,
        /// One `"url: reason"` line per mirror tried.
        attempts: Vec<String>,
    },
}

fn missing_files_message(kind: DatasetKind, dir: &Path, missing: &[&str]) -> String {
    let place = if dir.is_dir() {
        format!("{} lacks", dir.display())
    } else {
        format!("{} does not exist, so it lacks", dir.display())
    };
    format!(
        "{kind} data not found: {place} {}, and downloading is disabled (offline).\n{}",
        missing.join(", "),
        how_to_provide(kind, dir)
    )
}

fn download_failed_message(kind: DatasetKind, dir: &Path, file: &str, attempts: &[String]) -> String {
    format!("could not download {file} for {kind}:\n  {}\n{}", attempts.join("\n  "), how_to_provide(kind, dir))
}

fn how_to_provide(kind: DatasetKind, dir: &Path) -> String {
    format!(
        "Put these files in {} (each may also be gzipped, named with a .gz suffix):\n  {}\n\
         or point elsewhere with --data-dir DIR or {}=DIR.",
        dir.display(),
        FILE_NAMES.join("\n  "),
        kind.env_var()
    )
}
