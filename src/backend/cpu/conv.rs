//! Direct convolutions (stride 1, zero padding) for the CPU backend.
//!
//! Every product accumulates outer products in registers: a tile of up to 12 output pixels
//! (or, for the filter gradient, filter taps) by one or two 8-wide vectors of channels, summed
//! over the whole reduction and stored once. Nothing is laid out as im2col columns and nothing
//! is packed per product; the only copies are zero-padded input planes and, for the filter
//! gradient, the output gradient with its channels last.
//!
//! ```text
//! forward          y[co][o]           = b[co] + Σ W[co][ci][ky][kx]     · xpad[ci][o + (ky, kx)]
//! backward data    dx[ci][i]          =         Σ W[co][ci][K-ky][K-kx] · dypad[co][i + (ky, kx)]
//! backward filter  dW[co][ci][ky][kx] =         Σ dy[co][o]             · xpad[ci][o + (ky, kx)]
//! ```
//! (`K-ky` short for `K-1-ky`.) The first two are one kernel, [`ConvImage`], over packed weights;
//! the third is [`FilterGrad`]. Channels go in blocks of up to two vectors, one block per
//! tile, and whatever is stored channels last (packed weights, the output gradient, the filter
//! gradient) is stored block by block ([`Blocked`]), so that a tile reads one contiguous run
//! per tap or pixel and its inner loop has no bounds checks, which would keep the
//! accumulators in memory.
//!
//! Two shapes of layer get kernels of their own, over the same [`Simd`] trait: a first layer
//! (few input channels, output rows of whole vectors) vectorizes along rows instead
//! ([`rows`]), and the data gradient of a layer with little padding is a scatter
//! ([`scatter`]).

use std::array;
use std::ops::Range;

use super::super::ConvShape;

pub mod rows;
pub mod scatter;

/// Channels per vector: one AVX2 register of f32.
const LANES: usize = 8;
type Vector = [f32; LANES];

/// Accumulators per tile: AVX2 has 16 registers, and a tile also holds its channel vectors
/// and a broadcast pixel.
const ACCUMULATORS: usize = 12;
/// Channel vectors per tile at most: with more, 12 accumulators no longer fit beside them.
const MAX_VECTORS: usize = 2;

/// Channels rounded up to whole vectors; packed weights and gradients pad with zeros.
pub fn padded(channels: usize) -> usize {
    channels.next_multiple_of(LANES)
}

/// A run of channel vectors that one tile covers.
#[derive(Clone, Copy)]
struct Block {
    first: usize,
    vectors: usize,
}

impl Block {
    fn width(&self) -> usize {
        self.vectors * LANES
    }
}

/// The blocks of `channels` channels: [`MAX_VECTORS`] vectors each, the last one what is left.
fn blocks(channels: usize) -> impl Iterator<Item = Block> {
    let vectors = padded(channels) / LANES;
    (0..vectors).step_by(MAX_VECTORS).map(move |v| Block { first: v * LANES, vectors: (vectors - v).min(MAX_VECTORS) })
}

/// `items × channels` stored channels last, block by block: `[block][item][channel of the
/// block]`, channels padded to whole vectors.
#[derive(Clone, Copy, Debug)]
struct Blocked {
    items: usize,
    channels: usize,
}

impl Blocked {
    fn len(&self) -> usize {
        self.items * padded(self.channels)
    }

    /// The run of `block`'s channels for every item.
    fn block<'a>(&self, data: &'a [f32], block: Block) -> &'a [f32] {
        &data[self.items * block.first..][..self.items * block.width()]
    }

    fn block_mut<'a>(&self, data: &'a mut [f32], block: Block) -> &'a mut [f32] {
        &mut data[self.items * block.first..][..self.items * block.width()]
    }
}

/// The vector operations the kernels use, for one vector type: AVX2 registers where the CPU
/// has AVX2 and FMA, plain arrays (which LLVM vectorizes as far as the target allows)
/// elsewhere.
pub trait Simd: Copy {
    type V: Copy;
    fn zero(self) -> Self::V;
    fn load(self, v: &[f32; LANES]) -> Self::V;
    /// `x` in every lane.
    fn splat(self, x: f32) -> Self::V;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// `acc + a·b`.
    fn fma(self, a: Self::V, b: Self::V, acc: Self::V) -> Self::V;
    fn store(self, v: Self::V) -> Vector;

