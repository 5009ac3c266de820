//! The CUDA backend's ops against the CPU backend, written once over any [`Device`]: the
//! emulated one (`tests/cuda_emulated.rs`) and the real driver path, `CudarcDevice`, on a GPU
//! or on the fake driver (`tests/cuda_device.rs`). Every op on odd shapes, sgemm against its
//! column-major definition, then whole training steps with and without graph capture.

use clap::ValueEnum;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{assert_close, random};
use resnet_mnist::augment::{AffineRange, Augmentation};
use resnet_mnist::backend::cpu::CpuBackend;
use resnet_mnist::backend::cuda::{CudaBackend, Device, Gemm};
use resnet_mnist::backend::{Backend, ConvShape, LinearShape, ParamSlot, PoolShape, Update};
use resnet_mnist::data::IMAGE_PIXELS;
use resnet_mnist::model::{Arch, BlockKind, Model, Net, CLASSES};
use resnet_mnist::recipe::{OptimizerKind, Preset, Recipe, ScheduleKind};

fn cpu() -> CpuBackend {
    CpuBackend::new(1).expect("thread pool")
}

fn conv_shapes() -> Vec<ConvShape> {
    let conv =
        |batch, c_in, c_out, height, width, kernel, pad| ConvShape { batch, c_in, c_out, height, width, kernel, pad };
    // The kernels fix the side at compile time for 1, 3 and 5; 4 takes their run-time path.
    vec![
        conv(1, 1, 4, 9, 7, 5, 0),
        conv(2, 3, 17, 6, 6, 3, 1),
        conv(1, 18, 2, 5, 3, 3, 1),
        conv(3, 2, 3, 4, 4, 3, 2),
        conv(2, 3, 5, 7, 6, 4, 1),
        conv(1, 20, 19, 5, 4, 1, 0),
    ]
}

pub fn conv2d_matches_cpu<D: Device>(g: &CudaBackend<D>) {
    let c = cpu();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for s in conv_shapes() {
        let slot = ParamSlot { offset: 5, weight_len: s.weight_len(), bias_len: s.c_out };
        let (x, params) = (random(&mut rng, s.in_len()), random(&mut rng, slot.offset + slot.len()));
        let (dy, dx0) = (random(&mut rng, s.out_len()), random(&mut rng, s.in_len()));
        let (gx, gparams, gdy) = (g.upload(&x), g.upload(&params), g.upload(&dy));
        for relu in [false, true] {
            let (mut y, mut gy) = (c.zeros(s.out_len()), g.zeros(s.out_len()));
            c.conv2d_forward(&s, &x, &params, slot, &mut y, relu);
            g.conv2d_forward(&s, &gx, &gparams, slot, &mut gy, relu);
            assert_close(&format!("{s:?} forward relu={relu}"), &g.download(&gy), &y);
        }
        for accumulate in [false, true] {
            let (mut dx, mut gdx) = (dx0.clone(), g.upload(&dx0));
            c.conv2d_backward_data(&s, &dy, &params, slot, &mut dx, accumulate);
            g.conv2d_backward_data(&s, &gdy, &gparams, slot, &mut gdx, accumulate);
            assert_close(&format!("{s:?} backward data acc={accumulate}"), &g.download(&gdx), &dx);
        }
        let (mut grads, mut ggrads) = (vec![0.0; params.len()], g.zeros(params.len()));
        c.conv2d_backward_params(&s, &x, &dy, &mut grads, slot);
        g.conv2d_backward_params(&s, &gx, &gdy, &mut ggrads, slot);
        assert_close(&format!("{s:?} backward params"), &g.download(&ggrads), &grads);
    }
}

pub fn conv2d_backward_params_splits_long_reductions<D: Device>(g: &CudaBackend<D>) {
    // 2 × 24 × 24 output pixels: more than one split-K slice, the last one partial.
    let s = ConvShape { batch: 2, c_in: 1, c_out: 3, height: 26, width: 26, kernel: 3, pad: 0 };
    let c = cpu();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let slot = ParamSlot { offset: 0, weight_len: s.weight_len(), bias_len: s.c_out };
    let (x, dy) = (random(&mut rng, s.in_len()), random(&mut rng, s.out_len()));
    let (mut grads, mut ggrads) = (vec![0.0; slot.len()], g.zeros(slot.len()));
    c.conv2d_backward_params(&s, &x, &dy, &mut grads, slot);
    g.conv2d_backward_params(&s, &g.upload(&x), &g.upload(&dy), &mut ggrads, slot);
    assert_close("split-K weight gradient", &g.download(&ggrads), &grads);
}

