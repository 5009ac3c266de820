//! Fuzzing, as a property of the build: every parser of outside input (IDX files, gzip
//! streams, safetensors checkpoints, the run state `--resume` reads, pictures for `predict`,
//! the `compare.json` record) gets inputs mutated from real files (truncations, bit flips, byte
//! and field overwrites with huge sizes, inserted, deleted and repeated chunks), through the
//! same entry points a user's files go through. Errors are the expected outcome; a panic fails
//! the test and saves the input under `target/fuzz-failures/`, and an input that runs for
//! more than 20 s aborts the run with its name (a hang). `cargo test` runs a short pass;
//!   RESNET_MNIST_FUZZ_INPUTS=1000000 cargo test --release --test fuzz -- --nocapture --test-threads 1
//! runs a million inputs per target and prints the counts.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use resnet_mnist::backend::cpu::CpuBackend;
use resnet_mnist::compare::Setup;
use resnet_mnist::data::{self, DatasetKind, LoadOptions, IMAGE_PIXELS};
use resnet_mnist::model::{Model, Net};
use resnet_mnist::session::{self, Session};
use resnet_mnist::train::{DeviceSplit, Recipe};
use resnet_mnist::{checkpoint, digit};

mod common;

const IDX_NAMES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];
const HANG: Duration = Duration::from_secs(20);

fn inputs() -> usize {
    std::env::var("RESNET_MNIST_FUZZ_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

/// One mutation of `seed`: 1 to 4 edits, each a truncation, bit flip, byte overwrite, 32-bit
/// field overwrite (a size or count made huge, zero or off by one), or a chunk inserted,
/// deleted or repeated.
fn mutate(rng: &mut ChaCha8Rng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = bytes.len();
        let at = if len == 0 { 0 } else { rng.random_range(0..len) };
        match rng.random_range(0..7) {
            0 => bytes.truncate(at),
            1 if len > 0 => bytes[at] ^= 1 << rng.random_range(0..8),
            2 if len > 0 => bytes[at] = [0, 0xFF, 0x7F, 0x80, rng.random()][rng.random_range(0..5)],
            3 if len >= 4 => {
                let at = at.min(len - 4);
                let old = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
                let value = [0, 1, u32::MAX, i32::MAX as u32, old.wrapping_add(1), old.wrapping_sub(1), old << 8]
                    [rng.random_range(0..7)];
                let word = if rng.random() { value.to_be_bytes() } else { value.to_le_bytes() };
                bytes[at..at + 4].copy_from_slice(&word);
            }
            4 => {
                let chunk: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
                bytes.splice(at..at, chunk);
            }
            5 if len > 0 => {
                let end = (at + rng.random_range(1..256)).min(len);
                bytes.drain(at..end);
            }
            6 if len > 0 => {
                let end = (at + rng.random_range(1..256)).min(len);
                let chunk = bytes[at..end].to_vec();
                bytes.splice(at..at, chunk);
            }
            _ => {}
        }
    }
    bytes
}

/// The input running now, for the watchdog to name and save if it hangs.
#[derive(Default)]
struct Current {
    target: &'static str,
    index: usize,
    started: Option<Instant>,
    input: Vec<u8>,
}

fn failures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures")
}

fn save_failure(target: &str, index: usize, input: &[u8]) -> PathBuf {
    let dir = failures_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{target}-{index}.bin"));
    std::fs::write(&path, input).unwrap();
    path
}

/// Aborts the process when one input runs longer than [`HANG`].
fn watchdog(current: Arc<Mutex<Current>>) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(1));
        let c = current.lock().unwrap();
        if c.started.is_some_and(|t| t.elapsed() > HANG) {
            let path = save_failure(c.target, c.index, &c.input);
            eprintln!(
                "fuzz {}: input {} runs for more than {HANG:?} (a hang); saved as {}",
                c.target,
                c.index,
                path.display()
            );
            std::process::abort();
        }
    });
}

