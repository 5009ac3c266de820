//! The CUDA backend: hand-written kernels from `kernels/*.cu`, cuBLAS for the fc layer, the
//! data set resident on the device, and each training step captured once in a CUDA graph
//! and replayed.
//!
//! The host side is written once against [`Device`]; [`hw::CudarcDevice`] runs it on a GPU
//! and [`emu::EmuDevice`] on the CPU through the host emulator, which is how the tests check
//! every op and whole training steps against the CPU backend without a GPU.
//!
//! Ops queue work and return; the host waits only when it reads something back
//! ([`Backend::download`], [`Backend::take_stats`]). Device failures after a successful
//! start (a lost device, a kernel fault) panic with the driver's message: the ops have no
//! error channel, and such a failure is not something training can recover from.

pub mod device;
pub mod emu;
pub mod hw;
pub mod kernels;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;

use crate::data::IMAGE_PIXELS;

use super::cpu::{PIXEL_MEAN, PIXEL_STD};
use super::{Backend, ConvShape, LinearShape, ParamSlot, PoolShape, SgdStep, Stats, StepKey};
pub use device::{Arg, Device, Gemm, Launch};

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("{0} cannot be loaded")]
    MissingLibrary(&'static str),
    #[error("no CUDA device found")]
    NoDevice,
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("cuBLAS: {0}")]
    Blas(#[from] cudarc::cublas::result::CublasError),
    #[error("recompiling {file} with NVRTC failed: {log}")]
    Compile { file: &'static str, log: String },
    #[error("no kernel named {0}")]
    UnknownKernel(String),
    #[error("cannot allocate {0} bytes")]
    OutOfMemory(usize),
    #[error("ending a stream capture that was not started")]
    NotCapturing,
}

/// Threads per block of the element-wise kernels and the gather.
const THREADS: u32 = 256;
/// Grid-stride kernels use at most this many blocks: enough to fill any current GPU.
const MAX_BLOCKS: usize = 4096;
/// The conv kernels' tile: rows × columns per block, and the reduction step (conv.cu).
const TILE_M: usize = 16;
const TILE_N: usize = 64;
const TILE_K: usize = 16;
/// Output pixels one slice of the split-K weight gradient aims to reduce.
const FILTER_SPLIT_PIXELS: usize = 512;
const MAX_FILTER_SPLITS: usize = 64;

/// A typed device buffer of `len` elements.
pub struct DevBuf<D: Device, T> {
    mem: D::Mem,
    address: u64,
    len: usize,
    _elem: PhantomData<T>,
}

impl<D: Device, T> DevBuf<D, T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address of element `index`.
    fn addr(&self, index: usize) -> u64 {
        self.address + (index * std::mem::size_of::<T>()) as u64
    }

    fn at(&self, index: usize) -> Arg {
        Arg::Ptr(self.addr(index))
    }

    fn ptr(&self) -> Arg {
        self.at(0)
    }
}

/// A data set's images and labels as uint8 on the device.
pub struct CudaData<D: Device> {
    images: DevBuf<D, u8>,
    labels: DevBuf<D, u8>,
}

/// Graphs captured per step configuration, and the configurations seen once.
struct GraphCache<G> {
    seen: HashSet<StepKey>,
    graphs: HashMap<StepKey, G>,
}

pub struct CudaBackend<D: Device> {
    device: D,
    graphs: Option<RefCell<GraphCache<D::Graph>>>,
    /// Per-slice partial weight gradients of the split-K filter kernel; grows on demand,
    /// which happens only in uncaptured steps (see [`Backend::run_step`]).
    partials: RefCell<Option<DevBuf<D, f32>>>,
}

#[track_caller]
fn check<T>(result: Result<T, CudaError>) -> T {
    result.unwrap_or_else(|e| panic!("CUDA backend: {e}"))
}

fn blocks(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block).max(1) as u32
}

fn dim(v: usize) -> Arg {
    Arg::I32(i32::try_from(v).expect("dimension fits in i32"))
}

fn uint(v: usize) -> Arg {
    Arg::U32(u32::try_from(v).expect("count fits in u32"))
}

/// The conv kernels' shape arguments, in their parameter order.
fn conv_args(s: &ConvShape) -> [Arg; 7] {
    [dim(s.batch), dim(s.c_in), dim(s.c_out), dim(s.height), dim(s.width), dim(s.kernel), dim(s.pad)]
}

