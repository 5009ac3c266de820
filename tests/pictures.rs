//! `predict` on pictures as a phone takes them: MNIST test digits drawn in dark ink on paper
//! from white (255) down to grey 140, with noise and uneven lighting, saved as PNG and JPEG,
//! must be read as well as the clean digits (at least 95 %, and within 2 points of clean).

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use resnet_mnist::backend::cpu::CpuBackend;
use resnet_mnist::checkpoint;
use resnet_mnist::data::{self, DatasetKind, LoadOptions, IMAGE_PIXELS, IMAGE_SIDE};
use resnet_mnist::digit;
use resnet_mnist::inference::{argmax, probabilities};
use resnet_mnist::model::Model;

const DIGITS: usize = 200;
const SCALE: u32 = 4;

/// Digit `pixels` (white on black) as dark ink (value 30) on paper of grey `paper`, four
/// times larger, lit unevenly (±15 across the page) and with noise (σ = 6).
fn on_paper(pixels: &[u8], paper: f32, rng: &mut ChaCha8Rng) -> image::GrayImage {
    let side = IMAGE_SIDE as u32;
    let digit = image::GrayImage::from_raw(side, side, pixels.to_vec()).unwrap();
    // A margin of paper around it, as in a photo of a page.
    let big = image::imageops::resize(&digit, side * SCALE, side * SCALE, image::imageops::FilterType::Triangle);
    let size = side * SCALE + 40;
    let (tilt_x, tilt_y) = (rng.random_range(-1.0..1.0f32), rng.random_range(-1.0..1.0f32));
    image::GrayImage::from_fn(size, size, |x, y| {
        let (u, v) = (x as f32 / size as f32 - 0.5, y as f32 / size as f32 - 0.5);
        let light = 15.0 * (tilt_x * u + tilt_y * v);
        let gauss = {
            let (a, b): (f32, f32) = (rng.random_range(1e-6..1.0), rng.random());
            (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos()
        };
        let ink = match (x.checked_sub(20), y.checked_sub(20)) {
            (Some(dx), Some(dy)) if dx < side * SCALE && dy < side * SCALE => big.get_pixel(dx, dy).0[0] as f32 / 255.0,
            _ => 0.0,
        };
        let value = (paper + light) * (1.0 - ink) + 30.0 * ink + 6.0 * gauss;
        image::Luma([value.round().clamp(0.0, 255.0) as u8])
    })
}

fn mnist() -> Option<data::Dataset> {
    let dir = PathBuf::from(std::env::var_os("MNIST_DIR")?);
    data::load(&LoadOptions { dir, kind: DatasetKind::Mnist, offline: true }).ok()
}

#[test]
fn dark_ink_on_grey_paper_is_read_like_clean_digits() {
    let Some(dataset) = mnist() else {
        eprintln!("note: skipping the picture test: set MNIST_DIR to a folder with the MNIST IDX files");
        return;
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trained.safetensors");
    let (net, ckpt) = checkpoint::load_net(&path).unwrap();
    let mut model = Model::new(CpuBackend::new(2).unwrap(), net, &ckpt.params, DIGITS);
    let test = &dataset.test;
    let labels = &test.labels[..DIGITS];
    let mut accuracy = |images: &[[u8; IMAGE_PIXELS]]| {
        let right =
            probabilities(&mut model, images).iter().zip(labels).filter(|(p, &l)| argmax(*p) == l as usize).count();
        100.0 * right as f64 / DIGITS as f64
    };
    let clean: Vec<[u8; IMAGE_PIXELS]> =
        (0..DIGITS).map(|i| test.images[i * IMAGE_PIXELS..(i + 1) * IMAGE_PIXELS].try_into().unwrap()).collect();
    let dir = tempfile::tempdir().unwrap();
    // The baseline: the same digits through the same fitting, as clean pictures (white on
    // black, four times larger).
    let side = IMAGE_SIDE as u32;
    let refitted: Vec<[u8; IMAGE_PIXELS]> = clean
        .iter()
        .map(|pixels| {
            let file = dir.path().join("clean.png");
            let digit = image::GrayImage::from_raw(side, side, pixels.to_vec()).unwrap();
            let filter = image::imageops::FilterType::Triangle;
            image::imageops::resize(&digit, side * SCALE, side * SCALE, filter).save(&file).unwrap();
            digit::load(&file).unwrap()
        })
        .collect();
    let clean_accuracy = accuracy(&refitted);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut report = vec![format!("MNIST as is: {:.1} %, clean pictures: {clean_accuracy:.1} %", accuracy(&clean))];
    for paper in [255.0, 220.0, 190.0, 160.0, 140.0] {
        for format in ["png", "jpg"] {
            let fitted: Vec<[u8; IMAGE_PIXELS]> = clean
                .iter()
                .enumerate()
                .map(|(i, pixels)| {
                    let file = dir.path().join(format!("{i}.{format}"));
                    on_paper(pixels, paper, &mut rng).save(&file).unwrap();
                    digit::load(&file).unwrap_or([0; IMAGE_PIXELS])
                })
                .collect();
            let got = accuracy(&fitted);
            report.push(format!("paper {paper} {format}: {got:.1} %"));
            assert!(got >= 95.0 && got >= clean_accuracy - 2.0, "paper {paper}, {format}: {got:.1} %\n{report:?}");
        }
    }
    eprintln!("{}", report.join("; "));
}
