//! The data gradient of a convolution with little padding, as a scatter.
//!
//! The data gradient is a full convolution of the output gradient: [`super::ConvImage`]
//! computes it over the output gradient padded by `K - 1 - pad` all around, and of a 5×5
//! layer without padding (8×8 gradients padded to 16×16) a third of its multiply-adds then
//! read zeros. Here every output-gradient pixel instead sends each tap's contribution to
//! the input pixel it came from, so that only real products are computed:
//!
//! ```text
//! dx[ci][o + (ky, kx) − pad] += Σ_co W[co][ci][ky][kx] · dy[co][o]
//! ```
//!
//! A tile sums over output channels for a run of output-gradient pixels and one tap, then
//! adds its vectors into the input gradient, kept channels last ([`Blocked`]) over the full
//! `(ho + K − 1) × (wo + K − 1)` planes and cropped when unpacked.

use std::array;

use super::{blocks, load, padded, tile_len, vector_mut, with_tile, Block, Blocked, Convolutions, Kernel, Simd, LANES};
use crate::backend::ConvShape;

#[cfg(target_arch = "x86_64")]
mod wide;

/// Whether the scatter computes fewer products than the padded full convolution: with less
/// padding than a same-size convolution, whose borders both waste about alike.
pub fn fits(s: &ConvShape) -> bool {
    2 * s.pad + 1 < s.kernel
}

pub fn backward_data(
    convs: &Convolutions,
    s: &ConvShape,
    weight: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    accumulate: bool,
) {
    let len = s.c_out * s.kernel * s.kernel * padded(s.c_in);
    let mut packed = convs.packed(len);
    pack(s, weight, &mut packed);
    let weights = &*packed;
    let full_len = full_pixels(s) * padded(s.c_in);
    #[cfg(target_arch = "x86_64")]
    let wide = convs.isa.wide().filter(|_| wide::fits(s));
    convs.per_image(dy, s.out_image(), dx, s.in_image(), full_len, |dy, full, dx| {
        full.fill(0.0);
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = wide {
            simd.run(wide::WideScatter(ScatterImage { s, weights, dy, out: full }));
            return unpack(s, full, dx, accumulate);
        }
        convs.isa.run(ScatterImage { s, weights, dy, out: full });
        unpack(s, full, dx, accumulate);
    });
}

/// Pixels of the full input-gradient planes the scatter writes, per channel.
fn full_pixels(s: &ConvShape) -> usize {
    (s.h_out() + s.kernel - 1) * (s.w_out() + s.kernel - 1)
}

/// Packs `W[co][ci][ky][kx]` for [`ScatterImage`]: `(ky, kx, co)` by `ci`, [`Blocked`].
fn pack(s: &ConvShape, weight: &[f32], dst: &mut [f32]) {
    let (kk, patch) = (s.kernel * s.kernel, s.patch());
    let layout = Blocked { items: kk * s.c_out, channels: s.c_in };
    for block in blocks(s.c_in) {
        let dst = layout.block_mut(dst, block);
        dst.fill(0.0);
        for (item, run) in dst.chunks_exact_mut(block.width()).enumerate() {
            let (tap, co) = (item / s.c_out, item % s.c_out);
            let filters = weight[co * patch..][..patch].chunks_exact(kk).skip(block.first);
            for (w, filter) in run.iter_mut().zip(filters) {
                *w = filter[tap];
            }
        }
    }
}

/// One image's input gradient: `out` (the full planes, [`Blocked`], zeroed by the caller)
/// gathers every tap's products of `dy` (NCHW) with the weights from [`pack`].
struct ScatterImage<'a> {
    pub s: &'a ConvShape,
    pub weights: &'a [f32],
    pub dy: &'a [f32],
    pub out: &'a mut [f32],
}

