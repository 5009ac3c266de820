//! The small device interface the CUDA backend is written against once: allocation, copies,
//! launches by kernel name, sgemm and stream capture. [`super::hw::CudarcDevice`] implements
//! it on a GPU, [`super::emu::EmuDevice`] on the CPU with the host emulator.

use super::CudaError;

/// One kernel argument, passed by value as `cuLaunchKernel` takes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    /// A device address.
    Ptr(u64),
    I32(i32),
    U32(u32),
    F32(f32),
}

impl Arg {
    /// The argument's bytes in the leading part of an 8-byte slot (little-endian, as the
    /// kernel reads it).
    pub fn to_slot(self) -> [u8; 8] {
        let mut slot = [0; 8];
        match self {
            Arg::Ptr(p) => slot.copy_from_slice(&p.to_le_bytes()),
            Arg::I32(v) => slot[..4].copy_from_slice(&v.to_le_bytes()),
            Arg::U32(v) => slot[..4].copy_from_slice(&v.to_le_bytes()),
            Arg::F32(v) => slot[..4].copy_from_slice(&v.to_le_bytes()),
        }
        slot
    }
}

/// A device address, as a kernel's pointer parameter takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevPtr(pub u64);

/// A kernel and its arguments, made by the typed launch functions that build.rs generates
/// from the kernels' signatures ([`super::kernels`]), so that a misspelled kernel or a wrong
/// argument list does not compile.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelCall {
    pub kernel: &'static str,
    pub args: Vec<Arg>,
}

/// A kernel launch: grid and block sizes, dynamic shared memory and arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub kernel: &'static str,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
    pub args: Vec<Arg>,
}

/// `C = op(A)·op(B) + beta·C` on column-major matrices, as `cublasSgemm` computes it
/// (alpha is 1): `op(A)` is `m × k`, `op(B)` is `k × n`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub lda: usize,
    pub b: u64,
    pub ldb: usize,
    pub beta: f32,
    pub c: u64,
    pub ldc: usize,
}

/// What the CUDA backend needs from a device. Work is queued in order on one stream; only
/// [`Device::download`] waits for it.
pub trait Device {
    /// An allocation, freed on drop. `Send`, so that buffers can move to the thread that
    /// runs a model's ops, and `Sync`, like every backend's buffers ([`crate::backend::Backend::Buf`]).
    type Mem: Send + Sync;
    /// A captured sequence of work that can be replayed.
    type Graph;

    fn name(&self) -> String;
    /// Zero-filled device memory of `bytes` bytes.
    fn alloc(&self, bytes: usize) -> Result<Self::Mem, CudaError>;
    /// The device address of an allocation's first byte.
    fn address(&self, mem: &Self::Mem) -> u64;
    /// Copies `src` to the start of `dst`.
    fn upload(&self, dst: &mut Self::Mem, src: &[u8]) -> Result<(), CudaError>;
    /// Waits for queued work, then copies the start of `src` into `dst`.
    fn download(&self, src: &Self::Mem, dst: &mut [u8]) -> Result<(), CudaError>;
    fn launch(&self, launch: &Launch) -> Result<(), CudaError>;
    fn sgemm(&self, gemm: &Gemm) -> Result<(), CudaError>;
    /// From here until [`Device::end_capture`], launches and sgemms are recorded, not run.
    fn begin_capture(&self) -> Result<(), CudaError>;
    fn end_capture(&self) -> Result<Self::Graph, CudaError>;
    /// Queues a captured graph's work.
    fn replay(&self, graph: &Self::Graph) -> Result<(), CudaError>;
}
