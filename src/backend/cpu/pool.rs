//! 2×2 max-pooling (stride 2) over whole planes: the forward pass with each window's
//! arg-max, and the backward pass that routes each gradient to it.

#[cfg(target_arch = "x86_64")]
use super::conv::avx512::{Avx512, WideKernel, LANES};
use super::conv::{Isa, Kernel, Simd};
use crate::backend::PoolShape;

/// Max of each 2×2 window of one plane `width` floats a row, keeping the first maximum in
/// scan order as PyTorch does; `idx` holds its position within the plane. With AVX-512, 16
/// windows at a time (the scalar loop took 40 % of conv1's fused forward pass).
pub fn maxpool_plane(isa: Isa, width: usize, x: &[f32], y: &mut [f32], idx: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = isa.wide() {
        return simd.run(WidePool { width, x, y, idx });
    }
    isa.run(ScalarPool { width, x, y, idx });
}

/// [`maxpool_plane`] in AVX-512 registers, row by row.
#[cfg(target_arch = "x86_64")]
struct WidePool<'a> {
    width: usize,
    x: &'a [f32],
    y: &'a mut [f32],
    idx: &'a mut [u32],
}

#[cfg(target_arch = "x86_64")]
impl WideKernel for WidePool<'_> {
    #[inline(always)]
    fn run(self, simd: Avx512) {
        let (width, wo) = (self.width, self.width / 2);
        let rows = self.y.chunks_exact_mut(wo).zip(self.idx.chunks_exact_mut(wo));
        for (oy, ((y, idx), pair)) in rows.zip(self.x.chunks_exact(2 * width)).enumerate() {
            let (top, bottom) = pair.split_at(width);
            for ox in (0..wo).step_by(LANES) {
                let n = LANES.min(wo - ox);
                let rows = (&top[2 * ox..], &bottom[2 * ox..]);
                let at = (2 * oy * width + 2 * ox) as u32;
                simd.max_pool_windows(rows, (at, width as u32), &mut y[ox..][..n], &mut idx[ox..][..n]);
            }
        }
    }
}

/// One plane's max-pool as a [`Kernel`]: the plain loop of [`scalar_plane`], compiled
/// inside the ISA's entry point so that LLVM vectorizes it with AVX2 where the CPU has it.
struct ScalarPool<'a> {
    width: usize,
    x: &'a [f32],
    y: &'a mut [f32],
    idx: &'a mut [u32],
}

impl Kernel for ScalarPool<'_> {
    #[inline(always)]
    fn run<S: Simd>(self, _simd: S) {
        scalar_plane(self.width, self.x, self.y, self.idx);
    }
}

/// [`maxpool_plane`] window by window. The first maximum of each row's pair, then of the
/// two, is the same one, and the selects compile without branches, which random data would
/// mispredict half the time.
#[inline(always)]
fn scalar_plane(width: usize, x: &[f32], y: &mut [f32], idx: &mut [u32]) {
    let wo = width / 2;
    let first_max = |(a, i): (f32, usize), (b, j): (f32, usize)| if b > a { (b, j) } else { (a, i) };
    let rows = y.chunks_exact_mut(wo).zip(idx.chunks_exact_mut(wo));
    for (oy, ((y, idx), pair)) in rows.zip(x.chunks_exact(2 * width)).enumerate() {
        let (top, bottom) = pair.split_at(width);
        let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2));
        for (ox, ((y, idx), (top, bottom))) in y.iter_mut().zip(idx).zip(windows).enumerate() {
            let at = 2 * oy * width + 2 * ox;
            let upper = first_max((top[0], at), (top[1], at + 1));
            let lower = first_max((bottom[0], at + width), (bottom[1], at + width + 1));
            let (max, at) = first_max(upper, lower);
            *y = max;
            *idx = at as u32;
        }
    }
}

/// The backward of [`maxpool_plane`] over whole planes of `s`: each gradient goes to its
/// window's maximum, which `argmax` names, and every other pixel gets zero.
pub fn unpool(s: &PoolShape, dy: &[f32], argmax: &[u32], dx: &mut [f32]) {
    dx.fill(0.0);
    let (plane_in, plane_out) = (s.in_plane(), s.out_plane().max(1));
    for ((dx, dy), idx) in
        dx.chunks_exact_mut(plane_in).zip(dy.chunks_exact(plane_out)).zip(argmax.chunks_exact(plane_out))
    {
        for (&d, &i) in dy.iter().zip(idx) {
            dx[i as usize] = d;
        }
    }
}
