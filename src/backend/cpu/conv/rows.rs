//! Convolutions vectorized along output rows, for a network's first layer.
//!
//! With fewer input channels than a vector, the channel-vectorized kernels of the parent
//! module have too short a reduction (25 taps for a 5×5 filter over one channel) to pay for
//! storing their tiles pixel by pixel, and their filter gradient for repacking the output
//! gradient channels last. When output rows are whole vectors, these kernels instead load
//! and store pixels as vectors straight from and to NCHW planes:
//!
//! ```text
//! forward          y[co][oy][ox..+8]  = b[co] + Σ W[co][ci][ky][kx] · xpad[ci][oy+ky][ox+kx..+8]
//! backward filter  dW[co][ci][ky][kx] = Σ lanes of Σ dy[co][oy][ox..+8] · xpad[ci][oy+ky][ox+kx..+8]
//! ```
//!
//! The data gradient of such a layer is the input's, which nothing needs.

use std::array;

use super::{
    pad_planes, vector, with_filter_size, with_scratch, with_tile, Convolutions, FilterGrad, Kernel, Output,
    OutputGrad, Planes, Simd, Vector, ACCUMULATORS, LANES,
};
use crate::backend::ConvShape;

#[cfg(target_arch = "x86_64")]
mod wide;

/// Pixel vectors a forward tile covers: with 6 channels, 12 accumulators, 2 pixel vectors
/// and a broadcast weight take 15 of the 16 AVX2 registers. (With 3 vectors and 4 channels
/// they would take all 16, and LLVM keeps an accumulator in memory.)
const TILE_VECTORS: usize = 2;
/// Output channels of a forward tile.
const TILE_CHANNELS: usize = ACCUMULATORS / TILE_VECTORS;
/// Taps of one kernel row that a filter-gradient tile covers at most, beside 2 channels.
const ROW_TAPS: usize = ACCUMULATORS / 2;

/// Whether the row kernels serve `s`: few input channels, output rows of whole vectors.
pub fn fits(s: &ConvShape) -> bool {
    s.c_in < LANES && s.w_out().is_multiple_of(LANES)
}

/// The output channels of each forward tile: runs of [`TILE_CHANNELS`], the last one what
/// is left.
fn channel_groups(channels: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..channels).step_by(TILE_CHANNELS).map(move |first| (first, TILE_CHANNELS.min(channels - first)))
}

pub fn forward(convs: &Convolutions, s: &ConvShape, x: &[f32], weight: &[f32], bias: &[f32], out: Output) {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = convs.isa.wide() {
        return wide::forward(convs, simd, s, x, weight, bias, out);
    }
    let mut packed = convs.packed(s.weight_len());
    pack_forward(s, weight, &mut packed);
    let (planes, kernel, weights, relu) = (Planes::input(s), s.kernel, &*packed, out.relu());
    convs.forward_images(s, x, out, planes.len(), |src, scratch, out| {
        let input = pad_planes(src, s.height, s.width, s.pad as isize, planes, scratch);
        convs.isa.run(RowForward { input, planes, kernel, weights, bias, relu, out });
    });
}

pub fn backward_params(convs: &Convolutions, s: &ConvShape, x: &[f32], dy: OutputGrad, grads: &mut [f32]) {
    let planes = Planes::input(s);
    let partials = convs.filter_grad_tasks(s, x, dy, grads.len(), |x, dy, out| {
        let images = x.len() / s.in_image();
        dy.with_full(s, images, |dy| {
            with_scratch(images * planes.len(), 0, |scratch, _| {
                let input = pad_planes(x, s.height, s.width, s.pad as isize, planes, scratch);
                let (kernel, out_channels) = (s.kernel, s.c_out);
                let mut g = FilterGrad { input, planes, kernel, dy, out_channels, out };
                let first = wide_filter_grad(convs, &mut g);
                convs.isa.run(RowFilterGrad { g, first });
            })
        });
    });
    grads.copy_from_slice(&partials[..grads.len()]);
}