pub fn maxpool_and_elementwise_match_cpu<D: Device>(g: &CudaBackend<D>) {
    let c = cpu();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for s in [
        PoolShape { batch: 1, channels: 3, height: 5, width: 7 },
        PoolShape { batch: 2, channels: 2, height: 4, width: 4 },
    ] {
        let x = random(&mut rng, s.in_len());
        let (mut y, mut idx) = (vec![0.0; s.out_len()], vec![0; s.out_len()]);
        let (mut gy, mut gidx) = (g.zeros(s.out_len()), g.zeros_idx(s.out_len()));
        c.maxpool_forward(&s, &x, &mut y, &mut idx);
        g.maxpool_forward(&s, &g.upload(&x), &mut gy, &mut gidx);
        assert_close(&format!("{s:?} maxpool forward"), &g.download(&gy), &y);
        let dy = random(&mut rng, s.out_len());
        let (mut dx, mut gdx) = (random(&mut rng, s.in_len()), g.upload(&random(&mut rng, s.in_len())));
        c.maxpool_backward(&s, &dy, &idx, &mut dx);
        g.maxpool_backward(&s, &g.upload(&dy), &gidx, &mut gdx);
        assert_close(&format!("{s:?} maxpool backward"), &g.download(&gdx), &dx);
    }

    // Element-wise ops touch only the leading `len` elements of longer buffers.
    let (n, len) = (1000, 997);
    let (a, b, d) = (random(&mut rng, n), random(&mut rng, n), random(&mut rng, n));
    let (ga, mut y, mut gy) = (g.upload(&a), b.clone(), g.upload(&b));
    for (alpha, beta, relu) in [(1.0, 1.0, true), (0.5, 0.5, false), (1.0, 0.0, true), (-2.0, 0.0, false)] {
        c.axpby(len, alpha, &a, beta, &mut y, relu);
        g.axpby(len, alpha, &ga, beta, &mut gy, relu);
        assert_close(&format!("axpby {alpha} {beta} {relu}"), &g.download(&gy), &y);
    }
    assert_eq!(y[len..], b[len..], "axpby past len");
    c.scale(len, 0.5, &mut y);
    g.scale(len, 0.5, &mut gy);
    assert_close("scale", &g.download(&gy), &y);
    assert_eq!(y[len..], b[len..], "scale past len");
    let (mut dy, mut gdy) = (d.clone(), g.upload(&d));
    c.relu_backward(len, &y, &mut dy);
    g.relu_backward(len, &gy, &mut gdy);
    assert_eq!(dy[len..], d[len..], "relu_backward past len");
    assert_close("relu_backward", &g.download(&gdy), &dy);
}

/// Every optimizer, with and without weight decay and Nesterov, at a first and a later step
/// of a one-cycle schedule, over a buffer longer than one block's stride.
pub fn optimizers_match_cpu<D: Device>(g: &CudaBackend<D>) {
    let c = cpu();
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let n = 1001;
    let (p, d, m0) = (random(&mut rng, n), random(&mut rng, n), random(&mut rng, n));
    let v0: Vec<f32> = random(&mut rng, n).iter().map(|x| x * x).collect();
    let sgd = |nesterov, weight_decay| Recipe { nesterov, weight_decay, ..Recipe::REFERENCE };
    let adam = |optimizer, weight_decay| Recipe { optimizer, weight_decay, lr: 3e-3, ..Recipe::REFERENCE };
    let recipes = [
        sgd(false, 0.0),
        sgd(true, 1e-2),
        adam(OptimizerKind::Adam, 0.0),
        adam(OptimizerKind::Adam, 1e-2),
        adam(OptimizerKind::Adamw, 1e-2),
    ];
    for recipe in recipes {
        let recipe = Recipe { schedule: ScheduleKind::Onecycle, ..recipe };
        for step in [0, 7] {
            let scalars = recipe.step_scalars(step, 20).to_array();
            let (mut cp, mut cm, mut cv) = (p.clone(), m0.clone(), v0.clone());
            let (mut gp, mut gm, mut gv) = (g.upload(&p), g.upload(&m0), g.upload(&v0));
            let (mut cs, mut gs) = (c.zeros(scalars.len()), g.zeros(scalars.len()));
            c.write(&mut cs, &scalars);
            g.write(&mut gs, &scalars);
            match recipe.update() {
                Update::Sgd(u) => {
                    c.sgd_step(u, &cs, &mut cp, &d, &mut cm);
                    g.sgd_step(u, &gs, &mut gp, &g.upload(&d), &mut gm);
                }
                Update::Adam(u) => {
                    c.adam_step(u, &cs, &mut cp, &d, &mut cm, &mut cv);
                    g.adam_step(u, &gs, &mut gp, &g.upload(&d), &mut gm, &mut gv);
                }
            }
            let what = format!("{recipe}, step {step}");
            assert_close(&format!("{what}: params"), &g.download(&gp), &cp);
            assert_close(&format!("{what}: first moment"), &g.download(&gm), &cm);
            assert_close(&format!("{what}: second moment"), &g.download(&gv), &cv);
            assert_ne!(cp, p, "{what}: the step moves the parameters");
        }
    }
}

