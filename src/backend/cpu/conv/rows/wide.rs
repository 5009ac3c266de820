//! The row kernels in AVX-512 registers: the forward pass, and the filter gradient of the
//! output channels that fill its tiles.
//!
//! A 16-lane register is wider than many output rows (conv1's are 24 pixels), so a vector
//! here is 16 consecutive pixels of the output plane, running on across rows. Such a vector
//! reads its input at one offset per tap once each input plane is laid out again shifted
//! by each `kx`, `wo` pixels a row:
//!
//! ```text
//! shifted[ci][kx][y][ox] = xpad[ci][y][ox + kx]
//! y[co][o..o+16]         = b[co] + Σ W[co][ci][ky][kx] · shifted[ci][kx][o + ky·wo..][..16]
//! ```
//!
//! so that every lane holds a pixel that is stored, and no tile transposes anything. Each
//! output adds its bias and then its products in the order of the AVX2 row kernels, so the
//! two agree exactly. The filter gradient keeps the AVX2 kernels' 8-lane sums, two output
//! channels to a register ([`WideRowFilterGrad`]).

use std::array;

use super::super::simd::avx512::{register, Avx512, WideKernel, LANES};
use super::super::{pad_planes, vector, with_filter_size, Convolutions, FilterGrad, Output, Planes};
// The AVX2 row kernels' vectors, half a register here.
use super::super::LANES as HALF;
use super::ROW_TAPS;
use crate::backend::ConvShape;

/// Output channels of a tile: 8 channels by 3 pixel vectors are 24 accumulators, which
/// beside the 3 input vectors and a broadcast weight leave 4 of the 32 registers.
const TILE_CHANNELS: usize = 8;
/// Pixel vectors of a tile.
const TILE_VECTORS: usize = 3;
/// Floats a plane's last tile may read past the shifted planes, for the vectors of it that
/// lie past the plane and are not stored.
const SLACK: usize = TILE_VECTORS * LANES;

pub fn forward(
    convs: &Convolutions,
    simd: Avx512,
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    out: Output,
) {
    let planes = Planes::input(s);
    let stride = s.c_out.next_multiple_of(TILE_CHANNELS);
    let mut packed = convs.packed((s.patch() + 1) * stride);
    let (weights, packed_bias) = packed.split_at_mut(s.patch() * stride);
    pack(s, weight, bias, weights, packed_bias);
    let shifted_len = s.c_in * s.kernel * planes.height * s.w_out() + SLACK;
    let (kernel, out_channels, relu, bias) = (s.kernel, s.c_out, out.relu(), &*packed_bias);
    let weights = &*weights;
    convs.forward_images(s, x, out, planes.len() + shifted_len, |src, scratch, out| {
        let (padded, shifted) = scratch.split_at_mut(planes.len());
        let input = pad_planes(src, s.height, s.width, s.pad as isize, planes, padded);
        simd.run(WideRowForward { input, planes, kernel, weights, bias, out_channels, relu, shifted, out });
    });
}

/// Packs `W[co][tap]` by groups of [`TILE_CHANNELS`]: for each group, taps `(ci, ky, kx)` by
/// the group's channels, zeros for those past the last; and the bias, padded alike.
fn pack(s: &ConvShape, weight: &[f32], bias: &[f32], dst: &mut [f32], dst_bias: &mut [f32]) {
    let taps = s.patch();
    dst.fill(0.0);
    for (group, filters) in dst.chunks_exact_mut(taps * TILE_CHANNELS).zip(weight.chunks(taps * TILE_CHANNELS)) {
        for (i, filter) in filters.chunks_exact(taps).enumerate() {
            for (run, &w) in group.chunks_exact_mut(TILE_CHANNELS).zip(filter) {
                run[i] = w;
            }
        }
    }
    dst_bias.fill(0.0);
    dst_bias[..bias.len()].copy_from_slice(bias);
}

/// The forward pass of one image: `y = conv(x, W) + b`, then ReLU when `relu`.
struct WideRowForward<'a> {
    /// The image's padded input planes.
    input: &'a [f32],
    planes: Planes,
    kernel: usize,
    /// From [`pack`].
    weights: &'a [f32],
    bias: &'a [f32],
    out_channels: usize,
    relu: bool,
    /// The thread's scratch for the shifted planes, [`SLACK`] floats past them.
    shifted: &'a mut [f32],
    out: &'a mut [f32],
}