impl<'a> ScatterImage<'a> {
    /// Each block of input channels: what its tiles read, its part of `out`, and how many
    /// pixels a tile covers.
    #[inline(always)]
    fn blocks(self) -> impl Iterator<Item = (Tile<'a>, &'a mut [f32], usize)> {
        let s = self.s;
        let (pixels, kk) = (s.h_out() * s.w_out(), s.kernel * s.kernel);
        let weights = Blocked { items: kk * s.c_out, channels: s.c_in };
        let (full, mut out) = (full_pixels(s), self.out);
        blocks(s.c_in).map(move |block| {
            let (this, rest) = std::mem::take(&mut out).split_at_mut(full * block.width());
            out = rest;
            (Tile { s, weights: weights.block(self.weights, block), dy: self.dy, block }, this, tile_len(pixels, block))
        })
    }
}

impl Kernel for ScatterImage<'_> {
    #[inline(always)]
    fn run<S: Simd>(self, simd: S) {
        let pixels = self.s.h_out() * self.s.w_out();
        for (tile, out, n) in self.blocks() {
            for first in (0..pixels).step_by(n) {
                with_tile!(tile.block.vectors, n.min(pixels - first), scatter_tile(simd, &tile, out, first));
            }
        }
    }
}

/// What a tile reads: one block's packed weights and the output gradient.
struct Tile<'a> {
    s: &'a ConvShape,
    weights: &'a [f32],
    dy: &'a [f32],
    block: Block,
}

/// Output-gradient pixels `first..first + PX` of every tap, for `CV` vectors of input
/// channels.
#[inline(always)]
fn scatter_tile<S: Simd, const PX: usize, const CV: usize>(simd: S, t: &Tile, out: &mut [f32], first: usize) {
    let s = t.s;
    let (wo, k, pixels) = (s.w_out(), s.kernel, s.h_out() * s.w_out());
    let full_width = wo + k - 1;
    // Where each pixel's tap (0, 0) lands in the full planes.
    let targets: [usize; PX] = array::from_fn(|p| ((first + p) / wo) * full_width + (first + p) % wo);
    let run = s.c_out * CV * LANES;
    for (tap, weights) in t.weights.chunks_exact(run).enumerate() {
        let mut acc = [[simd.zero(); CV]; PX];
        for (plane, w) in t.dy.chunks_exact(pixels).zip(weights.chunks_exact(CV * LANES)) {
            let xs = &plane[first..][..PX];
            let w = load::<S, CV>(simd, w);
            for p in 0..PX {
                for v in 0..CV {
                    acc[p][v] = simd.mul_add(xs[p], w[v], acc[p][v]);
                }
            }
        }
        let shift = (tap / k) * full_width + tap % k;
        for p in 0..PX {
            let dst = &mut out[(targets[p] + shift) * t.block.width()..][..CV * LANES];
            for v in 0..CV {
                let d = vector_mut(&mut dst[v * LANES..]);
                *d = simd.store(simd.add(simd.load(d), acc[p][v]));
            }
        }
    }
}

/// Crops the full input gradient (channels last, [`Blocked`]) into `dx` (NCHW), adding to
/// it when `accumulate`.
fn unpack(s: &ConvShape, full: &[f32], dx: &mut [f32], accumulate: bool) {
    let full_width = s.w_out() + s.kernel - 1;
    let layout = Blocked { items: full_pixels(s), channels: s.c_in };
    let mut planes = dx.chunks_exact_mut(s.height * s.width);
    for block in blocks(s.c_in) {
        let src = layout.block(full, block);
        for (c, plane) in planes.by_ref().take(block.width()).enumerate() {
            for (y, row) in plane.chunks_exact_mut(s.width).enumerate() {
                let from = (y + s.pad) * full_width + s.pad;
                let values = src[from * block.width()..].chunks_exact(block.width()).map(|run| run[c]);
                if accumulate {
                    row.iter_mut().zip(values).for_each(|(d, v)| *d += v);
                } else {
                    row.iter_mut().zip(values).for_each(|(d, v)| *d = v);
                }
            }
        }
    }
}
