//! Random affine augmentation of training images, as torchvision's `RandomAffine` draws and
//! applies it, computed inside the gather that assembles a batch.
//!
//! Each example's transform is a pure function of (seed, epoch, example index): four
//! uniform draws from SplitMix64's finalizer over that counter. So a run augments the same
//! way on the CPU and on the GPU, with any thread count, and after `--resume`. The CUDA
//! kernel `gather_augmented` (kernels/data.cu) computes the same draws, matrix and samples.

use serde::{Deserialize, Serialize};

use crate::data::IMAGE_SIDE;

/// The ranges of `RandomAffine(degrees, translate, scale)`, with the translation in pixels
/// (`translate · 28`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AffineRange {
    pub degrees: f32,
    pub max_shift: f32,
    pub scale: [f32; 2],
}

impl AffineRange {
    /// `RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))`.
    pub const RANDOM_AFFINE: AffineRange =
        AffineRange { degrees: 10.0, max_shift: 0.1 * IMAGE_SIDE as f32, scale: [0.9, 1.1] };

    /// Translation only, up to `pixels` each way.
    pub fn shift(pixels: f32) -> Self {
        AffineRange { degrees: 0.0, max_shift: pixels, scale: [1.0, 1.0] }
    }
}

/// What a gather needs to augment an epoch's batches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augmentation {
    pub range: AffineRange,
    pub seed: u64,
    /// 0-based.
    pub epoch: u32,
}

/// SplitMix64's output function: a bijection of u64 that mixes every bit into every other.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Draw `draw` of `example` in `epoch`: uniform in [0, 1) with 53 random bits.
pub fn uniform(seed: u64, epoch: u32, example: u32, draw: u32) -> f64 {
    let key = mix64(seed ^ mix64((u64::from(epoch) << 32) | u64::from(example)));
    let bits = mix64(key.wrapping_add(u64::from(draw + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// One example's transform, as `RandomAffine.get_params` returns it: the angle in degrees,
/// whole-pixel translations and the scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    pub angle: f64,
    pub translate: [f64; 2],
    pub scale: f64,
}

impl Affine {
    /// The transform of `example` in the augmentation's epoch. Like torchvision, the
    /// translation is drawn in [−max, max] and rounded half to even.
    pub fn draw(a: &Augmentation, example: u32) -> Self {
        let u = |draw| uniform(a.seed, a.epoch, example, draw);
        let (degrees, shift) = (f64::from(a.range.degrees), f64::from(a.range.max_shift));
        let [lo, hi] = a.range.scale.map(f64::from);
        Affine {
            angle: -degrees + 2.0 * degrees * u(0),
            translate: [
                (-shift + 2.0 * shift * u(1)).round_ties_even(),
                (-shift + 2.0 * shift * u(2)).round_ties_even(),
            ],
            scale: lo + (hi - lo) * u(3),
        }
    }

    /// torchvision's `_get_inverse_affine_matrix` with no shear about the centre, as the
    /// `float32` matrix it samples with: an output pixel at (x, y) from the centre reads the
    /// input at `(m[0]·x + m[1]·y + m[2], m[3]·x + m[4]·y + m[5])` from the centre.
    pub fn inverse(&self) -> [f32; 6] {
        let (sin, cos) = self.angle.to_radians().sin_cos();
        let s = self.scale;
        let [tx, ty] = self.translate;
        let (a, b, d, e) = (cos / s, sin / s, -sin / s, cos / s);
        [a, b, a * -tx + b * -ty, d, e, d * -tx + e * -ty].map(|v| v as f32)
    }
}

/// The bilinear sample of a square `side × side` u8 image (scaled to [0, 1]) at pixel
/// coordinates (`ix`, `iy`); pixels outside the image are 0, as `grid_sample`'s zero padding.
fn bilinear(src: &[u8], side: usize, ix: f32, iy: f32) -> f32 {
    let (x0, y0) = (ix.floor(), iy.floor());
    let (fx, fy) = (ix - x0, iy - y0);
    let (x0, y0) = (x0 as i64, y0 as i64);
    let pixel = |x: i64, y: i64| {
        let inside = (0..side as i64).contains(&x) && (0..side as i64).contains(&y);
        if inside {
            f32::from(src[y as usize * side + x as usize]) / 255.0
        } else {
            0.0
        }
    };
    (1.0 - fx) * (1.0 - fy) * pixel(x0, y0)
        + fx * (1.0 - fy) * pixel(x0 + 1, y0)
        + (1.0 - fx) * fy * pixel(x0, y0 + 1)
        + fx * fy * pixel(x0 + 1, y0 + 1)
}

/// Writes `src` (a `side × side` u8 image) transformed by `inverse` (from
/// [`Affine::inverse`]) into `dst`, in [0, 1]: `affine(img, ...)` of torchvision on the
/// float image `img / 255`, with bilinear interpolation and zero fill. The centre of an
/// image of side `n` is at pixel `(n − 1)/2`, as `grid_sample` with `align_corners=False`
/// places it.
pub fn resample(inverse: &[f32; 6], src: &[u8], side: usize, dst: &mut [f32]) {
    let centre = (side as f32 - 1.0) * 0.5;
    let [a, b, c, d, e, f] = *inverse;
    for (y, row) in dst.chunks_exact_mut(side).enumerate() {
        let yc = y as f32 - centre;
        for (x, out) in row.iter_mut().enumerate() {
            let xc = x as f32 - centre;
            *out = bilinear(src, side, a * xc + b * yc + c + centre, d * xc + e * yc + f + centre);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_uniform_and_keyed_by_every_part_of_the_counter() {
        let n = 20_000;
        let mean = (0..n).map(|i| uniform(1, 2, i, 0)).sum::<f64>() / f64::from(n);
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        let base = uniform(1, 2, 3, 0);
        for other in [uniform(2, 2, 3, 0), uniform(1, 3, 3, 0), uniform(1, 2, 4, 0), uniform(1, 2, 3, 1)] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn draws_stay_inside_the_ranges() {
        let a = Augmentation { range: AffineRange::RANDOM_AFFINE, seed: 9, epoch: 0 };
        for example in 0..1000 {
            let t = Affine::draw(&a, example);
            assert!(t.angle.abs() <= 10.0 && (0.9..=1.1).contains(&t.scale), "{t:?}");
            assert!(t.translate.iter().all(|v| v.abs() <= 3.0 && v.fract() == 0.0), "{t:?}");
        }
    }

    #[test]
    fn the_identity_copies_and_a_whole_pixel_shift_moves() {
        let src: Vec<u8> = (0..25).map(|i| (i * 10) as u8).collect();
        let identity = Affine { angle: 0.0, translate: [0.0, 0.0], scale: 1.0 };
        let mut out = vec![0.0; 25];
        resample(&identity.inverse(), &src, 5, &mut out);
        assert_eq!(out, src.iter().map(|&p| f32::from(p) / 255.0).collect::<Vec<_>>());
        // One pixel right: column 0 is fill, column x holds the input's column x − 1.
        let right = Affine { translate: [1.0, 0.0], ..identity };
        resample(&right.inverse(), &src, 5, &mut out);
        for y in 0..5 {
            assert_eq!(out[y * 5], 0.0);
            for x in 1..5 {
                assert_eq!(out[y * 5 + x], f32::from(src[y * 5 + x - 1]) / 255.0);
            }
        }
    }
}
