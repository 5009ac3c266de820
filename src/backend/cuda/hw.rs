//! The device interface on a real GPU: cudarc's driver API, one non-blocking stream, cuBLAS
//! for the fc layer, stream capture into CUDA graphs.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUresult, CUstreamCaptureMode};
use cudarc::driver::{CudaContext, CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream, DevicePtr, DriverError};
use cudarc::nvrtc::{CompileOptions, Ptx};

use super::device::{Device, Gemm, Launch};
use super::kernels::{KernelModule, MODULES};
use super::CudaError;

/// cuBLAS's workspace, set explicitly so that captured sgemms never allocate.
const BLAS_WORKSPACE_BYTES: usize = 4 << 20;

/// A device allocation and its address.
pub struct HwMem {
    slice: CudaSlice<u8>,
    address: u64,
}

pub struct CudarcDevice {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    functions: HashMap<&'static str, CudaFunction>,
    name: String,
    _blas_workspace: CudaSlice<u8>,
}

/// Fails with [`CudaError::MissingLibrary`] unless the driver and cuBLAS libraries load:
/// with dynamic loading, cudarc panics on the first call into a missing library.
fn check_libraries() -> Result<(), CudaError> {
    // SAFETY: these only try to open the shared libraries.
    let present = unsafe {
        [
            (
                "the NVIDIA driver (libcuda.so.1) cannot be loaded: no NVIDIA driver is installed, or its folder \
                 is not on the loader's path",
                cudarc::driver::sys::is_culib_present(),
            ),
            (
                "cuBLAS (libcublas.so.13 or libcublas.so.12) cannot be loaded: install it (with the CUDA toolkit, \
                 or `pip install nvidia-cublas-cu12`) and put its lib folder on LD_LIBRARY_PATH",
                cudarc::cublas::sys::is_culib_present(),
            ),
        ]
    };
    match present.iter().find(|(_, found)| !found) {
        Some((name, _)) => Err(CudaError::MissingLibrary(name)),
        None => Ok(()),
    }
}

impl CudarcDevice {
    /// Opens GPU `ordinal`, loads every kernel module and sets up cuBLAS.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        check_libraries()?;
        let count = CudaContext::device_count().map_err(no_device)?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::NoDevice);
        }
        let ctx = CudaContext::new(ordinal).map_err(no_device)?;
        // One stream, in order: cudarc's per-buffer events would only add work (and record
        // calls inside graph capture).
        // SAFETY: called before any allocation or launch on this context.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let blas = CudaBlas::new(stream.clone())?;
        let workspace = stream.alloc_zeros::<u8>(BLAS_WORKSPACE_BYTES)?;
        let (ptr, _) = workspace.device_ptr(&stream);
        // SAFETY: the workspace outlives the handle (both live in the returned device).
        unsafe {
            cudarc::cublas::sys::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut c_void, BLAS_WORKSPACE_BYTES)
                .result()?
        };
        let mut functions = HashMap::new();
        for module in MODULES {
            let loaded = load_module(&ctx, module)?;
            for &name in module.kernels {
                functions.insert(name, loaded.load_function(name)?);
            }
        }
        let name = format!("cuda:{ordinal} ({})", ctx.name()?);
        Ok(CudarcDevice { stream, blas, functions, name, _blas_workspace: workspace })
    }
}

fn no_device(e: DriverError) -> CudaError {
    match e.0 {
        CUresult::CUDA_ERROR_NO_DEVICE => CudaError::NoDevice,
        _ => CudaError::Driver(e),
    }
}

/// Loads the embedded PTX; when the driver is older than the NVRTC that built it, compiles
/// the embedded source again with the local NVRTC for this device's architecture.
fn load_module(ctx: &Arc<CudaContext>, module: &KernelModule) -> Result<Arc<CudaModule>, CudaError> {
    match ctx.load_module(Ptx::from_src(module.ptx)) {
        Err(DriverError(CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION)) => {
            tracing::info!("the driver refuses the embedded PTX of {}; recompiling it with NVRTC", module.file);
            Ok(ctx.load_module(recompile(ctx, module)?)?)
        }
        loaded => Ok(loaded?),
    }
}

