//! Winograd's minimal filtering F(4×4, 5×5) for the 5×5 layers: the forward pass and the
//! data gradient.
//!
//! Each 4×4 block of output pixels comes from an 8×8 tile of the (padded) input:
//!
//! ```text
//! y = Aᵀ [ Σ_ci (G g Gᵀ) ⊙ (Bᵀ d B) ] A
//! ```
//!
//! so that a tile's 16 × 25 multiply-adds per channel pair become 64 products, one per
//! position of the 8×8 transform, 6.25× fewer. The products at one position are a small
//! matrix product, output channels by input channels by tiles, which runs as register tiles
//! like the direct kernels'. The transforms cost about as much again, so this pays on a
//! layer with enough channels, not on a first layer of one.
//!
//! An image runs in three passes through the thread's scratch: the input transform (each
//! tile's 8 rows of 8 pixels loaded as vectors and combined, then turned across 8 input
//! channels so that the second combination runs over channel lanes), the products, and the
//! output transform (over output-channel lanes, turned back into rows of 4 pixels).

use super::{
    blocks, copy_short, load, pack_bias, pad_planes, padded, tile_len, vector, vector_mut, with_tile, Blocked,
    Convolutions, Kernel, Output, Planes, Simd, LANES,
};
use crate::backend::ConvShape;

/// Output pixels a tile covers along each side.
const M: usize = 4;
/// The filter size this serves.
const R: usize = 5;
/// A tile's input side, and the side of its transform: `M + R - 1`.
const A: usize = M + R - 1;
/// Positions of the 8×8 transform: the products a tile computes per channel pair.
const POSITIONS: usize = A * A;

// A tile's input row is one vector, and 8 channels turn in one 8×8 transpose.
const _: () = assert!(A == LANES, "a transform row fills one vector");

/// The transforms for the points 0, ±1, ±2, ±1/2 and ∞ (Lavin and Gray's construction, as
/// wincnn writes it; `scripts/winograd_matrices.py` derives them): `Aᵀ` (M × A), `G`
/// (A × R) and `Bᵀ` (A × A). Smaller points would lose accuracy: these keep a 5×5 layer
/// within 1e-5 of the `f64` convolution (`tests/gradcheck.rs`).
const AT: [[f32; A]; M] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.25, 0.25, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 0.125, -0.125, 1.0],
];
const G: [[f32; R]; A] = [
    [-1.0, 0.0, 0.0, 0.0, 0.0],
    [-2.0 / 9.0, -2.0 / 9.0, -2.0 / 9.0, -2.0 / 9.0, -2.0 / 9.0],
    [-2.0 / 9.0, 2.0 / 9.0, -2.0 / 9.0, 2.0 / 9.0, -2.0 / 9.0],
    [1.0 / 90.0, 1.0 / 45.0, 2.0 / 45.0, 4.0 / 45.0, 8.0 / 45.0],
    [1.0 / 90.0, -1.0 / 45.0, 2.0 / 45.0, -4.0 / 45.0, 8.0 / 45.0],
    [32.0 / 45.0, 16.0 / 45.0, 8.0 / 45.0, 4.0 / 45.0, 2.0 / 45.0],
    [32.0 / 45.0, -16.0 / 45.0, 8.0 / 45.0, -4.0 / 45.0, 2.0 / 45.0],
    [0.0, 0.0, 0.0, 0.0, 1.0],
];
const BT: [[f32; A]; A] = [
    [-1.0, 0.0, 5.25, 0.0, -5.25, 0.0, 1.0, 0.0],
    [0.0, 1.0, 1.0, -4.25, -4.25, 1.0, 1.0, 0.0],
    [0.0, -1.0, 1.0, 4.25, -4.25, -1.0, 1.0, 0.0],
    [0.0, 0.5, 0.25, -2.5, -1.25, 2.0, 1.0, 0.0],
    [0.0, -0.5, 0.25, 2.5, -1.25, -2.0, 1.0, 0.0],
    [0.0, 2.0, 4.0, -2.5, -5.0, 0.5, 1.0, 0.0],
    [0.0, -2.0, 4.0, 2.5, -5.0, -0.5, 1.0, 0.0],
    [0.0, -1.0, 0.0, 5.25, 0.0, -5.25, 0.0, 1.0],
];