/// Runs `inputs()` mutations of `seeds` through `parse`; panics when any input panicked.
fn fuzz(target: &'static str, seeds: &[Vec<u8>], mut parse: impl FnMut(&[u8])) {
    let current = Arc::new(Mutex::new(Current { target, ..Current::default() }));
    watchdog(Arc::clone(&current));
    let mut rng = ChaCha8Rng::seed_from_u64(0xF022);
    let (n, started) = (inputs(), Instant::now());
    let (mut panics, mut slowest) = (Vec::new(), Duration::ZERO);
    // Quiet: the panics are counted and saved, not printed one by one.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    for index in 0..n {
        let input = mutate(&mut rng, &seeds[index % seeds.len()]);
        let t = Instant::now();
        *current.lock().unwrap() = Current { target, index, started: Some(t), input: input.clone() };
        if catch_unwind(AssertUnwindSafe(|| parse(&input))).is_err() {
            panics.push(save_failure(target, index, &input));
        }
        slowest = slowest.max(t.elapsed());
    }
    current.lock().unwrap().started = None;
    eprintln!(
        "fuzz {target}: {n} inputs in {:.1} s, {} panics, 0 hangs, 0 aborts (slowest input {:.1} ms)",
        started.elapsed().as_secs_f64(),
        panics.len(),
        slowest.as_secs_f64() * 1e3
    );
    assert!(panics.is_empty(), "fuzz {target}: inputs that panicked: {panics:?}");
}

/// Real MNIST contents when MNIST_DIR is set (the first 16 test images and their labels),
/// else the tiny generated data set of the CLI tests, as the four IDX files of a data set.
fn idx_seeds() -> [Vec<u8>; 4] {
    let idx = |magic: u32, dims: &[u32], body: &[u8]| {
        let mut bytes: Vec<u8> =
            std::iter::once(magic).chain(dims.iter().copied()).flat_map(u32::to_be_bytes).collect();
        bytes.extend(body);
        bytes
    };
    let Some(dir) = std::env::var_os("MNIST_DIR") else {
        let tmp = tempfile::tempdir().unwrap();
        common::write_dataset(tmp.path(), 20, 10);
        return IDX_NAMES.map(|name| std::fs::read(tmp.path().join(name)).unwrap());
    };
    let real = data::load(&LoadOptions { dir: dir.into(), kind: DatasetKind::Mnist, offline: true }).unwrap();
    let n = 16;
    let images = idx(0x803, &[n as u32, 28, 28], &real.test.images[..n * IMAGE_PIXELS]);
    let labels = idx(0x801, &[n as u32], &real.test.labels[..n]);
    [images.clone(), labels.clone(), images, labels]
}

