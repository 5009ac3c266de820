//! Finite-difference checks of every op's backward and of the whole network's gradient.
//!
//! Each check compares a directional derivative: for a random direction `v`, the analytic
//! `⟨∇L, v⟩` against `(L(p + εv) − L(p − εv)) / 2ε`, where `L = ⟨r, f(p)⟩` for a fixed random
//! `r`. Ops that are linear in the checked argument make the difference exact up to rounding.

use clap::ValueEnum;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use resnet_mnist::backend::cpu::CpuBackend;
use resnet_mnist::backend::{Backend, ConvShape, LinearShape, ParamSlot, PoolShape};
use resnet_mnist::model::{Arch, BlockKind, Model, Net, CLASSES};

mod common;
use common::{random, reference64};

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum()
}

fn shifted(p: &[f32], v: &[f32], eps: f32) -> Vec<f32> {
    p.iter().zip(v).map(|(p, v)| p + eps * v).collect()
}

/// Central difference of `loss` at `p` along `v`, against `analytic`.
fn assert_directional(name: &str, p: &[f32], v: &[f32], analytic: f64, eps: f32, mut loss: impl FnMut(&[f32]) -> f64) {
    let numeric = (loss(&shifted(p, v, eps)) - loss(&shifted(p, v, -eps))) / (2.0 * f64::from(eps));
    let scale = analytic.abs().max(numeric.abs()).max(1e-3);
    let rel = (analytic - numeric).abs() / scale;
    assert!(rel < 2e-3, "{name}: analytic {analytic} vs numeric {numeric} (relative error {rel})");
}

fn backend() -> CpuBackend {
    CpuBackend::new(2).expect("thread pool")
}

/// The backend as it runs here (AVX2+FMA kernels on CPUs that have them, AVX-512 ones
/// where it has those too), without its AVX-512 kernels, and with the portable kernels.
fn every_kernel_set() -> [CpuBackend; 3] {
    [backend(), backend().without_avx512(), backend().with_portable_kernels()]
}

/// Odd sizes, padding and batch 1 included; channel counts that fill one, two and three
/// kernel blocks of 16 with a partial vector.
fn conv_shapes() -> Vec<ConvShape> {
    let conv =
        |batch, c_in, c_out, height, width, kernel, pad| ConvShape { batch, c_in, c_out, height, width, kernel, pad };
    vec![
        conv(3, 1, 4, 9, 7, 5, 0),
        conv(2, 3, 5, 6, 6, 3, 1),
        conv(1, 4, 2, 5, 3, 3, 1),
        conv(5, 2, 3, 4, 4, 3, 2),
        conv(4, 16, 16, 12, 12, 3, 1),
        conv(2, 18, 37, 5, 7, 3, 1),
        // Output rows of whole vectors over few input channels (the row kernels), with and
        // without padding, kernel rows wider than one filter-gradient tile, odd channels.
        conv(2, 1, 13, 11, 20, 5, 0),
        conv(3, 3, 7, 5, 8, 3, 1),
        conv(1, 2, 3, 10, 14, 7, 0),
        // The data gradient as a scatter, cropped by padding, over three channel vectors.
        conv(2, 18, 6, 6, 7, 5, 1),
        // Batch 1 and odd sides over partial vectors; many images of a small plane.
        conv(1, 5, 9, 9, 11, 3, 1),
        conv(3, 17, 10, 8, 13, 3, 1),
        conv(13, 9, 4, 8, 8, 3, 1),
        // Whole 16-channel blocks (the AVX-512 tiles, 8 pixels across rows where rows are not
        // 12 or 4 wide): planes that end in a partial tile, rows narrower than a tile,
        // padding 0 to 2, 1×1 filters.
        conv(2, 16, 32, 12, 12, 5, 0),
        conv(3, 32, 32, 4, 4, 3, 1),
        conv(1, 7, 16, 9, 11, 3, 2),
        conv(2, 32, 16, 5, 3, 3, 1),
        conv(2, 5, 48, 3, 7, 1, 0),
        // The AVX-512 row tiles (runs of 12 or 8 pixels, 4×4 planes): padding 0 and 2, rows
        // that skip kernel rows of padding, a plane of two 4×4 tiles, 5×5 filters, and a
        // first layer that they take from the row kernels (24-wide rows, two tiles a row).
        conv(1, 16, 32, 14, 14, 3, 0),
        conv(2, 7, 16, 8, 4, 5, 2),
        conv(1, 3, 16, 6, 12, 5, 2),
        conv(1, 5, 16, 6, 10, 3, 0),
        conv(2, 1, 16, 9, 28, 5, 0),
        // Winograd's tiles (5×5 over 8 or more input channels): batch 1 and odd sides that
        // end in partial tiles, padding 0 to 2, partial vectors in and out, an output
        // smaller than one tile.
        conv(1, 9, 11, 7, 9, 5, 2),
        conv(3, 8, 5, 13, 10, 5, 1),
        conv(2, 20, 17, 7, 7, 5, 0),
    ]
}

