//! A training run that lives in one directory: checkpoints after every epoch, the state
//! needed to resume, `metrics.csv`, and the curves once training stops.
//!
//! Resuming is exact because nothing random is carried between epochs: the weights come from
//! the seed, and each epoch's shuffle from the seed and the epoch number (see
//! [`epoch_order`]). So the state is the parameters, momentum, step count and position.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::checkpoint::{self, CheckpointError};
use crate::model::{Layout, Model};
use crate::train::{
    batches_per_epoch, epoch_order, evaluate, train_epoch, DeviceSplit, EpochProgress, EpochReport, Event, Recipe,
};

pub const LAST: &str = "last.safetensors";
pub const BEST: &str = "best.safetensors";
pub const STATE: &str = "train_state.safetensors";
pub const METRICS: &str = "metrics.csv";

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{}: cannot write: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{}: already holds a training run ({STATE}); resume it with --resume, or pick another --out", dir.display())]
    Occupied { dir: PathBuf },
}

/// Where training stands between two steps; saved as metadata of [`STATE`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub recipe: Recipe,
    /// 0-based epoch in progress.
    pub epoch: usize,
    pub progress: EpochProgress,
    /// Optimizer steps taken, so momentum restarts exactly as it left off.
    pub steps: u64,
    /// Training seconds already spent in the epoch in progress.
    pub seconds: f64,
    pub history: Vec<EpochReport>,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    /// Stopped on request inside 0-based `epoch` after `batch` batches; resumable.
    Stopped {
        epoch: usize,
        batch: usize,
    },
}

/// The run directory and where training stands.
pub struct Session {
    pub dir: PathBuf,
    pub state: TrainState,
}

impl Session {
    /// A new run in `dir`, created if needed; refuses a directory that holds another run.
    pub fn create(dir: &Path, recipe: Recipe) -> Result<Self, SessionError> {
        if dir.join(STATE).exists() {
            return Err(SessionError::Occupied { dir: dir.into() });
        }
        std::fs::create_dir_all(dir).map_err(|source| SessionError::Write { path: dir.into(), source })?;
        Ok(Session { dir: dir.into(), state: TrainState { recipe, ..TrainState::default() } })
    }

