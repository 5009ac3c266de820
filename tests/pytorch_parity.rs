//! Parity with PyTorch on the same weights: logits, loss, every gradient and the parameters
//! and momentum after two SGD steps, from `tests/fixtures/reference.safetensors`
//! (written by `scripts/make_reference.py`); every block variant's logits, loss and
//! gradients, from `tests/fixtures/variants.safetensors` (`scripts/make_variant_reference.py`);
//! and the recipes' parts, from `tests/fixtures/recipes.safetensors`
//! (`scripts/make_recipe_reference.py`): each optimizer under OneCycleLR with label
//! smoothing, the smoothed loss alone, and the augmentation's resampling against torchvision.

use clap::ValueEnum;
use resnet_mnist::augment::{self, Affine};
use resnet_mnist::backend::cpu::{CpuBackend, PIXEL_MEAN, PIXEL_STD};
use resnet_mnist::backend::Backend;
use resnet_mnist::model::{Arch, BlockKind, Model, Net, CLASSES, IMAGE_SIDE};
use resnet_mnist::recipe::{OptimizerKind, Recipe, ScheduleKind};
use safetensors::{Dtype, SafeTensors};

mod common;
use common::{assert_close, TOLERANCE};

struct Fixture(Vec<u8>);

impl Fixture {
    fn load(name: &str) -> Self {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        Fixture(std::fs::read(path).expect("reading the PyTorch fixture"))
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.0).expect("parsing the PyTorch fixture")
    }

    fn f32(&self, key: &str) -> Vec<f32> {
        let tensors = self.tensors();
        let t = tensors.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(t.dtype(), Dtype::F32, "{key}");
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    fn bytes(&self, key: &str) -> Vec<u8> {
        let tensors = self.tensors();
        let t = tensors.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(t.dtype(), Dtype::U8, "{key}");
        t.data().to_vec()
    }

    fn f64(&self, key: &str) -> Vec<f64> {
        let tensors = self.tensors();
        let t = tensors.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(t.dtype(), Dtype::F64, "{key}");
        t.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn labels(&self, key: &str) -> Vec<u32> {
        let tensors = self.tensors();
        let t = tensors.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(t.dtype(), Dtype::I64, "{key}");
        t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect()
    }

    /// The flat buffer assembled from `{prefix}.{name}` for every tensor of the layout.
    fn flat(&self, net: &Net, prefix: &str) -> Vec<f32> {
        let mut flat = vec![0.0; net.layout.total];
        for t in &net.layout.tensors {
            let values = self.f32(&format!("{prefix}.{}", t.name));
            assert_eq!(values.len(), t.len(), "{prefix}.{}", t.name);
            flat[t.range()].copy_from_slice(&values);
        }
        flat
    }
}

fn load_batch(model: &mut Model<CpuBackend>, fixture: &Fixture, name: &str) -> usize {
    let (x, y) = (fixture.f32(&format!("{name}.x")), fixture.labels(&format!("{name}.y")));
    model.ws.x[..x.len()].copy_from_slice(&x);
    model.ws.labels[..y.len()].copy_from_slice(&y);
    y.len()
}

fn model(fixture: &Fixture) -> Model<CpuBackend> {
    let net = Net::new();
    let params = fixture.flat(&net, "param");
    Model::new(CpuBackend::new(2).expect("thread pool"), net, &params, 8)
}

#[test]
fn forward_and_gradients_match_pytorch() {
    let fixture = Fixture::load("reference.safetensors");
    let mut model = model(&fixture);
    let batch = load_batch(&mut model, &fixture, "batch0");
    model.eval_batch(batch);
    let stats = model.take_stats();

    assert_close("act.conv1", &model.ws.p1, &fixture.f32("act.conv1"));
    assert_close("act.rblock1", model.ws.stage1.out(), &fixture.f32("act.rblock1"));
    assert_close("act.conv2", &model.ws.p2, &fixture.f32("act.conv2"));
    assert_close("act.rblock2", model.ws.stage2.out(), &fixture.f32("act.rblock2"));
    assert_close("logits", &model.ws.logits[..batch * CLASSES], &fixture.f32("batch0.logits"));
    assert_close("loss", &[(stats.loss_sum / batch as f64) as f32], &fixture.f32("batch0.loss"));

    model.net.backward(&model.backend, &model.state.values, &mut model.state.grads, &mut model.ws, batch);
    let theirs = fixture.flat(&model.net, "grad");
    for t in &model.net.layout.tensors {
        assert_close(&format!("grad.{}", t.name), &model.state.grads[t.range()], &theirs[t.range()]);
    }
}

#[test]
fn two_sgd_steps_match_pytorch() {
    let fixture = Fixture::load("reference.safetensors");
    let mut model = model(&fixture);
    for name in ["batch0", "batch1"] {
        let batch = load_batch(&mut model, &fixture, name);
        model.train_step(batch, &Recipe::REFERENCE, 2);
    }
    let (params, momentum) = (fixture.flat(&model.net, "step2"), fixture.flat(&model.net, "step2.momentum"));
    let ours_momentum = model.backend.download(&model.state.momentum);
    for t in &model.net.layout.tensors {
        assert_close(&format!("step2.{}", t.name), &model.params()[t.range()], &params[t.range()]);
        assert_close(&format!("step2.momentum.{}", t.name), &ours_momentum[t.range()], &momentum[t.range()]);
    }
}

/// Four steps (batch0, batch1, batch0, batch1) of each optimizer under OneCycleLR over 6
/// steps, with label smoothing 0.1, as `torch.optim` and `lr_scheduler.OneCycleLR` take them.
#[test]
fn every_optimizer_under_one_cycle_with_label_smoothing_matches_pytorch() {
    let (reference, recipes) = (Fixture::load("reference.safetensors"), Fixture::load("recipes.safetensors"));
    let base =
        Recipe { schedule: ScheduleKind::Onecycle, label_smoothing: 0.1, weight_decay: 1e-2, ..Recipe::REFERENCE };
    for (name, recipe) in [
        ("sgd", Recipe { lr: 0.05, momentum: 0.9, nesterov: true, ..base }),
        ("adam", Recipe { optimizer: OptimizerKind::Adam, lr: 3e-3, ..base }),
        ("adamw", Recipe { optimizer: OptimizerKind::Adamw, lr: 4e-3, ..base }),
    ] {
        let mut model = model(&reference);
        for batch in ["batch0", "batch1", "batch0", "batch1"] {
            let batch = load_batch(&mut model, &reference, batch);
            model.train_step(batch, &recipe, 6);
        }
        let theirs = recipes.flat(&model.net, &format!("{name}.step4"));
        let ours = model.params();
        for t in &model.net.layout.tensors {
            assert_close(&format!("{name} step 4 {}", t.name), &ours[t.range()], &theirs[t.range()]);
        }
    }
}

#[test]
fn label_smoothing_matches_pytorch() {
    let fixture = Fixture::load("recipes.safetensors");
    let (logits, labels) = (fixture.f32("smoothing.logits"), fixture.labels("smoothing.labels"));
    let b = CpuBackend::new(1).unwrap();
    let (mut grad, mut stats) = (vec![0.0; logits.len()], b.new_stats());
    b.softmax_cross_entropy(labels.len(), CLASSES, 0.1, &logits, &labels, &mut grad, &mut stats);
    let loss = (b.take_stats(&mut stats).loss_sum / labels.len() as f64) as f32;
    assert_close("smoothed loss", &[loss], &fixture.f32("smoothing.loss"));
    assert_close("smoothed loss gradient", &grad, &fixture.f32("smoothing.grad"));
}

/// The resampling, given the transform's parameters, against
/// `torchvision.transforms.v2.functional.affine` on the image / 255.
#[test]
fn affine_resampling_matches_torchvision() {
    let fixture = Fixture::load("recipes.safetensors");
    let (images, params, theirs) =
        (fixture.bytes("affine.images"), fixture.f64("affine.params"), fixture.f32("affine.out"));
    let pixels = IMAGE_SIDE * IMAGE_SIDE;
    for (i, p) in params.chunks_exact(4).enumerate() {
        let transform = Affine { angle: p[0], translate: [p[1], p[2]], scale: p[3] };
        let mut ours = vec![0.0; pixels];
        augment::resample(&transform.inverse(), &images[i * pixels..][..pixels], IMAGE_SIDE, &mut ours);
        assert_close(&format!("{transform:?}"), &ours, &theirs[i * pixels..][..pixels]);
    }
}

/// Tensor `t` of the layout, element `i`: `bound·sin(0.618·(i + 1) + 1.7·t)`, with the layer's
/// `bound = 1/√fan_in`, as `scripts/make_variant_reference.py` computes it.
fn formula_params(net: &Net) -> Vec<f32> {
    let mut params = vec![0.0; net.layout.total];
    for (pair, layer) in net.layout.tensors.chunks(2).zip(0usize..) {
        let bound = 1.0 / (pair[0].shape[1..].iter().product::<usize>() as f64).sqrt();
        for (spec, t) in pair.iter().zip(2 * layer..) {
            for (i, v) in params[spec.range()].iter_mut().enumerate() {
                *v = (bound * (0.618 * (i + 1) as f64 + 1.7 * t as f64).sin()) as f32;
            }
        }
    }
    params
}

#[test]
fn every_block_variant_matches_pytorch() {
    let fixture = Fixture::load("variants.safetensors");
    let (batch, samples) = (4, 64);
    let x: Vec<f32> = (0..batch * 784).map(|i| ((i * 37 % 256) as f32 / 255.0 - PIXEL_MEAN) / PIXEL_STD).collect();
    let labels: Vec<u32> = (0..batch as u32).map(|n| n % 10).collect();
    for &block in BlockKind::value_variants() {
        let net = Net::build(Arch { block, depth: 2 });
        let mut model = Model::new(CpuBackend::new(2).unwrap(), net.clone(), &formula_params(&net), batch);
        model.ws.x[..x.len()].copy_from_slice(&x);
        model.ws.labels[..batch].copy_from_slice(&labels);
        model.eval_batch(batch);
        let loss = model.take_stats().loss_sum / batch as f64;
        model.net.backward(&model.backend, &model.state.values, &mut model.state.grads, &mut model.ws, batch);

        assert_close(
            &format!("{block} logits"),
            &model.ws.logits[..batch * CLASSES],
            &fixture.f32(&format!("{block}.logits")),
        );
        let theirs = f64::from(fixture.f32(&format!("{block}.loss"))[0]);
        assert!((loss - theirs).abs() <= 1e-5 * theirs, "{block} loss: {loss} here, {theirs} in PyTorch");
        for t in &net.layout.tensors {
            let grad = &model.state.grads[t.range()];
            let norm = grad.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>().sqrt() as f32;
            let their_norm = fixture.f32(&format!("{block}.norm.{}", t.name))[0];
            assert!(
                (norm - their_norm).abs() <= TOLERANCE * their_norm,
                "{block} {}: gradient norm {norm} here, {their_norm} in PyTorch",
                t.name
            );
            let ours: Vec<f32> = (0..samples).map(|k| grad[k * 7919 % t.len()]).collect();
            assert_close(
                &format!("{block} grad {}", t.name),
                &ours,
                &fixture.f32(&format!("{block}.sample.{}", t.name)),
            );
        }
    }
}