/// The weight gradient of the first output channels in AVX-512 registers, where the CPU has
/// them ([`wide::WideRowFilterGrad`]); returns how many it covered.
fn wide_filter_grad(convs: &Convolutions, g: &mut FilterGrad) -> usize {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = convs.isa.wide() {
        simd.run(wide::WideRowFilterGrad(&mut *g));
        return wide::filter_grad_channels(g.out_channels);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (convs, g);
    0
}

/// Packs `W[co][tap]` for [`RowForward`]: for each group of output channels a tile covers,
/// taps `(ci, ky, kx)` by the group's channels, so that a tile reads its weights in order.
fn pack_forward(s: &ConvShape, weight: &[f32], dst: &mut [f32]) {
    let taps = s.patch();
    for (first, n) in channel_groups(s.c_out) {
        let group = &mut dst[first * taps..][..n * taps];
        for (i, filter) in weight.chunks_exact(taps).skip(first).take(n).enumerate() {
            for (run, &w) in group.chunks_exact_mut(n).zip(filter) {
                run[i] = w;
            }
        }
    }
}

/// The forward pass of one image: `y = conv(x, W) + b`, then ReLU when `relu`.
struct RowForward<'a> {
    /// The image's padded input planes.
    pub input: &'a [f32],
    pub planes: Planes,
    pub kernel: usize,
    /// From [`pack_forward`].
    pub weights: &'a [f32],
    /// One per output channel.
    pub bias: &'a [f32],
    pub relu: bool,
    pub out: &'a mut [f32],
}

impl Kernel for RowForward<'_> {
    #[inline(always)]
    fn run<S: Simd>(self, simd: S) {
        with_filter_size!(self.kernel, |k| self.tiles(simd, k))
    }
}

impl RowForward<'_> {
    /// Every tile of the image, for `k == self.kernel`.
    #[inline(always)]
    fn tiles<S: Simd>(mut self, simd: S, k: usize) {
        let (ho, wo) = self.planes.out(k);
        // Rows are whole vectors, so a plane's vectors can be counted through, row after row.
        let vectors = ho * wo / LANES;
        let taps = self.planes.channels * k * k;
        for (first, n) in channel_groups(self.bias.len()) {
            let weights = &self.weights[first * taps..][..n * taps];
            for v in (0..vectors).step_by(TILE_VECTORS) {
                let pv = TILE_VECTORS.min(vectors - v);
                with_tile!(pv, n, forward_tile(simd, &mut self, k, weights, first, v));
            }
        }
    }
}

/// Output channels `first..first + CO`, pixel vectors `v..v + PV` of each plane.
#[inline(always)]
fn forward_tile<S: Simd, const CO: usize, const PV: usize>(
    simd: S,
    f: &mut RowForward,
    k: usize,
    weights: &[f32],
    first: usize,
    v: usize,
) {
    let planes = f.planes;
    let (ho, wo) = planes.out(k);
    // Where each pixel vector's window starts in an input plane, and in an output plane.
    let at: [(usize, usize); PV] = array::from_fn(|p| {
        let (oy, ox) = ((v + p) * LANES / wo, (v + p) * LANES % wo);
        (oy * planes.width + ox, oy * wo + ox)
    });
    let bias: &[f32; CO] = f.bias[first..][..CO].try_into().expect("a bias per channel");
    let mut acc: [[S::V; PV]; CO] = array::from_fn(|i| [simd.splat(bias[i]); PV]);
    let mut taps = weights.chunks_exact(CO);
    for plane in f.input.chunks_exact(planes.height * planes.width) {
        for ky in 0..k {
            let rows: [&[f32]; PV] = array::from_fn(|p| &plane[at[p].0 + ky * planes.width..][..k - 1 + LANES]);
            for (kx, w) in (0..k).zip(taps.by_ref()) {
                let x: [S::V; PV] = array::from_fn(|p| simd.load(vector(&rows[p][kx..])));
                for i in 0..CO {
                    let w = simd.splat(w[i]);
                    for p in 0..PV {
                        acc[i][p] = simd.fma(w, x[p], acc[i][p]);
                    }
                }
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (&(_, at), &acc) in at.iter().zip(acc) {
            let out: &mut Vector = (&mut f.out[(first + i) * ho * wo + at..][..LANES]).try_into().expect("a vector");
            *out = simd.store(if f.relu { simd.relu(acc) } else { acc });
        }
    }
}

/// The weight and bias gradients of a group of images, `[co][ci][ky][kx]` then `[co]`, from
/// the output gradient NCHW: the weights' from output channel `first` on (those before it
/// computed in AVX-512 registers), the bias's of every channel.
struct RowFilterGrad<'a> {
    g: FilterGrad<'a>,
    first: usize,
}

impl Kernel for RowFilterGrad<'_> {
    #[inline(always)]
    fn run<S: Simd>(self, simd: S) {
        let mut g = self.g;
        let k = g.kernel;
        for first in (self.first..g.out_channels).step_by(2) {
            let n = 2.min(g.out_channels - first);
            for ci in 0..g.planes.channels {
                for ky in 0..k {
                    for kx in (0..k).step_by(ROW_TAPS) {
                        let t = ROW_TAPS.min(k - kx);
                        with_tile!(n, t, filter_tile(simd, &mut g, first, ci, ky, kx));
                    }
                }
            }
        }
        bias_grad(simd, &mut g);
    }
}

