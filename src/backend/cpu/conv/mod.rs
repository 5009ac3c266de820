//! The CPU backend's convolutions (stride 1, zero padding): which algorithm serves each
//! layer shape, and everything they share.
//!
//! ```text
//! forward          y[co][o]           = b[co] + Σ W[co][ci][ky][kx]     · xpad[ci][o + (ky, kx)]
//! backward data    dx[ci][i]          =         Σ W[co][ci][K-ky][K-kx] · dypad[co][i + (ky, kx)]
//! backward filter  dW[co][ci][ky][kx] =         Σ dy[co][o]             · xpad[ci][o + (ky, kx)]
//! ```
//! (`K-ky` short for `K-1-ky`.) [`Convolutions`] is the one place that picks an algorithm for
//! a shape; each algorithm is one file with its packing, scratch and task split:
//! - [`direct`]: the general kernels, register tiles of output pixels (or filter taps) by
//!   channel vectors;
//! - [`rows`]: a first layer (few input channels, output rows of whole vectors), vectorized
//!   along rows;
//! - [`pooled`]: a first layer's filter gradient straight from its max-pooled gradient,
//!   a quarter of the dense products;
//! - [`scatter`]: the data gradient of a layer with little padding;
//! - [`winograd`]: F(4×4, 5×5), the forward pass and data gradient of a 5×5 layer over
//!   enough channels, in 6.25× fewer multiplies.
//!
//! All are written once over the [`Simd`] trait and run as AVX2 + FMA or portable code
//! ([`Isa`]); on CPUs with AVX-512F, the channel tiles and the scatter run as AVX-512 tiles
//! (`direct/wide.rs`, `scatter/wide.rs`) for layers whose channels fill 16-lane registers,
//! with results equal to the AVX2 tiles'; so does a first layer's forward pass, whose AVX-512
//! twin (`rows/wide.rs`) puts a plane's output pixels in its lanes across rows. Whatever is
//! stored channels last (packed weights, the output gradient, the filter gradient) is stored
//! block by block ([`Blocked`]), so that a tile reads one contiguous run per tap or pixel
//! and its inner loop has no bounds checks, which would keep the accumulators in memory.
//!
//! Images run in parallel on the current rayon pool. The filter gradient splits a batch into
//! tasks by shape alone and sums their partial gradients in task order, so that results are
//! bit-identical whatever the thread count.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut, Range};
use std::sync::{Mutex, MutexGuard};

use rayon::prelude::*;

use super::pool::{maxpool_plane, unpool};
use crate::backend::ConvShape;

mod direct;
mod pooled;
mod rows;
mod scatter;
mod simd;
mod winograd;

#[cfg(target_arch = "x86_64")]
pub use simd::avx512;
use simd::{load, vector, vector_mut};
pub use simd::{Isa, Kernel, Simd};

/// Channels per vector: one AVX2 register of f32.
const LANES: usize = 8;
type Vector = [f32; LANES];

/// Accumulators per tile: AVX2 has 16 registers, and a tile also holds its channel vectors
/// and a broadcast pixel.
const ACCUMULATORS: usize = 12;
/// Channel vectors per tile at most: with more, 12 accumulators no longer fit beside them.
const MAX_VECTORS: usize = 2;