/// Every product of the convolution `s` in `f64` loops, term by term: `[y, dx, dW, db]`
/// for input `x`, weights `w`, bias `b` and output gradient `dy`.
fn direct_conv(s: &ConvShape, x: &[f32], w: &[f32], b: &[f32], dy: &[f32]) -> [Vec<f64>; 4] {
    let (ho, wo, k) = (s.h_out(), s.w_out(), s.kernel);
    let mut y: Vec<f64> = (0..s.out_len()).map(|i| f64::from(b[i / (ho * wo) % s.c_out])).collect();
    let (mut dx, mut dw, mut db) = (vec![0.0; s.in_len()], vec![0.0; s.weight_len()], vec![0.0; s.c_out]);
    for (n, co, oy, ox) in indices(s.batch, s.c_out, ho, wo) {
        let o = ((n * s.c_out + co) * ho + oy) * wo + ox;
        db[co] += f64::from(dy[o]);
        for (ci, ky, kx) in indices(s.c_in, k, k, 1).map(|(ci, ky, kx, _)| (ci, ky, kx)) {
            let (iy, ix) = ((oy + ky).checked_sub(s.pad), (ox + kx).checked_sub(s.pad));
            let (Some(iy), Some(ix)) = (iy, ix) else { continue };
            if iy >= s.height || ix >= s.width {
                continue;
            }
            let (i, t) = (((n * s.c_in + ci) * s.height + iy) * s.width + ix, ((co * s.c_in + ci) * k + ky) * k + kx);
            y[o] += f64::from(w[t]) * f64::from(x[i]);
            dx[i] += f64::from(w[t]) * f64::from(dy[o]);
            dw[t] += f64::from(x[i]) * f64::from(dy[o]);
        }
    }
    [y, dx, dw, db]
}

/// `(a, b, c, d)` for every index below `(na, nb, nc, nd)`, the last fastest.
fn indices(na: usize, nb: usize, nc: usize, nd: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..na).flat_map(move |a| (0..nb).flat_map(move |b| (0..nc).flat_map(move |c| (0..nd).map(move |d| (a, b, c, d)))))
}

/// Element by element, each kernel path (channel tiles, row tiles, scatter) against the
/// convolution written out term by term.
#[test]
fn conv_kernels_match_a_direct_convolution() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for b in every_kernel_set() {
        for s in conv_shapes() {
            let slot = ParamSlot { offset: 0, weight_len: s.weight_len(), bias_len: s.c_out };
            let (x, params, dy) =
                (random(&mut rng, s.in_len()), random(&mut rng, slot.len()), random(&mut rng, s.out_len()));
            let mut y = b.zeros(s.out_len());
            b.conv2d_forward(&s, &x, &params, slot, &mut y, false);
            let mut dx = b.zeros(s.in_len());
            b.conv2d_backward_data(&s, &dy, &params, slot, &mut dx, false);
            let mut grads = b.zeros(slot.len());
            b.conv2d_backward_params(&s, &x, &dy, &mut grads, slot);
            let (dw, db) = grads.split_at(s.weight_len());
            let expected = direct_conv(&s, &x, &params[slot.weight()], &params[slot.bias()], &dy);
            for ((what, ours), expected) in [("y", &y[..]), ("dx", &dx), ("dW", dw), ("db", db)].iter().zip(&expected) {
                assert_matches_f64(&format!("{} {s:?} {what}", b.name()), ours, expected);
            }
        }
    }
}

