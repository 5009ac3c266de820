//! The direct convolution kernels over packed weights: [`ConvImage`] for the forward pass
//! and the data gradient, [`FilterGrad`] for the filter gradient.

use std::array;
use std::ops::Range;

use super::simd::{load, spill};
use super::{
    blocks, pack_bias, pad_planes, padded, tile_len, vector, vector_mut, with_filter_size, with_scratch, with_tile,
    Block, Blocked, Convolutions, FilterGrad, Kernel, Output, OutputGrad, Planes, Simd, Vector, ACCUMULATORS, LANES,
};
use crate::backend::ConvShape;

#[cfg(target_arch = "x86_64")]
mod wide;

pub fn forward(convs: &Convolutions, s: &ConvShape, x: &[f32], weight: &[f32], bias: &[f32], out: Output) {
    let (taps, stride) = (s.patch(), padded(s.c_out));
    let mut packed = convs.packed((taps + 1) * stride);
    let (weights, packed_bias) = packed.split_at_mut(taps * stride);
    pack_forward(s, weight, bias, weights, packed_bias);
    let conv = Conv::forward(s, weights, packed_bias, out.relu());
    let image = image_kernel(convs, &conv);
    convs.forward_images(s, x, out, conv.planes.len(), image);
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
    let mut weights = convs.packed(len);
    pack_backward_data(s, weight, &mut weights);
    let conv = Conv::backward_data(s, &weights, accumulate);
    convs.per_image(dy, conv.in_len(), dx, conv.out_len(), conv.planes.len(), image_kernel(convs, &conv));
}

pub fn backward_params(convs: &Convolutions, s: &ConvShape, x: &[f32], dy: OutputGrad, grads: &mut [f32]) {
    let planes = Planes::input(s);
    let (taps, stride, pixels) = (s.patch(), padded(s.c_out), s.h_out() * s.w_out());
    let partials = convs.filter_grad_tasks(s, x, dy, (taps + 1) * stride, |x, dy, partial| {
        let images = x.len() / s.in_image();
        let (out, bias_grad) = partial.split_at_mut(taps * stride);
        dy.with_full(s, images, |dy| {
            with_scratch(images * planes.len(), images * pixels * stride, |scratch, dy_last| {
                let input = pad_planes(x, s.height, s.width, s.pad as isize, planes, scratch);
                bias_grad.fill(0.0);
                for (dy, dy_last) in dy.chunks_exact(s.out_image()).zip(dy_last.chunks_exact_mut(pixels * stride)) {
                    let bias_grad = &mut bias_grad[..s.c_out];
                    convs.isa.run(PackOutputGrad { dy, pixels, dst: dy_last, bias_grad });
                }
                let (kernel, out_channels) = (s.kernel, s.c_out);
                let g = FilterGrad { input, planes, kernel, dy: dy_last, out_channels, out };
                #[cfg(target_arch = "x86_64")]
                if let Some(simd) = convs.isa.wide().filter(|_| wide::fits(out_channels)) {
                    return simd.run(wide::WideTaps(g));
                }
                convs.isa.run(TapTiles(g));
            })
        });
    });
    let (dw, db) = grads.split_at_mut(s.weight_len());
    unpack_filter_grad(&partials[..taps * stride], s.c_out, dw);
    db.copy_from_slice(&partials[taps * stride..][..s.c_out]);
}

/// `conv` of one image, `(src, scratch, out)`: in AVX-512 registers where the CPU has them
/// and the layer fills them.
fn image_kernel<'a>(convs: &'a Convolutions, conv: &'a Conv) -> impl Fn(&[f32], &mut [f32], &mut [f32]) + Sync + 'a {
    #[cfg(target_arch = "x86_64")]
    let wide = convs.isa.wide().filter(|_| wide::fits(conv.out_channels));
    move |src, scratch, out| {
        let input = conv.pad(src, scratch);
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = wide {
            return simd.run(wide::WideImage { conv, input, out });
        }
        convs.isa.run(ConvImage { conv, input, out });
    }
}

/// Packs `W[co][ci][ky][kx]` for the forward pass, taps `(ci, ky, kx)` by `co`, and the bias.
fn pack_forward(s: &ConvShape, weight: &[f32], bias: &[f32], dst: &mut [f32], dst_bias: &mut [f32]) {
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
    pack_bias(bias, dst_bias);
}

/// Packs `W[co][ci][ky][kx]` for the backward data pass, taps `(co, ky, kx)` by `ci`, each
/// filter turned 180°.
fn pack_backward_data(s: &ConvShape, weight: &[f32], dst: &mut [f32]) {
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
/// each channel's sum into `bias_grad`: 8 channels × 8 pixels turned in registers at a time
/// (stored one float at a time, this took a fifth of rblock1's filter gradient).
struct PackOutputGrad<'a> {
    dy: &'a [f32],
    pixels: usize,
    dst: &'a mut [f32],
    bias_grad: &'a mut [f32],
}