impl WideKernel for WideRowForward<'_> {
    #[inline(always)]
    fn run(self, simd: Avx512) {
        with_filter_size!(self.kernel, |k| self.image(simd, k))
    }
}

impl WideRowForward<'_> {
    /// The whole image, for `k == self.kernel`.
    #[inline(always)]
    fn image(mut self, simd: Avx512, k: usize) {
        self.shift(simd, k);
        let (ho, wo) = self.planes.out(k);
        let vectors = (ho * wo).div_ceil(LANES);
        let taps = self.planes.channels * k * k;
        for (group, weights) in self.weights.chunks_exact(taps * TILE_CHANNELS).enumerate() {
            for v in (0..vectors).step_by(TILE_VECTORS) {
                tile(simd, &mut self, k, weights, group * TILE_CHANNELS, v);
            }
        }
    }

    /// Lays out the input planes shifted by each `kx` (the module's `shifted`), row by row in
    /// masked vectors, so that no row's copy is a call to `memcpy`.
    #[inline(always)]
    fn shift(&mut self, simd: Avx512, k: usize) {
        let planes = self.planes;
        let wo = planes.out(k).1;
        let shifted_plane = planes.height * wo;
        let mut dst = self.shifted.chunks_exact_mut(shifted_plane);
        for src in self.input.chunks_exact(planes.height * planes.width) {
            for (kx, dst) in (0..k).zip(dst.by_ref()) {
                for (src, dst) in src.chunks_exact(planes.width).zip(dst.chunks_exact_mut(wo)) {
                    let src = &src[kx..][..wo];
                    for x in (0..wo).step_by(LANES) {
                        simd.store_first(&mut dst[x..], simd.load_first(&src[x..]));
                    }
                }
            }
        }
    }
}

/// Output channels `first..first + TILE_CHANNELS`, pixel vectors `v..v + TILE_VECTORS` of
/// each plane (those that lie within it are stored).
#[inline(always)]
fn tile(simd: Avx512, f: &mut WideRowForward, k: usize, weights: &[f32], first: usize, v: usize) {
    let planes = f.planes;
    let (ho, wo) = planes.out(k);
    let shifted_plane = planes.height * wo;
    let window = &f.shifted[v * LANES..];
    // The last tap's vectors end within the window (which ends SLACK floats past the planes).
    let end = (planes.channels * k - 1) * shifted_plane + (k - 1) * wo + SLACK;
    assert!(end <= window.len(), "a tile reads {end} floats of {}", window.len());
    let bias = &f.bias[first..][..TILE_CHANNELS];
    let mut acc = [[simd.zero(); TILE_VECTORS]; TILE_CHANNELS];
    for (acc, &b) in acc.iter_mut().zip(bias) {
        *acc = [simd.splat(b); TILE_VECTORS];
    }
    let mut taps = weights.chunks_exact(TILE_CHANNELS);
    for ci in 0..planes.channels {
        for ky in 0..k {
            for (kx, w) in (0..k).zip(taps.by_ref()) {
                let w: &[f32; TILE_CHANNELS] = w.try_into().expect("a weight per channel");
                let at = (ci * k + kx) * shifted_plane + ky * wo;
                let mut x = [simd.zero(); TILE_VECTORS];
                for (p, x) in x.iter_mut().enumerate() {
                    // SAFETY: `at + (p + 1) * LANES <= end`, checked against the window above.
                    *x = simd.load(register(unsafe { window.get_unchecked(at + p * LANES..) }));
                }
                // Indices, not iterators: the accumulators stay in registers only where every
                // index is a constant.
                for i in 0..TILE_CHANNELS {
                    for p in 0..TILE_VECTORS {
                        acc[i][p] = simd.mul_add(w[i], x[p], acc[i][p]);
                    }
                }
            }
        }
    }
    let plane = ho * wo;
    for i in 0..TILE_CHANNELS.min(f.out_channels - first) {
        let out = &mut f.out[(first + i) * plane..][..plane];
        for p in 0..TILE_VECTORS {
            let at = (v + p) * LANES;
            if at < plane {
                let acc = acc[i][p];
                simd.store_first(&mut out[at..], if f.relu { simd.relu(acc) } else { acc });
            }
        }
    }
}

