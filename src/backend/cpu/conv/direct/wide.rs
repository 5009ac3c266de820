//! The direct kernels' tiles in AVX-512 registers, for layers whose output channels fill
//! whole 16-channel blocks: one register holds a block's 16 channels.
//! - [`WideImage`], [`ConvImage`](super::ConvImage)'s: on the network's planes a tile is a
//!   few whole output rows ([`row_tile`]), whose pixels each row of the input serves at
//!   constant offsets from one pointer; on other planes, 8 output pixels that run on across
//!   rows (a plane's pixels in order), so that planes narrower than a tile still fill it;
//! - [`WideTaps`], [`TapTiles`](super::TapTiles)': a tile is 8 filter taps.
//!
//! Each output sums its products in the order the AVX2 tiles do, so the two agree exactly.

use std::arch::x86_64::__m512;
use std::array;

use super::super::simd::avx512::{register, Avx512, WideKernel, LANES};
use super::super::{blocks, with_filter_size, Block, Blocked, FilterGrad};
use super::{window_starts, Conv};

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
    fn run(self, simd: Avx512) {
        with_filter_size!(self.conv.kernel, |k| self.tiles(simd, k))
    }
}

impl WideImage<'_> {
    /// Every tile of the image, for `k == self.conv.kernel`.
    #[inline(always)]
    fn tiles(mut self, simd: Avx512, k: usize) {
        let c = self.conv;
        let (ho, wo) = c.planes.out(k);
        let layout = Blocked { items: c.planes.channels * k * k, channels: c.out_channels };
        for block in blocks(c.out_channels) {
            let weights = layout.block(c.weights, block);
            let (channel, image) = (block.first, &mut self);
            match row_tile_shape(ho, wo) {
                Some((1, 12)) => row_tiles::<1, 12>(simd, image, k, weights, channel),
                Some((1, 8)) => row_tiles::<1, 8>(simd, image, k, weights, channel),
                Some((4, 4)) => row_tiles::<4, 4>(simd, image, k, weights, channel),
                _ => {
                    for first in (0..ho * wo).step_by(PIXELS) {
                        tile(simd, image, k, weights, channel, first);
                    }
                }
            }
        }
    }
}

/// The [`row_tile`] (output rows × pixels) that covers an `ho × wo` output plane in whole
/// tiles, if one does: runs of 12 pixels (rblock1's rows), else of 8, else
/// 4×4 planes (rblock2's). Two rows of 12 would spill their accumulators.
fn row_tile_shape(ho: usize, wo: usize) -> Option<(usize, usize)> {
    if wo.is_multiple_of(12) {
        Some((1, 12))
    } else if wo.is_multiple_of(8) {
        Some((1, 8))
    } else if wo == 4 && ho.is_multiple_of(4) {
        Some((4, 4))
    } else {
        None
    }
}

/// Output pixels `first..first + PIXELS` of the plane (in order, across rows; the last tile
/// repeats the plane's last pixel to fill up), 16 channels from `channel`.
#[inline(always)]
fn tile(simd: Avx512, image: &mut WideImage, k: usize, weights: &[f32], channel: usize, first: usize) {
    let c = image.conv;
    let planes = c.planes;
    let (ho, wo) = planes.out(k);
    let (starts, (top, bottom)) = window_starts::<PIXELS>(first, wo, ho * wo - 1, planes.width);
    let span = starts[PIXELS - 1] + k;
    let kernel_rows = c.kernel_rows(top, bottom, k);
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
    store(simd, image, acc, channel, first, PIXELS.min(ho * wo - first));
}

/// Every [`row_tile`] of a plane that [`row_tile_shape`] gives `ROWS × COLS` tiles.
#[inline(always)]
fn row_tiles<const ROWS: usize, const COLS: usize>(
    simd: Avx512,
    image: &mut WideImage,
    k: usize,
    weights: &[f32],
    channel: usize,
) {
    let (ho, wo) = image.conv.planes.out(k);
    debug_assert!(wo.is_multiple_of(COLS) && ho.is_multiple_of(ROWS), "{ho}×{wo} output in tiles of {ROWS}×{COLS}");
    for top in (0..ho).step_by(ROWS) {
        for left in (0..wo).step_by(COLS) {
            row_tile::<ROWS, COLS>(simd, image, k, weights, channel, (top, left));
        }
    }
}

