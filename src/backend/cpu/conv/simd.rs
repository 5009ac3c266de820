//! The vector types the convolution kernels are written over, and the entry points that
//! compile a kernel with AVX2 and FMA, or with AVX-512F, where the CPU has them.

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
    /// `max(v, 0)`, 0 for NaN, as `f32::max` gives.
    fn relu(self, v: Self::V) -> Self::V;
    fn store(self, v: Self::V) -> Vector;
    /// Eight vectors turned: row `c` holds lane `c` of each, in order.
    fn transpose(self, v: [Self::V; LANES]) -> [Self::V; LANES];

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
    fn relu(self, v: Vector) -> Vector {
        v.map(|v| v.max(0.0))
    }

    #[inline(always)]
    fn store(self, v: Vector) -> Vector {
        v
    }

    #[inline(always)]
    fn transpose(self, v: [Vector; LANES]) -> [Vector; LANES] {
        array::from_fn(|c| array::from_fn(|p| v[p][c]))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_max_ps, _mm256_permute2f128_ps, _mm256_set1_ps,
        _mm256_setzero_ps, _mm256_shuffle_ps, _mm256_storeu_ps, _mm256_unpackhi_ps, _mm256_unpacklo_ps,
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

        /// `maxps` returns its second operand, 0, where `v` is NaN.
        #[inline(always)]
        fn relu(self, v: __m256) -> __m256 {
            unsafe { _mm256_max_ps(v, _mm256_setzero_ps()) }
        }

        #[inline(always)]
        fn store(self, v: __m256) -> Vector {
            let mut out = [0.0; 8];
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
            out
        }

        #[inline(always)]
        fn transpose(self, v: [__m256; 8]) -> [__m256; 8] {
            // SAFETY: an `Avx2` exists only on a CPU with AVX.
            unsafe { transpose8(v) }
        }
    }

    /// The 8×8 transpose: lane `j` of vector `i` becomes lane `i` of vector `j`. Pairs within
    /// 128-bit halves, then quadruples, then the halves swapped across.
    ///
    /// # Safety
    /// The CPU must have AVX.
    #[inline(always)]
    pub(super) unsafe fn transpose8(v: [__m256; 8]) -> [__m256; 8] {
        unsafe {
            let t = [
                _mm256_unpacklo_ps(v[0], v[1]),
                _mm256_unpackhi_ps(v[0], v[1]),
                _mm256_unpacklo_ps(v[2], v[3]),
                _mm256_unpackhi_ps(v[2], v[3]),
            ];
            let u = [
                _mm256_unpacklo_ps(v[4], v[5]),
                _mm256_unpackhi_ps(v[4], v[5]),
                _mm256_unpacklo_ps(v[6], v[7]),
                _mm256_unpackhi_ps(v[6], v[7]),
            ];
            let q = [
                _mm256_shuffle_ps::<0x44>(t[0], t[2]),
                _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
                _mm256_shuffle_ps::<0x44>(t[1], t[3]),
                _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            ];
            let r = [
                _mm256_shuffle_ps::<0x44>(u[0], u[2]),
                _mm256_shuffle_ps::<0xEE>(u[0], u[2]),
                _mm256_shuffle_ps::<0x44>(u[1], u[3]),
                _mm256_shuffle_ps::<0xEE>(u[1], u[3]),
            ];
            [
                _mm256_permute2f128_ps::<0x20>(q[0], r[0]),
                _mm256_permute2f128_ps::<0x20>(q[1], r[1]),
                _mm256_permute2f128_ps::<0x20>(q[2], r[2]),
                _mm256_permute2f128_ps::<0x20>(q[3], r[3]),
                _mm256_permute2f128_ps::<0x31>(q[0], r[0]),
                _mm256_permute2f128_ps::<0x31>(q[1], r[1]),
                _mm256_permute2f128_ps::<0x31>(q[2], r[2]),
                _mm256_permute2f128_ps::<0x31>(q[3], r[3]),
            ]
        }
    }
}