/// Output channels a filter-gradient tile covers: 2 pairs, a pair's two channels in the
/// halves of a register. (With 4 pairs, LLVM spilled the 20 accumulators at every row to
/// make room for the 8 rows' pointers, and the tile ran at the AVX2 tile's speed.)
const GRAD_CHANNELS: usize = 4;

/// The row kernels' filter gradient for the output channels that fill whole tiles of
/// [`GRAD_CHANNELS`], in AVX-512 registers: the AVX2 tile's 8-lane sums of two channels sit
/// in the two halves of one register, so that a multiply-add does both, and each half adds
/// its products and sums its lanes in the AVX2 tile's order.
pub struct WideRowFilterGrad<'a, 'g>(pub &'a mut FilterGrad<'g>);

impl WideKernel for WideRowFilterGrad<'_, '_> {
    #[inline(always)]
    fn run(self, simd: Avx512) {
        let g = self.0;
        let k = g.kernel;
        for first in (0..filter_grad_channels(g.out_channels)).step_by(GRAD_CHANNELS) {
            for ci in 0..g.planes.channels {
                for ky in 0..k {
                    for kx in (0..k).step_by(ROW_TAPS) {
                        match ROW_TAPS.min(k - kx) {
                            1 => filter_tile::<1>(simd, g, first, (ci, ky, kx)),
                            2 => filter_tile::<2>(simd, g, first, (ci, ky, kx)),
                            3 => filter_tile::<3>(simd, g, first, (ci, ky, kx)),
                            4 => filter_tile::<4>(simd, g, first, (ci, ky, kx)),
                            5 => filter_tile::<5>(simd, g, first, (ci, ky, kx)),
                            6 => filter_tile::<6>(simd, g, first, (ci, ky, kx)),
                            t => unreachable!("a filter-gradient tile of {t} taps"),
                        }
                    }
                }
            }
        }
    }
}

/// How many output channels [`WideRowFilterGrad`] covers of `out_channels`.
pub fn filter_grad_channels(out_channels: usize) -> usize {
    out_channels - out_channels % GRAD_CHANNELS
}

/// Taps `(ci, ky, kx..kx + T)` of output channels `first..first + GRAD_CHANNELS`.
#[inline(always)]
fn filter_tile<const T: usize>(simd: Avx512, g: &mut FilterGrad, first: usize, (ci, ky, kx): (usize, usize, usize)) {
    const PAIRS: usize = GRAD_CHANNELS / 2;
    let (k, planes) = (g.kernel, g.planes);
    let (ho, wo) = planes.out(k);
    let (plane, vectors) = (ho * wo, wo / HALF);
    let mut acc = [[simd.zero(); T]; PAIRS];
    for (x, dy) in g.input.chunks_exact(planes.len()).zip(g.dy.chunks_exact(g.out_channels * plane)) {
        let x = &x[(ci * planes.height + ky) * planes.width + kx..];
        let dy = &dy[first * plane..][..GRAD_CHANNELS * plane];
        for oy in 0..ho {
            let row = &x[oy * planes.width..][..wo + T - 1];
            let dy_rows: [&[f32]; GRAD_CHANNELS] = array::from_fn(|i| &dy[i * plane + oy * wo..][..wo]);
            for v in 0..vectors {
                let at = v * HALF;
                // Loops, not `array::from_fn`, whose closures do not inline into the entry
                // point, so that each intrinsic compiles as a call.
                let mut d = [simd.zero(); PAIRS];
                for p in 0..PAIRS {
                    d[p] = simd.load_halves(vector(&dy_rows[2 * p][at..]), vector(&dy_rows[2 * p + 1][at..]));
                }
                let xs = &row[at..][..HALF + T - 1];
                for t in 0..T {
                    let x = simd.broadcast_half(vector(&xs[t..]));
                    for p in 0..PAIRS {
                        acc[p][t] = simd.fma(d[p], x, acc[p][t]);
                    }
                }
            }
        }
    }
    let patch = planes.channels * k * k;
    // Indices, not iterators, here too: iterated by reference, the accumulators live in
    // memory through the whole tile (10.5 µs an image against 7.1).
    #[allow(clippy::needless_range_loop)]
    for p in 0..PAIRS {
        for t in 0..T {
            let sums = simd.store(acc[p][t]);
            for (c, lanes) in sums.chunks_exact(HALF).enumerate() {
                g.out[(first + 2 * p + c) * patch + (ci * k + ky) * k + kx + t] = lanes.iter().sum();
            }
        }
    }
}
