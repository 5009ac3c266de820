//! Checkpoints: bit-exact round trip, loading a state_dict saved by PyTorch, and a clear
//! error for every kind of bad file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use resnet_mnist::backend::cpu::CpuBackend;
use resnet_mnist::checkpoint::{self, CheckpointError};
use resnet_mnist::model::{Arch, BlockKind, Model, Net, CLASSES};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

#[test]
fn round_trip_is_bit_exact() {
    let net = Net::new();
    let mut params = net.layout.init(7);
    // Values a lossy text format would mangle.
    params[..4].copy_from_slice(&[f32::MIN_POSITIVE / 2.0, -0.0, 1.0e-38, f32::MAX]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let metadata = HashMap::from([("epoch".to_string(), "3".to_string())]);
    checkpoint::save_params(&path, &net.layout, &params, metadata).unwrap();
    let loaded = checkpoint::load_params(&path, &net.layout).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&loaded.params), bits(&params));
    assert_eq!(loaded.meta::<usize>(&path, "epoch").unwrap(), Some(3));
    assert_eq!(loaded.metadata.get("format").map(String::as_str), Some("pt"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left behind");
}

/// The logits of checkpoint `name` on the fixture's images match `key`, computed by PyTorch.
fn assert_pytorch_logits(name: &str, key: &str) {
    let net = Net::new();
    let checkpoint = checkpoint::load_params(&fixture(name), &net.layout).unwrap();
    let bytes = std::fs::read(fixture("pytorch_logits.safetensors")).unwrap();
    let reference = SafeTensors::deserialize(&bytes).unwrap();
    let x = f32s(reference.tensor("x").unwrap().data());
    let theirs = f32s(reference.tensor(key).unwrap().data());
    let batch = theirs.len() / CLASSES;
    let mut model = Model::new(CpuBackend::new(2).unwrap(), net, &checkpoint.params, batch);
    model.ws.x[..x.len()].copy_from_slice(&x);
    model.eval_batch(batch);
    let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in model.ws.logits[..theirs.len()].iter().zip(&theirs).enumerate() {
        assert!((a - b).abs() <= 1e-4 * scale, "{name}, logit {i}: {a} here, {b} in PyTorch");
    }
}

#[test]
fn state_dict_saved_by_pytorch_gives_its_logits() {
    assert_pytorch_logits("pytorch_state_dict.safetensors", "logits");
}

/// `trained.safetensors` was written by this program; PyTorch loaded it into the reference
/// `Net` strictly (scripts/make_checkpoint_fixture.py) and recorded its logits.
#[test]
fn checkpoint_written_here_gives_the_same_logits_in_pytorch() {
    assert_pytorch_logits("trained.safetensors", "trained_logits");
}

/// Writes `tensors` (name, dtype, shape) filled with zeros, as another tool might.
fn write_raw(path: &Path, tensors: &[(&str, Dtype, Vec<usize>)]) {
    let data: Vec<Vec<u8>> =
        tensors.iter().map(|(_, d, s)| vec![0; d.bitsize() / 8 * s.iter().product::<usize>()]).collect();
    let views =
        tensors.iter().zip(&data).map(|((n, d, s), b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()));
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// The network's tensors with `change` applied to the list.
fn state_dict_with(
    change: impl FnOnce(&mut Vec<(&str, Dtype, Vec<usize>)>),
    net: &Net,
) -> Vec<(String, Dtype, Vec<usize>)> {
    let mut tensors: Vec<(&str, Dtype, Vec<usize>)> =
        net.layout.tensors.iter().map(|t| (t.name.as_str(), Dtype::F32, t.shape.clone())).collect();
    change(&mut tensors);
    tensors.into_iter().map(|(n, d, s)| (n.to_string(), d, s)).collect()
}

fn load_error(change: impl FnOnce(&mut Vec<(&str, Dtype, Vec<usize>)>)) -> (PathBuf, CheckpointError) {
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let tensors = state_dict_with(change, &net);
    let borrowed: Vec<(&str, Dtype, Vec<usize>)> =
        tensors.iter().map(|(n, d, s)| (n.as_str(), *d, s.clone())).collect();
    write_raw(&path, &borrowed);
    let err = checkpoint::load_params(&path, &net.layout).unwrap_err();
    (path, err)
}

fn assert_names_file(path: &Path, err: &CheckpointError) {
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}

#[test]
fn missing_tensor() {
    let (path, err) = load_error(|t| t.retain(|(n, ..)| *n != "rblock2.conv1.bias"));
    assert!(matches!(&err, CheckpointError::Missing { name, .. } if name == "rblock2.conv1.bias"), "{err}");
    assert_names_file(&path, &err);
}

#[test]
fn unexpected_tensor() {
    let (path, err) = load_error(|t| t.push(("fc2.weight", Dtype::F32, vec![2, 2])));
    assert!(matches!(&err, CheckpointError::Unexpected { names, .. } if names == &["fc2.weight"]), "{err}");
    assert_names_file(&path, &err);
}

#[test]
fn wrong_shape() {
    let (path, err) = load_error(|t| t.iter_mut().filter(|t| t.0 == "fc.weight").for_each(|t| t.2 = vec![512, 10]));
    assert!(matches!(&err, CheckpointError::WrongShape { name, .. } if name == "fc.weight"), "{err}");
    assert!(err.to_string().contains("[512, 10]") && err.to_string().contains("[10, 512]"), "{err}");
    assert_names_file(&path, &err);
}

#[test]
fn wrong_dtype() {
    let (path, err) = load_error(|t| t.iter_mut().filter(|t| t.0 == "conv1.bias").for_each(|t| t.1 = Dtype::F64));
    assert!(matches!(&err, CheckpointError::WrongDtype { found: Dtype::F64, .. }), "{err}");
    assert_names_file(&path, &err);
}

fn saved_checkpoint(dir: &Path) -> (Net, PathBuf, Vec<u8>) {
    let net = Net::new();
    let path = dir.join("ckpt.safetensors");
    checkpoint::save_params(&path, &net.layout, &net.layout.init(0), HashMap::new()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (net, path, bytes)
}

#[test]
fn truncated_and_corrupted_files() {
    let dir = tempfile::tempdir().unwrap();
    let (net, path, bytes) = saved_checkpoint(dir.path());
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut garbled_header = bytes.clone();
    garbled_header[8 + header_len / 2] = b'\xff';
    let cases: [(&str, Vec<u8>); 5] = [
        ("empty", Vec::new()),
        ("truncated header", bytes[..20].to_vec()),
        ("truncated data", bytes[..bytes.len() - 100].to_vec()),
        ("garbled header", garbled_header),
        ("not safetensors", b"PK\x03\x04 this is a zip file, not safetensors".to_vec()),
    ];
    for (what, contents) in cases {
        std::fs::write(&path, contents).unwrap();
        let err = checkpoint::load_params(&path, &net.layout).unwrap_err();
        assert!(matches!(err, CheckpointError::Format { .. }), "{what}: {err}");
        assert_names_file(&path, &err);
    }
}

#[test]
fn unreadable_paths() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::new();
    for path in [dir.path().join("absent.safetensors"), dir.path().to_path_buf()] {
        let err = checkpoint::load_params(&path, &net.layout).unwrap_err();
        assert!(matches!(err, CheckpointError::Read { .. }), "{err}");
        assert_names_file(&path, &err);
    }
}

#[test]
fn bad_metadata_value() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::new();
    let path = dir.path().join("ckpt.safetensors");
    let metadata = HashMap::from([("epoch".to_string(), "three".to_string())]);
    checkpoint::save_params(&path, &net.layout, &net.layout.init(0), metadata).unwrap();
    let loaded = checkpoint::load_params(&path, &net.layout).unwrap();
    let err = loaded.meta::<usize>(&path, "epoch").unwrap_err();
    assert!(err.to_string().contains("epoch") && err.to_string().contains("three"), "{err}");
}

/// Deeper stacks use `stageS.I.*` names, the 1×1 shortcut its own; depth 1 keeps the reference's.
#[test]
fn layouts_name_every_variant_and_depth() {
    let names = |arch: Arch| Net::build(arch).layout.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    let reference = names(Arch::default());
    assert_eq!(
        reference[2..6],
        ["rblock1.conv1.weight", "rblock1.conv1.bias", "rblock1.conv2.weight", "rblock1.conv2.bias"]
    );
    for block in [BlockKind::Plain, BlockKind::ReluBeforeAdd, BlockKind::Preact, BlockKind::Scaled] {
        assert_eq!(names(Arch { block, depth: 1 }), reference, "{block} has the reference's tensors");
    }
    let net = Net::build(Arch { block: BlockKind::ConvShortcut, depth: 3 });
    let shortcut = net.layout.get("stage2.2.shortcut.weight").expect("named shortcut");
    assert_eq!(shortcut.shape, [32, 32, 1, 1]);
    assert_eq!(net.layout.get("stage1.0.conv2.weight").unwrap().shape, [16, 16, 3, 3]);
    assert!(net.layout.get("rblock1.conv1.weight").is_none());
    // conv1, 3 blocks × 3 layers, conv2, 3 × 3, fc; a weight and a bias each.
    assert_eq!(net.layout.tensors.len(), 2 * (1 + 9 + 1 + 9 + 1));
    let depth1 = Net::build(Arch { block: BlockKind::ConvShortcut, depth: 1 });
    assert!(depth1.layout.get("rblock2.shortcut.bias").is_some());
}

/// A checkpoint rebuilds its own network; one without the keys (saved by PyTorch) is the reference.
#[test]
fn checkpoints_record_their_network() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.safetensors");
    let arch = Arch { block: BlockKind::Preact, depth: 3 };
    let net = Net::build(arch);
    let params = net.layout.init(4);
    checkpoint::save_params(&path, &net.layout, &params, checkpoint::arch_metadata(arch).into()).unwrap();
    let (loaded, file) = checkpoint::load_net(&path).unwrap();
    assert_eq!((loaded.arch, &file.params), (arch, &params));
    let (reference, _) = checkpoint::load_net(&fixture("pytorch_state_dict.safetensors")).unwrap();
    assert_eq!(reference.arch, Arch::default());

    for (key, value, problem) in [("depth", "0", "outside 1..=64"), ("block", "resnext", "resnext")] {
        let mut metadata: HashMap<String, String> = checkpoint::arch_metadata(arch).into();
        metadata.insert(key.into(), value.into());
        checkpoint::save_params(&path, &net.layout, &params, metadata).unwrap();
        let err = checkpoint::load_net(&path).expect_err("bad metadata is refused").to_string();
        assert!(err.contains(key) && err.contains(problem) && err.contains("deep.safetensors"), "{err}");
    }
}

/// A checkpoint of a diverged run is refused, naming the tensor, instead of giving NaN
/// predictions.
#[test]
fn non_finite_values() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::new();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut params = net.layout.init(0);
        let fc = net.layout.tensors.iter().find(|t| t.name == "fc.weight").unwrap();
        params[fc.range()][7] = bad;
        params[fc.range()][9] = bad;
        let path = dir.path().join("diverged.safetensors");
        checkpoint::save_params(&path, &net.layout, &params, HashMap::new()).unwrap();
        let err = checkpoint::load_params(&path, &net.layout).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::NonFinite { name, count: 2, first: 7, .. } if name == "fc.weight"),
            "{err}"
        );
        assert_names_file(&path, &err);
    }
}