// The AVX-512 tiles read a whole block as one register.
#[cfg(target_arch = "x86_64")]
const _: () = assert!(simd::avx512::LANES == MAX_VECTORS * LANES, "an AVX-512 register holds one block");

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

    /// Where `channel` of `item` is stored.
    fn index(&self, item: usize, channel: usize) -> usize {
        let first = channel - channel % (MAX_VECTORS * LANES);
        let width = (padded(self.channels) - first).min(MAX_VECTORS * LANES);
        self.items * first + item * width + channel - first
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

/// Evaluates `$body` with `$k` bound to `$name`, as a constant where it is one of the
/// network's filter sizes (3 or 5): the kernels `$body` inlines then unroll their loops over
/// a filter's taps, whose short trip counts would otherwise cost a loop's overhead every 3 or
/// 5 multiply-add steps. (A macro, not a function taking a closure: a closure would not
/// inline into the SIMD entry point, and its intrinsics would compile as calls.)
macro_rules! with_filter_size {
    ($k:expr, |$name:ident| $body:expr) => {
        match $k {
            3 => {
                let $name = 3;
                $body
            }
            5 => {
                let $name = 5;
                $body
            }
            $name => $body,
        }
    };
}
use with_filter_size;

/// Output pixels a filter-gradient task aims for: enough to amortize its setup, few enough
/// that the tasks of a batch keep both cores busy.
const TASK_PIXELS: usize = 512;

/// The convolutions of one backend, and the buffers they keep so that a training step
/// allocates nothing once the first has run.
pub struct Convolutions {
    isa: Isa,
    /// Weights packed for the kernels.
    packed: Mutex<Vec<f32>>,
    /// One partial filter gradient per task.
    partials: Mutex<Vec<f32>>,
}

impl Convolutions {
    pub fn new(isa: Isa) -> Self {
        Convolutions { isa, packed: Mutex::new(Vec::new()), partials: Mutex::new(Vec::new()) }
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `y = conv(x, W) + b` over a batch, into `out` as it says.
    pub fn forward(&self, s: &ConvShape, x: &[f32], weight: &[f32], bias: &[f32], out: Output) {
        let x = &x[..s.in_len()];
        if rows::fits(s) {
            rows::forward(self, s, x, weight, bias, out)
        } else if winograd::fits(s) {
            winograd::forward(self, s, x, weight, bias, out)
        } else {
            direct::forward(self, s, x, weight, bias, out)
        }
    }

    /// The input gradient `dx` from the output gradient `dy`, added to `dx` when `accumulate`.
    pub fn backward_data(&self, s: &ConvShape, weight: &[f32], dy: &[f32], dx: &mut [f32], accumulate: bool) {
        let (dy, dx) = (&dy[..s.out_len()], &mut dx[..s.in_len()]);
        if winograd::fits(s) {
            winograd::backward_data(self, s, weight, dy, dx, accumulate)
        } else if scatter::fits(s) {
            scatter::backward_data(self, s, weight, dy, dx, accumulate)
        } else {
            direct::backward_data(self, s, weight, dy, dx, accumulate)
        }
    }

    /// The weight and bias gradients, `grads` = `[co][ci][ky][kx]` then `[co]`.
    pub fn backward_params(&self, s: &ConvShape, x: &[f32], dy: OutputGrad, grads: &mut [f32]) {
        let x = &x[..s.in_len()];
        match dy {
            OutputGrad::Pooled { .. } if pooled::fits(s) => pooled::backward_params(self, s, x, dy, grads),
            _ if rows::fits(s) => rows::backward_params(self, s, x, dy, grads),
            _ => direct::backward_params(self, s, x, dy, grads),
        }
    }

    /// The packing buffer, `len` floats of it.
    fn packed(&self, len: usize) -> MappedGuard<'_> {
        grown(&self.packed, len)
    }

    /// Runs `image(src, scratch, out)` over every image of `src` (`in_len` floats each) and
    /// its `out_len` floats of `out`, images in parallel, with `scratch_len` floats of the
    /// thread's scratch.
    fn per_image(
        &self,
        src: &[f32],
        in_len: usize,
        out: &mut [f32],
        out_len: usize,
        scratch_len: usize,
        image: impl Fn(&[f32], &mut [f32], &mut [f32]) + Sync,
    ) {
        out.par_chunks_mut(out_len).zip(src.par_chunks(in_len)).for_each(|(out, src)| {
            with_scratch(scratch_len, 0, |scratch, _| image(src, scratch, out));
        });
    }

    /// Runs `image(src, scratch, y)`, one image's forward pass of `s` into its `y`, over every
    /// image of `x`, and finishes each image as `out` says while it is in the core's caches.
    /// `image` applies the ReLU [`Output::relu`] asks of it.
    fn forward_images(
        &self,
        s: &ConvShape,
        x: &[f32],
        out: Output,
        scratch_len: usize,
        image: impl Fn(&[f32], &mut [f32], &mut [f32]) + Sync,
    ) {
        let (in_len, out_len) = (s.in_image(), s.out_image());
        match out {
            Output::Plain { y, .. } => self.per_image(x, in_len, &mut y[..s.out_len()], out_len, scratch_len, image),
            Output::Residual { y, skip } => {
                let (y, skip) = (&mut y[..s.out_len()], &skip[..s.out_len()]);
                y.par_chunks_mut(out_len).zip(skip.par_chunks(out_len)).zip(x.par_chunks(in_len)).for_each(
                    |((y, skip), x)| {
                        with_scratch(scratch_len, 0, |scratch, _| image(x, scratch, y));
                        for (y, &skip) in y.iter_mut().zip(skip) {
                            *y = (*y + skip).max(0.0);
                        }
                    },
                );
            }
            Output::Pooled { pooled, argmax } => {
                let pool = s.pool();
                let (plane, pooled_plane) = (pool.in_plane(), pool.out_plane());
                let pooled_len = pool.channels * pooled_plane;
                let (pooled, argmax) = (&mut pooled[..pool.out_len()], &mut argmax[..pool.out_len()]);
                let outs = pooled.par_chunks_mut(pooled_len).zip(argmax.par_chunks_mut(pooled_len));
                outs.zip(x.par_chunks(in_len)).for_each(|((pooled, argmax), x)| {
                    with_scratch(scratch_len, out_len, |scratch, y| {
                        image(x, scratch, y);
                        let planes = pooled.chunks_exact_mut(pooled_plane).zip(argmax.chunks_exact_mut(pooled_plane));
                        for ((y, idx), x) in planes.zip(y.chunks_exact(plane)) {
                            maxpool_plane(self.isa, pool.width, x, y, idx);
                        }
                    });
                });
            }
        }
    }

    /// Runs `f(x, dy, partial)` over the tasks of `s`'s filter gradient ([`Tasks`]), each with
    /// its images (their output gradient in full) and a partial gradient of `partial_len`
    /// floats, and returns the partials summed in task order.
    fn filter_grad_tasks(
        &self,
        s: &ConvShape,
        x: &[f32],
        dy: OutputGrad,
        partial_len: usize,
        f: impl Fn(&[f32], OutputGrad, &mut [f32]) + Sync,
    ) -> MappedGuard<'_> {
        let tasks = Tasks::for_filter_grad(s);
        let mut partials = grown(&self.partials, tasks.count * partial_len);
        partials.par_chunks_mut(partial_len).enumerate().for_each(|(task, partial)| {
            let images = tasks.images(task, s.batch);
            let x = &x[images.start * s.in_image()..images.end * s.in_image()];
            f(x, dy.images(s, images), partial);
        });
        let (sum, rest) = partials.split_at_mut(partial_len);
        for partial in rest.chunks_exact(partial_len) {
            for (s, p) in sum.iter_mut().zip(partial) {
                *s += p;
            }
        }
        partials
    }
}