    /// `acc + x·w`.
    #[inline(always)]
    fn mul_add(self, x: f32, w: Self::V, acc: Self::V) -> Self::V {
        self.fma(self.splat(x), w, acc)
    }
}

#[derive(Clone, Copy)]
struct Portable;

impl Simd for Portable {
    type V = Vector;

    #[inline(always)]
    fn zero(self) -> Vector {
        [0.0; LANES]
    }

    #[inline(always)]
    fn load(self, v: &Vector) -> Vector {
        *v
    }

    #[inline(always)]
    fn splat(self, x: f32) -> Vector {
        [x; LANES]
    }

    #[inline(always)]
    fn add(self, a: Vector, b: Vector) -> Vector {
        array::from_fn(|l| a[l] + b[l])
    }

    /// Two roundings: `f32::mul_add` is a library call on CPUs without FMA.
    #[inline(always)]
    fn fma(self, a: Vector, b: Vector, acc: Vector) -> Vector {
        array::from_fn(|l| a[l] * b[l] + acc[l])
    }

    #[inline(always)]
    fn store(self, v: Vector) -> Vector {
        v
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };

    use super::{Kernel, Simd, Vector};

    /// AVX2 and FMA: [`Avx2::detect`] hands one out only on a CPU that has them.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx2(());

    impl Avx2 {
        pub fn detect() -> Option<Self> {
            let supported = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            supported.then_some(Avx2(()))
        }

        pub fn run(self, kernel: impl Kernel) {
            // SAFETY: `self` proves the CPU has the features `run_with` is compiled for.
            unsafe { run_with(self, kernel) }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_with<K: Kernel>(simd: Avx2, kernel: K) {
        kernel.run(simd);
    }

    // SAFETY (every `unsafe` below): an `Avx2` exists only on a CPU with AVX2 and FMA, and
    // loads and stores go through whole `[f32; 8]` arrays.
    impl Simd for Avx2 {
        type V = __m256;

        #[inline(always)]
        fn zero(self) -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }

        #[inline(always)]
        fn load(self, v: &Vector) -> __m256 {
            unsafe { _mm256_loadu_ps(v.as_ptr()) }
        }

        #[inline(always)]
        fn splat(self, x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }

        #[inline(always)]
        fn add(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }

        #[inline(always)]
        fn fma(self, a: __m256, b: __m256, acc: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, acc) }
        }

        #[inline(always)]
        fn store(self, v: __m256) -> Vector {
            let mut out = [0.0; 8];
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
            out
        }
    }
}

/// Work that runs on the vectors an [`Isa`] names. Implementations mark `run`
/// `#[inline(always)]`, so that it compiles inside the AVX2 entry point with its target
/// features (the default x86-64 target has neither AVX nor FMA).
pub trait Kernel {
    fn run<S: Simd>(self, simd: S);
}

/// Which kernels run: the best the CPU has, or the portable ones everywhere.
#[derive(Clone, Copy, Debug)]
pub struct Isa(Kind);

#[derive(Clone, Copy, Debug)]
enum Kind {
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::Avx2),
    Portable,
}

impl Isa {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = avx2::Avx2::detect() {
            return Isa(Kind::Avx2(avx2));
        }
        Isa::portable()
    }

    pub fn portable() -> Self {
        Isa(Kind::Portable)
    }

    pub fn name(&self) -> &'static str {
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2(_) => "AVX2+FMA",
            Kind::Portable => "portable",
        }
    }

    pub fn run(self, kernel: impl Kernel) {
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2(avx2) => avx2.run(kernel),
            Kind::Portable => kernel.run(Portable),
        }
    }
}

