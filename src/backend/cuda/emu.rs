//! The device interface over host memory and the host emulator of `kernels/emu/`: kernels from
//! `kernels/*.cu` run as fibers on the CPU, sgemm is a plain loop. Device addresses are host
//! addresses, so the backend's pointer arithmetic is exercised unchanged.

use std::alloc::Layout;
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::ptr::NonNull;

use super::device::{Device, Gemm, Launch};
use super::CudaError;

extern "C" {
    fn emu_launch(
        name: *const c_char,
        grid: *const c_uint,
        block: *const c_uint,
        shared_bytes: c_uint,
        args: *mut *mut c_void,
    ) -> c_int;
}

/// Host memory standing in for a device allocation, 16-byte aligned like `cudaMalloc`'s.
pub struct EmuMem {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: an `EmuMem` owns its allocation alone, like a `Box<[u8]>`; the emulator reaches it
// only through the device calls made on the thread that holds the buffer.
unsafe impl Send for EmuMem {}
// SAFETY: a shared `EmuMem` gives no access to its bytes; only the device calls do, and the
// emulated device is not `Sync`, so they all come from the one thread that holds it.
unsafe impl Sync for EmuMem {}

impl Drop for EmuMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `EmuDevice::alloc` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Recorded work, replayed in order.
#[derive(Clone, Debug)]
enum Op {
    Launch(Launch),
    Gemm(Gemm),
}

/// A captured op list.
pub struct EmuGraph(Vec<Op>);

/// The emulated device: runs each launch to completion on the calling thread.
#[derive(Default)]
pub struct EmuDevice {
    capture: RefCell<Option<Vec<Op>>>,
    queued: Cell<Queued>,
}

/// Work queued on a device so far: what a GPU's time per step is counted in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Queued {
    pub kernels: usize,
    pub sgemms: usize,
}

impl EmuDevice {
    pub fn new() -> Self {
        Self::default()
    }

    /// Kernels and sgemms queued so far, run or recorded.
    pub fn queued(&self) -> Queued {
        self.queued.get()
    }

    /// Records `op` when capturing; otherwise hands it back to be run.
    fn record(&self, op: Op) -> Option<Op> {
        match self.capture.borrow_mut().as_mut() {
            Some(ops) => {
                ops.push(op);
                None
            }
            None => Some(op),
        }
    }

    fn run(&self, op: &Op) -> Result<(), CudaError> {
        match op {
            Op::Launch(l) => run_launch(l),
            Op::Gemm(g) => {
                // SAFETY: the backend passes addresses of live allocations sized for the shapes.
                unsafe { host_sgemm(g) };
                Ok(())
            }
        }
    }
}

fn run_launch(l: &Launch) -> Result<(), CudaError> {
    let name = CString::new(l.kernel).expect("kernel names have no NUL");
    let mut slots: Vec<[u8; 8]> = l.args.iter().map(|a| a.to_slot()).collect();
    let mut pointers: Vec<*mut c_void> = slots.iter_mut().map(|s| s.as_mut_ptr().cast()).collect();
    // SAFETY: the emulator reads each argument through `pointers` as the kernel's parameter
    // type; the backend builds argument lists that match the kernels' signatures.
    let status =
        unsafe { emu_launch(name.as_ptr(), l.grid.as_ptr(), l.block.as_ptr(), l.shared_bytes, pointers.as_mut_ptr()) };
    match status {
        0 => Ok(()),
        _ => Err(CudaError::UnknownKernel(l.kernel.to_string())),
    }
}

/// Column-major `C = op(A)·op(B) + beta·C` with f32 accumulation.
///
/// # Safety
/// The addresses and leading dimensions must describe live, non-overlapping host matrices.
unsafe fn host_sgemm(g: &Gemm) {
    let (a, b, c) = (g.a as *const f32, g.b as *const f32, g.c as *mut f32);
    for j in 0..g.n {
        for i in 0..g.m {
            let mut sum = 0.0f32;
            for p in 0..g.k {
                let av = if g.trans_a { *a.add(p + i * g.lda) } else { *a.add(i + p * g.lda) };
                let bv = if g.trans_b { *b.add(j + p * g.ldb) } else { *b.add(p + j * g.ldb) };
                sum += av * bv;
            }
            let out = c.add(i + j * g.ldc);
            *out = if g.beta == 0.0 { sum } else { sum + g.beta * *out };
        }
    }
}

impl Device for EmuDevice {
    type Mem = EmuMem;
    type Graph = EmuGraph;

    fn name(&self) -> String {
        "cuda emulation (host)".into()
    }

    fn alloc(&self, bytes: usize) -> Result<EmuMem, CudaError> {
        let layout = Layout::from_size_align(bytes.max(1), 16).map_err(|_| CudaError::OutOfMemory(bytes))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).ok_or(CudaError::OutOfMemory(bytes))?;
        Ok(EmuMem { ptr, layout })
    }

    fn address(&self, mem: &EmuMem) -> u64 {
        mem.ptr.as_ptr() as u64
    }

    fn upload(&self, dst: &mut EmuMem, src: &[u8]) -> Result<(), CudaError> {
        assert!(src.len() <= dst.layout.size(), "upload of {} bytes into {}", src.len(), dst.layout.size());
        // SAFETY: bounds checked above; `src` is host memory distinct from the allocation.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.ptr.as_ptr(), src.len()) };
        Ok(())
    }

    fn download(&self, src: &EmuMem, dst: &mut [u8]) -> Result<(), CudaError> {
        assert!(dst.len() <= src.layout.size(), "download of {} bytes from {}", dst.len(), src.layout.size());
        // SAFETY: bounds checked above.
        unsafe { std::ptr::copy_nonoverlapping(src.ptr.as_ptr(), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn launch(&self, launch: &Launch) -> Result<(), CudaError> {
        self.queued.set(Queued { kernels: self.queued.get().kernels + 1, ..self.queued.get() });
        match self.record(Op::Launch(launch.clone())) {
            Some(op) => self.run(&op),
            None => Ok(()),
        }
    }

    fn sgemm(&self, gemm: &Gemm) -> Result<(), CudaError> {
        self.queued.set(Queued { sgemms: self.queued.get().sgemms + 1, ..self.queued.get() });
        match self.record(Op::Gemm(*gemm)) {
            Some(op) => self.run(&op),
            None => Ok(()),
        }
    }

    fn begin_capture(&self) -> Result<(), CudaError> {
        *self.capture.borrow_mut() = Some(Vec::new());
        Ok(())
    }

    fn end_capture(&self) -> Result<EmuGraph, CudaError> {
        self.capture.borrow_mut().take().map(EmuGraph).ok_or(CudaError::NotCapturing)
    }

    fn replay(&self, graph: &EmuGraph) -> Result<(), CudaError> {
        graph.0.iter().try_for_each(|op| self.run(op))
    }
}