/// Whether a layer runs here: a 5×5 filter over enough input channels that the products,
/// not the transforms, dominate (measured on conv2, 16 → 32 channels; a first layer of one
/// channel stays with the row kernels).
pub fn fits(s: &ConvShape) -> bool {
    s.kernel == R && s.c_in >= LANES
}

pub fn forward(convs: &Convolutions, s: &ConvShape, x: &[f32], weight: &[f32], bias: &[f32], out: Output) {
    let len = weights_len(s.c_in, s.c_out);
    let mut packed = convs.packed(len + padded(s.c_out));
    let (weights, packed_bias) = packed.split_at_mut(len);
    pack(convs, s.c_in, s.c_out, |co, ci| &weight[(co * s.c_in + ci) * R * R..][..R * R], false, weights);
    pack_bias(bias, packed_bias);
    let conv = Winograd::forward(s, weights, packed_bias, out.relu());
    convs.forward_images(s, x, out, conv.scratch_len(), |x, scratch, y| convs.isa.run(conv.image(x, scratch, y)));
}

/// The data gradient: the full convolution of `dy` with each filter turned 180° and the
/// channels' roles swapped.
pub fn backward_data(
    convs: &Convolutions,
    s: &ConvShape,
    weight: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    accumulate: bool,
) {
    let mut weights = convs.packed(weights_len(s.c_out, s.c_in));
    pack(convs, s.c_out, s.c_in, |ci, co| &weight[(co * s.c_in + ci) * R * R..][..R * R], true, &mut weights);
    let conv = Winograd::backward_data(s, &weights, accumulate);
    let image = |dy: &[f32], scratch: &mut [f32], dx: &mut [f32]| convs.isa.run(conv.image(dy, scratch, dx));
    convs.per_image(dy, conv.in_len(), dx, conv.out_len(), conv.scratch_len(), image);
}

/// Floats of the transformed weights: a position's block is output channels by input
/// channels, both padded to whole vectors.
fn weights_len(c_in: usize, c_out: usize) -> usize {
    POSITIONS * padded(c_in) * padded(c_out)
}

/// Transforms every filter, `filter(co, ci)` (turned 180° when `turned`), into `G g Gᵀ`,
/// stored `(position, ci)` by `co`, [`Blocked`]. A vector holds 8 output channels' filters,
/// so that each position stores as one.
fn pack<'a>(
    convs: &Convolutions,
    c_in: usize,
    c_out: usize,
    filter: impl Fn(usize, usize) -> &'a [f32],
    turned: bool,
    dst: &mut [f32],
) {
    dst.fill(0.0);
    let layout = Blocked { items: POSITIONS * padded(c_in), channels: c_out };
    for group in (0..c_out).step_by(LANES) {
        for ci in 0..c_in {
            let mut g = [[0.0; LANES]; R * R];
            for (co, filter) in (group..c_out.min(group + LANES)).map(|co| filter(co, ci)).enumerate() {
                for (t, g) in g.iter_mut().enumerate() {
                    g[co] = filter[if turned { R * R - 1 - t } else { t }];
                }
            }
            convs.isa.run(TransformFilter { g: &g, dst: &mut *dst, layout, item: ci, channel: group });
        }
    }
}

/// `G g Gᵀ` of 8 filters, a vector per tap, into each position's item `item + position ×
/// padded(c_in)` of `layout` from `channel`.
struct TransformFilter<'a> {
    g: &'a [[f32; LANES]; R * R],
    dst: &'a mut [f32],
    layout: Blocked,
    item: usize,
    channel: usize,
}

impl Kernel for TransformFilter<'_> {
    #[inline(always)]
    fn run<S: Simd>(self, simd: S) {
        // G g column by column, then each row of that times Gᵀ.
        let mut columns = [[simd.zero(); A]; R];
        for (kx, column) in columns.iter_mut().enumerate() {
            let mut g = [simd.zero(); R];
            for (ky, g) in g.iter_mut().enumerate() {
                *g = simd.load(&self.g[ky * R + kx]);
            }
            *column = apply(simd, &G, &g);
        }
        let stride = self.layout.items / POSITIONS;
        for xi in 0..A {
            let mut row = [simd.zero(); R];
            for (row, column) in row.iter_mut().zip(&columns) {
                *row = column[xi];
            }
            for (nu, u) in apply(simd, &G, &row).into_iter().enumerate() {
                let at = self.layout.index((xi * A + nu) * stride + self.item, self.channel);
                *vector_mut(&mut self.dst[at..]) = simd.store(u);
            }
        }
    }
}