impl Kernel for PackOutputGrad<'_> {
    #[inline(always)]
    fn run<S: Simd>(self, simd: S) {
        let (pixels, channels) = (self.pixels, self.bias_grad.len());
        let layout = Blocked { items: pixels, channels };
        let whole = pixels - pixels % LANES;
        for group in (0..channels).step_by(LANES) {
            let n = (channels - group).min(LANES);
            let plane = |c: usize| &self.dy[(group + c) * pixels..][..pixels];
            // Each channel's sum runs on from `bias_grad` pixel by pixel, as it always has.
            let mut sum = [0.0; LANES];
            sum[..n].copy_from_slice(&self.bias_grad[group..group + n]);
            let mut sum = simd.load(&sum);
            for first in (0..whole).step_by(LANES) {
                let mut rows = [simd.zero(); LANES];
                for (c, row) in rows.iter_mut().enumerate().take(n) {
                    *row = simd.load(vector(&plane(c)[first..]));
                }
                for (p, v) in simd.transpose(rows).into_iter().enumerate() {
                    sum = simd.add(sum, v);
                    *vector_mut(&mut self.dst[layout.index(first + p, group)..]) = simd.store(v);
                }
            }
            let mut sum = simd.store(sum);
            for p in whole..pixels {
                let run = vector_mut(&mut self.dst[layout.index(p, group)..]);
                for (c, (v, sum)) in run.iter_mut().zip(&mut sum).enumerate() {
                    *v = if c < n { plane(c)[p] } else { 0.0 };
                    *sum += *v;
                }
            }
            self.bias_grad[group..group + n].copy_from_slice(&sum[..n]);
        }
    }
}

/// Unpacks a filter gradient, taps by channels [`Blocked`], into `W[co][(ci, ky, kx)]`.
fn unpack_filter_grad(src: &[f32], out_channels: usize, dst: &mut [f32]) {
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

/// A valid convolution of padded `planes` with weights packed taps by channels, [`Blocked`].
/// It runs image by image, as [`ConvImage`]s.
struct Conv<'a> {
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

    /// The kernel rows (of `k`) that read data for some output row in `top..=bottom`: the
    /// others read only padding, and a tile skips them.
    pub fn kernel_rows(&self, top: usize, bottom: usize, k: usize) -> Range<usize> {
        self.data_rows.start.saturating_sub(bottom)..self.data_rows.end.saturating_sub(top).min(k)
    }

    /// One source image laid out as `planes`: itself, or a padded copy in `scratch`.
    pub fn pad<'b>(&self, src: &'b [f32], scratch: &'b mut [f32]) -> &'b [f32] {
        let (height, width) = self.source;
        pad_planes(src, height, width, self.shift, self.planes, scratch)
    }
}

/// One image of a [`Conv`]: its padded input planes and its output.
struct ConvImage<'a> {
    pub conv: &'a Conv<'a>,
    pub input: &'a [f32],
    pub out: &'a mut [f32],
}

impl Kernel for ConvImage<'_> {
    #[inline(always)]
    fn run<S: Simd>(self, simd: S) {
        with_filter_size!(self.conv.kernel, |k| self.tiles(simd, k))
    }
}

impl ConvImage<'_> {
    /// Every tile of the image, for `k == self.conv.kernel`.
    #[inline(always)]
    fn tiles<S: Simd>(mut self, simd: S, k: usize) {
        let c = self.conv;
        let (ho, wo) = c.planes.out(k);
        let layout = Blocked { items: c.planes.channels * k * k, channels: c.out_channels };
        for block in blocks(c.out_channels) {
            let weights = layout.block(c.weights, block);
            let px = tile_len(ho * wo, block);
            for first in (0..ho * wo).step_by(px) {
                let px = px.min(ho * wo - first);
                with_tile!(block.vectors, px, conv_tile(simd, &mut self, k, weights, block.first, first));
            }
        }
    }
}

