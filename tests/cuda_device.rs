//! The CUDA backend on a real GPU. Each test prints a note and passes when no device answers,
//! so the suite runs anywhere; on a GPU machine run `cargo test --release --features cuda`.
#![cfg(feature = "cuda")]

use std::path::PathBuf;

use clap::ValueEnum;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use resnet_mnist::backend::cpu::CpuBackend;
use resnet_mnist::backend::cuda::hw::CudarcDevice;
use resnet_mnist::backend::cuda::CudaBackend;
use resnet_mnist::backend::{Backend, ConvShape, ParamSlot};
use resnet_mnist::data::{self, DatasetKind, LoadOptions};
use resnet_mnist::model::{Arch, BlockKind, Model, Net};
use resnet_mnist::train::{DeviceSplit, Recipe, EVAL_BATCH};

mod common;

fn gpu(graphs: bool) -> Option<CudaBackend<CudarcDevice>> {
    match CudarcDevice::new(0) {
        Ok(device) => Some(CudaBackend::new(device, graphs)),
        Err(e) => {
            eprintln!("note: skipping the GPU test: {e}");
            None
        }
    }
}

fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn assert_close(what: &str, ours: &[f32], expected: &[f32]) {
    let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (a, b)) in ours.iter().zip(expected).enumerate() {
        assert!((a - b).abs() / scale <= 1e-4, "{what}: element {i} is {a} on the GPU, {b} on the CPU");
    }
}

#[test]
fn conv_ops_match_cpu_on_the_gpu() {
    let Some(g) = gpu(false) else { return };
    let c = CpuBackend::new(0).expect("thread pool");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for s in [
        ConvShape { batch: 64, c_in: 1, c_out: 16, height: 28, width: 28, kernel: 5, pad: 0 },
        ConvShape { batch: 3, c_in: 16, c_out: 16, height: 12, width: 12, kernel: 3, pad: 1 },
        ConvShape { batch: 17, c_in: 16, c_out: 32, height: 12, width: 12, kernel: 5, pad: 0 },
    ] {
        let slot = ParamSlot { offset: 0, weight_len: s.weight_len(), bias_len: s.c_out };
        let (x, params, dy) =
            (random(&mut rng, s.in_len()), random(&mut rng, slot.len()), random(&mut rng, s.out_len()));
        let (mut y, mut gy) = (vec![0.0; s.out_len()], g.zeros(s.out_len()));
        c.conv2d_forward(&s, &x, &params, slot, &mut y, true);
        g.conv2d_forward(&s, &g.upload(&x), &g.upload(&params), slot, &mut gy, true);
        assert_close("forward", &g.download(&gy), &y);
        let (mut dx, mut gdx) = (vec![0.0; s.in_len()], g.zeros(s.in_len()));
        c.conv2d_backward_data(&s, &dy, &params, slot, &mut dx, false);
        g.conv2d_backward_data(&s, &g.upload(&dy), &g.upload(&params), slot, &mut gdx, false);
        assert_close("backward data", &g.download(&gdx), &dx);
        let (mut dw, mut gdw) = (vec![0.0; slot.len()], g.zeros(slot.len()));
        c.conv2d_backward_params(&s, &x, &dy, &mut dw, slot);
        g.conv2d_backward_params(&s, &g.upload(&x), &g.upload(&dy), &mut gdw, slot);
        assert_close("backward params", &g.download(&gdw), &dw);
    }
}

fn mnist() -> Option<data::Dataset> {
    let dir = PathBuf::from(std::env::var_os("MNIST_DIR")?);
    data::load(&LoadOptions { dir, kind: DatasetKind::Mnist, offline: true }).ok()
}

#[test]
fn one_epoch_reaches_98_percent_and_graphs_match_plain_steps() {
    let Some(backend) = gpu(true) else { return };
    let Some(dataset) = mnist() else {
        eprintln!("note: skipping the GPU training test: set MNIST_DIR to a folder with the MNIST IDX files");
        return;
    };
    let recipe = Recipe { epochs: 1, ..Recipe::default() };
    let net = Net::new();
    let init = net.layout.init(recipe.seed);
    let mut model = Model::new(backend, net.clone(), &init, EVAL_BATCH);
    let (train_split, test_split) =
        (DeviceSplit::new(&model.backend, &dataset.train), DeviceSplit::new(&model.backend, &dataset.test));
    let reports = common::train_run(&mut model, &train_split, &test_split, recipe);
    eprintln!(
        "1 epoch on {}: {:.2} %, {:.0} images/s",
        model.backend.name(),
        reports[0].test.accuracy,
        reports[0].images_per_s
    );
    assert!(reports[0].test.accuracy >= 98.0, "test accuracy {:.2} %", reports[0].test.accuracy);

    // The same 6 steps with and without graph replay give the same parameters.
    let params: Vec<Vec<f32>> = [true, false]
        .into_iter()
        .map(|graphs| {
            let backend = gpu(graphs).expect("the GPU answered above");
            let mut m = Model::new(backend, net.clone(), &init, 64);
            let data = DeviceSplit::new(&m.backend, &dataset.train);
            let order = m.backend.upload_idx(&(0..data.len as u32).collect::<Vec<_>>());
            for step in 0..6 {
                m.backend.gather(&data.data, &order, step * 64, 64, &mut m.ws.x, &mut m.ws.labels);
                m.train_step(64, recipe.lr, recipe.momentum);
            }
            m.params()
        })
        .collect();
    assert_eq!(params[0], params[1], "graph replay differs from plain steps");
}

/// Every block variant, three blocks a stage, 4 steps of batch 64 then a short one, with graphs.
#[test]
fn every_block_variant_trains_like_cpu_on_the_gpu() {
    let Some(_) = gpu(true) else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let images: Vec<u8> = (0..300 * 784).map(|_| rng.random()).collect();
    let labels: Vec<u8> = (0..300).map(|_| rng.random_range(0..10)).collect();
    for &block in BlockKind::value_variants() {
        let arch = Arch { block, depth: 3 };
        let cpu = train_steps(CpuBackend::new(0).expect("thread pool"), arch, &images, &labels);
        let gpu = train_steps(gpu(true).expect("the GPU answered above"), arch, &images, &labels);
        assert_close(&format!("{arch}: parameters after 5 steps"), &gpu, &cpu);
    }
}

fn train_steps<B: Backend>(backend: B, arch: Arch, images: &[u8], labels: &[u8]) -> Vec<f32> {
    let net = Net::build(arch);
    let init = net.layout.init(5);
    let mut m = Model::new(backend, net, &init, 64);
    let data = m.backend.upload_data(images, labels);
    let order = m.backend.upload_idx(&(0..labels.len() as u32).collect::<Vec<_>>());
    for (step, batch) in [64, 64, 64, 64, 44].into_iter().enumerate() {
        m.backend.gather(&data, &order, step * 64, batch, &mut m.ws.x, &mut m.ws.labels);
        m.train_step(batch, 0.01, 0.5);
    }
    m.params()
}