pub fn linear_and_loss_match_cpu<D: Device>(g: &CudaBackend<D>) {
    let c = cpu();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for s in
        [LinearShape { batch: 1, inputs: 7, outputs: CLASSES }, LinearShape { batch: 37, inputs: 33, outputs: CLASSES }]
    {
        let slot = ParamSlot { offset: 2, weight_len: s.inputs * s.outputs, bias_len: s.outputs };
        let params = random(&mut rng, slot.offset + slot.len());
        let (x, dy) = (random(&mut rng, s.batch * s.inputs), random(&mut rng, s.batch * s.outputs));
        let (gparams, gx, gdy) = (g.upload(&params), g.upload(&x), g.upload(&dy));
        let (mut y, mut gy) = (vec![0.0; s.batch * s.outputs], g.zeros(s.batch * s.outputs));
        c.linear_forward(&s, &x, &params, slot, &mut y);
        g.linear_forward(&s, &gx, &gparams, slot, &mut gy);
        assert_close(&format!("{s:?} linear forward"), &g.download(&gy), &y);
        let (mut dx, mut gdx) = (vec![0.0; x.len()], g.zeros(x.len()));
        c.linear_backward_data(&s, &dy, &params, slot, &mut dx);
        g.linear_backward_data(&s, &gdy, &gparams, slot, &mut gdx);
        assert_close(&format!("{s:?} linear backward data"), &g.download(&gdx), &dx);
        let (mut grads, mut ggrads) = (vec![0.0; params.len()], g.zeros(params.len()));
        c.linear_backward_params(&s, &x, &dy, &mut grads, slot);
        g.linear_backward_params(&s, &gx, &gdy, &mut ggrads, slot);
        assert_close(
            &format!("{s:?} linear backward params"),
            &g.download(&ggrads)[slot.offset..],
            &grads[slot.offset..],
        );

        // Scaled logits so that some rows are classified correctly and some not.
        let logits: Vec<f32> = y.iter().map(|v| 3.0 * v).collect();
        let labels: Vec<u32> = (0..s.batch).map(|_| rng.random_range(0..CLASSES as u32)).collect();
        for smoothing in [0.0, 0.1] {
            let (mut stats, mut gstats) = (c.new_stats(), g.new_stats());
            let (mut dz, mut gdz) = (vec![0.0; logits.len()], g.zeros(logits.len()));
            let (glogits, glabels) = (g.upload(&logits), g.upload_idx(&labels));
            for _ in 0..2 {
                c.softmax_cross_entropy(s.batch, CLASSES, smoothing, &logits, &labels, &mut dz, &mut stats);
                g.softmax_cross_entropy(s.batch, CLASSES, smoothing, &glogits, &glabels, &mut gdz, &mut gstats);
            }
            assert_close(&format!("{s:?} softmax gradient, smoothing {smoothing}"), &g.download(&gdz), &dz);
            let (ours, theirs) = (g.take_stats(&mut gstats), c.take_stats(&mut stats));
            assert_eq!(ours.correct, theirs.correct, "{s:?} correct count");
            assert!((ours.loss_sum - theirs.loss_sum).abs() <= 1e-4 * theirs.loss_sum.abs(), "{ours:?} vs {theirs:?}");
            assert_eq!(g.take_stats(&mut gstats), Default::default(), "take_stats resets");
        }
    }
}

