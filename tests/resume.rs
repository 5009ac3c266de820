//! Resuming on the CPU gives the same numbers as an uninterrupted run, whether the run
//! stopped mid-epoch or between epochs; and a stopped run leaves its files loadable.

use std::cell::Cell;
use std::path::Path;

use resnet_mnist::backend::cpu::CpuBackend;
use resnet_mnist::checkpoint;
use resnet_mnist::data::{Split, IMAGE_PIXELS};
use resnet_mnist::model::{Arch, BlockKind, Model, Net};
use resnet_mnist::recipe::{AugmentKind, OptimizerKind, ScheduleKind};
use resnet_mnist::session::{self, Outcome, Session, TrainState, BEST, GRAD_NORMS, LAST, METRICS};
use resnet_mnist::train::{DeviceSplit, Evaluation, Recipe};

const RECIPE: Recipe =
    Recipe { epochs: 2, batch_size: 32, lr: 0.05, momentum: 0.5, seed: 3, grad_norm_every: 2, ..Recipe::REFERENCE };
/// Every part of the `best` recipe: AdamW, one-cycle, label smoothing, affine augmentation.
const BEST_PARTS: Recipe = Recipe {
    optimizer: OptimizerKind::Adamw,
    lr: 3e-3,
    weight_decay: 1e-4,
    schedule: ScheduleKind::Onecycle,
    label_smoothing: 0.1,
    augment: AugmentKind::Affine,
    ..RECIPE
};
/// Not the reference network, so that resuming has to rebuild it from the saved state.
const ARCH: Arch = Arch { block: BlockKind::Preact, depth: 2 };

/// Digit-like noise: each class a bright bar at its own rows, plus noise.
fn synthetic(len: usize, salt: u64) -> Split {
    let mut state = salt.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u8
    };
    let labels: Vec<u8> = (0..len).map(|i| (i % 10) as u8).collect();
    let images = labels
        .iter()
        .flat_map(|&l| {
            (0..IMAGE_PIXELS).map(|p| if p / 28 / 2 == l as usize + 2 { 255 } else { next() / 4 }).collect::<Vec<_>>()
        })
        .collect();
    Split { images, labels }
}

/// Runs from wherever `dir` stands (fresh if empty), stopping once `stop_after` steps ran.
fn run(dir: &Path, resume: bool, stop_after: usize) -> (Outcome, TrainState, Vec<f32>) {
    run_recipe(dir, RECIPE, resume, stop_after)
}

