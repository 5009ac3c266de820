//! Fetching missing dataset files from the mirrors torchvision uses.

use std::path::Path;
use std::time::Duration;

use md5::{Digest, Md5};

use super::{DataError, DatasetKind, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS};
use crate::atomic::write_atomic;

const MNIST_MIRRORS: &[&str] = &["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"];
const FASHION_MNIST_MIRRORS: &[&str] = &["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"];

/// MD5 of each published `.gz` archive (torchvision's values), so a truncated or altered
/// download is rejected before it is saved.
const MNIST_ARCHIVES: [(&str, &str); 4] = [
    (TRAIN_IMAGES, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    (TRAIN_LABELS, "d53e105ee54ea40749a09fcbcd1e9432"),
    (TEST_IMAGES, "9fb629c4189551a2d022fa330f9573f3"),
    (TEST_LABELS, "ec29112dd5afa0611ce80d1b7f02629c"),
];
const FASHION_MNIST_ARCHIVES: [(&str, &str); 4] = [
    (TRAIN_IMAGES, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    (TRAIN_LABELS, "25c81989df183df01b3e8a0aad5dffbe"),
    (TEST_IMAGES, "bef4ecab320f06d8554ea6380940ec79"),
    (TEST_LABELS, "bb300cfdad3c16e7a12a480ee83cd310"),
];

/// The largest archive is about 26 MB; anything far bigger is not what we asked for.
/// (ureq's default limit of 10 MB is too small for the training images.)
const MAX_ARCHIVE_BYTES: u64 = 64 << 20;

/// Downloads the archives of the files named in `missing` into `dir` as `<name>.gz`.
pub(super) fn download_missing(kind: DatasetKind, dir: &Path, missing: &[&str]) -> Result<(), DataError> {
    std::fs::create_dir_all(dir).map_err(|source| DataError::Write { path: dir.into(), source })?;
    let (mirrors, archives) = match kind {
        DatasetKind::Mnist => (MNIST_MIRRORS, MNIST_ARCHIVES),
        DatasetKind::FashionMnist => (FASHION_MNIST_MIRRORS, FASHION_MNIST_ARCHIVES),
    };
    let agent = agent();
    for (name, md5) in archives.iter().filter(|(name, _)| missing.contains(name)) {
        let file = format!("{name}.gz");
        let bytes = fetch(&agent, mirrors, &file, md5).map_err(|attempts| DataError::Download {
            kind,
            dir: dir.into(),
            file: file.clone(),
            attempts,
        })?;
        let path = dir.join(&file);
        write_atomic(&path, &bytes).map_err(|source| DataError::Write { path: path.clone(), source })?;
        tracing::info!("saved {} ({} bytes)", path.display(), bytes.len());
    }
    Ok(())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .new_agent()
}

/// Tries each mirror in turn; on failure returns one `"url: reason"` line per mirror.
fn fetch(agent: &ureq::Agent, mirrors: &[&str], file: &str, md5: &str) -> Result<Vec<u8>, Vec<String>> {
    let mut failures = Vec::new();
    for mirror in mirrors {
        let url = format!("{mirror}{file}");
        tracing::info!("downloading {url}");
        match get(agent, &url).and_then(|bytes| check_md5(bytes, md5)) {
            Ok(bytes) => return Ok(bytes),
            Err(reason) => {
                tracing::warn!("{url}: {reason}");
                failures.push(format!("{url}: {reason}"));
            }
        }
    }
    Err(failures)
}

fn get(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, String> {
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    let body = response.body_mut().with_config().limit(MAX_ARCHIVE_BYTES);
    body.read_to_vec().map_err(|e| e.to_string())
}

fn check_md5(bytes: Vec<u8>, expected: &str) -> Result<Vec<u8>, String> {
    let actual = format!("{:x}", Md5::digest(&bytes));
    if actual == expected {
        Ok(bytes)
    } else {
        Err(format!("MD5 {actual} does not match the published {expected} ({} bytes received)", bytes.len()))
    }
}