/// AVX-512F, 16 lanes a register, for the kernels written for it ([`WideKernel`]); a CPU
/// that has it has AVX2 and FMA too, which every other kernel runs on.
#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    use std::arch::x86_64::{
        __m256, __m512, _mm256_castpd_ps, _mm256_castps_pd, _mm256_loadu_ps, _mm256_storeu_ps, _mm512_add_epi32,
        _mm512_add_ps, _mm512_broadcast_f64x4, _mm512_castpd_ps, _mm512_castps256_ps512, _mm512_castps512_ps256,
        _mm512_castps_pd, _mm512_cmp_ps_mask, _mm512_extractf64x4_pd, _mm512_fmadd_ps, _mm512_insertf64x4,
        _mm512_loadu_ps, _mm512_mask_blend_epi32, _mm512_mask_blend_ps, _mm512_mask_storeu_epi32,
        _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_max_ps, _mm512_permutex2var_ps, _mm512_set1_epi32,
        _mm512_set1_ps, _mm512_setr_epi32, _mm512_setzero_ps, _mm512_storeu_ps, _CMP_GT_OQ,
    };

    use super::avx2::transpose8;

    /// Floats per register.
    pub const LANES: usize = 16;
    pub type Vector = [f32; LANES];

    /// The first register's worth of `src`.
    #[inline(always)]
    pub fn register(src: &[f32]) -> &Vector {
        src[..LANES].try_into().expect("a whole register")
    }

    /// [`Avx512::detect`] hands one out only on a CPU with AVX-512F.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx512(());

    /// Work written for [`Avx512`] registers. Implementations mark `run` `#[inline(always)]`,
    /// so that it compiles inside the AVX-512 entry point with its target features.
    pub trait WideKernel {
        fn run(self, simd: Avx512);
    }

    impl Avx512 {
        pub fn detect() -> Option<Self> {
            std::is_x86_feature_detected!("avx512f").then_some(Avx512(()))
        }

        pub fn run(self, kernel: impl WideKernel) {
            // SAFETY: `self` proves the CPU has the features `run_with` is compiled for.
            unsafe { run_with(self, kernel) }
        }
    }

    /// The mask of the first `n` lanes (all 16 from `n = 16` on).
    #[inline(always)]
    fn first_lanes(n: usize) -> u16 {
        if n >= LANES {
            u16::MAX
        } else {
            (1 << n) - 1
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn run_with<K: WideKernel>(simd: Avx512, kernel: K) {
        kernel.run(simd);
    }

    // SAFETY (every `unsafe` below): an `Avx512` exists only on a CPU with AVX-512F, and
    // loads and stores go through whole `[f32; 16]` arrays.
    impl Avx512 {
        #[inline(always)]
        pub fn zero(self) -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }

        #[inline(always)]
        pub fn load(self, v: &Vector) -> __m512 {
            unsafe { _mm512_loadu_ps(v.as_ptr()) }
        }

        #[inline(always)]
        pub fn splat(self, x: f32) -> __m512 {
            unsafe { _mm512_set1_ps(x) }
        }

        /// The first `src.len()` floats (16 at most), zeros in the lanes after them.
        #[inline(always)]
        pub fn load_first(self, src: &[f32]) -> __m512 {
            // SAFETY: the mask covers the lanes within `src`; masked-off lanes read nothing.
            unsafe { _mm512_maskz_loadu_ps(first_lanes(src.len()), src.as_ptr()) }
        }

        /// Stores the first `dst.len()` lanes of `v` (16 at most) into `dst`.
        #[inline(always)]
        pub fn store_first(self, dst: &mut [f32], v: __m512) {
            // SAFETY: the mask covers the lanes within `dst`; masked-off lanes write nothing.
            unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr(), first_lanes(dst.len()), v) }
        }

        /// The 2×2 max-pool windows `0..y.len()` (16 at most) of two rows that start at a
        /// window, `top` (at `at` in its plane, `width` floats a row) and `bottom`: each
        /// maximum into `y`, its position in the plane into `idx`. The first maximum in scan
        /// order wins, as in the scalar pool: a compare that is false for NaN keeps the
        /// earlier value, like its `if b > a`.
        #[inline(always)]
        pub fn max_pool_windows(
            self,
            (top, bottom): (&[f32], &[f32]),
            (at, width): (u32, u32),
            y: &mut [f32],
            idx: &mut [u32],
        ) {
            let len = 2 * y.len();
            assert!(len <= 2 * LANES && top.len() >= len && bottom.len() >= len, "at most 16 whole windows");
            assert_eq!(idx.len(), y.len(), "a position per window");
            // SAFETY: the masked store writes the first `idx.len()` lanes, within `idx`.
            unsafe {
                let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                let odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
                // The left and the right pixel of each window of a row.
                let pixels = |row: &[f32]| {
                    let split = len.min(LANES);
                    let (a, b) = (self.load_first(&row[..split]), self.load_first(&row[split..len]));
                    (_mm512_permutex2var_ps(a, evens, b), _mm512_permutex2var_ps(a, odds, b))
                };
                let upper_at = _mm512_add_epi32(_mm512_set1_epi32(at as i32), evens);
                let lower_at = _mm512_add_epi32(upper_at, _mm512_set1_epi32(width as i32));
                let first_max = |(a, i), (b, j)| {
                    let later = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(b, a);
                    (_mm512_mask_blend_ps(later, a, b), _mm512_mask_blend_epi32(later, i, j))
                };
                let one = _mm512_set1_epi32(1);
                let ((left, right), next) = (pixels(top), _mm512_add_epi32(upper_at, one));
                let upper = first_max((left, upper_at), (right, next));
                let ((left, right), next) = (pixels(bottom), _mm512_add_epi32(lower_at, one));
                let lower = first_max((left, lower_at), (right, next));
                let (max, at) = first_max(upper, lower);
                self.store_first(y, max);
                _mm512_mask_storeu_epi32(idx.as_mut_ptr().cast(), first_lanes(idx.len()), at);
            }
        }

        #[inline(always)]
        pub fn add(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }

        /// `acc + x·w`, `x` broadcast to every lane.
        #[inline(always)]
        pub fn mul_add(self, x: f32, w: __m512, acc: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(_mm512_set1_ps(x), w, acc) }
        }

        #[inline(always)]
        pub fn relu(self, v: __m512) -> __m512 {
            unsafe { _mm512_max_ps(v, _mm512_setzero_ps()) }
        }

        #[inline(always)]
        pub fn store(self, v: __m512) -> Vector {
            let mut out = [0.0; LANES];
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) };
            out
        }

        /// Eight registers turned: row `c` holds lane `c` of each, in order. In registers,
        /// as two 8×8 transposes of their halves; read out lane by lane instead, LLVM
        /// vectorizes the reads into gathers, which cost a sixth of a tile's time.
        #[inline(always)]
        pub fn transpose(self, v: [__m512; 8]) -> [[f32; 8]; LANES] {
            let (mut low, mut high) = ([self.half(v[0], false); 8], [self.half(v[0], true); 8]);
            for p in 1..8 {
                low[p] = self.half(v[p], false);
                high[p] = self.half(v[p], true);
            }
            let mut out = [[0.0; 8]; LANES];
            // SAFETY: a CPU with AVX-512F has AVX.
            let halves = unsafe { [transpose8(low), transpose8(high)] };
            for (half, rows) in halves.iter().zip(out.chunks_exact_mut(8)) {
                for (&v, row) in half.iter().zip(rows) {
                    unsafe { _mm256_storeu_ps(row.as_mut_ptr(), v) };
                }
            }
            out
        }

        /// `acc + a·b`, lane by lane.
        #[inline(always)]
        pub fn fma(self, a: __m512, b: __m512, acc: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, acc) }
        }

        /// `low` in lanes 0..8 and `high` in lanes 8..16.
        #[inline(always)]
        pub fn load_halves(self, low: &[f32; 8], high: &[f32; 8]) -> __m512 {
            unsafe {
                let low = _mm512_castps256_ps512(_mm256_loadu_ps(low.as_ptr()));
                let high = _mm256_castps_pd(_mm256_loadu_ps(high.as_ptr()));
                _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castps_pd(low), high))
            }
        }

        /// `v` in both halves.
        #[inline(always)]
        pub fn broadcast_half(self, v: &[f32; 8]) -> __m512 {
            unsafe { _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(v.as_ptr())))) }
        }

        /// Lanes 0..8 of `v`, or 8..16 when `high`.
        #[inline(always)]
        fn half(self, v: __m512, high: bool) -> __m256 {
            unsafe {
                if high {
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
                } else {
                    _mm512_castps512_ps256(v)
                }
            }
        }
    }
}

