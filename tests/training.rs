//! End-to-end training: learning on real MNIST, determinism, and the batching of an epoch.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use resnet_mnist::backend::cpu::CpuBackend;
use resnet_mnist::backend::Backend;
use resnet_mnist::data::{self, DatasetKind, LoadOptions, Split, CLASSES, IMAGE_PIXELS};
use resnet_mnist::model::{Examples, Model, Net};
use resnet_mnist::train::{self, epoch_order, DeviceSplit, EpochProgress, Event, Recipe, EVAL_BATCH};

mod common;

fn model(threads: usize, seed: u64, capacity: usize) -> Model<CpuBackend> {
    let net = Net::new();
    let params = net.layout.init(seed);
    Model::new(CpuBackend::new(threads).expect("thread pool"), net, &params, capacity)
}

/// Random digits-shaped noise: enough to exercise every op without the real data set.
fn synthetic(len: usize, seed: u64) -> Split {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Split {
        images: (0..len * IMAGE_PIXELS).map(|_| rng.random()).collect(),
        labels: (0..len).map(|_| rng.random_range(0..10)).collect(),
    }
}

/// The running losses printed during one epoch.
fn epoch_losses(model: &mut Model<CpuBackend>, split: &Split, recipe: &Recipe) -> (Vec<f64>, f64) {
    let device = DeviceSplit::new(&model.backend, split);
    let order = model.backend.upload_idx(&epoch_order(recipe.seed, 0, split.len()));
    let mut losses = Vec::new();
    let progress = train::train_epoch(
        model,
        &device,
        &order,
        recipe,
        1,
        EpochProgress::default(),
        usize::MAX,
        &|| false,
        &mut |event| {
            if let Event::RunningLoss { loss, .. } = event {
                losses.push(loss);
            }
        },
    )
    .expect("training does not diverge");
    (losses, progress.loss_sum / split.len() as f64)
}

#[test]
fn same_seed_gives_identical_losses_whatever_the_thread_count() {
    let split = synthetic(900, 3);
    let recipe = Recipe { batch_size: 3, ..Recipe::default() };
    let runs: Vec<_> =
        [2, 2, 1].into_iter().map(|threads| epoch_losses(&mut model(threads, 5, 3), &split, &recipe)).collect();
    assert_eq!(runs[0].0.len(), 1, "one running-loss line per 300 batches");
    assert_eq!(runs[0], runs[1], "two runs with the same seed and threads");
    assert_eq!(runs[0], runs[2], "one thread against two");
}

/// Every image's logits from one batch on one thread, and the loss and accuracy they give.
fn logits_in_one_batch(split: &Split) -> (Vec<f32>, f64, u64) {
    let mut model = model(1, 6, split.len());
    let device = DeviceSplit::new(&model.backend, split);
    let order = model.backend.upload_idx(&(0..split.len() as u32).collect::<Vec<_>>());
    model.backend.gather(&device.data, &order, 0, split.len(), &mut model.ws.x, &mut model.ws.labels, None);
    model.eval_batch(split.len());
    let stats = model.take_stats();
    let logits = model.backend.download(&model.ws.logits)[..split.len() * CLASSES].to_vec();
    (logits, stats.loss_sum / split.len() as f64, stats.correct)
}

#[test]
fn evaluation_does_not_depend_on_the_thread_count_and_matches_one_batch() {
    // An odd length, so that the last chunk of every lane is short.
    let split = synthetic(301, 8);
    let (whole, loss, correct) = logits_in_one_batch(&split);
    let evaluate = |threads, capacity| {
        let mut model = model(threads, 6, capacity);
        let device = DeviceSplit::new(&model.backend, &split);
        let mut logits = vec![f32::NAN; split.len() * CLASSES];
        let evaluation = train::evaluate_into(&mut model, &device, Some(&mut logits));
        let again = train::evaluate(&mut model, &device);
        assert_eq!((again.loss, again.correct), (evaluation.loss, evaluation.correct), "a second evaluation");
        (logits, evaluation)
    };
    for capacity in [100, 7] {
        let (logits, evaluation) = evaluate(1, capacity);
        // Chunks of other sizes sum the linear layer's products in another order.
        let worst = logits.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-5, "capacity {capacity}: logits differ from one batch's by {worst}");
        assert_eq!(evaluation.correct, correct, "capacity {capacity}");
        assert!(
            (evaluation.loss - loss).abs() < 1e-6 * loss,
            "capacity {capacity}: loss {} against {loss}",
            evaluation.loss
        );
        for threads in [2, 3] {
            let (other, other_evaluation) = evaluate(threads, capacity);
            assert!(other == logits, "capacity {capacity}: {threads} threads give other logits than one");
            assert_eq!(other_evaluation.loss, evaluation.loss, "capacity {capacity}, {threads} threads");
        }
    }
}

