//! Helpers shared by the integration tests.
#![allow(dead_code)]

#[cfg(feature = "cuda")]
pub mod cuda_ops;
pub mod reference64;

use std::path::Path;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use resnet_mnist::backend::Backend;
use resnet_mnist::model::Model;
use resnet_mnist::session::{self, Outcome, Session};
use resnet_mnist::train::{DeviceSplit, EpochReport, Recipe};

/// Trains `model` through the real session loop, in a throw-away run directory.
pub fn train_run<B: Backend>(
    model: &mut Model<B>,
    train: &DeviceSplit<B>,
    test: &DeviceSplit<B>,
    recipe: Recipe,
) -> Vec<EpochReport> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut session = Session::create(dir.path(), recipe, model.net.arch).expect("run directory");
    let outcome = session::run(&mut session, model, train, test, &|| false, &mut |_| {}).expect("training");
    assert!(matches!(outcome, Outcome::Finished));
    session.state.history
}

/// A tiny IDX data set of `train` and `test` examples: class `l` is a bright bar at rows
/// 2l+4..2l+6, on noise.
pub fn write_dataset(dir: &Path, train: u32, test: u32) {
    let write = |name: &str, magic: u32, dims: &[u32], body: &[u8]| {
        let mut bytes = magic.to_be_bytes().to_vec();
        dims.iter().for_each(|d| bytes.extend(d.to_be_bytes()));
        bytes.extend(body);
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    for (prefix, len) in [("train", train), ("t10k", test)] {
        let labels: Vec<u8> = (0..len).map(|i| (i % 10) as u8).collect();
        let images: Vec<u8> = labels
            .iter()
            .flat_map(|&l| (0..784).map(move |p| if p / 56 == l as usize + 2 { 255 } else { (p * 7 % 40) as u8 }))
            .collect();
        write(&format!("{prefix}-images-idx3-ubyte"), 0x803, &[len, 28, 28], &images);
        write(&format!("{prefix}-labels-idx1-ubyte"), 0x801, &[len], &labels);
    }
}

/// How far a result may be from its reference: relative to the reference's largest magnitude.
pub const TOLERANCE: f32 = 1e-4;

/// `len` values drawn uniformly from [-1, 1).
pub fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Fails unless every element of `ours` is within [`TOLERANCE`] of `expected`, relative to the
/// largest magnitude in `expected`; names the worst element.
pub fn assert_close(what: &str, ours: &[f32], expected: &[f32]) {
    assert_eq!(ours.len(), expected.len(), "{what}: length");
    let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    let (worst, at) = ours
        .iter()
        .zip(expected)
        .map(|(a, b)| if a == b { 0.0 } else { (a - b).abs() })
        .zip(0..)
        .fold((0.0, 0), |w, e| if e.0 > w.0 || e.0.is_nan() { e } else { w });
    assert!(
        worst / scale <= TOLERANCE,
        "{what}: element {at} is {}, expected {} (error {:e} relative to the largest {scale})",
        ours[at],
        expected[at],
        worst / scale
    );
}