/// Element by element within 1e-5 of `expected`, relative to its largest magnitude.
fn assert_matches_f64(what: &str, ours: &[f32], expected: &[f64]) {
    let scale = expected.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
    for (i, (&a, &e)) in ours.iter().zip(expected).enumerate() {
        assert!((f64::from(a) - e).abs() / scale < 1e-5, "{what}[{i}]: {a} vs {e}");
    }
}

/// The filter gradient straight from a max-pooled gradient (which only each window's
/// arg-max pixel gets) against the convolution written out term by term over the expanded
/// gradient; output sides that are odd included, whose last row or column no window covers.
#[test]
fn pooled_filter_gradient_matches_a_direct_convolution() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for b in every_kernel_set() {
        for s in conv_shapes() {
            let (slot, pool) = (ParamSlot { offset: 0, weight_len: s.weight_len(), bias_len: s.c_out }, s.pool());
            let (x, params, d_pooled) =
                (random(&mut rng, s.in_len()), random(&mut rng, slot.len()), random(&mut rng, pool.out_len()));
            let (mut y, mut pooled, mut argmax) =
                (b.zeros(s.out_len()), b.zeros(pool.out_len()), b.zeros_idx(pool.out_len()));
            b.conv2d_relu_maxpool_forward(&s, &x, &params, slot, &mut y, &mut pooled, &mut argmax);
            let mut dy = b.zeros(s.out_len());
            b.maxpool_backward(&pool, &d_pooled, &argmax, &mut dy);
            let mut grads = b.zeros(slot.len());
            b.conv2d_maxpool_backward_params(&s, &x, &d_pooled, &argmax, &mut dy, &mut grads, slot);
            let [_, _, dw, db] = direct_conv(&s, &x, &params[slot.weight()], &params[slot.bias()], &dy);
            let (ours_dw, ours_db) = grads.split_at(s.weight_len());
            assert_matches_f64(&format!("{} {s:?} dW from the pooled gradient", b.name()), ours_dw, &dw);
            assert_matches_f64(&format!("{} {s:?} db from the pooled gradient", b.name()), ours_db, &db);
        }
    }
}

#[test]
fn conv2d_gradients_match_finite_differences() {
    for b in every_kernel_set() {
        conv2d_gradients_match(&b);
    }
}

fn conv2d_gradients_match(b: &CpuBackend) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for s in conv_shapes() {
        let slot = ParamSlot { offset: 3, weight_len: s.weight_len(), bias_len: s.c_out };
        let (x, params) = (random(&mut rng, s.in_len()), random(&mut rng, slot.offset + slot.len()));
        let r = random(&mut rng, s.out_len());
        let loss = |x: &[f32], params: &[f32]| {
            let mut y = b.zeros(s.out_len());
            b.conv2d_forward(&s, &x.to_vec(), &params.to_vec(), slot, &mut y, false);
            dot(&r, &y)
        };

        let mut dx = b.zeros(s.in_len());
        b.conv2d_backward_data(&s, &r, &params, slot, &mut dx, false);
        let v = random(&mut rng, x.len());
        let name = b.name();
        assert_directional(&format!("{name} {s:?} dx"), &x, &v, dot(&dx, &v), 1e-2, |x| loss(x, &params));

        let mut grads = b.zeros(params.len());
        b.conv2d_backward_params(&s, &x, &r, &mut grads, slot);
        let mut v = random(&mut rng, params.len());
        v[..slot.offset].fill(0.0);
        assert_directional(&format!("{name} {s:?} dparams"), &params, &v, dot(&grads, &v), 1e-2, |p| loss(&x, p));
    }
}

/// Runs every shape's three passes (ReLU after the forward pass, the data gradient added to
/// a base) on backends `a` and `b`, and hands each pair of results to `check`.
fn compare_kernel_sets(a: &CpuBackend, b: &CpuBackend, seed: u64, check: impl Fn(String, &[f32], &[f32])) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for s in conv_shapes() {
        let slot = ParamSlot { offset: 1, weight_len: s.weight_len(), bias_len: s.c_out };
        let (x, params) = (random(&mut rng, s.in_len()), random(&mut rng, slot.offset + slot.len()));
        let (dy, base) = (random(&mut rng, s.out_len()), random(&mut rng, s.in_len()));
        let run = |b: &CpuBackend| {
            let mut y = b.zeros(s.out_len());
            b.conv2d_forward(&s, &x, &params, slot, &mut y, true);
            let mut dx = base.clone();
            b.conv2d_backward_data(&s, &dy, &params, slot, &mut dx, true);
            let mut grads = b.zeros(params.len());
            b.conv2d_backward_params(&s, &x, &dy, &mut grads, slot);
            [y, dx, grads]
        };
        for (what, (a, b)) in ["forward", "backward data", "backward params"].iter().zip(run(a).iter().zip(&run(b))) {
            check(format!("{s:?} {what}"), a, b);
        }
    }
}

