//! The kernels of `kernels/*.cu`, compiled to PTX by build.rs, and one launch function per
//! kernel, generated from its signature: `kernels::axpby(alpha, a, beta, y, n, relu)` takes
//! the parameters of `axpby` in `kernels/elementwise.cu`, in order, with their types.

use super::device::{Arg, DevPtr, KernelCall};

/// One kernel file as embedded in the binary.
pub struct KernelModule {
    pub file: &'static str,
    pub ptx: &'static str,
    /// The source with its headers inlined, for recompiling at run time.
    pub source: &'static str,
    pub kernels: &'static [&'static str],
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