fn recompile(ctx: &Arc<CudaContext>, module: &KernelModule) -> Result<Ptx, CudaError> {
    // SAFETY: only tries to open the shared library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::MissingLibrary(
            "the driver refuses the embedded PTX (built by a newer CUDA than the driver supports), and NVRTC \
             (libnvrtc), which would recompile it for this driver, cannot be loaded: update the NVIDIA driver, or \
             install the NVRTC of the driver's CUDA version (`pip install nvidia-cuda-nvrtc-cu12`) and put its lib \
             folder on LD_LIBRARY_PATH",
        ));
    }
    let (major, minor) = ctx.compute_capability()?;
    let mut options =
        vec![format!("--gpu-architecture=compute_{major}{minor}"), "-lineinfo".into(), "--std=c++17".into()];
    options.extend(super::tiles::define_flags());
    let opts = CompileOptions { options, name: Some(module.file.into()), ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(module.source, opts)
        .map_err(|e| CudaError::Compile { file: module.file, log: format!("{e:?}") })
}

fn op(trans: bool) -> cublasOperation_t {
    if trans {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

impl Device for CudarcDevice {
    type Mem = HwMem;
    type Graph = CudaGraph;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn alloc(&self, bytes: usize) -> Result<HwMem, CudaError> {
        let slice = self.stream.alloc_zeros::<u8>(bytes.max(1))?;
        let address = slice.device_ptr(&self.stream).0;
        Ok(HwMem { slice, address })
    }

    fn address(&self, mem: &HwMem) -> u64 {
        mem.address
    }

    fn upload(&self, dst: &mut HwMem, src: &[u8]) -> Result<(), CudaError> {
        let mut view = dst.slice.slice_mut(..src.len());
        Ok(self.stream.memcpy_htod(src, &mut view)?)
    }

    fn download(&self, src: &HwMem, dst: &mut [u8]) -> Result<(), CudaError> {
        self.stream.memcpy_dtoh(&src.slice.slice(..dst.len()), dst)?;
        Ok(self.stream.synchronize()?)
    }

    fn launch(&self, l: &Launch) -> Result<(), CudaError> {
        let function = self.functions.get(l.kernel).ok_or_else(|| CudaError::UnknownKernel(l.kernel.into()))?;
        let mut slots: Vec<[u8; 8]> = l.args.iter().map(|a| a.to_slot()).collect();
        let mut params: Vec<*mut c_void> = slots.iter_mut().map(|s| s.as_mut_ptr().cast()).collect();
        let [gx, gy, gz] = l.grid;
        let [bx, by, bz] = l.block;
        // SAFETY: the backend builds argument lists matching the kernels' signatures, over
        // live allocations sized for the shapes it launches.
        unsafe {
            cudarc::driver::result::launch_kernel(
                function.cu_function(),
                (gx, gy, gz),
                (bx, by, bz),
                l.shared_bytes,
                self.stream.cu_stream(),
                &mut params,
            )?
        };
        Ok(())
    }

    fn sgemm(&self, g: &Gemm) -> Result<(), CudaError> {
        let dim = |v: usize| v as i32;
        // SAFETY: as for launches, the addresses and leading dimensions describe live matrices.
        unsafe {
            cudarc::cublas::result::sgemm(
                *self.blas.handle(),
                op(g.trans_a),
                op(g.trans_b),
                dim(g.m),
                dim(g.n),
                dim(g.k),
                &1.0,
                g.a as *const f32,
                dim(g.lda),
                g.b as *const f32,
                dim(g.ldb),
                &g.beta,
                g.c as *mut f32,
                dim(g.ldc),
            )?
        };
        Ok(())
    }

    fn begin_capture(&self) -> Result<(), CudaError> {
        Ok(self.stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?)
    }

    fn end_capture(&self) -> Result<CudaGraph, CudaError> {
        self.stream.end_capture(CUgraphInstantiate_flags(0))?.ok_or(CudaError::NotCapturing)
    }

    fn replay(&self, graph: &CudaGraph) -> Result<(), CudaError> {
        Ok(graph.launch()?)
    }
}
