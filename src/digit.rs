//! Turning an arbitrary picture of a digit into an MNIST-style 28×28 image, and back.
//!
//! MNIST digits are white on black, scaled to fit a 20×20 box (keeping their aspect ratio)
//! and placed so that their center of mass is the center of the 28×28 frame.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage, Luma};

use crate::data::{IMAGE_PIXELS, IMAGE_SIDE};

/// Side of the box MNIST fits each digit into.
const BOX: u32 = 20;
/// Ink darker than this (out of 255, after inversion) counts as background when cropping.
const INK: u8 = 32;

#[derive(Debug, thiserror::Error)]
pub enum DigitError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: cannot read the image: {source}", path.display())]
    Decode { path: PathBuf, source: image::ImageError },
    #[error("{}: the JPEG is truncated (it has no end-of-image marker after its data)", path.display())]
    Truncated { path: PathBuf },
    #[error("{}: the image is blank (no digit found)", path.display())]
    Blank { path: PathBuf },
    #[error("{}: cannot write: {source}", path.display())]
    Write { path: PathBuf, source: image::ImageError },
}

/// Loads `path` (PNG or JPEG, any size) as an MNIST-style image.
pub fn load(path: &Path) -> Result<[u8; IMAGE_PIXELS], DigitError> {
    let bytes = std::fs::read(path).map_err(|source| DigitError::Read { path: path.into(), source })?;
    let decode = |source| DigitError::Decode { path: path.into(), source };
    let format = image::guess_format(&bytes).map_err(decode)?;
    // The JPEG decoder fills in what a cut-off file lacks instead of failing.
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(&bytes) {
        return Err(DigitError::Truncated { path: path.into() });
    }
    let image = image::load_from_memory_with_format(&bytes, format).map_err(decode)?;
    to_mnist(&image).ok_or_else(|| DigitError::Blank { path: path.into() })
}

/// Whether an end-of-image marker (FF D9) follows the last start-of-scan (FF DA): entropy-
/// coded data never holds FF D9, since it escapes every FF byte as FF 00.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    matches!((last(0xDA), last(0xD9)), (Some(scan), Some(end)) if end > scan)
}

/// Grayscale, white on black, cropped, scaled into the 20×20 box and centered by mass;
/// `None` if there is no ink.
pub fn to_mnist(image: &DynamicImage) -> Option<[u8; IMAGE_PIXELS]> {
    let gray = white_on_black(image);
    let (x0, y0, w, h) = ink_box(&gray)?;
    let cropped = imageops::crop_imm(&gray, x0, y0, w, h).to_image();
    let scale = BOX as f32 / w.max(h) as f32;
    let (sw, sh) = (((w as f32 * scale).round() as u32).max(1), ((h as f32 * scale).round() as u32).max(1));
    let scaled = imageops::resize(&cropped, sw, sh, FilterType::Triangle);
    let (cx, cy) = center_of_mass(&scaled)?;
    let side = IMAGE_SIDE as i64;
    let place = |center: f64, len: u32| ((side as f64 / 2.0 - center).round() as i64).clamp(0, side - len as i64);
    let mut frame = GrayImage::new(IMAGE_SIDE as u32, IMAGE_SIDE as u32);
    imageops::replace(&mut frame, &scaled, place(cx, sw), place(cy, sh));
    Some(frame.into_raw().try_into().expect("28×28 pixels"))
}

/// Flattens transparency onto white, then inverts light-background pictures, judged by the
/// border, so the digit is bright.
fn white_on_black(image: &DynamicImage) -> GrayImage {
    let la = image.to_luma_alpha8();
    let mut gray = GrayImage::from_fn(la.width(), la.height(), |x, y| {
        let [l, a] = la.get_pixel(x, y).0;
        Luma([((l as u32 * a as u32 + 255 * (255 - a as u32)) / 255) as u8])
    });
    let (w, h) = gray.dimensions();
    let border: Vec<u8> = gray
        .enumerate_pixels()
        .filter(|(x, y, _)| *x == 0 || *y == 0 || *x == w - 1 || *y == h - 1)
        .map(|p| p.2 .0[0])
        .collect();
    if border.iter().map(|&v| v as u64).sum::<u64>() > 127 * border.len() as u64 {
        imageops::invert(&mut gray);
    }
    gray
}

/// The smallest box holding every pixel brighter than [`INK`]: (x, y, width, height).
fn ink_box(gray: &GrayImage) -> Option<(u32, u32, u32, u32)> {
    let ink = gray.enumerate_pixels().filter(|p| p.2 .0[0] > INK);
    let (x0, y0, x1, y1) = ink
        .fold((u32::MAX, u32::MAX, 0, 0), |(x0, y0, x1, y1), (x, y, _)| (x0.min(x), y0.min(y), x1.max(x), y1.max(y)));
    (x0 <= x1).then(|| (x0, y0, x1 - x0 + 1, y1 - y0 + 1))
}

fn center_of_mass(gray: &GrayImage) -> Option<(f64, f64)> {
    let (mut mass, mut mx, mut my) = (0.0, 0.0, 0.0);
    for (x, y, p) in gray.enumerate_pixels() {
        let m = p.0[0] as f64;
        (mass, mx, my) = (mass + m, mx + m * (x as f64 + 0.5), my + m * (y as f64 + 0.5));
    }
    (mass > 0.0).then(|| (mx / mass, my / mass))
}

/// Writes one 28×28 MNIST image as a grayscale PNG.
pub fn save_png(path: &Path, pixels: &[u8]) -> Result<(), DigitError> {
    let side = IMAGE_SIDE as u32;
    let image = GrayImage::from_raw(side, side, pixels.to_vec()).expect("28×28 pixels");
    image
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|source| DigitError::Write { path: path.into(), source })
}