/// Work that runs on the vectors an [`Isa`] names. Implementations mark `run`
/// `#[inline(always)]`, so that it compiles inside the AVX2 entry point with its target
/// features (the default x86-64 target has neither AVX nor FMA).
pub trait Kernel {
    fn run<S: Simd>(self, simd: S);
}

/// Which kernels run: the best the CPU has, or the portable ones everywhere; and, on CPUs
/// with AVX-512F, the kernels written for its registers where a layer suits them.
#[derive(Clone, Copy, Debug)]
pub struct Isa {
    kind: Kind,
    #[cfg(target_arch = "x86_64")]
    wide: Option<avx512::Avx512>,
}

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
            return Isa { kind: Kind::Avx2(avx2), wide: avx512::Avx512::detect() };
        }
        Isa::portable()
    }

    pub fn portable() -> Self {
        Isa {
            kind: Kind::Portable,
            #[cfg(target_arch = "x86_64")]
            wide: None,
        }
    }

    /// These kernels without the AVX-512 ones.
    pub fn narrow(self) -> Self {
        Isa {
            #[cfg(target_arch = "x86_64")]
            wide: None,
            ..self
        }
    }

    /// The AVX-512 registers, where the CPU has them and they were not turned off.
    #[cfg(target_arch = "x86_64")]
    pub fn wide(&self) -> Option<avx512::Avx512> {
        self.wide
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2(_) if self.wide.is_some() => "AVX2+FMA, AVX-512F",
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2(_) => "AVX2+FMA",
            Kind::Portable => "portable",
        }
    }

    pub fn run(self, kernel: impl Kernel) {
        match self.kind {
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

/// The first vector of `dst`.
#[inline(always)]
pub(super) fn vector_mut(dst: &mut [f32]) -> &mut [f32; LANES] {
    (&mut dst[..LANES]).try_into().expect("a whole vector")
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
