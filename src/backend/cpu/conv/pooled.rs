//! The filter gradient of a first layer whose output is ReLU'd and max-pooled (conv1),
//! straight from the pooled gradient: each 2×2 window passes its gradient to its arg-max
//! pixel alone, so a filter's gradient is the input windows at those pixels, each scaled by
//! its window's gradient. That is a quarter of the dense filter gradient's products (the
//! other three pixels of a window have none), and the full-size output gradient is never
//! expanded.
//!
//! ```text
//! dW[co][ci][ky][kx] = Σ_q  dp[co][q] · xpad[ci][argmax[co][q] + (ky, kx)]
//! db[co]             = Σ_q  dp[co][q]
//! ```
//!
//! A filter row is one vector: the window's row at the arg-max pixel, loaded whole, times the
//! pooled gradient, summed in one accumulator per filter row (its lanes past the filter's
//! width are left over).

use super::{
    pad_planes, vector, with_filter_size, with_scratch, Convolutions, Kernel, OutputGrad, Planes, Simd, LANES,
};
use crate::backend::{ConvShape, PoolShape};

/// Output channels a tile takes at once: two channels' filter rows are 10 accumulators for
/// a 5×5 filter, and their multiply-adds hide each other's latency.
const TILE_CHANNELS: usize = 2;

/// Whether this serves `s`: a filter row fits one vector, over few input channels. (Over
/// many, the dense tiles reuse each loaded vector across taps and channels, where this loads
/// a window row per multiply-add: conv2's filter gradient ran 1.5× slower here, conv1's
/// 1.17× faster, one thread, batch 256.)
pub fn fits(s: &ConvShape) -> bool {
    s.kernel <= LANES && s.c_in < LANES
}

/// The gradients from `dy`, which [`Convolutions::backward_params`] hands here pooled.
pub fn backward_params(convs: &Convolutions, s: &ConvShape, x: &[f32], dy: OutputGrad, grads: &mut [f32]) {
    let (planes, pool) = (Planes::input(s), s.pool());
    let partials = convs.filter_grad_tasks(s, x, dy, grads.len(), |x, dy, out| {
        let OutputGrad::Pooled { d_pooled, argmax } = dy else { unreachable!("a full gradient, expanded already") };
        let images = x.len() / s.in_image();
        let len = images * planes.len();
        // A vector's slack past the planes, so that every filter row loads whole: the planes
        // are copied even where they need no padding.
        with_scratch(len + LANES, 0, |scratch, _| {
            let (planes_part, slack) = scratch.split_at_mut(len);
            slack.fill(0.0);
            if s.pad == 0 {
                planes_part.copy_from_slice(x);
            } else {
                pad_planes(x, s.height, s.width, s.pad as isize, planes, planes_part);
            }
            let (input, kernel) = (&*scratch, s.kernel);
            convs.isa.run(PooledFilterGrad { input, planes, kernel, pool, d_pooled, argmax, out });
        });
    });
    grads.copy_from_slice(&partials[..grads.len()]);
}

/// The weight and bias gradients of a group of images, `[co][ci][ky][kx]` then `[co]`.
struct PooledFilterGrad<'a> {
    /// The images' padded input planes, and a vector of slack.
    input: &'a [f32],
    planes: Planes,
    kernel: usize,
    /// The convolution's output, which the pool read.
    pool: PoolShape,
    d_pooled: &'a [f32],
    argmax: &'a [u32],
    out: &'a mut [f32],
}

impl Kernel for PooledFilterGrad<'_> {
    #[inline(always)]
    fn run<S: Simd>(mut self, simd: S) {
        let channels = self.pool.channels;
        with_filter_size!(self.kernel, |k| {
            for first in (0..channels).step_by(TILE_CHANNELS) {
                for ci in 0..self.planes.channels {
                    match TILE_CHANNELS.min(channels - first) {
                        1 => tile::<S, 1>(simd, &mut self, first, ci, k),
                        _ => tile::<S, TILE_CHANNELS>(simd, &mut self, first, ci, k),
                    }
                }
            }
        });
        bias_grad(&mut self);
    }
}

/// The gradient of input channel `ci`'s filters of output channels `first..first + CO`.
#[inline(always)]
fn tile<S: Simd, const CO: usize>(simd: S, g: &mut PooledFilterGrad, first: usize, ci: usize, k: usize) {
    let (planes, pool) = (g.planes, g.pool);
    let (pooled_rows, pooled_cols) = (pool.height / 2, pool.width / 2);
    let pooled_plane = pooled_rows * pooled_cols;
    let mut acc = [[simd.zero(); LANES]; CO];
    for (image, (d_pooled, argmax)) in g
        .d_pooled
        .chunks_exact(pool.channels * pooled_plane)
        .zip(g.argmax.chunks_exact(pool.channels * pooled_plane))
        .enumerate()
    {
        let plane = &g.input[image * planes.len() + ci * planes.height * planes.width..];
        for qy in 0..pooled_rows {
            for qx in 0..pooled_cols {
                let q = qy * pooled_cols + qx;
                // The arg-max is one of the window's four pixels: its row and column from the
                // window's corner, without a division.
                let corner = 2 * qy * pool.width + 2 * qx;
                // Indices, not iterators: accumulators indexed by constants stay in registers.
                #[allow(clippy::needless_range_loop)]
                for c in 0..CO {
                    let at = (first + c) * pooled_plane + q;
                    let offset = argmax[at] as usize - corner;
                    let down = usize::from(offset >= pool.width);
                    let window = (2 * qy + down) * planes.width + 2 * qx + offset - down * pool.width;
                    let (d, rows) = (simd.splat(d_pooled[at]), &plane[window..][..(k - 1) * planes.width + LANES]);
                    for ky in 0..k {
                        acc[c][ky] = simd.fma(d, simd.load(vector(&rows[ky * planes.width..])), acc[c][ky]);
                    }
                }
            }
        }
    }
    let patch = planes.channels * k * k;
    for (c, acc) in acc.iter().enumerate() {
        for (ky, &acc) in acc.iter().enumerate().take(k) {
            let row = (first + c) * patch + (ci * k + ky) * k;
            g.out[row..row + k].copy_from_slice(&simd.store(acc)[..k]);
        }
    }
}

/// Each output channel's bias gradient: its pooled gradient summed over the images.
fn bias_grad(g: &mut PooledFilterGrad) {
    let (channels, pooled_plane) = (g.pool.channels, g.pool.out_plane());
    let weights = g.out.len() - channels;
    let bias = &mut g.out[weights..];
    bias.fill(0.0);
    for image in g.d_pooled.chunks_exact(channels * pooled_plane) {
        for (b, d) in bias.iter_mut().zip(image.chunks_exact(pooled_plane)) {
            *b += d.iter().sum::<f32>();
        }
    }
}