/// Writes the four IDX files into `dir` (gzipped, as `.gz`, when `gzip`), `mutated` in the
/// place of file `which`, and loads them as a user's data set is loaded.
fn load_with(dir: &Path, files: &[Vec<u8>; 4], which: usize, mutated: &[u8], gzip: bool) {
    for (i, name) in IDX_NAMES.iter().enumerate() {
        let bytes: &[u8] = if i == which { mutated } else { &files[i] };
        let name = if gzip { format!("{name}.gz") } else { name.to_string() };
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let _ = data::load(&LoadOptions { dir: dir.into(), kind: DatasetKind::Mnist, offline: true });
}

fn gzipped(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn idx_files() {
    let files = idx_seeds();
    let dir = tempfile::tempdir().unwrap();
    let mut index = 0;
    fuzz("idx", &files, |input| {
        index += 1;
        load_with(dir.path(), &files, index % 4, input, false);
    });
}

#[test]
fn gzip_streams() {
    let files = idx_seeds().map(|f| gzipped(&f));
    let dir = tempfile::tempdir().unwrap();
    let mut index = 0;
    fuzz("gzip", &files, |input| {
        index += 1;
        load_with(dir.path(), &files, index % 4, input, true);
    });
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
}

#[test]
fn checkpoints() {
    let seeds = [fixture("trained.safetensors"), fixture("pytorch_state_dict.safetensors")];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzzed.safetensors");
    fuzz("checkpoint", &seeds, |input| {
        std::fs::write(&path, input).unwrap();
        let _ = checkpoint::load_net(&path);
    });
}

/// A real run state: one epoch of a tiny run through the session loop.
fn run_state() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    common::write_dataset(tmp.path(), 20, 10);
    let data = data::load(&LoadOptions { dir: tmp.path().into(), kind: DatasetKind::Mnist, offline: true }).unwrap();
    let recipe = Recipe { epochs: 1, batch_size: 8, ..Recipe::default() };
    let net = Net::new();
    let init = net.layout.init(0);
    let mut model = Model::new(CpuBackend::new(1).unwrap(), net, &init, 10);
    let (train, test): (DeviceSplit<CpuBackend>, DeviceSplit<CpuBackend>) =
        (DeviceSplit::new(&model.backend, &data.train), DeviceSplit::new(&model.backend, &data.test));
    let mut session = Session::create(dir.path(), recipe, model.net.arch).unwrap();
    session::run(&mut session, &mut model, &train, &test, &|| false, &mut |_| {}).unwrap();
    std::fs::read(dir.path().join(session::STATE)).unwrap()
}

#[test]
fn run_states() {
    let seeds = [run_state()];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(session::STATE);
    fuzz("run state", &seeds, |input| {
        std::fs::write(&path, input).unwrap();
        let _ = Session::resume(dir.path());
    });
}

#[test]
fn pictures() {
    let dir = tempfile::tempdir().unwrap();
    let mut seeds: Vec<Vec<u8>> = ["00000-label7.png", "00001-label2.png", "00026-label7.png"]
        .iter()
        .map(|name| fixture(&format!("digits/{name}")))
        .collect();
    // A JPEG, and a larger picture with a dark digit on light paper, as a phone takes them.
    let seven = image::load_from_memory(&seeds[0]).unwrap().to_luma8();
    let mut big = image::imageops::resize(&seven, 96, 128, image::imageops::FilterType::Triangle);
    image::imageops::invert(&mut big);
    for (name, picture) in [("a.jpg", &seven), ("b.jpg", &big), ("c.png", &big)] {
        picture.save(dir.path().join(name)).unwrap();
        seeds.push(std::fs::read(dir.path().join(name)).unwrap());
    }
    let path = dir.path().join("fuzzed.img");
    fuzz("picture", &seeds, |input| {
        std::fs::write(&path, input).unwrap();
        let _ = digit::load(&path);
    });
}

#[test]
fn compare_records() {
    let setup = Setup { dataset: "mnist".into(), train: 60000, test: 10000 };
    let seeds = [serde_json::to_vec(&setup).unwrap(), serde_json::to_vec_pretty(&setup).unwrap()];
    fuzz("compare.json", &seeds, |input| {
        let _ = serde_json::from_slice::<Setup>(input);
    });
}

#[test]
fn the_mutator_keeps_some_inputs_valid_and_breaks_the_rest() {
    // A fuzzer whose every input fails at the first check would test nothing past it.
    let files = idx_seeds();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let dir = tempfile::tempdir().unwrap();
    let valid = (0..200)
        .filter(|_| {
            let input = mutate(&mut rng, &files[1]);
            for (i, name) in IDX_NAMES.iter().enumerate() {
                std::fs::write(dir.path().join(name), if i == 1 { &input } else { &files[i] }).unwrap();
            }
            data::load(&LoadOptions { dir: dir.path().into(), kind: DatasetKind::Mnist, offline: true }).is_ok()
        })
        .count();
    assert!((5..195).contains(&valid), "{valid} of 200 mutated label files load");
}
