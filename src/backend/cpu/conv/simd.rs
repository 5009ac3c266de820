//! The vector types the convolution kernels are written over, and the entry point that
//! compiles a kernel with AVX2 and FMA where the CPU has them.

use std::array;

use super::{Vector, LANES};

/// The vector operations the kernels use, for one vector type: AVX2 registers where the CPU
/// has AVX2 and FMA, plain arrays (which LLVM vectorizes as far as the target allows)
/// elsewhere.
pub trait Simd: Copy {
    type V: Copy;
    fn zero(self) -> Self::V;
    fn load(self, v: &[f32; LANES]) -> Self::V;
    /// `x` in every lane.
    fn splat(self, x: f32) -> Self::V;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// `acc + a·b`.
    fn fma(self, a: Self::V, b: Self::V, acc: Self::V) -> Self::V;
    fn store(self, v: Self::V) -> Vector;

    /// `acc + x·w`.
    #[inline(always)]
    fn mul_add(self, x: f32, w: Self::V, acc: Self::V) -> Self::V {
        self.fma(self.splat(x), w, acc)
    }
}

#[derive(Clone, Copy)]
struct Portable;

impl Simd for Portable {
    type V = Vector;

    #[inline(always)]
    fn zero(self) -> Vector {
        [0.0; LANES]
    }

    #[inline(always)]
    fn load(self, v: &Vector) -> Vector {
        *v
    }

    #[inline(always)]
    fn splat(self, x: f32) -> Vector {
        [x; LANES]
    }

    #[inline(always)]
    fn add(self, a: Vector, b: Vector) -> Vector {
        array::from_fn(|l| a[l] + b[l])
    }

    /// Two roundings: `f32::mul_add` is a library call on CPUs without FMA.
    #[inline(always)]
    fn fma(self, a: Vector, b: Vector, acc: Vector) -> Vector {
        array::from_fn(|l| a[l] * b[l] + acc[l])
    }

    #[inline(always)]
    fn store(self, v: Vector) -> Vector {
        v
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };

    use super::{Kernel, Simd, Vector};

    /// AVX2 and FMA: [`Avx2::detect`] hands one out only on a CPU that has them.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx2(());

    impl Avx2 {
        pub fn detect() -> Option<Self> {
            let supported = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            supported.then_some(Avx2(()))
        }

        pub fn run(self, kernel: impl Kernel) {
            // SAFETY: `self` proves the CPU has the features `run_with` is compiled for.
            unsafe { run_with(self, kernel) }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_with<K: Kernel>(simd: Avx2, kernel: K) {
        kernel.run(simd);
    }

    // SAFETY (every `unsafe` below): an `Avx2` exists only on a CPU with AVX2 and FMA, and
    // loads and stores go through whole `[f32; 8]` arrays.
    impl Simd for Avx2 {
        type V = __m256;

        #[inline(always)]
        fn zero(self) -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }

        #[inline(always)]
        fn load(self, v: &Vector) -> __m256 {
            unsafe { _mm256_loadu_ps(v.as_ptr()) }
        }

        #[inline(always)]
        fn splat(self, x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }

        #[inline(always)]
        fn add(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }

        #[inline(always)]
        fn fma(self, a: __m256, b: __m256, acc: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, acc) }
        }

        #[inline(always)]
        fn store(self, v: __m256) -> Vector {
            let mut out = [0.0; 8];
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
            out
        }
    }
}

/// Work that runs on the vectors an [`Isa`] names. Implementations mark `run`
/// `#[inline(always)]`, so that it compiles inside the AVX2 entry point with its target
/// features (the default x86-64 target has neither AVX nor FMA).
pub trait Kernel {
    fn run<S: Simd>(self, simd: S);
}

/// Which kernels run: the best the CPU has, or the portable ones everywhere.
#[derive(Clone, Copy, Debug)]
pub struct Isa(Kind);

#[derive(Clone, Copy, Debug)]
enum Kind {
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::Avx2),
    Portable,
}

impl Isa {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = avx2::Avx2::detect() {
            return Isa(Kind::Avx2(avx2));
        }
        Isa::portable()
    }

    pub fn portable() -> Self {
        Isa(Kind::Portable)
    }

    pub fn name(&self) -> &'static str {
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2(_) => "AVX2+FMA",
            Kind::Portable => "portable",
        }
    }

    pub fn run(self, kernel: impl Kernel) {
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2(avx2) => avx2.run(kernel),
            Kind::Portable => kernel.run(Portable),
        }
    }
}

/// The first vector of `src`.
#[inline(always)]
pub(super) fn vector(src: &[f32]) -> &[f32; LANES] {
    src[..LANES].try_into().expect("a whole vector")
}

/// The first `CV` vectors of `src`.
#[inline(always)]
pub(super) fn load<S: Simd, const CV: usize>(simd: S, src: &[f32]) -> [S::V; CV] {
    let src = &src[..CV * LANES];
    array::from_fn(|v| simd.load(vector(&src[v * LANES..])))
}

/// The accumulators as floats. Each iteration is one store, so these loops unroll fully and
/// `acc` is only ever indexed by constants; anything that leaves it indexed at run time keeps
/// it in memory throughout the reduction.
#[inline(always)]
pub(super) fn spill<S: Simd, const N: usize, const CV: usize>(simd: S, acc: &[[S::V; CV]; N]) -> [[Vector; CV]; N] {
    let mut tile = [[[0.0; LANES]; CV]; N];
    for i in 0..N {
        for v in 0..CV {
            tile[i][v] = simd.store(acc[i][v]);
        }
    }
    tile
}