/// Calls `$tile::<_, N, CV>($args)` for a runtime `(cv, n)`: every tile shape whose
/// `N × CV` accumulators fit in [`ACCUMULATORS`], with `CV` up to [`MAX_VECTORS`] (or 3,
/// after `wide`, for the row kernels).
macro_rules! with_tile {
    ($cv:expr, $n:expr, $tile:ident($($arg:expr),*)) => {
        with_tile!(@arms ($cv, $n), $tile, ($($arg),*);
            1: 1 2 3 4 5 6 7 8 9 10 11 12;
            2: 1 2 3 4 5 6)
    };
    (wide $cv:expr, $n:expr, $tile:ident($($arg:expr),*)) => {
        with_tile!(@arms ($cv, $n), $tile, ($($arg),*);
            1: 1 2 3 4 5 6 7 8 9 10 11 12;
            2: 1 2 3 4 5 6;
            3: 1 2 3 4)
    };
    (@arms $key:expr, $tile:ident, $args:tt; $($cv:literal: $($n:literal)*);*) => {
        match $key {
            $($(($cv, $n) => with_tile!(@call $tile, $n, $cv, $args),)*)*
            (cv, n) => unreachable!("no tile of {n} × {cv} vectors: more accumulators than registers"),
        }
    };
    (@call $tile:ident, $n:literal, $cv:literal, ($($arg:expr),*)) => {
        $tile::<_, $n, $cv>($($arg),*)
    };
}
use with_tile;

/// How many of `len` pixels or taps a tile of `block` takes: as many as fit, evened out so
/// that the last tile is not much shorter than the others.
fn tile_len(len: usize, block: Block) -> usize {
    let most = ACCUMULATORS / block.vectors;
    len.div_ceil(len.div_ceil(most).max(1)).max(1)
}

/// `channels` planes of `height × width`, as a convolution reads them (padding included).
#[derive(Clone, Copy, Debug)]
pub struct Planes {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Planes {
    /// The padded input of the forward pass and the filter gradient.
    pub fn input(s: &ConvShape) -> Self {
        Planes { channels: s.c_in, height: s.height + 2 * s.pad, width: s.width + 2 * s.pad }
    }

    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Output size of a `kernel × kernel` valid convolution over these planes.
    fn out(&self, kernel: usize) -> (usize, usize) {
        (self.height + 1 - kernel, self.width + 1 - kernel)
    }
}

/// Planes of `height × width` from `src` laid out as `planes`, moved `shift` pixels down and
/// right: zeros where nothing lands, cropped where it falls outside. That is `src` itself
/// when nothing moves, else a copy in `dst`.
pub fn pad_planes<'a>(
    src: &'a [f32],
    height: usize,
    width: usize,
    shift: isize,
    planes: Planes,
    dst: &'a mut [f32],
) -> &'a [f32] {
    if shift == 0 && (height, width) == (planes.height, planes.width) {
        return &src[..dst.len()];
    }
    dst.fill(0.0);
    let inside = |len: usize, to: usize| {
        let start = (-shift).clamp(0, len as isize) as usize;
        start..(to as isize - shift).clamp(start as isize, len as isize) as usize
    };
    let (rows, cols) = (inside(height, planes.height), inside(width, planes.width));
    let to = |i: usize| (i as isize + shift) as usize;
    for (src, dst) in src.chunks_exact(height * width).zip(dst.chunks_exact_mut(planes.height * planes.width)) {
        for y in rows.clone() {
            let from = &src[y * width..][cols.clone()];
            dst[to(y) * planes.width + to(cols.start)..][..from.len()].copy_from_slice(from);
        }
    }
    dst
}

/// Packs `W[co][ci][ky][kx]` for the forward pass, taps `(ci, ky, kx)` by `co`, and the bias.
pub fn pack_forward(s: &ConvShape, weight: &[f32], bias: &[f32], dst: &mut [f32], dst_bias: &mut [f32]) {
    let layout = Blocked { items: s.patch(), channels: s.c_out };
    let mut filters = weight.chunks_exact(s.patch());
    for block in blocks(s.c_out) {
        let dst = layout.block_mut(dst, block);
        dst.fill(0.0);
        for (c, filter) in filters.by_ref().take(block.width()).enumerate() {
            for (run, &w) in dst.chunks_exact_mut(block.width()).zip(filter) {
                run[c] = w;
            }
        }
    }
    dst_bias.fill(0.0);
    dst_bias[..s.c_out].copy_from_slice(bias);
}

