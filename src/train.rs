//! The training loop: shuffled (and optionally augmented) mini-batches, optimizer steps, a test pass after every epoch. The
//! loop over epochs, with checkpoints and resuming, is [`crate::session::run`].

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::data::Split;
use crate::model::{Examples, Model};

pub use crate::recipe::Recipe;

/// The epoch with the best test accuracy; the earliest of equals, so that a later tie never
/// replaces a saved best checkpoint.
pub fn best(history: &[EpochReport]) -> Option<&EpochReport> {
    history.iter().reduce(|best, r| if r.test.accuracy > best.test.accuracy { r } else { best })
}

/// Batches between two running-loss reports, as in the reference.
pub const LOG_EVERY: usize = 300;
/// A mean loss above this means the run diverged: chance level is ln 10 ≈ 2.3, and a run
/// that still learns never comes near it.
pub const DIVERGED_LOSS: f64 = 1e3;

/// Training stopped because the loss stopped being a number worth training on.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("training diverged in epoch {epoch}: the mean loss of batches {first} to {batch} is {loss:e}")]
pub struct Diverged {
    /// 1-based, as printed.
    pub epoch: usize,
    pub first: usize,
    pub batch: usize,
    pub loss: f64,
}
/// Test-set batch: large enough to keep every core busy, small enough to stay in memory.
pub const EVAL_BATCH: usize = 1000;

/// Test loss and accuracy over a whole split.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub correct: u64,
    pub total: usize,
    pub seconds: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based.
    pub epoch: usize,
    pub train_loss: f64,
    pub test: Evaluation,
    /// Training time of the epoch, without the test pass.
    pub seconds: f64,
    pub images_per_s: f64,
}

/// What the loop tells its caller as it goes.
pub enum Event<'a> {
    /// Batch `batch` (1-based) of `batches` in the epoch is done.
    Step {
        epoch: usize,
        batch: usize,
        batches: usize,
    },
    /// Mean loss of the last [`LOG_EVERY`] batches, after batch `batch` (1-based).
    RunningLoss {
        epoch: usize,
        batch: usize,
        loss: f64,
    },
    Epoch(&'a EpochReport),
    /// Every parameter tensor's gradient L2 norm, as [`Recipe::grad_norm_every`] asks.
    GradNorms(&'a GradNorms),
}

/// The gradient L2 norm of each parameter tensor, in layout order, after optimizer step `step`
/// (1-based, counted over the whole run) in epoch `epoch` (1-based).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradNorms {
    pub step: u64,
    pub epoch: usize,
    pub norms: Vec<f32>,
}

/// The order examples are visited in during `epoch` (0-based): a fresh permutation per epoch,
/// drawn from its own stream of the seed so that any epoch can be reproduced alone.
pub fn epoch_order(seed: u64, epoch: usize, len: usize) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64 + 1);
    let mut order: Vec<u32> = (0..len as u32).collect();
    order.shuffle(&mut rng);
    order
}

/// A split resident on the backend, with the identity order that evaluation visits it in.
pub struct DeviceSplit<B: Backend> {
    pub data: B::Data,
    pub len: usize,
    in_order: B::Idx,
}

impl<B: Backend> DeviceSplit<B> {
    pub fn new(backend: &B, split: &Split) -> Self {
        DeviceSplit {
            data: backend.upload_data(&split.images, &split.labels),
            len: split.len(),
            in_order: backend.upload_idx(&(0..split.len() as u32).collect::<Vec<_>>()),
        }
    }
}

/// Where an epoch stands: batches done and the sum of their per-example losses, and the
/// running-loss window still open (its loss sum and images), so that a run paused to save
/// and continued reports the same running losses as one that never paused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    pub batches: usize,
    pub loss_sum: f64,
    #[serde(default)]
    pub window_loss: f64,
    #[serde(default)]
    pub window_images: usize,
}

/// Batches in one epoch over `len` examples.
pub fn batches_per_epoch(len: usize, batch_size: usize) -> usize {
    len.div_ceil(batch_size)
}