/// A few random "images" with labels, as a data set.
pub fn tiny_dataset(rng: &mut ChaCha8Rng, len: usize) -> (Vec<u8>, Vec<u8>) {
    let images = (0..len * IMAGE_PIXELS).map(|_| rng.random::<u8>()).collect();
    let labels = (0..len).map(|_| rng.random_range(0..CLASSES as u8)).collect();
    (images, labels)
}

pub fn gather_matches_cpu<D: Device>(g: &CudaBackend<D>) {
    let c = cpu();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (images, labels) = tiny_dataset(&mut rng, 6);
    let order = vec![4, 1, 5, 0, 2, 3];
    let (cdata, gdata) = (c.upload_data(&images, &labels), g.upload_data(&images, &labels));
    let (mut x, mut l) = (vec![0.0; 3 * IMAGE_PIXELS], vec![0; 3]);
    let (mut gx, mut gl) = (g.zeros(3 * IMAGE_PIXELS), g.zeros_idx(3));
    let gorder = g.upload_idx(&order);
    let affine = Augmentation { range: AffineRange::RANDOM_AFFINE, seed: u64::MAX - 5, epoch: 3 };
    let shift = Augmentation { range: AffineRange::shift(3.0), seed: 11, epoch: 0 };
    for augment in [None, Some(affine), Some(shift)] {
        c.gather(&cdata, &order, 2, 3, &mut x, &mut l, augment.as_ref());
        g.gather(&gdata, &gorder, 2, 3, &mut gx, &mut gl, augment.as_ref());
        assert_close(&format!("gathered images, {augment:?}"), &g.download(&gx), &x);
    }
    // The labels are checked through the loss in the training test below.
}

/// The reference optimizer with a larger step, so that a few steps move the parameters.
const SGD: Recipe = Recipe { lr: 0.05, ..Recipe::REFERENCE };

/// Trains `steps` batches (the last one short) on both backends; returns parameters and stats.
fn train<B: Backend>(backend: B, arch: Arch, data: &(Vec<u8>, Vec<u8>), batches: &[usize]) -> (Vec<f32>, f64, u64) {
    let (params, loss, correct, _) = train_on(backend, arch, data, batches, &SGD);
    (params, loss, correct)
}

/// [`train`], handing the backend back.
fn train_on<B: Backend>(
    backend: B,
    arch: Arch,
    data: &(Vec<u8>, Vec<u8>),
    batches: &[usize],
    recipe: &Recipe,
) -> (Vec<f32>, f64, u64, B) {
    let (images, labels) = data;
    let net = Net::build(arch);
    let init = net.layout.init(7);
    let capacity = *batches.iter().max().unwrap();
    let mut model = Model::new(backend, net, &init, capacity);
    let data = model.backend.upload_data(images, labels);
    let order = model.backend.upload_idx(&(0..labels.len() as u32).rev().collect::<Vec<_>>());
    let mut start = 0;
    for &batch in batches {
        let augment = recipe.augmentation(0);
        start %= labels.len() + 1 - batch;
        model.backend.gather(&data, &order, start, batch, &mut model.ws.x, &mut model.ws.labels, augment.as_ref());
        model.train_step(batch, recipe, batches.len() as u64);
        start += batch;
    }
    let stats = model.take_stats();
    (model.params(), stats.loss_sum, stats.correct, model.into_backend())
}

pub fn training_steps_match_cpu_with_and_without_graphs<D: Device>(gpu: &dyn Fn(bool) -> CudaBackend<D>) {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let data = tiny_dataset(&mut rng, 13);
    // Full batches of 3 (the third and fourth are captured and replayed), then a short one.
    let batches = [3, 3, 3, 3, 1];
    let arch = Arch::default();
    let (cpu_params, cpu_loss, cpu_correct) = train(cpu(), arch, &data, &batches);
    let (plain, plain_loss, plain_correct) = train(gpu(false), arch, &data, &batches);
    let (graphed, graphed_loss, graphed_correct) = train(gpu(true), arch, &data, &batches);
    assert_close("parameters after 5 steps", &plain, &cpu_params);
    assert!((plain_loss - cpu_loss).abs() <= 1e-4 * cpu_loss, "loss {plain_loss} vs {cpu_loss}");
    assert_eq!(plain_correct, cpu_correct);
    assert_eq!(graphed, plain, "graph replay changes the result");
    assert_eq!((graphed_loss, graphed_correct), (plain_loss, plain_correct));
}