/// Packs `W[co][ci][ky][kx]` for the backward data pass, taps `(co, ky, kx)` by `ci`, each
/// filter turned 180°.
pub fn pack_backward_data(s: &ConvShape, weight: &[f32], dst: &mut [f32]) {
    let kk = s.kernel * s.kernel;
    let layout = Blocked { items: s.c_out * kk, channels: s.c_in };
    for block in blocks(s.c_in) {
        let dst = layout.block_mut(dst, block);
        dst.fill(0.0);
        let runs = dst.chunks_exact_mut(kk * block.width());
        for (runs, filters) in runs.zip(weight.chunks_exact(s.c_in * kk)) {
            let filters = filters.chunks_exact(kk).skip(block.first).take(block.width());
            for (c, filter) in filters.enumerate() {
                // Tap (ky, kx) of the turned filter is tap (K-1-ky, K-1-kx) of the filter.
                for (run, &w) in runs.chunks_exact_mut(block.width()).zip(filter.iter().rev()) {
                    run[c] = w;
                }
            }
        }
    }
}

/// Writes one image's output gradient `[channel][pixel]` blocked channels last, and adds
/// each channel's sum into `bias_grad`.
pub fn pack_output_grad(dy: &[f32], pixels: usize, dst: &mut [f32], bias_grad: &mut [f32]) {
    let layout = Blocked { items: pixels, channels: bias_grad.len() };
    let (mut planes, mut sums) = (dy.chunks_exact(pixels), bias_grad.chunks_mut(MAX_VECTORS * LANES));
    for (block, sums) in blocks(layout.channels).zip(&mut sums) {
        let dst = layout.block_mut(dst, block);
        let n = sums.len();
        if n < block.width() {
            dst.fill(0.0);
        }
        // Plane by plane: each store's channel is the same throughout, and each load is next
        // to the one before.
        for (c, plane) in planes.by_ref().take(n).enumerate() {
            for (run, &v) in dst.chunks_exact_mut(block.width()).zip(plane) {
                run[c] = v;
            }
        }
        // Across channels, so that the adds are independent lanes, not one long chain.
        for run in dst.chunks_exact(block.width()) {
            for (s, &d) in sums.iter_mut().zip(run) {
                *s += d;
            }
        }
    }
}

/// Unpacks a filter gradient, taps by channels [`Blocked`], into `W[co][(ci, ky, kx)]`.
pub fn unpack_filter_grad(src: &[f32], out_channels: usize, dst: &mut [f32]) {
    let layout = Blocked { items: dst.len() / out_channels, channels: out_channels };
    let mut filters = dst.chunks_exact_mut(layout.items);
    for block in blocks(out_channels) {
        for (c, filter) in filters.by_ref().take(block.width()).enumerate() {
            for (w, run) in filter.iter_mut().zip(layout.block(src, block).chunks_exact(block.width())) {
                *w = run[c];
            }
        }
    }
}

/// The first vector of `src`.
#[inline(always)]
fn vector(src: &[f32]) -> &[f32; LANES] {
    src[..LANES].try_into().expect("a whole vector")
}

/// The first `CV` vectors of `src`.
#[inline(always)]
fn load<S: Simd, const CV: usize>(simd: S, src: &[f32]) -> [S::V; CV] {
    let src = &src[..CV * LANES];
    array::from_fn(|v| simd.load(vector(&src[v * LANES..])))
}

/// A valid convolution of padded `planes` with weights packed taps by channels, [`Blocked`].
/// It runs image by image, as [`ConvImage`]s.
pub struct Conv<'a> {
    /// Each source image's planes (`height × width`), which go into `planes` moved `shift`
    /// pixels down and right.
    source: (usize, usize),
    shift: isize,
    pub planes: Planes,
    /// The rows of `planes` that hold data: kernel rows that fall outside read only padding
    /// and are skipped (most of the work of a full convolution over a small output gradient).
    data_rows: Range<usize>,
    kernel: usize,
    weights: &'a [f32],
    out_channels: usize,
    /// Added to every output: the bias, padded to whole vectors.
    bias: Option<&'a [f32]>,
    relu: bool,
    /// Add to the output instead of overwriting it.
    accumulate: bool,
}

