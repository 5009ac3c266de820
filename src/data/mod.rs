//! MNIST and Fashion-MNIST loading from IDX files (plain or gzipped), with strict validation
//! and, unless offline, download of missing files.

mod download;
mod error;
mod idx;

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use md5::{Digest, Md5};

pub use error::DataError;

/// Images are `IMAGE_SIDE` x `IMAGE_SIDE` grayscale bytes.
pub const IMAGE_SIDE: usize = 28;
pub const IMAGE_PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;
pub const CLASSES: usize = 10;

const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";
/// The four files of a dataset; both datasets use the same names.
const FILE_NAMES: [&str; 4] = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS];

/// MD5 of the decompressed original MNIST files, to flag modified copies.
const MNIST_CONTENT_MD5: [(&str, &str); 4] = [
    (TRAIN_IMAGES, "6bbc9ace898e44ae57da46a324031adb"),
    (TRAIN_LABELS, "a25bea736e30d166cdddb491f175f624"),
    (TEST_IMAGES, "2646ac647ad5339dbf082846283269ea"),
    (TEST_LABELS, "27ae3e4e09519cfbb04c329615203637"),
];

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum DatasetKind {
    Mnist,
    FashionMnist,
}

impl DatasetKind {
    /// Where the data lives when neither a flag nor the environment says otherwise.
    pub fn default_dir(self) -> PathBuf {
        PathBuf::from("data").join(self.to_string())
    }

    /// The environment variable that overrides [`DatasetKind::default_dir`].
    pub fn env_var(self) -> &'static str {
        match self {
            Self::Mnist => "MNIST_DIR",
            Self::FashionMnist => "FASHION_MNIST_DIR",
        }
    }
}

/// Prints the command-line spelling (`mnist`, `fashion-mnist`), which is also the directory name.
impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mnist => "mnist",
            Self::FashionMnist => "fashion-mnist",
        })
    }
}

/// The data directory: the command-line flag, else the kind's environment variable, else the
/// default directory.
pub fn resolve_dir(flag: Option<&Path>, kind: DatasetKind) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os(kind.env_var()).map(PathBuf::from))
        .unwrap_or_else(|| kind.default_dir())
}

/// Images and their labels; image `i` is `images[i * IMAGE_PIXELS..(i + 1) * IMAGE_PIXELS]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// `len() * IMAGE_PIXELS` bytes, each image row-major 28x28, 0 = background.
    pub images: Vec<u8>,
    /// One class in `0..CLASSES` per image.
    pub labels: Vec<u8>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Keeps the first `len` examples (all of them if there are fewer).
    pub fn truncate(&mut self, len: usize) {
        self.labels.truncate(len);
        self.images.truncate(self.labels.len() * IMAGE_PIXELS);
    }
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub kind: DatasetKind,
    pub train: Split,
    pub test: Split,
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub dir: PathBuf,
    pub kind: DatasetKind,
    /// Fail on missing files instead of downloading them.
    pub offline: bool,
}

/// Loads and validates both splits from `opts.dir`, downloading missing files unless offline.
pub fn load(opts: &LoadOptions) -> Result<Dataset, DataError> {
    let [train_images, train_labels, test_images, test_labels] = locate_files(opts)?;
    Ok(Dataset {
        kind: opts.kind,
        train: load_split(&train_images, &train_labels, opts.kind)?,
        test: load_split(&test_images, &test_labels, opts.kind)?,
    })
}

/// Paths of the four files, in `FILE_NAMES` order, after fetching any that are missing.
fn locate_files(opts: &LoadOptions) -> Result<[PathBuf; 4], DataError> {
    let dir = &opts.dir;
    let missing: Vec<&'static str> = FILE_NAMES.into_iter().filter(|name| find(dir, name).is_none()).collect();
    if !missing.is_empty() {
        if opts.offline {
            let (kind, dir) = (opts.kind, dir.clone());
            return Err(DataError::MissingFiles { kind, dir, missing });
        }
        download::download_missing(opts.kind, dir, &missing)?;
    }
    // Should a file vanish after the check, reading the plain name reports it as not found.
    Ok(FILE_NAMES.map(|name| find(dir, name).unwrap_or_else(|| dir.join(name))))
}