/// Every block variant, two blocks a stage, with graphs: a full, a short and three full
/// batches (the fourth step is captured, the fifth replays it).
pub fn every_block_variant_trains_like_cpu<D: Device>(gpu: &dyn Fn(bool) -> CudaBackend<D>) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let data = tiny_dataset(&mut rng, 14);
    for &block in BlockKind::value_variants() {
        let arch = Arch { block, depth: 2 };
        let (cpu_params, cpu_loss, _) = train(cpu(), arch, &data, &[3, 2, 3, 3, 3]);
        let (gpu_params, gpu_loss, _) = train(gpu(true), arch, &data, &[3, 2, 3, 3, 3]);
        assert_close(&format!("{arch}: parameters after 5 steps"), &gpu_params, &cpu_params);
        assert!((gpu_loss - cpu_loss).abs() <= 1e-4 * cpu_loss, "{arch}: loss {gpu_loss} vs {cpu_loss}");
    }
}

/// A backend handed from one model to the next replays none of the first one's graphs.
pub fn a_reused_backend_forgets_the_graphs_of_the_last_model<D: Device>(gpu: &dyn Fn(bool) -> CudaBackend<D>) {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let data = tiny_dataset(&mut rng, 9);
    let batches = [3, 3, 3];
    let (_, _, _, reused) = train_on(gpu(true), Arch::default(), &data, &batches, &SGD);
    let (again, ..) = train_on(reused, Arch::default(), &data, &batches, &SGD);
    let (fresh, ..) = train_on(gpu(true), Arch::default(), &data, &batches, &SGD);
    assert_eq!(again, fresh);
}

/// An eval pass of more images than a training batch needs more of the split-K partials
/// buffer, which then grows, freeing the buffer that the training graph captured before it
/// writes: that graph is dropped and captured again, so training around such a pass gives
/// what training alone gives. (The fake driver checks a graph's pointers at every replay.)
pub fn a_grown_partials_buffer_drops_the_captured_graphs<D: Device>(gpu: &dyn Fn(bool) -> CudaBackend<D>) {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (images, labels) = tiny_dataset(&mut rng, 12);
    let run = |evaluate_between: bool| {
        let net = Net::new();
        let init = net.layout.init(7);
        let mut model = Model::new(gpu(true), net, &init, 12);
        let data = model.backend.upload_data(&images, &labels);
        let order = model.backend.upload_idx(&(0..12).collect::<Vec<u32>>());
        for step in 0..6 {
            // Steps 0 and 1 run plainly and capture; 2 replays; 3 replays or captures again.
            if step == 3 && evaluate_between {
                model.evaluate(&data, &order, 12, None);
            }
            model.backend.gather(&data, &order, 3 * (step % 4), 3, &mut model.ws.x, &mut model.ws.labels, None);
            model.train_step(3, &SGD, 6);
        }
        model.params()
    };
    assert_eq!(run(true), run(false), "parameters after 6 steps with and without an eval pass between");
}