/// Where a forward pass puts its output, and what it does to it on the way.
pub enum Output<'a> {
    /// `y`, ReLU'd when `relu`.
    Plain { y: &'a mut [f32], relu: bool },
    /// `y = relu(conv + skip)`: the convolution that closes a residual join.
    Residual { y: &'a mut [f32], skip: &'a [f32] },
    /// ReLU'd, then max-pooled over 2×2 windows into `pooled` and `argmax` as
    /// [`Backend::maxpool_forward`](crate::backend::Backend::maxpool_forward) does: each
    /// image's full-size output stays in the thread's scratch and never reaches memory.
    Pooled { pooled: &'a mut [f32], argmax: &'a mut [u32] },
}

impl Output<'_> {
    /// Whether the kernel applies a ReLU to what it writes: the residual join applies its own
    /// after the sum.
    fn relu(&self) -> bool {
        match self {
            Output::Plain { relu, .. } => *relu,
            Output::Residual { .. } => false,
            Output::Pooled { .. } => true,
        }
    }
}

/// The output gradient a filter gradient reads.
#[derive(Clone, Copy)]
pub enum OutputGrad<'a> {
    /// In full, as the convolution's output is laid out.
    Full(&'a [f32]),
    /// The gradient of the convolution's output max-pooled over 2×2 windows, with the pool's
    /// arg-max: each task expands its images' part in the thread's scratch, where it stays in
    /// the core's caches.
    Pooled { d_pooled: &'a [f32], argmax: &'a [u32] },
}

impl<'a> OutputGrad<'a> {
    /// The part of `images`.
    fn images(self, s: &ConvShape, images: Range<usize>) -> Self {
        match self {
            OutputGrad::Full(dy) => OutputGrad::Full(&dy[images.start * s.out_image()..images.end * s.out_image()]),
            OutputGrad::Pooled { d_pooled, argmax } => {
                let pool = s.pool();
                let per_image = pool.channels * pool.out_plane();
                let pooled = images.start * per_image..images.end * per_image;
                OutputGrad::Pooled { d_pooled: &d_pooled[pooled.clone()], argmax: &argmax[pooled] }
            }
        }
    }