impl<'a> Conv<'a> {
    /// The forward pass of `s`, over weights and bias from [`pack_forward`].
    pub fn forward(s: &ConvShape, weights: &'a [f32], bias: &'a [f32], relu: bool) -> Self {
        Conv {
            source: (s.height, s.width),
            shift: s.pad as isize,
            planes: Planes::input(s),
            data_rows: s.pad..s.pad + s.height,
            kernel: s.kernel,
            weights,
            out_channels: s.c_out,
            bias: Some(bias),
            relu,
            accumulate: false,
        }
    }

    /// The backward data pass of `s`, over weights from [`pack_backward_data`]: a full
    /// convolution of the output gradient, so `K - 1 - pad` zeros around each plane (a crop
    /// when `pad` exceeds `K - 1`).
    pub fn backward_data(s: &ConvShape, weights: &'a [f32], accumulate: bool) -> Self {
        let grow = s.kernel - 1;
        let planes = Planes { channels: s.c_out, height: s.height + grow, width: s.width + grow };
        let shift = grow as isize - s.pad as isize;
        let data_end = (shift + s.h_out() as isize).clamp(0, planes.height as isize) as usize;
        Conv {
            source: (s.h_out(), s.w_out()),
            shift,
            planes,
            data_rows: shift.max(0) as usize..data_end,
            kernel: s.kernel,
            weights,
            out_channels: s.c_in,
            bias: None,
            relu: false,
            accumulate,
        }
    }

    /// Floats of one source image.
    pub fn in_len(&self) -> usize {
        self.planes.channels * self.source.0 * self.source.1
    }

    /// Floats of one image's output.
    pub fn out_len(&self) -> usize {
        let (ho, wo) = self.planes.out(self.kernel);
        self.out_channels * ho * wo
    }

    /// One source image laid out as `planes`: itself, or a padded copy in `scratch`.
    pub fn pad<'b>(&self, src: &'b [f32], scratch: &'b mut [f32]) -> &'b [f32] {
        let (height, width) = self.source;
        pad_planes(src, height, width, self.shift, self.planes, scratch)
    }
}

/// One image of a [`Conv`]: its padded input planes and its output.
pub struct ConvImage<'a> {
    pub conv: &'a Conv<'a>,
    pub input: &'a [f32],
    pub out: &'a mut [f32],
}

impl Kernel for ConvImage<'_> {
    #[inline(always)]
    fn run<S: Simd>(mut self, simd: S) {
        let c = self.conv;
        let (ho, wo) = c.planes.out(c.kernel);
        let layout = Blocked { items: c.planes.channels * c.kernel * c.kernel, channels: c.out_channels };
        for block in blocks(c.out_channels) {
            let weights = layout.block(c.weights, block);
            let px = tile_len(wo, block);
            for oy in 0..ho {
                for ox in (0..wo).step_by(px) {
                    let px = px.min(wo - ox);
                    with_tile!(block.vectors, px, conv_tile(simd, &mut self, weights, block.first, oy, ox));
                }
            }
        }
    }
}

/// Output pixels `ox..ox + PX` of row `oy`, `CV` vectors of channels from `first`.
#[inline(always)]
fn conv_tile<S: Simd, const PX: usize, const CV: usize>(
    simd: S,
    image: &mut ConvImage,
    weights: &[f32],
    first: usize,
    oy: usize,
    ox: usize,
) {
    let c = image.conv;
    let (k, planes) = (c.kernel, c.planes);
    let init = c.bias.map_or([simd.zero(); CV], |b| load(simd, &b[first..]));
    let mut acc = [init; PX];
    let kernel_rows = c.data_rows.start.saturating_sub(oy)..c.data_rows.end.saturating_sub(oy).min(k);
    let tap_row = k * CV * LANES;
    for (plane, weights) in
        image.input.chunks_exact(planes.height * planes.width).zip(weights.chunks_exact(k * tap_row))
    {
        for ky in kernel_rows.clone() {
            let row = &plane[(oy + ky) * planes.width + ox..][..k - 1 + PX];
            let taps = weights[ky * tap_row..][..tap_row].chunks_exact(CV * LANES);
            for (xs, w) in row.windows(PX).zip(taps) {
                let w = load::<S, CV>(simd, w);
                for px in 0..PX {
                    for v in 0..CV {
                        acc[px][v] = simd.mul_add(xs[px], w[v], acc[px][v]);
                    }
                }
            }
        }
    }
    let (ho, wo) = planes.out(k);
    let tile = spill(simd, &acc);
    for (i, co) in (first..c.out_channels.min(first + CV * LANES)).enumerate() {
        let out = &mut image.out[co * ho * wo + oy * wo + ox..][..PX];
        let values = tile.iter().map(|px| px[i / LANES][i % LANES]);
        let values = values.map(|v| if c.relu { v.max(0.0) } else { v });
        if c.accumulate {
            out.iter_mut().zip(values).for_each(|(o, v)| *o += v);
        } else {
            out.iter_mut().zip(values).for_each(|(o, v)| *o = v);
        }
    }
}