/// A valid 5×5 convolution of tiles of padded planes with weights from [`pack`], image by
/// image.
struct Winograd<'a> {
    /// Each source image's planes (`height × width`), which go into `planes` moved `shift`
    /// pixels down and right.
    source: (usize, usize),
    shift: isize,
    /// The padded input, whole tiles of it: `M × tiles + R - 1` on each side.
    planes: Planes,
    /// The output plane, and the tiles over it (rows, columns).
    out: (usize, usize),
    tiles: (usize, usize),
    out_channels: usize,
    weights: &'a [f32],
    bias: Option<&'a [f32]>,
    relu: bool,
    /// Add to the output instead of overwriting it.
    accumulate: bool,
}

impl<'a> Winograd<'a> {
    fn new(
        source: (usize, usize),
        shift: isize,
        channels: usize,
        out: (usize, usize),
        out_channels: usize,
        weights: &'a [f32],
    ) -> Self {
        let tiles = (out.0.div_ceil(M), out.1.div_ceil(M));
        let planes = Planes { channels, height: tiles.0 * M + R - 1, width: tiles.1 * M + R - 1 };
        Winograd {
            source,
            shift,
            planes,
            out,
            tiles,
            out_channels,
            weights,
            bias: None,
            relu: false,
            accumulate: false,
        }
    }

    fn forward(s: &ConvShape, weights: &'a [f32], bias: &'a [f32], relu: bool) -> Self {
        let conv = Winograd::new((s.height, s.width), s.pad as isize, s.c_in, (s.h_out(), s.w_out()), s.c_out, weights);
        Winograd { bias: Some(bias), relu, ..conv }
    }

    /// Over the output gradient padded by `K - 1 - pad` (cropped where `pad` is larger).
    fn backward_data(s: &ConvShape, weights: &'a [f32], accumulate: bool) -> Self {
        let shift = (R - 1) as isize - s.pad as isize;
        let conv = Winograd::new((s.h_out(), s.w_out()), shift, s.c_out, (s.height, s.width), s.c_in, weights);
        Winograd { accumulate, ..conv }
    }

    fn tile_count(&self) -> usize {
        self.tiles.0 * self.tiles.1
    }

    /// Floats of one source image.
    fn in_len(&self) -> usize {
        self.planes.channels * self.source.0 * self.source.1
    }

    /// Floats of one image's output.
    fn out_len(&self) -> usize {
        self.out_channels * self.out.0 * self.out.1
    }

    /// The transformed input, `[position][group of 8 channels][tile][channel of the group]`,
    /// and the products, `[tile][group of 8 channels][position][channel of the group]`: each
    /// as the pass that reads it takes it.
    fn transformed_len(&self) -> usize {
        POSITIONS * self.tile_count() * padded(self.planes.channels)
    }

    fn products_len(&self) -> usize {
        POSITIONS * self.tile_count() * padded(self.out_channels)
    }

    fn scratch_len(&self) -> usize {
        self.planes.len() + self.transformed_len() + self.products_len()
    }

    /// One image: `src` into `out`, through `scratch` of [`Self::scratch_len`] floats.
    fn image<'b>(&'b self, src: &'b [f32], scratch: &'b mut [f32], out: &'b mut [f32]) -> WinogradImage<'b> {
        let (padded_planes, rest) = scratch.split_at_mut(self.planes.len());
        let (transformed, products) = rest.split_at_mut(self.transformed_len());
        let input = pad_planes(src, self.source.0, self.source.1, self.shift, self.planes, padded_planes);
        WinogradImage { conv: self, input, transformed, products: &mut products[..self.products_len()], out }
    }
}