    /// Runs `f` with the full output gradient of these `images`.
    fn with_full(self, s: &ConvShape, images: usize, f: impl FnOnce(&[f32])) {
        match self {
            OutputGrad::Full(dy) => f(dy),
            OutputGrad::Pooled { d_pooled, argmax } => EXPANDED.with(|dy| {
                let mut dy = dy.borrow_mut();
                let dy = aligned(&mut dy, images * s.out_image());
                unpool(&s.pool(), d_pooled, argmax, dy);
                f(dy);
            }),
        }
    }
}

/// The bias as a forward pass adds it: padded with zeros to whole vectors.
fn pack_bias(bias: &[f32], dst: &mut [f32]) {
    dst.fill(0.0);
    dst[..bias.len()].copy_from_slice(bias);
}

/// `len` floats of a locked buffer that is kept between calls, from its first cache line.
struct MappedGuard<'a> {
    guard: MutexGuard<'a, Vec<f32>>,
    range: Range<usize>,
}

impl Deref for MappedGuard<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.guard[self.range.clone()]
    }
}

impl DerefMut for MappedGuard<'_> {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.guard[self.range.clone()]
    }
}

/// `len` floats of `buf`, locked, [`aligned`].
fn grown(buf: &Mutex<Vec<f32>>, len: usize) -> MappedGuard<'_> {
    let mut guard = buf.lock().unwrap_or_else(|e| e.into_inner());
    let range = aligned_range(&mut guard, len);
    MappedGuard { guard, range }
}

/// Bytes of a cache line, where buffers that vectors load from start: an AVX-512 load from a
/// buffer that starts mid-line crosses two lines every time (the filter gradients of rblock1
/// and conv2 ran 4 and 7 % slower for it).
const CACHE_LINE: usize = 64;

/// `len` floats of `buf` from its first cache-line boundary, `buf` grown to hold them.
fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    let range = aligned_range(buf, len);
    &mut buf[range]
}

/// Where [`aligned`]'s floats lie in `buf`.
fn aligned_range(buf: &mut Vec<f32>, len: usize) -> Range<usize> {
    grow(buf, len + CACHE_LINE / size_of::<f32>());
    let start = buf.as_ptr().align_offset(CACHE_LINE);
    start..start + len
}

/// Grows `buf` to at least `len` floats. Buffers never shrink, so that the training step
/// does not allocate once the first step has run.
fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

thread_local! {
    static SCRATCH: RefCell<[Vec<f32>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
    /// A filter-gradient task's output gradient expanded from a pooled one ([`OutputGrad`]).
    static EXPANDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with two per-thread scratch buffers of the given lengths, [`aligned`]; they only
/// grow.
fn with_scratch<R>(a_len: usize, b_len: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        let [a, b] = &mut *cell.borrow_mut();
        f(aligned(a, a_len), aligned(b, b_len))
    })
}

/// How a batch splits into tasks of whole images for the filter gradient: each task sums its
/// own partial gradient, and the partials are added in task order.
#[derive(Clone, Copy)]
struct Tasks {
    images_per_task: usize,
    count: usize,
}

impl Tasks {
    fn for_filter_grad(s: &ConvShape) -> Self {
        let images_per_task = (TASK_PIXELS / (s.h_out() * s.w_out()).max(1)).clamp(1, s.batch.max(1));
        Tasks { images_per_task, count: s.batch.div_ceil(images_per_task) }
    }

    fn images(&self, task: usize, batch: usize) -> Range<usize> {
        let start = task * self.images_per_task;
        start..(start + self.images_per_task).min(batch)
    }
}

/// The arguments of a filter-gradient kernel over a group of images.
pub struct FilterGrad<'a> {
    /// Each image's padded input planes.
    pub input: &'a [f32],
    pub planes: Planes,
    pub kernel: usize,
    /// Each image's output gradient, in the layout the kernel reads.
    pub dy: &'a [f32],
    pub out_channels: usize,
    pub out: &'a mut [f32],
}

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
            copy_short(&mut dst[to(y) * planes.width + to(cols.start)..][..from.len()], from);
        }
    }
    dst
}

/// `dst.copy_from_slice(src)` for a row of a few floats: the network's rows (4 and 12
/// floats) are copied as arrays, in a move or three, because a call to `memcpy` for each
/// cost more than the copy (5 % of a training step went to padding planes). A loop of
/// smaller moves would compile to that call again.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    fn array<const N: usize>(dst: &mut [f32], src: &[f32]) {
        let dst: &mut [f32; N] = dst.try_into().expect("a row of N");
        *dst = src.try_into().expect("a row of N");
    }
    match dst.len() {
        4 => array::<4>(dst, src),
        12 => array::<12>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}
