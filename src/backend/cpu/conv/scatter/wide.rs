//! [`ScatterImage`]'s tiles in AVX-512 registers, for layers whose input channels fill
//! whole 16-channel blocks: one register holds a block's 16 channels. The tiles cover the
//! pixels the AVX2 tiles do, so that every input-gradient pixel gathers its products in the
//! same order and the two agree exactly.

use std::array;

use super::super::simd::avx512::{register, Avx512, WideKernel, LANES};
use super::{ScatterImage, Tile};
use crate::backend::ConvShape;

/// Whether these tiles serve `s`: every block of input channels is a whole register.
pub fn fits(s: &ConvShape) -> bool {
    s.c_in.is_multiple_of(LANES)
}

/// One image's input gradient, as [`ScatterImage`] computes it.
pub struct WideScatter<'a>(pub ScatterImage<'a>);

impl WideKernel for WideScatter<'_> {
    #[inline(always)]
    fn run(self, simd: Avx512) {
        let pixels = self.0.s.h_out() * self.0.s.w_out();
        for (tile, out, n) in self.0.blocks() {
            for first in (0..pixels).step_by(n) {
                match n.min(pixels - first) {
                    1 => tile_at::<1>(simd, &tile, out, first),
                    2 => tile_at::<2>(simd, &tile, out, first),
                    3 => tile_at::<3>(simd, &tile, out, first),
                    4 => tile_at::<4>(simd, &tile, out, first),
                    5 => tile_at::<5>(simd, &tile, out, first),
                    6 => tile_at::<6>(simd, &tile, out, first),
                    n => unreachable!("the AVX2 tiles of a whole block cover 6 pixels at most, not {n}"),
                }
            }
        }
    }
}

/// Output-gradient pixels `first..first + PX` of every tap, for one block.
#[inline(always)]
fn tile_at<const PX: usize>(simd: Avx512, t: &Tile, out: &mut [f32], first: usize) {
    let s = t.s;
    let (wo, k, pixels) = (s.w_out(), s.kernel, s.h_out() * s.w_out());
    let full_width = wo + k - 1;
    // Where each pixel's tap (0, 0) lands in the full planes.
    let targets: [usize; PX] = array::from_fn(|p| ((first + p) / wo) * full_width + (first + p) % wo);
    for (tap, weights) in t.weights.chunks_exact(s.c_out * LANES).enumerate() {
        let mut acc = [simd.zero(); PX];
        for (plane, w) in t.dy.chunks_exact(pixels).zip(weights.chunks_exact(LANES)) {
            let xs = &plane[first..][..PX];
            let w = simd.load(register(w));
            for p in 0..PX {
                acc[p] = simd.mul_add(xs[p], w, acc[p]);
            }
        }
        let shift = (tap / k) * full_width + tap % k;
        for p in 0..PX {
            let dst: &mut [f32; LANES] =
                (&mut out[(targets[p] + shift) * LANES..][..LANES]).try_into().expect("a whole register");
            *dst = simd.store(simd.add(simd.load(dst), acc[p]));
        }
    }
}