/// One image of a [`Winograd`] convolution and the scratch its passes go through.
struct WinogradImage<'a> {
    conv: &'a Winograd<'a>,
    input: &'a [f32],
    transformed: &'a mut [f32],
    products: &'a mut [f32],
    out: &'a mut [f32],
}

impl Kernel for WinogradImage<'_> {
    #[inline(always)]
    fn run<S: Simd>(self, simd: S) {
        transform_input(simd, self.conv, self.input, self.transformed);
        multiply(simd, self.conv, self.transformed, self.products);
        transform_output(simd, self.conv, self.products, self.out);
    }
}

/// `m · x` for a constant matrix `m`, each `x` a vector: the zeros of `m` skipped and its
/// ones added, which the constant tables fold into straight-line code. (Loops, not
/// `array::from_fn`: its closures did not inline into the SIMD entry point, where each
/// intrinsic then compiled as a call.)
#[inline(always)]
fn apply<S: Simd, const I: usize, const J: usize>(simd: S, m: &[[f32; J]; I], x: &[S::V; J]) -> [S::V; I] {
    let mut out = [simd.zero(); I];
    for i in 0..I {
        for j in 0..J {
            let c = m[i][j];
            if c == 1.0 {
                out[i] = simd.add(out[i], x[j]);
            } else if c != 0.0 {
                out[i] = simd.fma(simd.splat(c), x[j], out[i]);
            }
        }
    }
    out
}

/// `Bᵀ d B` of every tile and input channel, into `transformed` as [`Winograd::transformed_len`]
/// says.
#[inline(always)]
fn transform_input<S: Simd>(simd: S, conv: &Winograd, input: &[f32], transformed: &mut [f32]) {
    let planes = conv.planes;
    let (plane, channels, tiles) = (planes.height * planes.width, padded(planes.channels), conv.tile_count());
    for tile in 0..tiles {
        let corner = (tile / conv.tiles.1) * M * planes.width + (tile % conv.tiles.1) * M;
        for group in (0..channels).step_by(LANES) {
            // Bᵀ d for each channel of the group: rows of the tile combined, a vector each.
            let mut columns = [[simd.zero(); A]; LANES];
            for (c, columns) in columns.iter_mut().enumerate().take(planes.channels.saturating_sub(group)) {
                let d = &input[(group + c) * plane + corner..];
                let mut rows = [simd.zero(); A];
                for (r, row) in rows.iter_mut().enumerate() {
                    *row = simd.load(vector(&d[r * planes.width..]));
                }
                *columns = apply(simd, &BT, &rows);
            }
            // Then (Bᵀ d) B, row ξ at a time, over the group's channels in the lanes.
            for xi in 0..A {
                let mut row = [simd.zero(); LANES];
                for (row, columns) in row.iter_mut().zip(&columns) {
                    *row = columns[xi];
                }
                let row = simd.transpose(row);
                for (nu, v) in apply(simd, &BT, &row).into_iter().enumerate() {
                    let at = ((xi * A + nu) * channels + group) * tiles + tile * LANES;
                    *vector_mut(&mut transformed[at..]) = simd.store(v);
                }
            }
        }
    }
}

/// At every position, the products of the transformed weights and input summed over input
/// channels, into `products` as [`Winograd::transformed_len`] says.
#[inline(always)]
fn multiply<S: Simd>(simd: S, conv: &Winograd, transformed: &[f32], products: &mut [f32]) {
    let tiles = conv.tile_count();
    let layout = Blocked { items: POSITIONS * padded(conv.planes.channels), channels: conv.out_channels };
    for block in blocks(conv.out_channels) {
        let weights = layout.block(conv.weights, block);
        let n = tile_len(tiles, block);
        for first in (0..tiles).step_by(n) {
            let tile = Products { conv, weights, transformed, products: &mut *products, first };
            with_tile!(block.vectors, n.min(tiles - first), product_tile(simd, tile, block.first));
        }
    }
}

/// What a register tile of [`multiply`] reads and writes.
struct Products<'a> {
    conv: &'a Winograd<'a>,
    /// One block's weights.
    weights: &'a [f32],
    transformed: &'a [f32],
    products: &'a mut [f32],
    /// The first tile of this register tile.
    first: usize,
}