/// Taps `(ci, ky, kx..kx + T)` of output channels `first..first + CO`.
#[inline(always)]
fn filter_tile<S: Simd, const T: usize, const CO: usize>(
    simd: S,
    g: &mut FilterGrad,
    first: usize,
    ci: usize,
    ky: usize,
    kx: usize,
) {
    let (k, planes) = (g.kernel, g.planes);
    let (ho, wo) = planes.out(k);
    let (plane, vectors) = (ho * wo, wo / LANES);
    let mut acc = [[simd.zero(); T]; CO];
    for (x, dy) in g.input.chunks_exact(planes.len()).zip(g.dy.chunks_exact(g.out_channels * plane)) {
        let x = &x[(ci * planes.height + ky) * planes.width + kx..];
        let dy = &dy[first * plane..][..CO * plane];
        for oy in 0..ho {
            let row = &x[oy * planes.width..][..wo + T - 1];
            let dy_rows: [&[f32]; CO] = array::from_fn(|i| &dy[i * plane + oy * wo..][..vectors * LANES]);
            for v in 0..vectors {
                let d: [S::V; CO] = array::from_fn(|i| simd.load(vector(&dy_rows[i][v * LANES..])));
                let xs = &row[v * LANES..][..LANES + T - 1];
                for t in 0..T {
                    let x = simd.load(vector(&xs[t..]));
                    for i in 0..CO {
                        acc[i][t] = simd.fma(d[i], x, acc[i][t]);
                    }
                }
            }
        }
    }
    let patch = planes.channels * k * k;
    for (i, acc) in acc.iter().enumerate() {
        let out = &mut g.out[(first + i) * patch + (ci * k + ky) * k + kx..][..T];
        for (o, &acc) in out.iter_mut().zip(acc) {
            *o = simd.store(acc).iter().sum();
        }
    }
}

/// Each output channel's gradient summed over every pixel of every image.
#[inline(always)]
fn bias_grad<S: Simd>(simd: S, g: &mut FilterGrad) {
    let (ho, wo) = g.planes.out(g.kernel);
    let (plane, patch) = (ho * wo, g.planes.channels * g.kernel * g.kernel);
    let bias = &mut g.out[g.out_channels * patch..][..g.out_channels];
    for (co, b) in bias.iter_mut().enumerate() {
        let mut sum = simd.zero();
        for dy in g.dy.chunks_exact(g.out_channels * plane) {
            for d in dy[co * plane..][..plane].chunks_exact(LANES) {
                sum = simd.add(sum, simd.load(vector(d)));
            }
        }
        *b = simd.store(sum).iter().sum();
    }
}