/// Output rows `top..top + ROWS`, pixels `left..left + COLS` of each, 16 channels from
/// `channel`: each input row serves a row of pixels at constant offsets from one pointer, so
/// that a tile holds 12 or 16 accumulators and every broadcast folds into its multiply-add,
/// with no pixel's offset to keep in a register. The products add in the order [`tile`]'s do.
#[inline(always)]
fn row_tile<const ROWS: usize, const COLS: usize>(
    simd: Avx512,
    image: &mut WideImage,
    k: usize,
    weights: &[f32],
    channel: usize,
    (top, left): (usize, usize),
) {
    let c = image.conv;
    let planes = c.planes;
    let kernel_rows = c.kernel_rows(top, top + ROWS - 1, k);
    let init = c.bias.map_or(simd.zero(), |b| simd.load(register(&b[channel..])));
    let mut acc = [[init; COLS]; ROWS];
    let tap_row = k * LANES;
    for (plane, weights) in
        image.input.chunks_exact(planes.height * planes.width).zip(weights.chunks_exact(k * tap_row))
    {
        for ky in kernel_rows.clone() {
            let mut rows = [&plane[..0]; ROWS];
            for (r, row) in rows.iter_mut().enumerate() {
                *row = &plane[(top + r + ky) * planes.width + left..][..COLS + k - 1];
            }
            for (kx, w) in weights[ky * tap_row..][..tap_row].chunks_exact(LANES).enumerate() {
                let w = simd.load(register(w));
                for (row, acc) in rows.iter().zip(&mut acc) {
                    for (x, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: `x < COLS` and `kx < k`: within the row's `COLS + k - 1`.
                        let v = unsafe { *row.get_unchecked(x + kx) };
                        *acc = simd.mul_add(v, w, *acc);
                    }
                }
            }
        }
    }
    let wo = planes.out(k).1;
    for (r, &acc) in acc.iter().enumerate() {
        let first = (top + r) * wo + left;
        store_group::<COLS, 0>(simd, image, &acc, channel, first);
        if COLS > PIXELS {
            store_group::<COLS, PIXELS>(simd, image, &acc, channel, first);
        }
    }
}

/// Pixels `G..G + 8` (at most; `COLS` in all) of one output row's accumulators, stored from
/// pixel `first + G` of each channel's plane: a constant number of them, so that the stores
/// compile to moves.
#[inline(always)]
fn store_group<const COLS: usize, const G: usize>(
    simd: Avx512,
    image: &mut WideImage,
    acc: &[__m512; COLS],
    channel: usize,
    first: usize,
) {
    let mut group = [simd.zero(); PIXELS];
    for (g, &v) in group.iter_mut().zip(&acc[G..]) {
        *g = v;
    }
    store(simd, image, group, channel, first + G, (COLS - G).min(PIXELS));
}

/// The first `n` of 8 consecutive output pixels' accumulators (ReLU'd if the convolution
/// asks), turned into runs of 16 channels and stored from pixel `first` of each channel's
/// plane, or added there.
#[inline(always)]
fn store(simd: Avx512, image: &mut WideImage, mut acc: [__m512; PIXELS], channel: usize, first: usize, n: usize) {
    let c = image.conv;
    if c.relu {
        // A loop, not `map`: its closure would not inline into the AVX-512 entry point.
        for v in &mut acc {
            *v = simd.relu(*v);
        }
    }
    let pixels = {
        let (ho, wo) = c.planes.out(c.kernel);
        ho * wo
    };
    for (values, co) in simd.transpose(acc).iter().zip(channel..) {
        let out = &mut image.out[co * pixels + first..];
        match (n, c.accumulate) {
            // A whole run, of constant length, compiles to a move, not a call to `memcpy`.
            (PIXELS, false) => *<&mut [f32; PIXELS]>::try_from(&mut out[..PIXELS]).expect("a whole run") = *values,
            (_, false) => out[..n].copy_from_slice(&values[..n]),
            (_, true) => out[..n].iter_mut().zip(values).for_each(|(o, v)| *o += v),
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