/// The plain file if present (no decompression needed), else the gzipped one.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    let candidates = [dir.join(name), dir.join(format!("{name}.gz"))];
    // An error (e.g. permission denied) counts as present so that reading it reports why.
    candidates.into_iter().find(|path| path.try_exists().unwrap_or(true))
}

fn load_split(images_path: &Path, labels_path: &Path, kind: DatasetKind) -> Result<Split, DataError> {
    let image_bytes = read_idx(images_path, kind)?;
    let label_bytes = read_idx(labels_path, kind)?;
    let images = idx::parse_images(&image_bytes, images_path)?;
    let labels = idx::parse_labels(&label_bytes, labels_path)?;
    let n_images = images.len() / IMAGE_PIXELS;
    if n_images != labels.len() {
        return Err(DataError::CountMismatch {
            images: images_path.into(),
            labels: labels_path.into(),
            n_images,
            n_labels: labels.len(),
        });
    }
    Ok(Split { images: images.to_vec(), labels: labels.to_vec() })
}

/// Reads a file, decompressing it if it is gzip data, whatever its name says.
fn read_idx(path: &Path, kind: DatasetKind) -> Result<Vec<u8>, DataError> {
    let raw = read_file(path)?;
    let bytes = if raw.starts_with(&GZIP_MAGIC) {
        gunzip(&raw, path)?
    } else if path.extension().is_some_and(|ext| ext == "gz") {
        return Err(DataError::NotGzip { path: path.into() });
    } else {
        raw
    };
    if kind == DatasetKind::Mnist {
        warn_if_modified(&bytes, path);
    }
    Ok(bytes)
}

fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    let read_error = |source| DataError::Read { path: path.into(), source };
    // Reading a directory fails with an OS-specific message; say plainly what is wrong.
    if !fs::metadata(path).map_err(read_error)?.is_file() {
        return Err(DataError::NotAFile { path: path.into() });
    }
    fs::read(path).map_err(read_error)
}

/// The most a gzip file may decompress to: 5 times the largest IDX file of these data sets
/// (47 MB of training images), so that a corrupt or hostile stream cannot exhaust memory.
const GUNZIP_LIMIT: usize = 256 << 20;

fn gunzip(compressed: &[u8], path: &Path) -> Result<Vec<u8>, DataError> {
    let mut bytes = Vec::with_capacity(gzip_size_hint(compressed));
    MultiGzDecoder::new(compressed)
        .take(GUNZIP_LIMIT as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| DataError::Gzip { path: path.into(), source })?;
    if bytes.len() > GUNZIP_LIMIT {
        return Err(DataError::TooLarge { path: path.into(), limit: GUNZIP_LIMIT });
    }
    Ok(bytes)
}

/// The gzip trailer stores the uncompressed size (mod 2^32); reserving it up front avoids
/// repeated reallocation. It is untrusted, so it is capped.
fn gzip_size_hint(compressed: &[u8]) -> usize {
    match compressed.last_chunk::<4>() {
        Some(&trailer) => (u32::from_le_bytes(trailer) as usize).min(GUNZIP_LIMIT),
        None => 0,
    }
}

/// Only a warning: subsets or re-encodings of MNIST are legitimate, but a user comparing
/// results against published numbers should know their copy differs.
fn warn_if_modified(bytes: &[u8], path: &Path) {
    let name = path.file_name().and_then(|n| n.to_str());
    let name = name.map(|n| n.strip_suffix(".gz").unwrap_or(n));
    let Some(&(_, expected)) = MNIST_CONTENT_MD5.iter().find(|(file, _)| Some(*file) == name) else {
        return;
    };
    let actual = format!("{:x}", Md5::digest(bytes));
    if actual != expected {
        tracing::warn!(
            "{}: contents differ from the original MNIST file (MD5 {actual}, expected {expected})",
            path.display()
        );
    }
}