impl<D: Device> CudaBackend<D> {
    /// A backend on `device`; with `graphs`, training steps are captured and replayed.
    pub fn new(device: D, graphs: bool) -> Self {
        let graphs = graphs.then(|| RefCell::new(GraphCache { seen: HashSet::new(), graphs: HashMap::new() }));
        CudaBackend { device, graphs, partials: RefCell::new(None) }
    }

    fn alloc<T>(&self, len: usize) -> DevBuf<D, T> {
        let mem = check(self.device.alloc(len * std::mem::size_of::<T>()));
        let address = self.device.address(&mem);
        DevBuf { mem, address, len, _elem: PhantomData }
    }

    fn upload_bytes<T>(&self, len: usize, bytes: &[u8]) -> DevBuf<D, T> {
        let mut buf = self.alloc(len);
        check(self.device.upload(&mut buf.mem, bytes));
        buf
    }

    fn launch(&self, kernel: &'static str, grid: [u32; 3], block: u32, shared_bytes: u32, args: Vec<Arg>) {
        check(self.device.launch(&Launch { kernel, grid, block: [block, 1, 1], shared_bytes, args }));
    }

    /// A grid-stride kernel over `n` elements.
    fn launch_elementwise(&self, kernel: &'static str, n: usize, args: Vec<Arg>) {
        let grid = blocks(n, THREADS as usize).min(MAX_BLOCKS as u32);
        self.launch(kernel, [grid, 1, 1], THREADS, 0, args);
    }

    /// The split-K partials buffer, grown to at least `len` floats; returns its address.
    fn partials(&self, len: usize) -> Arg {
        let mut partials = self.partials.borrow_mut();
        if !partials.as_ref().is_some_and(|p| p.len >= len) {
            *partials = Some(self.alloc(len));
        }
        partials.as_ref().map(DevBuf::ptr).expect("allocated above")
    }

    fn replay_or_capture(&self, cache: &RefCell<GraphCache<D::Graph>>, key: StepKey, step: &mut dyn FnMut()) {
        if let Some(graph) = cache.borrow().graphs.get(&key) {
            return check(self.device.replay(graph));
        }
        // The first step of a configuration runs plainly: it sizes every lazily grown buffer,
        // so the captured one allocates nothing.
        if cache.borrow_mut().seen.insert(key) {
            return step();
        }
        check(self.device.begin_capture());
        step();
        let graph = check(self.device.end_capture());
        check(self.device.replay(&graph));
        cache.borrow_mut().graphs.insert(key, graph);
    }
}

impl<D: Device> Backend for CudaBackend<D> {
    type Buf = DevBuf<D, f32>;
    type Idx = DevBuf<D, u32>;
    type Data = CudaData<D>;
    type StatsBuf = DevBuf<D, u64>;

    fn name(&self) -> String {
        self.device.name()
    }

    fn zeros(&self, len: usize) -> Self::Buf {
        self.alloc(len)
    }

    fn zeros_idx(&self, len: usize) -> Self::Idx {
        self.alloc(len)
    }

    fn upload(&self, src: &[f32]) -> Self::Buf {
        self.upload_bytes(src.len(), &src.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())
    }

    fn upload_idx(&self, src: &[u32]) -> Self::Idx {
        self.upload_bytes(src.len(), &src.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())
    }

    fn upload_data(&self, images: &[u8], labels: &[u8]) -> CudaData<D> {
        CudaData { images: self.upload_bytes(images.len(), images), labels: self.upload_bytes(labels.len(), labels) }
    }

