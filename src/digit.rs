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
    #[error("{}: {source}", path.display())]
    Picture { path: PathBuf, source: PictureError },
    #[error("{}: cannot write: {source}", path.display())]
    Write { path: PathBuf, source: image::ImageError },
}

/// What is wrong with a picture's bytes.
#[derive(Debug, thiserror::Error)]
pub enum PictureError {
    #[error("cannot read the image: {0}")]
    Decode(image::ImageError),
    #[error("the JPEG is truncated (it has no end-of-image marker after its data)")]
    Truncated,
    #[error("the image is blank (no digit found)")]
    Blank,
    #[error("the image is larger than {0} pixels a side, or needs more memory to decode than allowed")]
    TooLarge(u32),
}

/// The largest pictures a reader accepts: a header that claims more is refused before
/// anything is allocated for it.
#[derive(Clone, Copy, Debug)]
pub struct PictureLimits {
    pub max_side: u32,
    pub max_alloc: u64,
}

impl PictureLimits {
    /// For files on disk: a phone photo is 12 to 50 megapixels.
    pub const FILES: PictureLimits = PictureLimits { max_side: 16_384, max_alloc: 256 << 20 };

    fn image_limits(self) -> image::Limits {
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(self.max_side);
        limits.max_image_height = Some(self.max_side);
        limits.max_alloc = Some(self.max_alloc);
        limits
    }
}

/// Loads `path` (PNG or JPEG, any size) as an MNIST-style image.
pub fn load(path: &Path) -> Result<[u8; IMAGE_PIXELS], DigitError> {
    let bytes = std::fs::read(path).map_err(|source| DigitError::Read { path: path.into(), source })?;
    decode(&bytes, PictureLimits::FILES).map_err(|source| DigitError::Picture { path: path.into(), source })
}

/// Decodes a PNG or JPEG within `limits` into an MNIST-style image.
pub fn decode(bytes: &[u8], limits: PictureLimits) -> Result<[u8; IMAGE_PIXELS], PictureError> {
    let format = image::guess_format(bytes).map_err(PictureError::Decode)?;
    // The JPEG decoder fills in what a cut-off file lacks instead of failing.
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(PictureError::Truncated);
    }
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    reader.limits(limits.image_limits());
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => PictureError::TooLarge(limits.max_side),
        e => PictureError::Decode(e),
    })?;
    to_mnist(&image).ok_or(PictureError::Blank)
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

/// Flattens transparency onto white, inverts light-background pictures (judged by the
/// border) so that the digit is bright, then takes the paper away: values up to the border's
/// 99th percentile (grey paper, its noise and uneven light) become black, and the rest is
/// stretched so that the brightest ink is white.
fn white_on_black(image: &DynamicImage) -> GrayImage {
    let mut gray = bright_ink(image);
    let mut border = border_values(&gray);
    border.sort_unstable();
    let paper = border[(border.len() - 1) * 99 / 100] as u32;
    let ink = gray.pixels().map(|p| p.0[0] as u32).max().unwrap_or(0);
    if ink > paper {
        for p in gray.pixels_mut() {
            p.0[0] = ((p.0[0] as u32).saturating_sub(paper) * 255 / (ink - paper)) as u8;
        }
    }
    gray
}

fn border_values(gray: &GrayImage) -> Vec<u8> {
    let (w, h) = gray.dimensions();
    gray.enumerate_pixels()
        .filter(|(x, y, _)| *x == 0 || *y == 0 || *x == w - 1 || *y == h - 1)
        .map(|p| p.2 .0[0])
        .collect()
}

/// Grayscale with transparency flattened onto white, inverted when the border is light.
fn bright_ink(image: &DynamicImage) -> GrayImage {
    let la = image.to_luma_alpha8();
    let mut gray = GrayImage::from_fn(la.width(), la.height(), |x, y| {
        let [l, a] = la.get_pixel(x, y).0;
        Luma([((l as u32 * a as u32 + 255 * (255 - a as u32)) / 255) as u8])
    });
    let border = border_values(&gray);
    if border.iter().map(|&v| v as u64).sum::<u64>() > 127 * border.len() as u64 {
        imageops::invert(&mut gray);
    }
    gray
}

/// The smallest box holding the rows and columns with ink: at least two pixels brighter than
/// [`INK`], so that a speck of noise on the paper does not stretch it.
fn ink_box(gray: &GrayImage) -> Option<(u32, u32, u32, u32)> {
    let (w, h) = gray.dimensions();
    let (mut rows, mut cols) = (vec![0u32; h as usize], vec![0u32; w as usize]);
    for (x, y, p) in gray.enumerate_pixels() {
        if p.0[0] > INK {
            rows[y as usize] += 1;
            cols[x as usize] += 1;
        }
    }
    let span = |counts: &[u32]| {
        let first = counts.iter().position(|&c| c >= 2)?;
        let last = counts.iter().rposition(|&c| c >= 2)?;
        Some((first as u32, (last - first + 1) as u32))
    };
    let ((y0, bh), (x0, bw)) = (span(&rows)?, span(&cols)?);
    Some((x0, y0, bw, bh))
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