/// The accumulators as floats. Each iteration is one store, so these loops unroll fully and
/// `acc` is only ever indexed by constants; anything that leaves it indexed at run time keeps
/// it in memory throughout the reduction.
#[inline(always)]
fn spill<S: Simd, const N: usize, const CV: usize>(simd: S, acc: &[[S::V; CV]; N]) -> [[Vector; CV]; N] {
    let mut tile = [[[0.0; LANES]; CV]; N];
    for i in 0..N {
        for v in 0..CV {
            tile[i][v] = simd.store(acc[i][v]);
        }
    }
    tile
}

/// The filter gradient of a group of images, taps `(ci, ky, kx)` by `co`, [`Blocked`].
pub struct FilterGrad<'a> {
    /// Each image's padded input planes.
    pub input: &'a [f32],
    pub planes: Planes,
    pub kernel: usize,
    /// Each image's output gradient, pixels by channels, [`Blocked`].
    pub dy: &'a [f32],
    pub out_channels: usize,
    pub out: &'a mut [f32],
}

impl Kernel for FilterGrad<'_> {
    #[inline(always)]
    fn run<S: Simd>(mut self, simd: S) {
        let taps = self.planes.channels * self.kernel * self.kernel;
        for block in blocks(self.out_channels) {
            let n = tile_len(taps, block);
            for tap in (0..taps).step_by(n) {
                with_tile!(block.vectors, n.min(taps - tap), filter_tile(simd, &mut self, block, tap));
            }
        }
    }
}

/// Taps `first_tap..first_tap + T` of one block of `CV` channel vectors, summed over every
/// pixel of every image.
#[inline(always)]
fn filter_tile<S: Simd, const T: usize, const CV: usize>(simd: S, g: &mut FilterGrad, block: Block, first_tap: usize) {
    let (k, planes) = (g.kernel, g.planes);
    let (ho, wo) = planes.out(k);
    let dy_layout = Blocked { items: ho * wo, channels: g.out_channels };
    let offsets: [usize; T] = array::from_fn(|t| {
        let (ci, tap) = ((first_tap + t) / (k * k), (first_tap + t) % (k * k));
        (ci * planes.height + tap / k) * planes.width + tap % k
    });
    let mut acc = [[simd.zero(); CV]; T];
    for (x, dy) in g.input.chunks_exact(planes.len()).zip(g.dy.chunks_exact(dy_layout.len())) {
        let dy = dy_layout.block(dy, block);
        for (oy, dy) in dy.chunks_exact(wo * CV * LANES).enumerate() {
            // The row each tap reads; slices of exactly `wo`, so that indexing them by pixel
            // needs no bounds checks.
            let rows: [&[f32]; T] = array::from_fn(|t| &x[offsets[t] + oy * planes.width..][..wo]);
            for (px, d) in (0..wo).zip(dy.chunks_exact(CV * LANES)) {
                let d = load::<S, CV>(simd, d);
                for t in 0..T {
                    for v in 0..CV {
                        acc[t][v] = simd.mul_add(rows[t][px], d[v], acc[t][v]);
                    }
                }
            }
        }
    }
    let out_layout = Blocked { items: planes.channels * k * k, channels: g.out_channels };
    let out = &mut out_layout.block_mut(g.out, block)[first_tap * CV * LANES..];
    let tile = spill(simd, &acc);
    for (out, values) in out.chunks_exact_mut(LANES).zip(tile.iter().flatten()) {
        out.copy_from_slice(values);
    }
}