    /// The run saved in `dir`, with its parameters and momentum, ready to upload.
    pub fn resume(dir: &Path, layout: &Layout) -> Result<(Self, Vec<f32>, Vec<f32>), SessionError> {
        let path = dir.join(STATE);
        let mut saved = checkpoint::load(&path, layout, &["param.", "momentum."])?;
        let json = saved.metadata.get("state").ok_or_else(|| metadata_error(&path, "missing"))?;
        let state: TrainState = serde_json::from_str(json).map_err(|e| metadata_error(&path, &e.to_string()))?;
        let momentum = saved.params.split_off(layout.total);
        Ok((Session { dir: dir.into(), state }, saved.params, momentum))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The epoch with the best test accuracy so far; the earliest of equals, so a tie does
    /// not replace `best`.
    pub fn best(&self) -> Option<&EpochReport> {
        self.state.history.iter().reduce(|best, r| if r.test.accuracy > best.test.accuracy { r } else { best })
    }

    fn save_state<B: Backend>(&self, model: &Model<B>) -> Result<(), SessionError> {
        let state = serde_json::to_string(&self.state).expect("the state serializes");
        let metadata = HashMap::from([("state".to_string(), state)]);
        let (params, momentum) = (model.params(), model.backend.download(&model.state.momentum));
        let groups = [("param.", params.as_slice()), ("momentum.", momentum.as_slice())];
        checkpoint::save(&self.path(STATE), &model.net.layout, &groups, metadata)?;
        Ok(())
    }

    /// `last`, and `best` when this epoch beats every earlier one.
    fn save_checkpoints<B: Backend>(&self, model: &Model<B>, report: &EpochReport) -> Result<(), SessionError> {
        let metadata = checkpoint_metadata(&self.state.recipe, report);
        let params = model.params();
        checkpoint::save_params(&self.path(LAST), &model.net.layout, &params, metadata.clone())?;
        if self.best().is_some_and(|best| best.epoch == report.epoch) {
            checkpoint::save_params(&self.path(BEST), &model.net.layout, &params, metadata)?;
        }
        Ok(())
    }

    fn write_metrics(&self) -> Result<(), SessionError> {
        let path = self.path(METRICS);
        crate::atomic::write_atomic(&path, metrics_csv(&self.state.history).as_bytes())
            .map_err(|source| SessionError::Write { path, source })
    }
}

fn metadata_error(path: &Path, problem: &str) -> SessionError {
    CheckpointError::Metadata { path: path.into(), key: "state".into(), problem: problem.into() }.into()
}

/// What a model checkpoint records about where it came from.
pub fn checkpoint_metadata(recipe: &Recipe, report: &EpochReport) -> HashMap<String, String> {
    HashMap::from([
        ("epoch".to_string(), report.epoch.to_string()),
        ("accuracy".to_string(), report.test.accuracy.to_string()),
        ("seed".to_string(), recipe.seed.to_string()),
        ("recipe".to_string(), serde_json::to_string(recipe).expect("the recipe serializes")),
    ])
}

pub fn metrics_csv(history: &[EpochReport]) -> String {
    let mut csv = String::from("epoch,train_loss,test_loss,test_accuracy,seconds,images_per_s\n");
    for r in history {
        csv += &format!(
            "{},{:.6},{:.6},{:.2},{:.3},{:.1}\n",
            r.epoch, r.train_loss, r.test.loss, r.test.accuracy, r.seconds, r.images_per_s
        );
    }
    csv
}

/// Puts the saved momentum and step count of a resumed run into a model built from its
/// saved parameters.
pub fn restore_optimizer<B: Backend>(model: &mut Model<B>, state: &TrainState, momentum: &[f32]) {
    model.state.momentum = model.backend.upload(momentum);
    model.state.steps = state.steps;
}

/// Trains from wherever `session` stands to the end of the recipe, saving after every epoch,
/// and when `stop()` turns true, after the step in flight.
pub fn run<B: Backend>(
    session: &mut Session,
    model: &mut Model<B>,
    train: &DeviceSplit<B>,
    test: &DeviceSplit<B>,
    stop: &dyn Fn() -> bool,
    on_event: &mut dyn FnMut(Event),
) -> Result<Outcome, SessionError> {
    let recipe = session.state.recipe;
    while session.state.epoch < recipe.epochs {
        let epoch = session.state.epoch;
        let order = model.backend.upload_idx(&epoch_order(recipe.seed, epoch, train.len));
        let started = Instant::now();
        let progress = train_epoch(model, train, &order, &recipe, epoch + 1, session.state.progress, stop, on_event);
        let state = &mut session.state;
        (state.progress, state.steps) = (progress, model.state.steps);
        state.seconds += started.elapsed().as_secs_f64();
        if progress.batches < batches_per_epoch(train.len, recipe.batch_size) {
            session.save_state(model)?;
            return Ok(Outcome::Stopped { epoch, batch: progress.batches });
        }
        let report = EpochReport {
            epoch: epoch + 1,
            train_loss: progress.loss_sum / train.len as f64,
            test: evaluate(model, test),
            seconds: state.seconds,
            images_per_s: train.len as f64 / state.seconds,
        };
        state.history.push(report);
        (state.epoch, state.progress, state.seconds) = (epoch + 1, EpochProgress::default(), 0.0);
        on_event(Event::Epoch(&report));
        // Checkpoints before state: a kill in between redoes the epoch, to the same result.
        session.save_checkpoints(model, &report)?;
        session.save_state(model)?;
        session.write_metrics()?;
    }
    Ok(Outcome::Finished)
}