/// Tiles `first..first + T` of `CV` vectors of output channels from `channel`, at every
/// position.
#[inline(always)]
fn product_tile<S: Simd, const T: usize, const CV: usize>(simd: S, t: Products, channel: usize) {
    let (channels, out_channels) = (padded(t.conv.planes.channels), padded(t.conv.out_channels));
    let tiles = t.conv.tile_count();
    for position in 0..POSITIONS {
        let weights = &t.weights[position * channels * CV * LANES..][..channels * CV * LANES];
        let mut acc = [[simd.zero(); CV]; T];
        for (group, weights) in weights.chunks_exact(LANES * CV * LANES).enumerate() {
            // The group's 8 channels of each of the tiles, one vector a tile.
            let x = &t.transformed[((position * channels / LANES + group) * tiles + t.first) * LANES..][..T * LANES];
            for (c, w) in weights.chunks_exact(CV * LANES).enumerate() {
                let w = load::<S, CV>(simd, w);
                for tile in 0..T {
                    let x = x[tile * LANES + c];
                    for v in 0..CV {
                        acc[tile][v] = simd.mul_add(x, w[v], acc[tile][v]);
                    }
                }
            }
        }
        for (tile, acc) in acc.iter().enumerate() {
            for (v, &acc) in acc.iter().enumerate() {
                let at = ((t.first + tile) * out_channels + channel + v * LANES) * POSITIONS + position * LANES;
                *vector_mut(&mut t.products[at..]) = simd.store(acc);
            }
        }
    }
}

/// `Aᵀ m A` of every tile and output channel, plus the bias and the ReLU, into the output
/// planes (NCHW), cropped where a tile runs past them.
#[inline(always)]
fn transform_output<S: Simd>(simd: S, conv: &Winograd, products: &[f32], out: &mut [f32]) {
    let (channels, tiles) = (padded(conv.out_channels), conv.tile_count());
    let (height, width) = conv.out;
    for tile in 0..tiles {
        let (top, left) = ((tile / conv.tiles.1) * M, (tile % conv.tiles.1) * M);
        let (rows, cols) = ((height - top).min(M), (width - left).min(M));
        for group in (0..conv.out_channels).step_by(LANES) {
            let products = &products[(tile * channels + group) * POSITIONS..][..POSITIONS * LANES];
            // Aᵀ m column by column, then each row of that times A.
            let mut columns = [[simd.zero(); M]; A];
            for (nu, column) in columns.iter_mut().enumerate() {
                let mut m = [simd.zero(); A];
                for (xi, m) in m.iter_mut().enumerate() {
                    *m = simd.load(vector(&products[(xi * A + nu) * LANES..]));
                }
                *column = apply(simd, &AT, &m);
            }
            let mut y = [[simd.zero(); M]; M];
            for (i, y) in y.iter_mut().enumerate() {
                let mut row = [simd.zero(); A];
                for (row, column) in row.iter_mut().zip(&columns) {
                    *row = column[i];
                }
                *y = apply(simd, &AT, &row);
            }
            let bias = conv.bias.map(|b| simd.load(vector(&b[group..])));
            for v in y.iter_mut().flatten() {
                *v = bias.map_or(*v, |b| simd.add(*v, b));
                *v = if conv.relu { simd.relu(*v) } else { *v };
            }
            // Two rows of 4 pixels at a time, turned so that each channel's 8 values are one
            // vector: its two rows' runs.
            for pair in (0..rows).step_by(2) {
                let mut pixels = [simd.zero(); LANES];
                for (p, pixel) in pixels.iter_mut().enumerate() {
                    *pixel = y[pair + p / M][p % M];
                }
                let turned = simd.transpose(pixels);
                for (c, values) in turned.into_iter().enumerate().take(conv.out_channels - group) {
                    let values = simd.store(values);
                    let plane = &mut out[(group + c) * height * width..][..height * width];
                    for (r, values) in values.chunks_exact(M).enumerate().take(rows - pair) {
                        let dst = &mut plane[(top + pair + r) * width + left..][..cols];
                        if conv.accumulate {
                            dst.iter_mut().zip(values).for_each(|(d, v)| *d += v);
                        } else {
                            copy_short(dst, &values[..cols]);
                        }
                    }
                }
            }
        }
    }
}
