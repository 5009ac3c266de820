//! Parity with PyTorch on the same weights: logits, loss, every gradient and the parameters
//! and momentum after two SGD steps, from `tests/fixtures/reference.safetensors`
//! (written by `scripts/make_reference.py`).

use resnet_mnist::backend::cpu::CpuBackend;
use resnet_mnist::backend::Backend;
use resnet_mnist::model::{Model, Net, CLASSES};
use safetensors::{Dtype, SafeTensors};

/// Largest error relative to the largest magnitude of the reference tensor.
const TOLERANCE: f32 = 1e-4;

struct Fixture(Vec<u8>);

impl Fixture {
    fn load() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reference.safetensors");
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

fn assert_close(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    let (worst, at) =
        ours.iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs())
            .zip(0..)
            .fold((0.0, 0), |w, e| if e.0 > w.0 { e } else { w });
    assert!(
        worst / scale <= TOLERANCE,
        "{what}: element {at} is {} here, {} in PyTorch (error {:e} relative to max {scale})",
        ours[at],
        theirs[at],
        worst / scale
    );
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
    let fixture = Fixture::load();
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
    let fixture = Fixture::load();
    let mut model = model(&fixture);
    for name in ["batch0", "batch1"] {
        let batch = load_batch(&mut model, &fixture, name);
        model.train_step(batch, 0.01, 0.5);
    }
    let (params, momentum) = (fixture.flat(&model.net, "step2"), fixture.flat(&model.net, "step2.momentum"));
    let ours_momentum = model.backend.download(&model.state.momentum);
    for t in &model.net.layout.tensors {
        assert_close(&format!("step2.{}", t.name), &model.params()[t.range()], &params[t.range()]);
        assert_close(&format!("step2.momentum.{}", t.name), &ours_momentum[t.range()], &momentum[t.range()]);
    }
}
