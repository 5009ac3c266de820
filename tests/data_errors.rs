//! Loading behaviour on valid and malformed IDX files. Synthetic files only; nothing here
//! touches the network (every load is offline).

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use md5::{Digest, Md5};
use resnet_mnist::data::{self, DataError, Dataset, DatasetKind, LoadOptions, IMAGE_PIXELS};
use tempfile::TempDir;

const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";
const N_TRAIN: usize = 5;
const N_TEST: usize = 3;

/// An IDX image file holding `pixels` under a header that claims `count` 28x28 images.
fn image_file(count: u32, pixels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for field in [0x803, count, 28, 28] {
        bytes.extend(u32::to_be_bytes(field));
    }
    bytes.extend(pixels);
    bytes
}

fn label_file(labels: &[u8]) -> Vec<u8> {
    let mut bytes = u32::to_be_bytes(0x801).to_vec();
    bytes.extend(u32::to_be_bytes(labels.len() as u32));
    bytes.extend(labels);
    bytes
}

/// Distinct, recognisable pixels and labels for `n` images, offset by `seed`.
fn sample(n: usize, seed: usize) -> (Vec<u8>, Vec<u8>) {
    let pixels = (0..n * IMAGE_PIXELS).map(|i| ((i * 31 + seed) % 256) as u8).collect();
    let labels = (0..n).map(|i| ((i + seed) % 10) as u8).collect();
    (pixels, labels)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Writes a valid dataset (train seed 0, test seed 1), gzipped when `gz`.
fn write_valid(dir: &Path, gz: bool) {
    let (train_pixels, train_labels) = sample(N_TRAIN, 0);
    let (test_pixels, test_labels) = sample(N_TEST, 1);
    let files = [
        (TRAIN_IMAGES, image_file(N_TRAIN as u32, &train_pixels)),
        (TRAIN_LABELS, label_file(&train_labels)),
        (TEST_IMAGES, image_file(N_TEST as u32, &test_pixels)),
        (TEST_LABELS, label_file(&test_labels)),
    ];
    for (name, bytes) in files {
        if gz {
            std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

fn valid_dir() -> TempDir {
    let dir = TempDir::new().unwrap();
    write_valid(dir.path(), false);
    dir
}

fn load_offline(dir: &Path) -> Result<Dataset, DataError> {
    data::load(&LoadOptions { dir: dir.to_path_buf(), kind: DatasetKind::Mnist, offline: true })
}

/// Loads `dir`, which must fail, and returns the message.
fn load_error(dir: &Path) -> String {
    match load_offline(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(err) => err.to_string(),
    }
}

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{message:?} should contain {part:?}");
    }
}

fn path_str(dir: &TempDir, name: &str) -> String {
    dir.path().join(name).display().to_string()
}

fn assert_matches_sample(dataset: &Dataset) {
    let (train_pixels, train_labels) = sample(N_TRAIN, 0);
    let (test_pixels, test_labels) = sample(N_TEST, 1);
    assert_eq!(dataset.train.len(), N_TRAIN);
    assert_eq!(dataset.test.len(), N_TEST);
    assert_eq!(dataset.train.images, train_pixels);
    assert_eq!(dataset.train.labels, train_labels);
    assert_eq!(dataset.test.images, test_pixels);
    assert_eq!(dataset.test.labels, test_labels);
}

#[test]
fn plain_files_load_with_right_contents() {
    let dir = valid_dir();
    let dataset = load_offline(dir.path()).unwrap();
    assert_eq!(dataset.kind, DatasetKind::Mnist);
    assert_matches_sample(&dataset);
}

#[test]
fn gzipped_files_load_with_right_contents() {
    let dir = TempDir::new().unwrap();
    write_valid(dir.path(), true);
    assert_matches_sample(&load_offline(dir.path()).unwrap());
}

#[test]
fn gzip_is_detected_by_content_not_name() {
    let dir = valid_dir();
    let train_images = dir.path().join(TRAIN_IMAGES);
    let bytes = std::fs::read(&train_images).unwrap();
    std::fs::write(&train_images, gzip(&bytes)).unwrap();
    assert_matches_sample(&load_offline(dir.path()).unwrap());
}

#[test]
fn plain_file_is_preferred_over_gz() {
    let dir = valid_dir();
    std::fs::write(dir.path().join(format!("{TRAIN_LABELS}.gz")), b"never read").unwrap();
    assert_matches_sample(&load_offline(dir.path()).unwrap());
}

#[test]
fn empty_splits_are_valid() {
    let dir = TempDir::new().unwrap();
    for (images, labels) in [(TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)] {
        std::fs::write(dir.path().join(images), image_file(0, &[])).unwrap();
        std::fs::write(dir.path().join(labels), label_file(&[])).unwrap();
    }
    let dataset = load_offline(dir.path()).unwrap();
    assert!(dataset.train.is_empty() && dataset.test.is_empty());
}

#[test]
fn truncated_image_file() {
    let dir = valid_dir();
    let (pixels, _) = sample(N_TRAIN, 0);
    let bytes = image_file(N_TRAIN as u32, &pixels[..1000]);
    std::fs::write(dir.path().join(TRAIN_IMAGES), bytes).unwrap();
    let expected = 16 + N_TRAIN * IMAGE_PIXELS;
    assert_contains(
        &load_error(dir.path()),
        &[
            &path_str(&dir, TRAIN_IMAGES),
            "truncated",
            &format!("header says {N_TRAIN} images ({expected} bytes) but the file has 1016 bytes"),
        ],
    );
}

#[test]
fn truncated_gzip_stream() {
    let dir = valid_dir();
    let (pixels, _) = sample(N_TEST, 1);
    let compressed = gzip(&image_file(N_TEST as u32, &pixels));
    let name = format!("{TEST_IMAGES}.gz");
    std::fs::remove_file(dir.path().join(TEST_IMAGES)).unwrap();
    std::fs::write(dir.path().join(&name), &compressed[..compressed.len() / 2]).unwrap();
    let message = load_error(dir.path());
    assert_contains(&message, &[&path_str(&dir, &name)]);
    assert!(message.contains("gzip") || message.contains("truncated"), "{message}");
}

#[test]
fn trailing_bytes() {
    let dir = valid_dir();
    let mut bytes = label_file(&sample(N_TEST, 1).1);
    bytes.extend([0, 0]);
    std::fs::write(dir.path().join(TEST_LABELS), bytes).unwrap();
    assert_contains(
        &load_error(dir.path()),
        &[&path_str(&dir, TEST_LABELS), "2 trailing bytes", &format!("header says {N_TEST} labels")],
    );
}

#[test]
fn wrong_magic() {
    let dir = valid_dir();
    let mut bytes = std::fs::read(dir.path().join(TRAIN_IMAGES)).unwrap();
    bytes[3] = 0x02;
    std::fs::write(dir.path().join(TRAIN_IMAGES), bytes).unwrap();
    assert_contains(
        &load_error(dir.path()),
        &[&path_str(&dir, TRAIN_IMAGES), "wrong magic number 0x00000802, expected 0x00000803 (an IDX image file)"],
    );
}

#[test]
fn labels_where_images_should_be() {
    let dir = valid_dir();
    std::fs::copy(dir.path().join(TRAIN_LABELS), dir.path().join(TRAIN_IMAGES)).unwrap();
    assert_contains(&load_error(dir.path()), &[&path_str(&dir, TRAIN_IMAGES), "wrong magic number 0x00000801"]);
}

#[test]
fn wrong_rows_and_cols() {
    let dir = valid_dir();
    let mut bytes = std::fs::read(dir.path().join(TEST_IMAGES)).unwrap();
    bytes[8..16].copy_from_slice(&[0, 0, 0, 32, 0, 0, 0, 24]);
    std::fs::write(dir.path().join(TEST_IMAGES), bytes).unwrap();
    assert_contains(
        &load_error(dir.path()),
        &[&path_str(&dir, TEST_IMAGES), "images are 32x24 pixels, expected 28x28"],
    );
}

#[test]
fn too_short_for_header() {
    let dir = valid_dir();
    std::fs::write(dir.path().join(TRAIN_LABELS), [0, 0, 8]).unwrap();
    assert_contains(
        &load_error(dir.path()),
        &[&path_str(&dir, TRAIN_LABELS), "3 bytes is too short for the 8-byte IDX header"],
    );
}

#[test]
fn image_and_label_counts_differ() {
    let dir = valid_dir();
    let (_, labels) = sample(N_TRAIN, 0);
    std::fs::write(dir.path().join(TRAIN_LABELS), label_file(&labels[1..])).unwrap();
    let message = format!(
        "{} has {N_TRAIN} images but {} has {} labels",
        path_str(&dir, TRAIN_IMAGES),
        path_str(&dir, TRAIN_LABELS),
        N_TRAIN - 1
    );
    assert_contains(&load_error(dir.path()), &[&message]);
}

#[test]
fn label_out_of_range() {
    let dir = valid_dir();
    let (_, mut labels) = sample(N_TEST, 1);
    labels[2] = 10;
    std::fs::write(dir.path().join(TEST_LABELS), label_file(&labels)).unwrap();
    assert_contains(&load_error(dir.path()), &[&path_str(&dir, TEST_LABELS), "label 10 at index 2 is out of range"]);
}

#[test]
fn missing_directory_offline() {
    let parent = TempDir::new().unwrap();
    let dir = parent.path().join("nowhere");
    let message = load_error(&dir);
    assert_contains(
        &message,
        &[
            &dir.display().to_string(),
            "does not exist",
            "offline",
            TRAIN_IMAGES,
            TRAIN_LABELS,
            TEST_IMAGES,
            TEST_LABELS,
            ".gz",
            "MNIST_DIR",
            "--data-dir",
        ],
    );
    assert!(!dir.exists(), "offline loading must not create the directory");
}

#[test]
fn missing_single_file_offline() {
    let dir = valid_dir();
    std::fs::remove_file(dir.path().join(TEST_LABELS)).unwrap();
    let message = load_error(dir.path());
    let first_line = message.lines().next().unwrap();
    assert_contains(first_line, &[&dir.path().display().to_string(), "lacks t10k-labels-idx1-ubyte"]);
    assert!(!first_line.contains(TRAIN_IMAGES), "only the missing file is named as missing: {message}");
    assert!(!first_line.contains("does not exist"), "{message}");
}

#[test]
fn gz_name_without_gzip_content() {
    let dir = valid_dir();
    let name = format!("{TRAIN_IMAGES}.gz");
    std::fs::remove_file(dir.path().join(TRAIN_IMAGES)).unwrap();
    std::fs::write(dir.path().join(&name), b"<html>404 Not Found</html>").unwrap();
    assert_contains(&load_error(dir.path()), &[&path_str(&dir, &name), "not gzip data"]);
}

#[test]
fn corrupt_gzip() {
    let dir = valid_dir();
    std::fs::write(dir.path().join(TEST_IMAGES), [0x1f, 0x8b, 8, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]).unwrap();
    assert_contains(&load_error(dir.path()), &[&path_str(&dir, TEST_IMAGES), "corrupt gzip data"]);
}

#[test]
fn directory_where_file_should_be() {
    let dir = valid_dir();
    std::fs::remove_file(dir.path().join(TRAIN_LABELS)).unwrap();
    std::fs::create_dir(dir.path().join(TRAIN_LABELS)).unwrap();
    assert_contains(&load_error(dir.path()), &[&path_str(&dir, TRAIN_LABELS), "is a directory"]);
}

#[cfg(unix)]
#[test]
fn dangling_symlink_counts_as_missing() {
    let dir = valid_dir();
    let path = dir.path().join(TRAIN_IMAGES);
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone"), &path).unwrap();
    assert_contains(&load_error(dir.path()), &["lacks train-images-idx3-ubyte"]);
}

/// The only test that reads or writes `FASHION_MNIST_DIR`, so it cannot race with others.
#[test]
fn resolve_dir_precedence() {
    let kind = DatasetKind::FashionMnist;
    let var = kind.env_var();
    assert_eq!(var, "FASHION_MNIST_DIR");
    std::env::remove_var(var);
    assert_eq!(data::resolve_dir(None, kind), PathBuf::from("data/fashion-mnist"));
    std::env::set_var(var, "/from/env");
    assert_eq!(data::resolve_dir(None, kind), PathBuf::from("/from/env"));
    let flag = Path::new("/from/flag");
    assert_eq!(data::resolve_dir(Some(flag), kind), flag);
    std::env::remove_var(var);
    assert_eq!(DatasetKind::Mnist.default_dir(), PathBuf::from("data/mnist"));
    assert_eq!(DatasetKind::Mnist.env_var(), "MNIST_DIR");
}

/// Loads the real MNIST from `$MNIST_DIR` when set, and checks it byte for byte against the
/// published MD5s of the decompressed files.
#[test]
fn real_mnist_from_env() {
    let Some(dir) = std::env::var_os("MNIST_DIR") else {
        eprintln!("note: MNIST_DIR is not set; skipping the real-MNIST test");
        return;
    };
    let start = std::time::Instant::now();
    let dataset = load_offline(Path::new(&dir)).unwrap();
    eprintln!("loaded real MNIST in {:.3} s", start.elapsed().as_secs_f64());
    let (train, test) = (&dataset.train, &dataset.test);
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(train.images.len(), 60_000 * IMAGE_PIXELS);
    assert!(train.labels.iter().chain(&test.labels).all(|&l| l < 10));
    let md5 = |bytes: Vec<u8>| format!("{:x}", Md5::digest(bytes));
    assert_eq!(md5(image_file(60_000, &train.images)), "6bbc9ace898e44ae57da46a324031adb");
    assert_eq!(md5(label_file(&train.labels)), "a25bea736e30d166cdddb491f175f624");
    assert_eq!(md5(image_file(10_000, &test.images)), "2646ac647ad5339dbf082846283269ea");
    assert_eq!(md5(label_file(&test.labels)), "27ae3e4e09519cfbb04c329615203637");
}