/// The `best` recipe (AdamW, one-cycle, label smoothing, affine augmentation) for 50 steps:
/// the learning rate, β1 and the bias corrections change every step, yet one captured graph
/// serves them all, replaying exactly what the uncaptured steps compute. Its first 5 steps
/// follow the CPU, with eps raised from 1e-8 to 1e-4 for that comparison: Adam divides by
/// √v + eps, so a weight whose gradient is rounding noise moves by up to the learning rate
/// whatever the noise's size, and with eps 1e-8 the two backends' summation orders alone
/// (cuBLAS's split-K, the conv splits, fused multiply-adds) move such weights apart by more
/// than any fixed tolerance on a real GPU after one step.
pub fn a_one_cycle_adamw_run_captures_one_graph<D: Device>(gpu: &dyn Fn(bool) -> CudaBackend<D>) {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let data = tiny_dataset(&mut rng, 8);
    let batches = [2; 50];
    let recipe = Recipe::preset(Preset::Best);
    let smooth = Recipe { eps: 1e-4, ..recipe };
    let (cpu_params, cpu_loss, ..) = train_on(cpu(), Arch::default(), &data, &batches[..5], &smooth);
    let (gpu_params, gpu_loss, ..) = train_on(gpu(true), Arch::default(), &data, &batches[..5], &smooth);
    assert_close("parameters after 5 AdamW steps", &gpu_params, &cpu_params);
    assert!((gpu_loss - cpu_loss).abs() <= 1e-4 * cpu_loss, "loss {gpu_loss} vs {cpu_loss}");
    let (plain, plain_loss, ..) = train_on(gpu(false), Arch::default(), &data, &batches, &recipe);
    let graphs = gpu(true);
    let (graphed, graphed_loss, _, graphs) = train_on(graphs, Arch::default(), &data, &batches, &recipe);
    assert_eq!(graphs.captured_graphs(), 1, "graphs captured in 50 steps");
    assert_eq!(graphed, plain, "graph replay changes the result");
    assert_eq!(graphed_loss, plain_loss);
}

/// `C = op(A)·op(B) + beta·C` as the cuBLAS documentation defines it on column-major
/// storage: element (i, j) of an `r × c` matrix with leading dimension `ld` is at `i + j·ld`,
/// and `op(X)` reads X transposed when asked.
fn sgemm_reference(g: &Gemm, a: &[f32], b: &[f32], c: &mut [f32]) {
    let at = |x: &[f32], trans: bool, ld: usize, i: usize, j: usize| if trans { x[j + i * ld] } else { x[i + j * ld] };
    for j in 0..g.n {
        for i in 0..g.m {
            let sum: f32 = (0..g.k).map(|p| at(a, g.trans_a, g.lda, i, p) * at(b, g.trans_b, g.ldb, p, j)).sum();
            let out = &mut c[i + j * g.ldc];
            *out = if g.beta == 0.0 { sum } else { sum + g.beta * *out };
        }
    }
}

/// The device's sgemm against [`sgemm_reference`] for every transpose pair, leading
/// dimensions larger than the matrices, and beta 0 (C's NaNs are not read) and 0.5: a
/// row-major/column-major mix-up or a wrong leading dimension shows as a wrong product.
pub fn sgemm_matches_the_column_major_definition<D: Device>(device: &D) {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (m, n, k) = (5, 3, 7);
    let upload = |values: &[f32]| {
        let mut mem = device.alloc(values.len() * 4).expect("alloc");
        device.upload(&mut mem, &values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()).expect("upload");
        mem
    };
    for (trans_a, trans_b, beta) in
        [(false, false, 0.0), (true, false, 0.5), (false, true, 0.0), (true, true, 0.5), (true, false, 0.0)]
    {
        let (a_rows, a_cols) = if trans_a { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if trans_b { (n, k) } else { (k, n) };
        let (lda, ldb, ldc) = (a_rows + 2, b_rows + 1, m + 3);
        let a = random(&mut rng, lda * a_cols);
        let b = random(&mut rng, ldb * b_cols);
        let c0: Vec<f32> = if beta == 0.0 { vec![f32::NAN; ldc * n] } else { random(&mut rng, ldc * n) };
        let (ga, gb, gc) = (upload(&a), upload(&b), upload(&c0));
        let gemm = Gemm {
            trans_a,
            trans_b,
            m,
            n,
            k,
            a: device.address(&ga),
            lda,
            b: device.address(&gb),
            ldb,
            beta,
            c: device.address(&gc),
            ldc,
        };
        device.sgemm(&gemm).expect("sgemm");
        let mut bytes = vec![0u8; c0.len() * 4];
        device.download(&gc, &mut bytes).expect("download");
        let ours: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let mut expected = c0.clone();
        sgemm_reference(&gemm, &a, &b, &mut expected);
        for j in 0..n {
            let column = j * ldc..j * ldc + m;
            let what = format!("sgemm trans_a={trans_a} trans_b={trans_b} beta={beta}, column {j}");
            assert_close(&what, &ours[column.clone()], &expected[column]);
            // Rows past m, inside the leading dimension, are not C's and stay as they were.
            let padding = j * ldc + m..(j + 1) * ldc;
            assert_eq!(
                ours[padding.clone()].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                c0[padding].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{what}: padding rows"
            );
        }
    }
}