    fn download(&self, src: &Self::Buf) -> Vec<f32> {
        let mut bytes = vec![0; src.len * 4];
        check(self.device.download(&src.mem, &mut bytes));
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    /// `[loss_sum as f64 bits, correct]`, which `softmax_xent` adds to atomically.
    fn new_stats(&self) -> Self::StatsBuf {
        self.alloc(2)
    }

    fn take_stats(&self, stats: &mut Self::StatsBuf) -> Stats {
        let mut bytes = [0u8; 16];
        check(self.device.download(&stats.mem, &mut bytes));
        check(self.device.upload(&mut stats.mem, &[0; 16]));
        let (loss, correct) = bytes.split_at(8);
        Stats {
            loss_sum: f64::from_le_bytes(loss.try_into().expect("8 bytes")),
            correct: u64::from_le_bytes(correct.try_into().expect("8 bytes")),
        }
    }

    fn gather(
        &self,
        data: &CudaData<D>,
        order: &Self::Idx,
        start: usize,
        count: usize,
        x: &mut Self::Buf,
        labels: &mut Self::Idx,
    ) {
        let args = vec![
            data.images.ptr(),
            data.labels.ptr(),
            order.ptr(),
            uint(start),
            uint(IMAGE_PIXELS),
            Arg::F32(PIXEL_MEAN),
            Arg::F32(PIXEL_STD),
            x.ptr(),
            labels.ptr(),
        ];
        self.launch("gather_batch", [count as u32, 1, 1], THREADS, 0, args);
    }

    fn conv2d_forward(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        params: &Self::Buf,
        slot: ParamSlot,
        y: &mut Self::Buf,
        relu: bool,
    ) {
        let grid = [blocks(s.batch * s.h_out() * s.w_out(), TILE_N), blocks(s.c_out, TILE_M), 1];
        let mut args = vec![x.ptr(), params.at(slot.offset), params.at(slot.bias().start), y.ptr()];
        args.extend(conv_args(s));
        args.push(Arg::I32(relu.into()));
        self.launch("conv2d_forward", grid, THREADS, 0, args);
    }

    fn conv2d_backward_data(
        &self,
        s: &ConvShape,
        dy: &Self::Buf,
        params: &Self::Buf,
        slot: ParamSlot,
        dx: &mut Self::Buf,
        accumulate: bool,
    ) {
        let grid = [blocks(s.batch * s.height * s.width, TILE_N), blocks(s.c_in, TILE_M), 1];
        let mut args = vec![dy.ptr(), params.at(slot.offset), dx.ptr()];
        args.extend(conv_args(s));
        args.push(Arg::I32(accumulate.into()));
        self.launch("conv2d_backward_data", grid, THREADS, 0, args);
    }

    fn conv2d_backward_params(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        grads: &mut Self::Buf,
        slot: ParamSlot,
    ) {
        let pixels = s.batch * s.h_out() * s.w_out();
        let wanted = (pixels / FILTER_SPLIT_PIXELS).clamp(1, MAX_FILTER_SPLITS);
        let split_len = pixels.div_ceil(wanted).next_multiple_of(TILE_K);
        let splits = pixels.div_ceil(split_len);
        let partials = self.partials(splits * slot.len());
        let grid = [blocks(s.patch(), TILE_N), blocks(s.c_out, TILE_M), splits as u32];
        let mut args = vec![x.ptr(), dy.ptr(), partials];
        args.extend(conv_args(s));
        args.push(dim(split_len));
        self.launch("conv2d_backward_filter", grid, THREADS, 0, args);
        let args = vec![partials, grads.at(slot.offset), dim(splits), dim(slot.len())];
        self.launch_elementwise("sum_splits", slot.len(), args);
    }

    fn relu_backward(&self, len: usize, y: &Self::Buf, dy: &mut Self::Buf) {
        self.launch_elementwise("relu_backward", len, vec![y.ptr(), dy.ptr(), uint(len)]);
    }

    fn axpby(&self, len: usize, alpha: f32, a: &Self::Buf, beta: f32, y: &mut Self::Buf, relu: bool) {
        let args = vec![Arg::F32(alpha), a.ptr(), Arg::F32(beta), y.ptr(), uint(len), Arg::U32(relu.into())];
        self.launch_elementwise("axpby", len, args);
    }

    fn scale(&self, len: usize, alpha: f32, y: &mut Self::Buf) {
        self.launch_elementwise("scale", len, vec![y.ptr(), uint(len), Arg::F32(alpha)]);
    }

    fn maxpool_forward(&self, s: &PoolShape, x: &Self::Buf, y: &mut Self::Buf, argmax: &mut Self::Idx) {
        let args = vec![x.ptr(), y.ptr(), argmax.ptr(), uint(s.batch * s.channels), uint(s.height), uint(s.width)];
        self.launch_elementwise("maxpool_forward", s.out_len(), args);
    }

    fn maxpool_backward(&self, s: &PoolShape, dy: &Self::Buf, argmax: &Self::Idx, dx: &mut Self::Buf) {
        let args = vec![dy.ptr(), argmax.ptr(), dx.ptr(), uint(s.batch * s.channels), uint(s.height), uint(s.width)];
        self.launch_elementwise("maxpool_backward", s.in_len(), args);
    }

    /// Row-major `y = x·Wᵀ` is column-major `yᵀ = Wᵀᵀ·xᵀ`: cuBLAS with W transposed.
    fn linear_forward(&self, s: &LinearShape, x: &Self::Buf, params: &Self::Buf, slot: ParamSlot, y: &mut Self::Buf) {
        let gemm = Gemm {
            trans_a: true,
            trans_b: false,
            m: s.outputs,
            n: s.batch,
            k: s.inputs,
            a: params.addr(slot.offset),
            lda: s.inputs,
            b: x.addr(0),
            ldb: s.inputs,
            beta: 0.0,
            c: y.addr(0),
            ldc: s.outputs,
        };
        check(self.device.sgemm(&gemm));
        let args = vec![y.ptr(), params.at(slot.bias().start), uint(s.batch), uint(s.outputs)];
        self.launch_elementwise("add_bias_rows", s.batch * s.outputs, args);
    }

    /// Row-major `dx = dy·W`, column-major `dxᵀ = Wᵀ·dyᵀ`.
    fn linear_backward_data(
        &self,
        s: &LinearShape,
        dy: &Self::Buf,
        params: &Self::Buf,
        slot: ParamSlot,
        dx: &mut Self::Buf,
    ) {
        let gemm = Gemm {
            trans_a: false,
            trans_b: false,
            m: s.inputs,
            n: s.batch,
            k: s.outputs,
            a: params.addr(slot.offset),
            lda: s.inputs,
            b: dy.addr(0),
            ldb: s.outputs,
            beta: 0.0,
            c: dx.addr(0),
            ldc: s.inputs,
        };
        check(self.device.sgemm(&gemm));
    }

    /// Row-major `dW = dyᵀ·x`, column-major `dWᵀ = xᵀ·dy`; the bias gradient is dy's column sums.
    fn linear_backward_params(
        &self,
        s: &LinearShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        grads: &mut Self::Buf,
        slot: ParamSlot,
    ) {
        let gemm = Gemm {
            trans_a: false,
            trans_b: true,
            m: s.inputs,
            n: s.outputs,
            k: s.batch,
            a: x.addr(0),
            lda: s.inputs,
            b: dy.addr(0),
            ldb: s.outputs,
            beta: 0.0,
            c: grads.addr(slot.offset),
            ldc: s.inputs,
        };
        check(self.device.sgemm(&gemm));
        let args = vec![dy.ptr(), grads.at(slot.bias().start), uint(s.batch), uint(s.outputs)];
        let warps = THREADS / 32;
        self.launch("column_sums", [s.outputs as u32, 1, 1], THREADS, warps * 4, args);
    }

    fn softmax_cross_entropy(
        &self,
        batch: usize,
        classes: usize,
        logits: &Self::Buf,
        labels: &Self::Idx,
        dlogits: &mut Self::Buf,
        stats: &mut Self::StatsBuf,
    ) {
        let args =
            vec![logits.ptr(), labels.ptr(), dlogits.ptr(), uint(batch), uint(classes), stats.at(0), stats.at(1)];
        self.launch("softmax_xent", [blocks(batch, THREADS as usize), 1, 1], THREADS, 0, args);
    }

    fn sgd_step(&self, step: SgdStep, params: &mut Self::Buf, grads: &Self::Buf, momentum: &mut Self::Buf) {
        let n = params.len;
        let args = vec![
            params.ptr(),
            grads.ptr(),
            momentum.ptr(),
            uint(n),
            Arg::F32(step.lr),
            Arg::F32(step.momentum),
            Arg::U32(step.first.into()),
        ];
        self.launch_elementwise("sgd_momentum", n, args);
    }

    fn run_step(&self, key: StepKey, step: &mut (dyn FnMut(&Self) + Send)) {
        match &self.graphs {
            Some(cache) => self.replay_or_capture(cache, key, &mut || step(self)),
            None => step(self),
        }
    }

    fn forget_steps(&self) {
        if let Some(cache) = &self.graphs {
            let mut cache = cache.borrow_mut();
            cache.seen.clear();
            cache.graphs.clear();
        }
    }
}