/// The two sets of kernels differ only in rounding (fused or separate multiply-adds).
#[test]
fn portable_conv_kernels_match_the_native_ones() {
    let [native, _, portable] = every_kernel_set();
    compare_kernel_sets(&native, &portable, 3, |what, a, b| {
        let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst <= 1e-5 * scale, "{what}: differs by {worst} (largest value {scale})");
    });
}

/// The AVX-512 tiles sum each output's products in the AVX2 tiles' order, so the two agree
/// exactly, ReLU and accumulation included.
#[test]
fn avx512_conv_kernels_equal_the_avx2_ones() {
    let [native, avx2, _] = every_kernel_set();
    if !native.name().contains("AVX-512") {
        eprintln!("not checked here: this CPU has no AVX-512F ({})", native.name());
        return;
    }
    compare_kernel_sets(&native, &avx2, 5, |what, a, b| {
        let differ = a.iter().zip(b).position(|(a, b)| a != b);
        assert!(differ.is_none(), "{what}[{}]: {a:?} vs {b:?}", differ.unwrap_or(0));
    });
}

#[test]
fn conv2d_backward_data_accumulates() {
    let b = backend();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let s = conv_shapes()[1];
    let slot = ParamSlot { offset: 0, weight_len: s.weight_len(), bias_len: s.c_out };
    let (params, dy, base) =
        (random(&mut rng, slot.len()), random(&mut rng, s.out_len()), random(&mut rng, s.in_len()));
    let mut fresh = b.zeros(s.in_len());
    b.conv2d_backward_data(&s, &dy, &params, slot, &mut fresh, false);
    let mut acc = base.clone();
    b.conv2d_backward_data(&s, &dy, &params, slot, &mut acc, true);
    for ((a, f), x) in acc.iter().zip(&fresh).zip(&base) {
        assert!((a - (f + x)).abs() < 1e-5);
    }
}

/// The fused ops equal the ops they fuse, bit for bit: a convolution closing a residual join,
/// and a convolution with its ReLU and max-pool (output sides that are odd included, whose
/// last row or column no window covers).
#[test]
fn fused_conv_ops_equal_the_ops_they_fuse() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for b in every_kernel_set() {
        for s in conv_shapes() {
            let slot = ParamSlot { offset: 0, weight_len: s.weight_len(), bias_len: s.c_out };
            let (x, params, skip) =
                (random(&mut rng, s.in_len()), random(&mut rng, slot.len()), random(&mut rng, s.out_len()));
            let mut composed = b.zeros(s.out_len());
            b.conv2d_forward(&s, &x, &params, slot, &mut composed, false);
            b.axpby(s.out_len(), 1.0, &skip, 1.0, &mut composed, true);
            let mut fused = b.zeros(s.out_len());
            b.conv2d_add_relu_forward(&s, &x, &params, slot, &skip, &mut fused);
            assert_eq!(fused, composed, "{} {s:?}: convolution + residual join", b.name());

            let pool = s.pool();
            let mut y = b.zeros(s.out_len());
            b.conv2d_forward(&s, &x, &params, slot, &mut y, true);
            let (mut pooled, mut argmax) = (b.zeros(pool.out_len()), b.zeros_idx(pool.out_len()));
            b.maxpool_forward(&pool, &y, &mut pooled, &mut argmax);
            let (mut fused, mut fused_argmax) = (b.zeros(pool.out_len()), b.zeros_idx(pool.out_len()));
            b.conv2d_relu_maxpool_forward(&s, &x, &params, slot, &mut y, &mut fused, &mut fused_argmax);
            assert_eq!((&fused, &fused_argmax), (&pooled, &argmax), "{} {s:?}: convolution + max-pool", b.name());
        }
    }
}

