//! Criterion benchmarks: a training step at the reference batch (with the native and the
//! portable convolution kernels), an eval batch, and each convolution's three products, with
//! throughput in images/s or FLOP/s.
//!
//! `cargo bench` (CPU). Data are synthetic: the timing does not depend on pixel values.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use resnet_mnist::backend::cpu::CpuBackend;
use resnet_mnist::backend::Backend;
use resnet_mnist::data::IMAGE_PIXELS;
use resnet_mnist::model::{Examples, Model, Net};
use resnet_mnist::recipe::{Preset, Recipe};
use resnet_mnist::train::EVAL_BATCH;

fn model(backend: CpuBackend, capacity: usize) -> Model<CpuBackend> {
    let net = Net::new();
    let params = net.layout.init(0);
    let mut model = Model::new(backend, net, &params, capacity);
    let images: Vec<f32> = (0..capacity * IMAGE_PIXELS).map(|i| ((i * 7919) % 255) as f32 / 255.0).collect();
    model.ws.x[..images.len()].copy_from_slice(&images);
    model.ws.labels.iter_mut().enumerate().for_each(|(i, l)| *l = (i % 10) as u32);
    model
}

/// `len` synthetic examples for [`Model::train_batch`] to gather, as training does.
fn examples(backend: &CpuBackend, len: usize) -> (<CpuBackend as Backend>::Data, Vec<u32>) {
    let images: Vec<u8> = (0..len * IMAGE_PIXELS).map(|i| ((i * 7919) % 255) as u8).collect();
    let labels: Vec<u8> = (0..len).map(|i| (i % 10) as u8).collect();
    (backend.upload_data(&images, &labels), (0..len as u32).collect())
}

fn step(c: &mut Criterion) {
    let recipe = Recipe::default();
    let fast = Recipe::preset(Preset::Fast);
    let batch = recipe.batch_size;
    let mut group = c.benchmark_group("network");
    group.throughput(Throughput::Elements(batch as u64));
    let backend = || CpuBackend::new(0).expect("thread pool");
    // The kernels of CPUs without AVX2 and FMA, for comparison; then the `fast` recipe's
    // step at the reference batch size: AdamW and label smoothing.
    for (name, backend, recipe) in [
        ("train_step", backend(), &recipe),
        ("train_step_portable", backend().with_portable_kernels(), &recipe),
        ("train_step_adamw", backend(), &fast),
    ] {
        let (data, order) = examples(&backend, batch);
        let mut train = model(backend, batch);
        group.bench_function(BenchmarkId::new(name, batch), |b| {
            b.iter(|| {
                let examples = Examples { data: &data, order: &order, start: 0, len: batch, augment: None };
                train.train_batch(examples, recipe, 1 << 20)
            })
        });
    }
    let mut eval = model(backend(), EVAL_BATCH);
    group.throughput(Throughput::Elements(EVAL_BATCH as u64));
    group.bench_function(BenchmarkId::new("eval_batch", EVAL_BATCH), |b| {
        b.iter(|| {
            eval.eval_batch(EVAL_BATCH);
            eval.take_stats()
        })
    });
    group.finish();
}

/// Each convolution at batch 64, with the native kernels and, on a CPU with AVX-512F,
/// without them (`<layer>/avx2`); throughput is in FLOP (2 per multiply-add).
fn convs(c: &mut Criterion) {
    let net = Net::new();
    let native = CpuBackend::new(0).expect("thread pool");
    let params = native.upload(&net.layout.init(0));
    let mut grads = native.zeros(net.layout.total);
    let avx2 = CpuBackend::new(0).expect("thread pool").without_avx512();
    let mut backends = vec![(String::new(), native)];
    if avx2.name() != backends[0].1.name() {
        backends.push(("/avx2".to_string(), avx2));
    }
    let mut group = c.benchmark_group("conv_flops");
    let (rblock1, rblock2) = (net.stage1.blocks[0].conv1, net.stage2.blocks[0].conv1);
    let layers = [("conv1", net.conv1), ("rblock1", rblock1), ("conv2", net.conv2), ("rblock2", rblock2)];
    for (name, conv) in layers {
        let s = conv.shape(Recipe::default().batch_size);
        for (kernels, b) in &backends {
            let x = b.upload(&vec![0.5; s.in_len()]);
            let (mut y, mut dx) = (b.zeros(s.out_len()), b.zeros(s.in_len()));
            let id = |what: &str| BenchmarkId::new(what, format!("{name}{kernels}"));
            group.throughput(Throughput::Elements(2 * s.macs() as u64));
            group.bench_function(id("forward"), |bench| {
                bench.iter(|| b.conv2d_forward(&s, &x, &params, conv.slot, &mut y, true))
            });
            group.bench_function(id("backward_data"), |bench| {
                bench.iter(|| b.conv2d_backward_data(&s, &y, &params, conv.slot, &mut dx, false))
            });
            group.bench_function(id("backward_params"), |bench| {
                bench.iter(|| b.conv2d_backward_params(&s, &x, &y, &mut grads, conv.slot))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, step, convs);
criterion_main!(benches);