/// Runs one epoch of the recipe's optimizer over `train` in the given order, from batch `from.batches` on, until
/// the epoch ends, batch `until` is done, or `stop()` turns true between steps; returns where
/// the epoch then stands,
/// or [`Diverged`] as soon as a loss report (every [`LOG_EVERY`] batches, and the epoch's
/// last batches) is not finite or above [`DIVERGED_LOSS`].
#[allow(clippy::too_many_arguments)]
pub fn train_epoch<B: Backend>(
    model: &mut Model<B>,
    train: &DeviceSplit<B>,
    order: &B::Idx,
    recipe: &Recipe,
    epoch: usize,
    from: EpochProgress,
    until: usize,
    stop: &dyn Fn() -> bool,
    on_event: &mut dyn FnMut(Event),
) -> Result<EpochProgress, Diverged> {
    let mut progress = from;
    let mut window = progress.window_images;
    let total = batches_per_epoch(train.len, recipe.batch_size);
    let total_steps = (recipe.epochs * total) as u64;
    let augment = recipe.augmentation(epoch - 1);
    // A failed device (see `Backend::failure`) ends the epoch: its steps would do nothing.
    while progress.batches < until.min(total) && !stop() && model.backend.failure().is_ok() {
        let start = progress.batches * recipe.batch_size;
        let batch = recipe.batch_size.min(train.len - start);
        let examples = Examples { data: &train.data, order, start, len: batch, augment: augment.as_ref() };
        model.train_batch(examples, recipe, total_steps);
        if recipe.grad_norm_every > 0 && model.state.steps.is_multiple_of(recipe.grad_norm_every as u64) {
            on_event(Event::GradNorms(&GradNorms { step: model.state.steps, epoch, norms: model.grad_norms() }));
        }
        window += batch;
        progress.batches += 1;
        on_event(Event::Step { epoch, batch: progress.batches, batches: total });
        if progress.batches.is_multiple_of(LOG_EVERY) {
            let stats = model.take_stats();
            let sum = progress.window_loss + stats.loss_sum;
            let loss = check_loss(sum / window as f64, epoch, progress.batches, LOG_EVERY)?;
            on_event(Event::RunningLoss { epoch, batch: progress.batches, loss });
            progress.loss_sum += stats.loss_sum;
            (progress.window_loss, window) = (0.0, 0);
        }
    }
    let rest = model.take_stats().loss_sum;
    progress.loss_sum += rest;
    progress.window_loss += rest;
    progress.window_images = window;
    if window > 0 {
        let batches = (progress.batches - 1) % LOG_EVERY + 1;
        check_loss(progress.window_loss / window as f64, epoch, progress.batches, batches)?;
    }
    Ok(progress)
}

/// `loss`, the mean over the `batches` batches up to `batch`, unless it shows divergence.
fn check_loss(loss: f64, epoch: usize, batch: usize, batches: usize) -> Result<f64, Diverged> {
    match loss.is_finite() && loss <= DIVERGED_LOSS {
        true => Ok(loss),
        false => Err(Diverged { epoch, first: batch + 1 - batches, batch, loss }),
    }
}

/// Loss and accuracy of the model's current parameters on `split`.
pub fn evaluate<B: Backend>(model: &mut Model<B>, split: &DeviceSplit<B>) -> Evaluation {
    evaluate_into(model, split, None)
}

/// [`evaluate`], writing each image's logits into `logits`, `CLASSES` per image in order.
pub fn evaluate_into<B: Backend>(
    model: &mut Model<B>,
    split: &DeviceSplit<B>,
    logits: Option<&mut [f32]>,
) -> Evaluation {
    let started = Instant::now();
    let stats = model.evaluate(&split.data, &split.in_order, split.len, logits);
    Evaluation {
        loss: stats.loss_sum / split.len as f64,
        accuracy: 100.0 * stats.correct as f64 / split.len as f64,
        correct: stats.correct,
        total: split.len,
        seconds: started.elapsed().as_secs_f64(),
    }
}
