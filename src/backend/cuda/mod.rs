//! The CUDA backend: hand-written kernels from `kernels/*.cu`, cuBLAS for the fc layer, the
//! data set resident on the device, and each training step captured once in a CUDA graph
//! and replayed.
//!
//! The host side is written once against [`Device`]; [`hw::CudarcDevice`] runs it on a GPU
//! and [`emu::EmuDevice`] on the CPU through the host emulator, which is how the tests check
//! every op and whole training steps against the CPU backend without a GPU.
//!
//! Ops queue work and return; the host waits only when it reads something back
//! ([`Backend::download`], [`Backend::take_stats`]). Like the driver's own sticky errors, the
//! first device failure after a successful start (a lost device, a kernel fault, memory
//! exhausted) is kept: from then on ops do nothing and reads give zeros, and
//! [`Backend::failure`] reports it, which the training loop and every command check before
//! they save or print anything.

pub mod device;
pub mod emu;
pub mod hw;
pub mod kernels;
pub mod tiles;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;

use crate::data::IMAGE_PIXELS;

use super::cpu::{PIXEL_MEAN, PIXEL_STD};
use super::{
    AdamUpdate, Backend, ConvShape, DeviceFailure, LinearShape, ParamSlot, PoolShape, SgdUpdate, Stats, StepKey,
};
use crate::augment::Augmentation;
use crate::data::IMAGE_SIDE;
pub use device::{Arg, DevPtr, Device, Gemm, KernelCall, Launch};
use kernels as k;
use tiles::{MAX_THREAD_ROWS, TILE_K, TILE_M, TILE_N, TILE_THREADS};

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// A shared library that cannot be opened; the text says which, and what to install.
    #[error("{0}")]
    MissingLibrary(&'static str),
    #[error("no CUDA device found")]
    NoDevice,
    #[error("CUDA driver: {}", driver_message(.0))]
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
    #[error("the start-up check computed {got:?} on the device instead of {expected:?}")]
    WrongResult { got: Vec<f32>, expected: Vec<f32> },
}

/// `CUDA_ERROR_OUT_OF_MEMORY (out of memory)`, as the driver names and describes its error.
fn driver_message(e: &cudarc::driver::DriverError) -> String {
    match (e.error_name(), e.error_string()) {
        (Ok(name), Ok(text)) => format!("{} ({})", name.to_string_lossy(), text.to_string_lossy()),
        _ => format!("{:?}", e.0),
    }
}

/// Threads per block of the element-wise kernels and the gather.
const THREADS: u32 = 256;
/// Grid-stride kernels use at most this many blocks: enough to fill any current GPU.
const MAX_BLOCKS: usize = 4096;
/// Blocks a conv launch aims for by splitting its reduction: a few per multiprocessor of the
/// largest GPUs (132 on an H100 or H200), so that a layer of a few dozen tiles at batch 64
/// still occupies the chip. A constant, not the device's count, so that every GPU sums in
/// the same order and gives the same result.
const TARGET_CONV_BLOCKS: usize = 512;
/// The fewest reduction terms a split takes: fewer, and writing and summing its partial
/// product costs more than its share of the loop saves.
const MIN_SPLIT_LEN: usize = 2 * TILE_K;
/// The most threads `sum_splits` gives one element (see the kernel).
const MAX_SUM_LANES: usize = 32;

/// A typed device buffer of `len` elements; without memory when allocating it failed (the
/// backend has failed then, and no op touches it).
pub struct DevBuf<D: Device, T> {
    mem: Option<D::Mem>,
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

    fn at(&self, index: usize) -> DevPtr {
        DevPtr(self.addr(index))
    }

    fn ptr(&self) -> DevPtr {
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
    /// Graphs captured since the backend started, forgotten ones included.
    captured: usize,
}

pub struct CudaBackend<D: Device> {
    device: D,
    graphs: Option<RefCell<GraphCache<D::Graph>>>,
    /// Per-slice partial weight gradients of the split-K filter kernel; grows on demand,
    /// which happens only in uncaptured steps (see [`Backend::run_step`]).
    partials: RefCell<Option<DevBuf<D, f32>>>,
    /// The first device error, after which nothing more is sent to the device.
    failed: RefCell<Option<CudaError>>,
}

fn blocks(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block).max(1) as u32
}

