//! The CPU backend: register-tiled SIMD convolutions ([`conv`]), the `gemm` crate for the
//! linear layer, batch images split into tasks that rayon runs in parallel, plain loops for
//! the rest.
//!
//! Task boundaries depend only on the shapes, and per-task partial gradients are summed in
//! task order, so results are bit-identical whatever the thread count.

mod conv;
mod pool;

use gemm::Parallelism;
use rayon::prelude::*;

use crate::data::IMAGE_PIXELS;

use super::{AdamUpdate, Backend, ConvShape, Lanes, LinearShape, ParamSlot, PoolShape, SgdUpdate, Stats, StepScalars};
use crate::augment::{self, Affine, Augmentation};
use crate::data::IMAGE_SIDE;

/// Normalization of the reference's `transforms.Normalize((0.1307,), (0.3081,))`.
pub const PIXEL_MEAN: f32 = 0.1307;
pub const PIXEL_STD: f32 = 0.3081;

/// Elements per task for element-wise ops.
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// Images a lane takes through the network at a time.
const LANE_CHUNK: usize = 32;

#[derive(Debug, thiserror::Error)]
#[error("cannot start a CPU thread pool with {threads} threads: {source}")]
pub struct ThreadPoolError {
    threads: usize,
    source: rayon::ThreadPoolBuildError,
}

pub struct CpuBackend {
    pool: rayon::ThreadPool,
    conv: conv::Convolutions,
    /// One-thread backends, one per thread of `pool` when it has more than one: the lanes of
    /// [`Backend::run_lanes`], each with its own thread, pool and convolution buffers.
    lanes: Vec<CpuBackend>,
}

pub struct CpuData {
    images: Vec<u8>,
    labels: Vec<u8>,
}

#[derive(Default)]
pub struct CpuStats(Stats);

impl CpuBackend {
    /// A backend running on `threads` threads (0 = one per core).
    pub fn new(threads: usize) -> Result<Self, ThreadPoolError> {
        let pool = Self::pool(threads, "cpu-backend")?;
        let isa = conv::Isa::detect();
        let lanes = match pool.current_num_threads() {
            1 => Vec::new(),
            n => (0..n).map(|_| Ok(Self::lane(Self::pool(1, "cpu-lane")?, isa))).collect::<Result<_, _>>()?,
        };
        Ok(CpuBackend { lanes, ..Self::lane(pool, isa) })
    }

    fn pool(threads: usize, name: &'static str) -> Result<rayon::ThreadPool, ThreadPoolError> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(move |i| format!("{name}-{i}"))
            .build()
            .map_err(|source| ThreadPoolError { threads, source })
    }

    fn lane(pool: rayon::ThreadPool, isa: conv::Isa) -> Self {
        CpuBackend { pool, conv: conv::Convolutions::new(isa), lanes: Vec::new() }
    }

    /// This backend with the convolution kernels of `isa`, its lanes too.
    fn with_isa(self, isa: conv::Isa) -> Self {
        let lanes = self.lanes.into_iter().map(|lane| lane.with_isa(isa)).collect();
        CpuBackend { conv: conv::Convolutions::new(isa), lanes, ..self }
    }

    /// This backend running the portable convolution kernels, as on a CPU without AVX2 and
    /// FMA: to check one set of kernels against the other.
    pub fn with_portable_kernels(self) -> Self {
        self.with_isa(conv::Isa::portable())
    }