#[test]
fn linear_gradients_match_finite_differences() {
    let b = backend();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for s in [LinearShape { batch: 3, inputs: 7, outputs: 5 }, LinearShape { batch: 1, inputs: 512, outputs: 10 }] {
        let slot = ParamSlot { offset: 2, weight_len: s.inputs * s.outputs, bias_len: s.outputs };
        let (x, params) = (random(&mut rng, s.batch * s.inputs), random(&mut rng, slot.offset + slot.len()));
        let r = random(&mut rng, s.batch * s.outputs);
        let loss = |x: &[f32], p: &[f32]| {
            let mut y = b.zeros(s.batch * s.outputs);
            b.linear_forward(&s, &x.to_vec(), &p.to_vec(), slot, &mut y);
            dot(&r, &y)
        };
        let mut dx = b.zeros(x.len());
        b.linear_backward_data(&s, &r, &params, slot, &mut dx);
        let v = random(&mut rng, x.len());
        assert_directional("linear dx", &x, &v, dot(&dx, &v), 1e-2, |x| loss(x, &params));
        let mut grads = b.zeros(params.len());
        b.linear_backward_params(&s, &x, &r, &mut grads, slot);
        let mut v = random(&mut rng, params.len());
        v[..slot.offset].fill(0.0);
        assert_directional("linear dparams", &params, &v, dot(&grads, &v), 1e-2, |p| loss(&x, p));
    }
}

/// Ties go to the first maximum in scan order (top-left, top-right, bottom-left,
/// bottom-right), as in PyTorch, so that gradients land where PyTorch puts them.
#[test]
fn maxpool_keeps_the_first_maximum_of_a_window() {
    let b = backend();
    let s = PoolShape { batch: 1, channels: 1, height: 2, width: 8 };
    #[rustfmt::skip]
    let x = vec![
        1.0, 1.0,   0.0, 2.0,   0.0, 1.0,   3.0, 0.0,
        1.0, 1.0,   2.0, 1.0,   2.0, 2.0,   3.0, 3.0,
    ];
    let (mut y, mut idx) = (b.zeros(s.out_len()), b.zeros_idx(s.out_len()));
    b.maxpool_forward(&s, &x, &mut y, &mut idx);
    assert_eq!(y, [1.0, 2.0, 2.0, 3.0]);
    assert_eq!(idx, [0, 3, 12, 6]);
}

/// Every kernel set pools alike, bit for bit and arg-max for arg-max: on rows of 1 to 40
/// windows (a partial vector of 16 and more than two of them), odd sides, ties (values drawn
/// from five) and NaN, which never wins a comparison, so a window keeps it only when it
/// comes first.
#[test]
fn maxpool_kernel_sets_agree_on_ties_nan_and_odd_sides() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let sets = every_kernel_set();
    for (height, width) in [(2, 2), (3, 5), (5, 31), (4, 32), (7, 33), (6, 80), (9, 81)] {
        let s = PoolShape { batch: 2, channels: 3, height, width };
        let mut x: Vec<f32> = random(&mut rng, s.in_len()).iter().map(|v| (v * 2.0).round()).collect();
        x.iter_mut().step_by(7).for_each(|v| *v = f32::NAN);
        let pooled = sets.each_ref().map(|b| {
            let (mut y, mut idx) = (b.zeros(s.out_len()), b.zeros_idx(s.out_len()));
            b.maxpool_forward(&s, &x, &mut y, &mut idx);
            (y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), idx)
        });
        for (b, p) in sets.iter().zip(&pooled).skip(1) {
            assert!(p == &pooled[0], "{height}×{width}: {} pools unlike {}", b.name(), sets[0].name());
        }
    }
}