/// Rows per thread of a conv product with `m` output rows: all the row groups a thread can
/// take when `m` fills more than one, so that each staged element of B (the costly one to
/// load: an im2col element, with its index arithmetic and bounds) serves twice the rows.
fn thread_rows(m: usize) -> usize {
    if m > TILE_M {
        MAX_THREAD_ROWS
    } else {
        1
    }
}

/// A conv kernel's implicit GEMM: `m` × `n` outputs, each a sum of `k` products.
#[derive(Clone, Copy)]
struct ConvProduct {
    m: usize,
    n: usize,
    k: usize,
}

/// How a conv launch splits its reduction of `len` terms: `count` slices of `len` terms each
/// (the last one shorter), whole tile steps long.
#[derive(Clone, Copy)]
struct SplitK {
    count: usize,
    len: usize,
}

/// The split for a launch of `tiles` output tiles, aiming at [`TARGET_CONV_BLOCKS`] blocks.
fn split_k(tiles: [u32; 2], len: usize) -> SplitK {
    let tiles = tiles[0] as usize * tiles[1] as usize;
    let wanted = TARGET_CONV_BLOCKS.div_ceil(tiles).min(len.div_ceil(MIN_SPLIT_LEN)).max(1);
    let split_len = len.div_ceil(wanted).next_multiple_of(TILE_K);
    SplitK { count: len.div_ceil(split_len), len: split_len }
}

fn dim(v: usize) -> i32 {
    i32::try_from(v).expect("dimension fits in i32")
}

fn uint(v: usize) -> u32 {
    u32::try_from(v).expect("count fits in u32")
}

/// A kernel's on/off parameter.
fn flag(on: bool) -> i32 {
    on.into()
}

/// The conv kernels' shape parameters, in their order: batch, c_in, c_out, height, width,
/// kernel, pad.
fn conv_dims(s: &ConvShape) -> [i32; 7] {
    [s.batch, s.c_in, s.c_out, s.height, s.width, s.kernel, s.pad].map(dim)
}