/// Output pixels `first..first + PX` of the plane, in order across rows, `CV` vectors of
/// channels from `channel`. Running on across rows keeps all the accumulators busy on planes
/// narrower than a tile (conv2's 8×8, rblock2's 4×4).
#[inline(always)]
fn conv_tile<S: Simd, const PX: usize, const CV: usize>(
    simd: S,
    image: &mut ConvImage,
    k: usize,
    weights: &[f32],
    channel: usize,
    first: usize,
) {
    let (c, planes) = (image.conv, image.conv.planes);
    let (ho, wo) = planes.out(k);
    let (starts, (top, bottom)) = window_starts::<PX>(first, wo, ho * wo - 1, planes.width);
    let span = starts[PX - 1] + k;
    // Kernel rows that read only padding for every pixel of the tile are skipped.
    let kernel_rows = c.kernel_rows(top, bottom, k);
    let init = c.bias.map_or([simd.zero(); CV], |b| load(simd, &b[channel..]));
    let mut acc = [init; PX];
    let tap_row = k * CV * LANES;
    for (plane, weights) in
        image.input.chunks_exact(planes.height * planes.width).zip(weights.chunks_exact(k * tap_row))
    {
        for ky in kernel_rows.clone() {
            let row = &plane[ky * planes.width..][..span];
            for (kx, w) in weights[ky * tap_row..][..tap_row].chunks_exact(CV * LANES).enumerate() {
                let w = load::<S, CV>(simd, w);
                for px in 0..PX {
                    // SAFETY: `starts[px] <= starts[PX - 1]` and `kx < k`, so the index is
                    // below `span`, the row's length. (Checked, each of these loads would
                    // cost a compare and a branch beside its multiply-adds.)
                    let x = unsafe { *row.get_unchecked(starts[px] + kx) };
                    for v in 0..CV {
                        acc[px][v] = simd.mul_add(x, w[v], acc[px][v]);
                    }
                }
            }
        }
    }
    // Turned in registers, 8 pixels × 8 channels at a time, so that each channel's pixels
    // store as a run: read out of the tile one by one, they cost a load and a store each.
    // (Every loop here runs a constant number of times, so that `acc` is only indexed by
    // constants; see `spill`.)
    let mut groups = [[[simd.zero(); LANES]; ACCUMULATORS.div_ceil(LANES)]; CV];
    for (px, acc) in acc.iter().enumerate() {
        for (groups, &value) in groups.iter_mut().zip(acc) {
            groups[px / LANES][px % LANES] = if c.relu { simd.relu(value) } else { value };
        }
    }
    for (v, groups) in groups.into_iter().enumerate() {
        for (g, pixels) in groups.into_iter().enumerate().take(PX.div_ceil(LANES)) {
            let channels = (channel + v * LANES..c.out_channels).zip(simd.transpose(pixels).map(|v| simd.store(v)));
            for (co, values) in channels.take(LANES) {
                let out = &mut image.out[co * ho * wo + first + g * LANES..];
                store_run::<PX>(out, &values, g * LANES, c.accumulate);
            }
        }
    }
}

/// Where the windows of output pixels `first..first + N` (in order across rows of `wo`, the
/// pixels past `last` repeating it) start in a plane `width` wide, and the output rows they
/// span. The starts only grow, so the last pixel's window ends furthest on. Stepped along,
/// not divided out pixel by pixel: the divisions cost as much as a third of a 16-channel
/// tile's multiply-adds.
#[inline(always)]
fn window_starts<const N: usize>(first: usize, wo: usize, last: usize, width: usize) -> ([usize; N], (usize, usize)) {
    let (mut y, mut x) = (first / wo, first % wo);
    let top = y;
    let mut starts = [0; N];
    for (p, start) in starts.iter_mut().enumerate() {
        *start = y * width + x;
        if p + 1 < N && first + p < last {
            x += 1;
            if x == wo {
                (y, x) = (y + 1, 0);
            }
        }
    }
    (starts, (top, y))
}

/// Pixels `group..` of a tile of `PX` (8 at most from there) from `values` into `out`'s
/// first ones, added to them when `accumulate`: a run of constant length, so that it
/// compiles to a few moves.
#[inline(always)]
fn store_run<const PX: usize>(out: &mut [f32], values: &Vector, group: usize, accumulate: bool) {
    let n = (PX - group).min(LANES);
    let (out, values) = (&mut out[..n], &values[..n]);
    if accumulate {
        out.iter_mut().zip(values).for_each(|(o, v)| *o += v);
    } else {
        out.copy_from_slice(values);
    }
}

/// The filter gradient of a group of images, taps `(ci, ky, kx)` by `co`, [`Blocked`], from
/// the output gradient pixels by channels, [`Blocked`].
struct TapTiles<'a>(FilterGrad<'a>);

impl Kernel for TapTiles<'_> {
    #[inline(always)]
    fn run<S: Simd>(self, simd: S) {
        let mut g = self.0;
        let taps = g.planes.channels * g.kernel * g.kernel;
        for block in blocks(g.out_channels) {
            let n = tile_len(taps, block);
            for tap in (0..taps).step_by(n) {
                with_tile!(block.vectors, n.min(taps - tap), filter_tile(simd, &mut g, block, tap));
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
        // What each tap reads of the image, from its first output pixel to its last: sliced
        // once an image, not once a row, which on small planes cost as much as the row's
        // multiply-adds. (In a loop, not `array::from_fn`, which did not inline here.)
        let mut windows = [&x[..0]; T];
        for (window, &offset) in windows.iter_mut().zip(&offsets) {
            *window = &x[offset..][..(ho - 1) * planes.width + wo];
        }
        for (oy, dy) in dy.chunks_exact(wo * CV * LANES).enumerate() {
            for (ox, d) in dy.chunks_exact(CV * LANES).enumerate() {
                let (d, at) = (load::<S, CV>(simd, d), oy * planes.width + ox);
                for t in 0..T {
                    // SAFETY: `oy < ho` and `ox < wo`, so `at` is below the window's length.
                    let x = unsafe { *windows[t].get_unchecked(at) };
                    for v in 0..CV {
                        acc[t][v] = simd.mul_add(x, d[v], acc[t][v]);
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