#[test]
fn maxpool_and_relu_gradients_match_finite_differences() {
    let b = backend();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    // Odd sides: the last row and column are dropped, as PyTorch's floor mode does.
    let s = PoolShape { batch: 2, channels: 3, height: 7, width: 5 };
    let x = random(&mut rng, s.in_len());
    let r = random(&mut rng, s.out_len());
    let loss = |x: &[f32]| {
        let (mut y, mut idx) = (b.zeros(s.out_len()), b.zeros_idx(s.out_len()));
        b.maxpool_forward(&s, &x.to_vec(), &mut y, &mut idx);
        let mut relu = b.zeros(s.out_len());
        b.axpby(s.out_len(), 1.0, &y, 0.0, &mut relu, true);
        dot(&r, &relu)
    };
    let (mut y, mut idx) = (b.zeros(s.out_len()), b.zeros_idx(s.out_len()));
    b.maxpool_forward(&s, &x, &mut y, &mut idx);
    let mut relu = b.zeros(s.out_len());
    b.axpby(s.out_len(), 1.0, &y, 0.0, &mut relu, true);
    let mut dy = r.clone();
    b.relu_backward(s.out_len(), &relu, &mut dy);
    let mut dx = b.zeros(s.in_len());
    b.maxpool_backward(&s, &dy, &idx, &mut dx);
    // A tiny step keeps every window's winner and every sign, so the function is linear there.
    let v = random(&mut rng, x.len());
    assert_directional("maxpool+relu dx", &x, &v, dot(&dx, &v), 1e-4, loss);
}

#[test]
fn softmax_cross_entropy_gradient_matches_finite_differences() {
    let b = backend();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (batch, labels) = (4, vec![3u32, 0, 9, 9]);
    let logits: Vec<f32> = random(&mut rng, batch * CLASSES).iter().map(|v| 4.0 * v).collect();
    for smoothing in [0.0, 0.1, 0.6] {
        let loss = |z: &[f32]| {
            let (mut dz, mut stats) = (b.zeros(z.len()), b.new_stats());
            b.softmax_cross_entropy(batch, CLASSES, smoothing, &z.to_vec(), &labels, &mut dz, &mut stats);
            b.take_stats(&mut stats).loss_sum / batch as f64
        };
        let (mut dz, mut stats) = (b.zeros(logits.len()), b.new_stats());
        b.softmax_cross_entropy(batch, CLASSES, smoothing, &logits, &labels, &mut dz, &mut stats);
        let v = random(&mut rng, logits.len());
        assert_directional(&format!("softmax xent, smoothing {smoothing}"), &logits, &v, dot(&dz, &v), 1e-2, loss);
    }
}

/// The whole network, tensor by tensor: the `f32` backward against central differences of
/// an independent `f64` forward pass, along a random direction per parameter tensor.
fn assert_network_gradient(arch: Arch) {
    let net = Net::build(arch);
    let batch = 3;
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let x = random(&mut rng, batch * 784);
    let labels = vec![1u32, 7, 4];
    let params = net.layout.init(11);
    let mut model = Model::new(backend(), net.clone(), &params, batch);
    model.ws.x[..x.len()].copy_from_slice(&x);
    model.ws.labels[..batch].copy_from_slice(&labels);
    model.eval_batch(batch);
    let loss = model.take_stats().loss_sum / batch as f64;
    model.net.backward(&model.backend, &model.state.values, &mut model.state.grads, &mut model.ws, batch);

    let to64 = |v: &[f32]| v.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
    let (p64, x64) = (to64(&params), to64(&x));
    let reference = |p: &[f64]| reference64::mean_loss(&net, p, &x64, &labels);
    assert!((reference(&p64) - loss).abs() < 1e-5, "{arch}: f32 loss {loss} vs f64 reference {}", reference(&p64));
    // Small enough that no ReLU or pool crosses its kink; f64 keeps the difference exact.
    let eps = 1e-7;
    for t in &net.layout.tensors {
        let mut v = vec![0.0; params.len()];
        v[t.range()].copy_from_slice(&random(&mut rng, t.len()));
        let shift = |sign: f64| p64.iter().zip(&v).map(|(p, &v)| p + sign * eps * f64::from(v)).collect::<Vec<_>>();
        let numeric = (reference(&shift(1.0)) - reference(&shift(-1.0))) / (2.0 * eps);
        let analytic = dot(&model.state.grads, &v);
        let rel = (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(1e-4);
        assert!(rel < 1e-3, "{arch} {}: analytic {analytic} vs numeric {numeric} (relative error {rel})", t.name);
    }
}

#[test]
fn network_gradient_matches_finite_differences() {
    assert_network_gradient(Arch::default());
}

/// Depth 2 covers a block feeding a block, and preact's ReLU closing only the last one.
#[test]
fn every_block_variant_gradient_matches_finite_differences() {
    for block in BlockKind::value_variants() {
        for depth in [1, 2] {
            assert_network_gradient(Arch { block: *block, depth });
        }
    }
}