/// [`run`] with `recipe`.
fn run_recipe(dir: &Path, recipe: Recipe, resume: bool, stop_after: usize) -> (Outcome, TrainState, Vec<f32>) {
    let (train, test) = (synthetic(160, 1), synthetic(50, 2));
    let (mut session, mut model) = if resume {
        let saved = Session::resume(dir).unwrap();
        assert_eq!((saved.net.arch, saved.session.state.recipe), (ARCH, recipe));
        saved.into_model(CpuBackend::new(2).unwrap(), 64)
    } else {
        let net = Net::build(ARCH);
        let params = net.layout.init(recipe.seed);
        (Session::create(dir, recipe, ARCH).unwrap(), Model::new(CpuBackend::new(2).unwrap(), net, &params, 64))
    };
    let (train, test) = (DeviceSplit::new(&model.backend, &train), DeviceSplit::new(&model.backend, &test));
    let calls = Cell::new(0);
    let stop = || {
        calls.set(calls.get() + 1);
        calls.get() > stop_after
    };
    let outcome = session::run(&mut session, &mut model, &train, &test, &stop, &mut |_| {}).unwrap();
    (outcome, session.state, model.params())
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Stops after `steps` (5 per epoch), resumes, and compares with a straight run.
fn assert_resume_matches(steps: usize) {
    assert_resume_of_recipe_matches(RECIPE, steps);
}

fn assert_resume_of_recipe_matches(recipe: Recipe, steps: usize) {
    let (straight, interrupted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (outcome, expected, expected_params) = run_recipe(straight.path(), recipe, false, usize::MAX);
    assert_eq!(outcome, Outcome::Finished);
    let (outcome, _, _) = run_recipe(interrupted.path(), recipe, false, steps);
    assert_eq!(outcome, Outcome::Stopped { epoch: steps / 5, batch: steps % 5 });
    let (outcome, resumed, params) = run_recipe(interrupted.path(), recipe, true, usize::MAX);
    assert_eq!(outcome, Outcome::Finished);
    assert_eq!(bits(&params), bits(&expected_params), "parameters after resuming at step {steps}");
    assert_eq!(resumed.steps, expected.steps);
    assert_eq!(resumed.grad_norms, expected.grad_norms, "gradient norms recorded across the stop");
    assert_eq!(resumed.grad_norms.len(), 5, "every second of 10 steps");
    for (a, b) in resumed.history.iter().zip(&expected.history) {
        assert_eq!(a.test, Evaluation { seconds: a.test.seconds, ..b.test }, "epoch {}", a.epoch);
        // The split epoch sums its losses in two parts, which may round differently.
        assert!((a.train_loss - b.train_loss).abs() <= 1e-12 * b.train_loss, "epoch {}", a.epoch);
    }
    for name in [LAST, BEST] {
        let (net, _) = checkpoint::load_net(&interrupted.path().join(name)).unwrap();
        assert_eq!(net.arch, ARCH, "{name} records the network");
    }
    let csv = std::fs::read_to_string(interrupted.path().join(METRICS)).unwrap();
    assert_eq!(csv.lines().count(), 1 + RECIPE.epochs, "{csv}");
    let norms = std::fs::read_to_string(interrupted.path().join(GRAD_NORMS)).unwrap();
    assert_eq!(norms.lines().count(), 1 + 5, "{norms}");
    assert!(norms.starts_with("step,epoch,conv1.weight,conv1.bias,stage1.0.conv1.weight,"), "{norms}");
}

#[test]
fn resume_mid_epoch_matches_an_uninterrupted_run() {
    assert_resume_matches(7);
}

#[test]
fn resume_between_epochs_matches_an_uninterrupted_run() {
    assert_resume_matches(5);
}

/// Adam's second moment, the schedule's position and the augmentation's draws all come back.
#[test]
fn resuming_the_best_recipe_mid_epoch_matches_an_uninterrupted_run() {
    assert_resume_of_recipe_matches(BEST_PARTS, 7);
}

/// A checkpoint records the recipe that made it.
#[test]
fn checkpoints_record_their_recipe() {
    let dir = tempfile::tempdir().unwrap();
    run_recipe(dir.path(), BEST_PARTS, false, usize::MAX);
    let file = checkpoint::CheckpointFile::open(&dir.path().join(LAST)).unwrap();
    let json: String = file.meta("recipe").unwrap().unwrap();
    assert_eq!(serde_json::from_str::<Recipe>(&json).unwrap(), BEST_PARTS);
}

#[test]
fn a_directory_with_a_run_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), false, 1);
    let err = Session::create(dir.path(), RECIPE, ARCH).err().expect("refused");
    assert!(err.to_string().contains("--resume"), "{err}");
}

/// `save_every` saves the state within the epoch, after every so many steps, and the run
/// that saves gives the numbers of one that does not.
#[test]
fn periodic_saves_within_an_epoch_change_nothing() {
    let (plain_dir, saving_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (outcome, plain, plain_params) = run(plain_dir.path(), false, usize::MAX);
    assert_eq!(outcome, Outcome::Finished);

    let (train, test) = (synthetic(160, 1), synthetic(50, 2));
    let net = Net::build(ARCH);
    let params = net.layout.init(RECIPE.seed);
    let mut model = Model::new(CpuBackend::new(2).unwrap(), net, &params, 64);
    let (train, test) = (DeviceSplit::new(&model.backend, &train), DeviceSplit::new(&model.backend, &test));
    let mut session = Session::create(saving_dir.path(), RECIPE, ARCH).unwrap();
    session.save_every = Some(2);
    let state_path = saving_dir.path().join(session::STATE);
    let saved_batches = |path: &Path| {
        let file = checkpoint::CheckpointFile::open(path).unwrap();
        let json: String = file.meta("state").unwrap().unwrap();
        serde_json::from_str::<TrainState>(&json).unwrap().progress.batches
    };
    let mut seen = Vec::new();
    let outcome = session::run(&mut session, &mut model, &train, &test, &|| false, &mut |event| {
        if let resnet_mnist::train::Event::Step { epoch: 1, batch: 3, .. } = event {
            seen.push(saved_batches(&state_path));
        }
    })
    .unwrap();
    assert_eq!(outcome, Outcome::Finished);
    assert_eq!(seen, [2], "the state on disk after step 3 of the first epoch is the one saved after step 2");
    assert_eq!(bits(&model.params()), bits(&plain_params));
    let numbers = |h: &[resnet_mnist::train::EpochReport]| {
        h.iter().map(|r| (r.epoch, r.train_loss.to_bits(), r.test.loss.to_bits(), r.test.correct)).collect::<Vec<_>>()
    };
    assert_eq!(numbers(&session.state.history), numbers(&plain.history));
}
