//! The direct kernels' tiles in AVX-512 registers, for layers whose output channels fill
//! whole 16-channel blocks: one register holds a block's 16 channels.
//! - [`WideImage`], [`ConvImage`](super::ConvImage)'s: a tile is 8 output pixels that run on
//!   across rows (a plane's pixels in order), so that planes narrower than a tile (8×8, 4×4)
//!   still fill it;
//! - [`WideTaps`], [`TapTiles`](super::TapTiles)': a tile is 8 filter taps.
//!
//! Each output sums its products in the order the AVX2 tiles do, so the two agree exactly.

use std::array;

use super::super::simd::avx512::{register, Avx512, WideKernel, LANES};
use super::super::{blocks, Block, Blocked, FilterGrad};
use super::Conv;

/// Pixels (or taps) a tile covers: 8 accumulators hide the FMA latency, and beside their
/// broadcasts and one weight register leave the CPU's 32 registers room.
const PIXELS: usize = 8;

/// Whether these tiles serve a layer of `out_channels`: every block of them is a whole
/// register.
pub fn fits(out_channels: usize) -> bool {
    out_channels.is_multiple_of(LANES)
}

/// One image of a [`Conv`]: its padded input planes and its output.
pub struct WideImage<'a> {
    pub conv: &'a Conv<'a>,
    pub input: &'a [f32],
    pub out: &'a mut [f32],
}

impl WideKernel for WideImage<'_> {
    #[inline(always)]
    fn run(mut self, simd: Avx512) {
        let c = self.conv;
        let (ho, wo) = c.planes.out(c.kernel);
        let layout = Blocked { items: c.planes.channels * c.kernel * c.kernel, channels: c.out_channels };
        for block in blocks(c.out_channels) {
            let weights = layout.block(c.weights, block);
            for first in (0..ho * wo).step_by(PIXELS) {
                tile(simd, &mut self, weights, block.first, first);
            }
        }
    }
}

/// Output pixels `first..first + PIXELS` of the plane (in order, across rows; the last tile
/// repeats the plane's last pixel to fill up), 16 channels from `channel`.
#[inline(always)]
fn tile(simd: Avx512, image: &mut WideImage, weights: &[f32], channel: usize, first: usize) {
    let c = image.conv;
    let (k, planes) = (c.kernel, c.planes);
    let (ho, wo) = planes.out(k);
    let pixel = |p: usize| {
        let q = (first + p).min(ho * wo - 1);
        (q / wo, q % wo)
    };
    // Where each pixel's window starts in a plane; they only grow, so the last pixel's
    // window ends furthest on.
    let starts: [usize; PIXELS] = array::from_fn(|p| pixel(p).0 * planes.width + pixel(p).1);
    let span = starts[PIXELS - 1] + k;
    let (top, bottom) = (pixel(0).0, pixel(PIXELS - 1).0);
    let kernel_rows = c.data_rows.start.saturating_sub(bottom)..c.data_rows.end.saturating_sub(top).min(k);
    let init = c.bias.map_or(simd.zero(), |b| simd.load(register(&b[channel..])));
    let mut acc = [init; PIXELS];
    let tap_row = k * LANES;
    for (plane, weights) in
        image.input.chunks_exact(planes.height * planes.width).zip(weights.chunks_exact(k * tap_row))
    {
        for ky in kernel_rows.clone() {
            let row = &plane[ky * planes.width..][..span];
            for (kx, w) in weights[ky * tap_row..][..tap_row].chunks_exact(LANES).enumerate() {
                let w = simd.load(register(w));
                for p in 0..PIXELS {
                    // SAFETY: `starts[p] <= starts[PIXELS - 1]` and `kx < k`, so the index is
                    // below `span`, the row's length. (Checked, each of these loads would
                    // cost a compare and a branch beside its multiply-add.)
                    let x = unsafe { *row.get_unchecked(starts[p] + kx) };
                    acc[p] = simd.mul_add(x, w, acc[p]);
                }
            }
        }
    }
    if c.relu {
        // A loop, not `map`: its closure would not inline into the AVX-512 entry point.
        for v in &mut acc {
            *v = simd.relu(*v);
        }
    }
    let pixels = ho * wo;
    let n = PIXELS.min(pixels - first);
    for (values, co) in simd.transpose(acc).iter().zip(channel..) {
        let (out, values) = (&mut image.out[co * pixels + first..][..n], &values[..n]);
        if c.accumulate {
            out.iter_mut().zip(values).for_each(|(o, v)| *o += v);
        } else {
            out.copy_from_slice(values);
        }
    }
}

/// The filter gradient of a group of images, as [`TapTiles`](super::TapTiles) lays it out.
pub struct WideTaps<'a>(pub FilterGrad<'a>);

impl WideKernel for WideTaps<'_> {
    #[inline(always)]
    fn run(self, simd: Avx512) {
        let mut g = self.0;
        let taps = g.planes.channels * g.kernel * g.kernel;
        for block in blocks(g.out_channels) {
            for first in (0..taps).step_by(PIXELS) {
                taps_tile(simd, &mut g, block, first);
            }
        }
    }
}

/// Taps `first..first + PIXELS` (the last tile repeats the last tap to fill up) of one
/// block, summed over every pixel of every image.
#[inline(always)]
fn taps_tile(simd: Avx512, g: &mut FilterGrad, block: Block, first: usize) {
    let (k, planes) = (g.kernel, g.planes);
    let (ho, wo) = planes.out(k);
    let taps = planes.channels * k * k;
    let dy_layout = Blocked { items: ho * wo, channels: g.out_channels };
    let offsets: [usize; PIXELS] = array::from_fn(|t| {
        let (ci, tap) = ((first + t).min(taps - 1) / (k * k), (first + t).min(taps - 1) % (k * k));
        (ci * planes.height + tap / k) * planes.width + tap % k
    });
    let mut acc = [simd.zero(); PIXELS];
    for (x, dy) in g.input.chunks_exact(planes.len()).zip(g.dy.chunks_exact(dy_layout.len())) {
        let dy = dy_layout.block(dy, block);
        for (oy, dy) in dy.chunks_exact(wo * LANES).enumerate() {
            // Slices of exactly `wo`, so that indexing them by pixel needs no bounds checks.
            let rows: [&[f32]; PIXELS] = array::from_fn(|t| &x[offsets[t] + oy * planes.width..][..wo]);
            for (px, d) in (0..wo).zip(dy.chunks_exact(LANES)) {
                let d = simd.load(register(d));
                for t in 0..PIXELS {
                    acc[t] = simd.mul_add(rows[t][px], d, acc[t]);
                }
            }
        }
    }
    let out_layout = Blocked { items: taps, channels: g.out_channels };
    let out = &mut out_layout.block_mut(g.out, block)[first * LANES..];
    for (out, &v) in out.chunks_exact_mut(LANES).zip(&acc).take(taps - first) {
        out.copy_from_slice(&simd.store(v));
    }
}