/// A batch larger than a lane's chunk of 32 trains chunk by chunk on the lanes (here 32, 32
/// and 16 images), its chunks' gradients weighted by their share of the batch: the same step
/// as the whole batch's up to rounding, and bit for bit the same whatever the thread count.
#[test]
fn a_batch_in_chunks_trains_like_one_batch_whatever_the_thread_count() {
    let (split, batch) = (synthetic(240, 10), 80);
    let recipe = Recipe { batch_size: batch, ..Recipe::default() };
    let train = |threads, chunked: bool| {
        let mut model = model(threads, 7, batch);
        let device = DeviceSplit::new(&model.backend, &split);
        let order = model.backend.upload_idx(&(0..split.len() as u32).collect::<Vec<_>>());
        for start in (0..split.len()).step_by(batch) {
            if chunked {
                let examples = Examples { data: &device.data, order: &order, start, len: batch, augment: None };
                model.train_batch(examples, &recipe, 3);
            } else {
                model.backend.gather(&device.data, &order, start, batch, &mut model.ws.x, &mut model.ws.labels, None);
                model.train_step(batch, &recipe, 3);
            }
        }
        (model.params(), model.take_stats())
    };
    let (whole, whole_stats) = train(1, false);
    let (chunked, stats) = train(1, true);
    let scale = whole.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = chunked.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(worst < 1e-5 * scale, "chunked parameters differ from the whole batch's by {worst}");
    assert_eq!(stats.correct, whole_stats.correct);
    assert!((stats.loss_sum - whole_stats.loss_sum).abs() < 1e-5 * whole_stats.loss_sum);
    for threads in [2, 3] {
        assert!(train(threads, true) == (chunked.clone(), stats), "{threads} threads train unlike one");
    }
}

#[test]
fn an_epoch_keeps_the_short_last_batch() {
    let split = synthetic(100, 4);
    let mut model = model(2, 0, 64);
    epoch_losses(&mut model, &split, &Recipe::default());
    assert_eq!(model.state.steps, 2, "100 examples in batches of 64 are two steps");
}

#[test]
fn epoch_orders_are_permutations_that_change_every_epoch() {
    let (a, b) = (epoch_order(7, 0, 1000), epoch_order(7, 1, 1000));
    assert_ne!(a, b);
    assert_eq!(a, epoch_order(7, 0, 1000));
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<u32>>());
}

#[test]
fn one_epoch_on_mnist_reaches_97_percent() {
    let Some(dir) = std::env::var_os(DatasetKind::Mnist.env_var()) else {
        eprintln!("note: MNIST_DIR is not set; skipping the real-data training test");
        return;
    };
    let dataset = data::load(&LoadOptions { dir: dir.into(), kind: DatasetKind::Mnist, offline: true }).expect("MNIST");
    let recipe = Recipe { epochs: 1, ..Recipe::default() };
    let mut model = model(0, recipe.seed, EVAL_BATCH);
    let (train_split, test_split) =
        (DeviceSplit::new(&model.backend, &dataset.train), DeviceSplit::new(&model.backend, &dataset.test));
    let reports = common::train_run(&mut model, &train_split, &test_split, recipe);
    let accuracy = reports[0].test.accuracy;
    eprintln!("one epoch: {accuracy:.2} % test accuracy, {:.0} images/s", reports[0].images_per_s);
    assert!(accuracy >= 97.0, "test accuracy after one epoch is {accuracy:.2} %");
}