impl<D: Device> CudaBackend<D> {
    /// A backend on `device`; with `graphs`, training steps are captured and replayed.
    pub fn new(device: D, graphs: bool) -> Self {
        let graphs =
            graphs.then(|| RefCell::new(GraphCache { seen: HashSet::new(), graphs: HashMap::new(), captured: 0 }));
        CudaBackend { device, graphs, partials: RefCell::new(None), failed: RefCell::new(None) }
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    /// Training-step graphs captured since the backend started: one per model, batch size
    /// and update, however the learning rate moves.
    pub fn captured_graphs(&self) -> usize {
        self.graphs.as_ref().map_or(0, |cache| cache.borrow().captured)
    }

    /// Runs `work` on the device unless it has failed; keeps its error if it is the first.
    fn guard<T>(&self, work: impl FnOnce(&D) -> Result<T, CudaError>) -> Option<T> {
        if self.failed.borrow().is_some() {
            return None;
        }
        work(&self.device).map_err(|e| *self.failed.borrow_mut() = Some(e)).ok()
    }

    fn alloc<T>(&self, len: usize) -> DevBuf<D, T> {
        let mem = self.guard(|d| d.alloc(len * std::mem::size_of::<T>()));
        let address = mem.as_ref().map_or(0, |m| self.device.address(m));
        DevBuf { mem, address, len, _elem: PhantomData }
    }

    fn upload_bytes<T>(&self, len: usize, bytes: &[u8]) -> DevBuf<D, T> {
        let mut buf = self.alloc(len);
        if let Some(mem) = &mut buf.mem {
            self.guard(|d| d.upload(mem, bytes));
        }
        buf
    }

    /// `bytes.len()` bytes of `mem`, or zeros once the device has failed.
    fn download_bytes(&self, mem: &Option<D::Mem>, bytes: &mut [u8]) {
        if let Some(mem) = mem {
            self.guard(|d| d.download(mem, bytes));
        }
    }

    fn launch(&self, call: KernelCall, grid: [u32; 3], block: u32, shared_bytes: u32) {
        let KernelCall { kernel, args } = call;
        self.guard(|d| d.launch(&Launch { kernel, grid, block: [block, 1, 1], shared_bytes, args }));
    }

    fn sgemm(&self, gemm: &Gemm) {
        self.guard(|d| d.sgemm(gemm));
    }

    /// A grid-stride kernel over `n` elements.
    fn launch_elementwise(&self, call: KernelCall, n: usize) {
        let grid = blocks(n, THREADS as usize).min(MAX_BLOCKS as u32);
        self.launch(call, [grid, 1, 1], THREADS, 0);
    }

    /// The split-K partials buffer, grown to at least `len` floats; returns its address.
    /// Growing frees the old buffer, which captured graphs may still write: they are
    /// dropped, to be captured again.
    fn partials(&self, len: usize) -> DevPtr {
        let mut partials = self.partials.borrow_mut();
        if partials.as_ref().is_none_or(|p| p.len < len) {
            *partials = Some(self.alloc(len));
            if let Some(cache) = &self.graphs {
                cache.borrow_mut().graphs.clear();
            }
        }
        partials.as_ref().map(DevBuf::ptr).expect("allocated above")
    }

    /// One conv kernel launch over `product`, whose `len` outputs go to `out`: chooses the
    /// rows per thread and the split of the reduction, launches `call(output, unsplit,
    /// split_len, rows)`, and when split, adds the slices it wrote to the partials buffer
    /// into `out`, adding to what `out` held when `accumulate` and applying ReLU when `relu`
    /// (which the kernel does itself when unsplit).
    fn conv_product(
        &self,
        product: ConvProduct,
        out: DevPtr,
        len: usize,
        accumulate: bool,
        relu: bool,
        call: impl FnOnce(DevPtr, bool, i32, i32) -> KernelCall,
    ) {
        let rows = thread_rows(product.m);
        let tiles = [blocks(product.n, TILE_N), blocks(product.m, rows * TILE_M)];
        let split = split_k(tiles, product.k);
        let unsplit = split.count == 1;
        let output = if unsplit { out } else { self.partials(split.count * len) };
        let grid = [tiles[0], tiles[1], uint(split.count)];
        self.launch(call(output, unsplit, dim(split.len), dim(rows)), grid, TILE_THREADS as u32, 0);
        if !unsplit {
            // The largest power of two up to the split count: the kernel's lanes divide the block.
            let lanes = 1 << split.count.min(MAX_SUM_LANES).ilog2();
            let grid = blocks(len, THREADS as usize / lanes).min(MAX_BLOCKS as u32);
            let sum = k::sum_splits(output, out, dim(split.count), dim(len), dim(lanes), flag(accumulate), flag(relu));
            self.launch(sum, [grid, 1, 1], THREADS, THREADS * size_of::<f32>() as u32);
        }
    }

    fn replay_or_capture(&self, cache: &RefCell<GraphCache<D::Graph>>, key: StepKey, step: &mut dyn FnMut()) {
        if let Some(graph) = cache.borrow().graphs.get(&key) {
            self.guard(|d| d.replay(graph));
            return;
        }
        // The first step of a configuration runs plainly: it sizes every lazily grown buffer,
        // so the captured one allocates nothing.
        if cache.borrow_mut().seen.insert(key) {
            return step();
        }
        if self.guard(|d| d.begin_capture()).is_none() {
            return;
        }
        step();
        if let Some(graph) = self.guard(|d| d.end_capture()) {
            self.guard(|d| d.replay(&graph));
            let mut cache = cache.borrow_mut();
            cache.graphs.insert(key, graph);
            cache.captured += 1;
        }
    }
}

impl<D: Device> CudaBackend<D> {
    /// Runs one kernel on the device and reads its result back, so that a device which
    /// opens but cannot run this build's kernels (a launch failure, a refused module, a wrong
    /// result) is found before any work is given to it, while `--device auto` can still
    /// choose the CPU.
    pub fn self_test(&self) -> Result<(), CudaError> {
        let input = [1.0f32, -2.0, 3.5, 0.25];
        let expected: Vec<f32> = input.iter().map(|v| v * 2.0).collect();
        let bytes: Vec<u8> = input.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut mem = self.device.alloc(bytes.len())?;
        self.device.upload(&mut mem, &bytes)?;
        let KernelCall { kernel, args } = k::scale(DevPtr(self.device.address(&mem)), uint(input.len()), 2.0);
        self.device.launch(&Launch { kernel, grid: [1, 1, 1], block: [THREADS, 1, 1], shared_bytes: 0, args })?;
        let mut out = vec![0u8; bytes.len()];
        self.device.download(&mem, &mut out)?;
        let got: Vec<f32> = out.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if got != expected {
            return Err(CudaError::WrongResult { got, expected });
        }
        Ok(())
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
        self.download_bytes(&src.mem, &mut bytes);
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    /// `[loss_sum as f64 bits, correct]`, which `softmax_xent` adds to atomically.
    fn new_stats(&self) -> Self::StatsBuf {
        self.alloc(2)
    }

    fn take_stats(&self, stats: &mut Self::StatsBuf) -> Stats {
        let mut bytes = [0u8; 16];
        self.download_bytes(&stats.mem, &mut bytes);
        if let Some(mem) = &mut stats.mem {
            self.guard(|d| d.upload(mem, &[0; 16]));
        }
        let (loss, correct) = bytes.split_at(8);
        Stats {
            loss_sum: f64::from_le_bytes(loss.try_into().expect("8 bytes")),
            correct: u64::from_le_bytes(correct.try_into().expect("8 bytes")),
        }
    }

    fn write(&self, dst: &mut Self::Buf, src: &[f32]) {
        if let Some(mem) = &mut dst.mem {
            let bytes: Vec<u8> = src.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.guard(|d| d.upload(mem, &bytes));
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
        augment: Option<&Augmentation>,
    ) {
        let (images, labels_in, order, start) = (data.images.ptr(), data.labels.ptr(), order.ptr(), uint(start));
        let call = match augment {
            None => k::gather_batch(
                images,
                labels_in,
                order,
                start,
                uint(IMAGE_PIXELS),
                PIXEL_MEAN,
                PIXEL_STD,
                x.ptr(),
                labels.ptr(),
            ),
            Some(a) => k::gather_augmented(
                images,
                labels_in,
                order,
                start,
                dim(IMAGE_SIDE),
                PIXEL_MEAN,
                PIXEL_STD,
                x.ptr(),
                labels.ptr(),
                a.seed as u32,
                (a.seed >> 32) as u32,
                a.epoch,
                a.range.degrees,
                a.range.max_shift,
                a.range.scale[0],
                a.range.scale[1],
            ),
        };
        self.launch(call, [uint(count), 1, 1], THREADS, 0);
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
        let (w, bias) = (params.at(slot.offset), params.at(slot.bias().start));
        let [batch, c_in, c_out, height, width, kernel, pad] = conv_dims(s);
        let product = ConvProduct { m: s.c_out, n: s.batch * s.h_out() * s.w_out(), k: s.c_in * s.kernel * s.kernel };
        self.conv_product(product, y.ptr(), s.out_len(), false, relu, |out, unsplit, split_len, rows| {
            let relu = flag(relu && unsplit);
            k::conv2d_forward(
                x.ptr(),
                w,
                bias,
                out,
                batch,
                c_in,
                c_out,
                height,
                width,
                kernel,
                pad,
                relu,
                split_len,
                rows,
            )
        });
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
        let w = params.at(slot.offset);
        let [batch, c_in, c_out, height, width, kernel, pad] = conv_dims(s);
        let product = ConvProduct { m: s.c_in, n: s.batch * s.height * s.width, k: s.c_out * s.kernel * s.kernel };
        self.conv_product(product, dx.ptr(), s.in_len(), accumulate, false, |out, unsplit, split_len, rows| {
            let accumulate = flag(accumulate && unsplit);
            k::conv2d_backward_data(
                dy.ptr(),
                w,
                out,
                batch,
                c_in,
                c_out,
                height,
                width,
                kernel,
                pad,
                accumulate,
                split_len,
                rows,
            )
        });
    }

    fn conv2d_backward_params(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        grads: &mut Self::Buf,
        slot: ParamSlot,
    ) {
        let [batch, c_in, c_out, height, width, kernel, pad] = conv_dims(s);
        let product = ConvProduct { m: s.c_out, n: s.patch(), k: s.batch * s.h_out() * s.w_out() };
        // The kernel writes [dW | db], the slot's own layout.
        self.conv_product(product, grads.at(slot.offset), slot.len(), false, false, |out, _, split_len, rows| {
            k::conv2d_backward_filter(
                x.ptr(),
                dy.ptr(),
                out,
                batch,
                c_in,
                c_out,
                height,
                width,
                kernel,
                pad,
                split_len,
                rows,
            )
        });
    }

    fn relu_backward(&self, len: usize, y: &Self::Buf, dy: &mut Self::Buf) {
        self.launch_elementwise(k::relu_backward(y.ptr(), dy.ptr(), uint(len)), len);
    }

    fn axpby(&self, len: usize, alpha: f32, a: &Self::Buf, beta: f32, y: &mut Self::Buf, relu: bool) {
        self.launch_elementwise(k::axpby(alpha, a.ptr(), beta, y.ptr(), uint(len), flag(relu)), len);
    }

    fn scale(&self, len: usize, alpha: f32, y: &mut Self::Buf) {
        self.launch_elementwise(k::scale(y.ptr(), uint(len), alpha), len);
    }

    fn maxpool_forward(&self, s: &PoolShape, x: &Self::Buf, y: &mut Self::Buf, argmax: &mut Self::Idx) {
        let planes = uint(s.batch * s.channels);
        let call = k::maxpool_forward(x.ptr(), y.ptr(), argmax.ptr(), planes, uint(s.height), uint(s.width));
        self.launch_elementwise(call, s.out_len());
    }

    fn maxpool_backward(&self, s: &PoolShape, dy: &Self::Buf, argmax: &Self::Idx, dx: &mut Self::Buf) {
        let planes = uint(s.batch * s.channels);
        let call = k::maxpool_backward(dy.ptr(), argmax.ptr(), dx.ptr(), planes, uint(s.height), uint(s.width));
        self.launch_elementwise(call, s.in_len());
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
        self.sgemm(&gemm);
        let call = k::add_bias_rows(y.ptr(), params.at(slot.bias().start), uint(s.batch), uint(s.outputs));
        self.launch_elementwise(call, s.batch * s.outputs);
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
        self.sgemm(&gemm);
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
        self.sgemm(&gemm);
        let call = k::column_sums(dy.ptr(), grads.at(slot.bias().start), uint(s.batch), uint(s.outputs));
        let warps = THREADS / 32;
        self.launch(call, [uint(s.outputs), 1, 1], THREADS, warps * 4);
    }

    fn softmax_cross_entropy(
        &self,
        batch: usize,
        classes: usize,
        smoothing: f32,
        logits: &Self::Buf,
        labels: &Self::Idx,
        dlogits: &mut Self::Buf,
        stats: &mut Self::StatsBuf,
    ) {
        let call = k::softmax_xent(
            logits.ptr(),
            labels.ptr(),
            dlogits.ptr(),
            uint(batch),
            uint(classes),
            smoothing,
            stats.at(0),
            stats.at(1),
        );
        self.launch(call, [blocks(batch, THREADS as usize), 1, 1], THREADS, 0);
    }

    fn sgd_step(
        &self,
        update: SgdUpdate,
        scalars: &Self::Buf,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        momentum: &mut Self::Buf,
    ) {
        let n = params.len;
        let SgdUpdate { nesterov, weight_decay } = update;
        let call = k::sgd_step(
            params.ptr(),
            grads.ptr(),
            momentum.ptr(),
            uint(n),
            scalars.ptr(),
            weight_decay,
            flag(nesterov),
        );
        self.launch_elementwise(call, n);
    }

    fn adam_step(
        &self,
        update: AdamUpdate,
        scalars: &Self::Buf,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
    ) {
        let n = params.len;
        let AdamUpdate { beta2, one_minus_beta2, eps, l2 } = update;
        let call = k::adam_step(
            params.ptr(),
            grads.ptr(),
            m.ptr(),
            v.ptr(),
            uint(n),
            scalars.ptr(),
            beta2,
            one_minus_beta2,
            eps,
            l2,
        );
        self.launch_elementwise(call, n);
    }

    fn run_step(&self, key: StepKey, step: &mut (dyn FnMut(&Self) + Send)) {
        match &self.graphs {
            Some(cache) => self.replay_or_capture(cache, key, &mut || step(self)),
            None => step(self),
        }
    }

    fn failure(&self) -> Result<(), DeviceFailure> {
        match &*self.failed.borrow() {
            Some(e) => Err(DeviceFailure(format!("the GPU ({}) failed: {e}", self.device.name()))),
            None => Ok(()),
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