    /// This backend without the AVX-512 kernels, as on a CPU with AVX2 and FMA alone: to
    /// check the two against each other.
    pub fn without_avx512(self) -> Self {
        let isa = self.conv.isa().narrow();
        self.with_isa(isa)
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    fn conv_forward(&self, s: &ConvShape, x: &[f32], params: &[f32], slot: ParamSlot, out: conv::Output) {
        let (weight, bias) = (&params[slot.weight()], &params[slot.bias()]);
        self.pool.install(|| self.conv.forward(s, x, weight, bias, out));
    }

    fn conv_backward_params(&self, s: &ConvShape, x: &[f32], dy: conv::OutputGrad, grads: &mut [f32], slot: ParamSlot) {
        let grads = &mut grads[slot.offset..slot.offset + slot.len()];
        self.pool.install(|| self.conv.backward_params(s, x, dy, grads));
    }
}

/// A read-only matrix: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, rs: cols, cs: 1 }
    }

    fn t(self) -> Self {
        Mat { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst = a · b` with `dst` row-major `[a.rows, b.cols]`, single-threaded: the fc layer's
/// products (a batch × 512 × 10) are too small to gain from splitting.
fn matmul(dst: &mut [f32], a: Mat, b: Mat) {
    assert!(a.cols == b.rows && a.fits() && b.fits() && dst.len() >= a.rows * b.cols, "matmul shapes out of bounds");
    // SAFETY: the assert above keeps every index gemm touches inside the three slices.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst.as_mut_ptr(),
            1,
            b.cols as isize,
            false,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// Runs each lane on its backend's pool and returns when all are done. The pools' threads
/// stay up between calls: a thread spawned for each lane cost about 70 µs a call, a training
/// step's worth of which is 2 % of it.
fn spawn_lanes(backends: &[CpuBackend], lanes: &mut [&mut (dyn FnMut(&CpuBackend) + Send)]) {
    if let ([backend, backends @ ..], [lane, lanes @ ..]) = (backends, lanes) {
        backend.pool.in_place_scope(|scope| {
            scope.spawn(|_| backend.run(*lane));
            spawn_lanes(backends, lanes);
        });
    }
}

/// `out[i] = f(a[i], out[i])`, in parallel chunks.
fn par_map2(isa: conv::Isa, a: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync + Copy) {
    out.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(a.par_chunks(ELEMENTWISE_CHUNK))
        .for_each(|(out, a)| isa.run(Map2 { a, out, f }));
}

/// A chunk of [`par_map2`] as a [`conv::Kernel`], so that LLVM vectorizes it with AVX2 where
/// the CPU has it; and `f` a copy of its own, whose captured scalars then stay in registers.
/// (Called through a reference from rayon's closure, `f` reloaded them for every element,
/// which kept the loop scalar: 40 µs for 41k floats.)
struct Map2<'a, F> {
    a: &'a [f32],
    out: &'a mut [f32],
    f: F,
}

impl<F: Fn(f32, f32) -> f32> conv::Kernel for Map2<'_, F> {
    #[inline(always)]
    fn run<S: conv::Simd>(self, _simd: S) {
        let f = self.f;
        for (o, &a) in self.out.iter_mut().zip(self.a) {
            *o = f(a, *o);
        }
    }
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Idx = Vec<u32>;
    type Data = CpuData;
    type StatsBuf = CpuStats;

    fn name(&self) -> String {
        format!("cpu ({}, {})", crate::counted(self.threads(), "thread"), self.conv.isa().name())
    }

    fn zeros(&self, len: usize) -> Vec<f32> {
        vec![0.0; len]
    }

    fn zeros_idx(&self, len: usize) -> Vec<u32> {
        vec![0; len]
    }

    fn upload(&self, src: &[f32]) -> Vec<f32> {
        src.to_vec()
    }

    fn upload_idx(&self, src: &[u32]) -> Vec<u32> {
        src.to_vec()
    }

    fn upload_data(&self, images: &[u8], labels: &[u8]) -> CpuData {
        CpuData { images: images.to_vec(), labels: labels.to_vec() }
    }

    fn download(&self, src: &Vec<f32>) -> Vec<f32> {
        src.clone()
    }

    fn new_stats(&self) -> CpuStats {
        CpuStats::default()
    }

    fn take_stats(&self, stats: &mut CpuStats) -> Stats {
        std::mem::take(&mut stats.0)
    }

    fn write(&self, dst: &mut Vec<f32>, src: &[f32]) {
        dst[..src.len()].copy_from_slice(src);
    }

    fn gather(
        &self,
        data: &CpuData,
        order: &Vec<u32>,
        start: usize,
        count: usize,
        x: &mut Vec<f32>,
        labels: &mut Vec<u32>,
        augment: Option<&Augmentation>,
    ) {
        let order = &order[start..start + count];
        for (&i, label) in order.iter().zip(labels.iter_mut()) {
            *label = u32::from(data.labels[i as usize]);
        }
        let normalize = |v: f32| (v - PIXEL_MEAN) / PIXEL_STD;
        self.pool.install(|| {
            x[..count * IMAGE_PIXELS].par_chunks_mut(IMAGE_PIXELS).zip(order).for_each(|(dst, &i)| {
                let src = &data.images[i as usize * IMAGE_PIXELS..][..IMAGE_PIXELS];
                match augment {
                    None => {
                        for (d, &p) in dst.iter_mut().zip(src) {
                            *d = normalize(f32::from(p) / 255.0);
                        }
                    }
                    Some(a) => {
                        augment::resample(&Affine::draw(a, i).inverse(), src, IMAGE_SIDE, dst);
                        dst.iter_mut().for_each(|d| *d = normalize(*d));
                    }
                }
            })
        });
    }

    fn conv2d_forward(
        &self,
        s: &ConvShape,
        x: &Vec<f32>,
        params: &Vec<f32>,
        slot: ParamSlot,
        y: &mut Vec<f32>,
        relu: bool,
    ) {
        self.conv_forward(s, x, params, slot, conv::Output::Plain { y, relu });
    }

    fn conv2d_add_relu_forward(
        &self,
        s: &ConvShape,
        x: &Vec<f32>,
        params: &Vec<f32>,
        slot: ParamSlot,
        skip: &Vec<f32>,
        y: &mut Vec<f32>,
    ) {
        self.conv_forward(s, x, params, slot, conv::Output::Residual { y, skip });
    }

    /// Fused: each image is pooled as soon as it is convolved, from the thread's scratch.
    fn conv2d_relu_maxpool_forward(
        &self,
        s: &ConvShape,
        x: &Vec<f32>,
        params: &Vec<f32>,
        slot: ParamSlot,
        _y: &mut Vec<f32>,
        pooled: &mut Vec<f32>,
        argmax: &mut Vec<u32>,
    ) {
        self.conv_forward(s, x, params, slot, conv::Output::Pooled { pooled, argmax });
    }

    fn conv2d_backward_data(
        &self,
        s: &ConvShape,
        dy: &Vec<f32>,
        params: &Vec<f32>,
        slot: ParamSlot,
        dx: &mut Vec<f32>,
        accumulate: bool,
    ) {
        self.pool.install(|| self.conv.backward_data(s, &params[slot.weight()], dy, dx, accumulate));
    }

    fn conv2d_backward_params(
        &self,
        s: &ConvShape,
        x: &Vec<f32>,
        dy: &Vec<f32>,
        grads: &mut Vec<f32>,
        slot: ParamSlot,
    ) {
        self.conv_backward_params(s, x, conv::OutputGrad::Full(dy), grads, slot);
    }

    /// Each filter-gradient task expands its images' pooled gradient in its own scratch, so
    /// that the full-size gradient (conv1's: 2.4 MB a batch) never goes through memory.
    fn conv2d_maxpool_backward_params(
        &self,
        s: &ConvShape,
        x: &Vec<f32>,
        d_pooled: &Vec<f32>,
        argmax: &Vec<u32>,
        _dy: &mut Vec<f32>,
        grads: &mut Vec<f32>,
        slot: ParamSlot,
    ) {
        self.conv_backward_params(s, x, conv::OutputGrad::Pooled { d_pooled, argmax }, grads, slot);
    }

    fn relu_backward(&self, len: usize, y: &Vec<f32>, dy: &mut Vec<f32>) {
        let isa = self.conv.isa();
        self.pool.install(|| par_map2(isa, &y[..len], &mut dy[..len], |y, d| if y > 0.0 { d } else { 0.0 }));
    }

    fn axpby(&self, len: usize, alpha: f32, a: &Vec<f32>, beta: f32, y: &mut Vec<f32>, relu: bool) {
        let (isa, act) = (self.conv.isa(), move |v: f32| if relu { v.max(0.0) } else { v });
        self.pool.install(|| {
            if beta == 0.0 {
                par_map2(isa, &a[..len], &mut y[..len], move |a, _| act(alpha * a));
            } else {
                par_map2(isa, &a[..len], &mut y[..len], move |a, y| act(alpha * a + beta * y));
            }
        });
    }

    fn scale(&self, len: usize, alpha: f32, y: &mut Vec<f32>) {
        self.pool.install(|| y[..len].par_iter_mut().with_min_len(ELEMENTWISE_CHUNK).for_each(|v| *v *= alpha));
    }

    fn maxpool_forward(&self, s: &PoolShape, x: &Vec<f32>, y: &mut Vec<f32>, argmax: &mut Vec<u32>) {
        let (plane_in, plane_out) = (s.in_plane(), s.out_plane());
        let (ys, idx) = (&mut y[..s.out_len()], &mut argmax[..s.out_len()]);
        self.pool.install(|| {
            ys.par_chunks_mut(plane_out)
                .zip(idx.par_chunks_mut(plane_out))
                .zip(x[..s.in_len()].par_chunks(plane_in))
                .with_min_len(16)
                .for_each(|((y, idx), x)| pool::maxpool_plane(self.conv.isa(), s.width, x, y, idx));
        });
    }

    fn maxpool_backward(&self, s: &PoolShape, dy: &Vec<f32>, argmax: &Vec<u32>, dx: &mut Vec<f32>) {
        let (plane_in, plane_out) = (s.in_plane(), s.out_plane());
        self.pool.install(|| {
            dx[..s.in_len()]
                .par_chunks_mut(plane_in)
                .zip(dy[..s.out_len()].par_chunks(plane_out).zip(argmax[..s.out_len()].par_chunks(plane_out)))
                .with_min_len(16)
                .for_each(|(dx, (dy, idx))| pool::unpool(s, dy, idx, dx));
        });
    }

    fn linear_forward(&self, s: &LinearShape, x: &Vec<f32>, params: &Vec<f32>, slot: ParamSlot, y: &mut Vec<f32>) {
        let y = &mut y[..s.batch * s.outputs];
        let w = Mat::row_major(&params[slot.weight()], s.outputs, s.inputs);
        matmul(y, Mat::row_major(&x[..s.batch * s.inputs], s.batch, s.inputs), w.t());
        for row in y.chunks_exact_mut(s.outputs) {
            for (v, b) in row.iter_mut().zip(&params[slot.bias()]) {
                *v += b;
            }
        }
    }

    fn linear_backward_data(
        &self,
        s: &LinearShape,
        dy: &Vec<f32>,
        params: &Vec<f32>,
        slot: ParamSlot,
        dx: &mut Vec<f32>,
    ) {
        let w = Mat::row_major(&params[slot.weight()], s.outputs, s.inputs);
        let dy = Mat::row_major(&dy[..s.batch * s.outputs], s.batch, s.outputs);
        matmul(&mut dx[..s.batch * s.inputs], dy, w);
    }

    fn linear_backward_params(
        &self,
        s: &LinearShape,
        x: &Vec<f32>,
        dy: &Vec<f32>,
        grads: &mut Vec<f32>,
        slot: ParamSlot,
    ) {
        let dy = &dy[..s.batch * s.outputs];
        let x = Mat::row_major(&x[..s.batch * s.inputs], s.batch, s.inputs);
        matmul(&mut grads[slot.weight()], Mat::row_major(dy, s.batch, s.outputs).t(), x);
        let db = &mut grads[slot.bias()];
        db.fill(0.0);
        for row in dy.chunks_exact(s.outputs) {
            for (b, d) in db.iter_mut().zip(row) {
                *b += d;
            }
        }
    }

    fn softmax_cross_entropy(
        &self,
        batch: usize,
        classes: usize,
        smoothing: f32,
        logits: &Vec<f32>,
        labels: &Vec<u32>,
        dlogits: &mut Vec<f32>,
        stats: &mut CpuStats,
    ) {
        let rows = logits[..batch * classes].chunks_exact(classes).zip(dlogits.chunks_exact_mut(classes));
        for ((z, dz), &label) in rows.zip(labels) {
            let (loss, correct) = softmax_xent_row(z, label as usize, batch as f32, smoothing, dz);
            stats.0.loss_sum += f64::from(loss);
            stats.0.correct += u64::from(correct);
        }
    }

    fn run(&self, ops: &mut (dyn FnMut(&Self) + Send)) {
        self.pool.install(|| ops(self));
    }

    /// A lane per thread, each taking `LANE_CHUNK` images through the whole network on its own
    /// core, so that a chunk's activations stay in that core's caches from layer to layer and
    /// no op waits for another core (in training, 1.07× the whole batch's ops split across
    /// the cores, whose every op woke the other core and waited for it). The chunk does not
    /// depend on the thread count, so neither do the results.
    fn lanes(&self, batch: usize) -> Lanes {
        Lanes { count: self.lanes.len().max(1), chunk: batch.min(LANE_CHUNK) }
    }

    fn run_lanes(&self, lanes: &mut [&mut (dyn FnMut(&Self) + Send)]) {
        // A backend of one thread has one lane, which needs no thread of its own.
        if let [lane] = lanes {
            return self.run(*lane);
        }
        assert!(lanes.len() <= self.lanes.len(), "{} lanes for {} threads", lanes.len(), self.lanes.len());
        spawn_lanes(&self.lanes, lanes);
    }

    fn sgd_step(
        &self,
        update: SgdUpdate,
        scalars: &Vec<f32>,
        params: &mut Vec<f32>,
        grads: &Vec<f32>,
        momentum: &mut Vec<f32>,
    ) {
        let s = StepScalars::from_slice(scalars);
        let SgdUpdate { nesterov, weight_decay } = update;
        for ((p, &g), m) in params.iter_mut().zip(grads).zip(momentum.iter_mut()) {
            let g = if weight_decay != 0.0 { g + weight_decay * *p } else { g };
            *m = if s.first != 0.0 { g } else { s.momentum * *m + g };
            *p -= s.lr * if nesterov { g + s.momentum * *m } else { *m };
        }
    }

    fn adam_step(
        &self,
        update: AdamUpdate,
        scalars: &Vec<f32>,
        params: &mut Vec<f32>,
        grads: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
    ) {
        let s = StepScalars::from_slice(scalars);
        for (((p, &g), m), v) in params.iter_mut().zip(grads).zip(m.iter_mut()).zip(v.iter_mut()) {
            (*p, *m, *v) = adam_element(&update, &s, *p, g, *m, *v);
        }
    }
}

/// One element of torch.optim.Adam's single-tensor update, operation by operation:
/// returns the new parameter and moments.
#[inline(always)]
fn adam_element(u: &AdamUpdate, s: &StepScalars, p: f32, g: f32, m: f32, v: f32) -> (f32, f32, f32) {
    let g = if u.l2 != 0.0 { g + u.l2 * p } else { g };
    let p = p * s.decay;
    // torch's lerp: `m + w·(g − m)` for weights below one half, else `g − (g − m)·(1 − w)`.
    let w = s.lerp_weight;
    let m = if w.abs() < 0.5 { m + w * (g - m) } else { g - (g - m) * (1.0 - w) };
    let v = v * u.beta2 + u.one_minus_beta2 * g * g;
    let denom = v.sqrt() / s.bias2_sqrt + u.eps;
    (p + -s.step_size * m / denom, m, v)
}

/// One example's loss against the smoothed target `(1 − ε)·onehot + ε/classes`, and whether
/// it is classified correctly; writes `(softmax − target)/batch`. With ε = 0 every term that
/// ε brings in is an exact zero, so the plain cross-entropy comes out bit for bit.
fn softmax_xent_row(z: &[f32], label: usize, batch: f32, smoothing: f32, dz: &mut [f32]) -> (f32, bool) {
    let (mut arg, mut max) = (0, f32::NEG_INFINITY);
    for (i, &v) in z.iter().enumerate() {
        if v > max {
            (arg, max) = (i, v);
        }
    }
    let sum: f32 = z.iter().map(|&v| (v - max).exp()).sum();
    let spread = smoothing / z.len() as f32;
    for (d, &v) in dz.iter_mut().zip(z) {
        *d = (v - max).exp() / sum / batch - spread / batch;
    }
    dz[label] -= (1.0 - smoothing) / batch;
    let log_sum_exp = max + sum.ln();
    let nll = log_sum_exp - z[label];
    let uniform: f32 = z.iter().map(|&v| log_sum_exp - v).sum();
    ((1.0 - smoothing) * nll + spread * uniform, arg == label)
}
