//! A training run that lives in one directory: checkpoints after every epoch, the state
//! needed to resume, `metrics.csv`, and the curves once training stops.
//!
//! Resuming is exact because nothing random is carried between epochs: the weights come from
//! the seed, and each epoch's shuffle from the seed and the epoch number (see
//! [`epoch_order`]), each example's augmentation from the seed, the epoch and the example,
//! and a schedule's position from the step count. So the state is the parameters, the
//! optimizer's moments, the step count and the position.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::atomic;
use crate::backend::{Backend, DeviceFailure, Update};
use crate::checkpoint::{self, CheckpointError, CheckpointFile};
use crate::lock::{DirLock, LockError};
use crate::model::{Arch, Layout, Model, Net};
use crate::train::{
    batches_per_epoch, epoch_order, evaluate, train_epoch, DeviceSplit, Diverged, EpochProgress, EpochReport, Event,
    GradNorms, Recipe,
};

pub const LAST: &str = "last.safetensors";
pub const BEST: &str = "best.safetensors";
pub const STATE: &str = "train_state.safetensors";
pub const METRICS: &str = "metrics.csv";
pub const GRAD_NORMS: &str = "grad_norms.csv";

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{}: cannot write: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{}: already holds a training run ({STATE}); resume it with --resume, or pick another --out", dir.display())]
    Occupied { dir: PathBuf },
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("{diverged}. Nothing after the last saved state was written, and {kept}. Train again with a lower --lr than {lr:e}")]
    Diverged { diverged: Diverged, lr: f32, kept: String },
    #[error("{failure}. Nothing after the last saved state was written, and {kept}")]
    Device { failure: DeviceFailure, kept: String },
}

/// Where training stands between two steps; saved as metadata of [`STATE`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub recipe: Recipe,
    #[serde(default)]
    pub arch: Arch,
    /// 0-based epoch in progress.
    pub epoch: usize,
    pub progress: EpochProgress,
    /// Optimizer steps taken, so momentum, Adam's bias corrections and the schedule go on
    /// exactly as they left off.
    pub steps: u64,
    /// Training seconds already spent in the epoch in progress.
    pub seconds: f64,
    pub history: Vec<EpochReport>,
    #[serde(default)]
    pub grad_norms: Vec<GradNorms>,
}

/// A run read back from its directory.
pub struct Saved {
    pub session: Session,
    pub net: Net,
    pub params: Vec<f32>,
    /// SGD's momentum buffer, or Adam's first moment.
    pub momentum: Vec<f32>,
    /// Adam's second moment, once Adam has stepped.
    pub second_moment: Option<Vec<f32>>,
}

impl Saved {
    /// The run's model on `backend`, with a workspace of `capacity` images, its optimizer
    /// state and step count restored.
    pub fn into_model<B: Backend>(self, backend: B, capacity: usize) -> (Session, Model<B>) {
        let Saved { session, net, params, momentum, second_moment } = self;
        let mut model = Model::new(backend, net, &params, capacity);
        model.state.momentum = model.backend.upload(&momentum);
        model.state.second_moment = second_moment.map(|v| model.backend.upload(&v));
        model.state.steps = session.state.steps;
        (session, model)
    }
}

/// The tensor-name prefixes of the state file's groups.
const PARAM: &str = "param.";
const MOMENTUM: &str = "momentum.";
const SECOND_MOMENT: &str = "second_moment.";

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

/// The run directory, which this process holds locked, and where training stands.
pub struct Session {
    pub dir: PathBuf,
    pub state: TrainState,
    /// Also save the state every this many optimizer steps within an epoch (`--save-every`);
    /// a setting of this process, not of the run.
    pub save_every: Option<usize>,
    _lock: DirLock,
}

/// Creates `dir` if needed and takes its lock, before anything else is written there; then
/// clears the temporary files an earlier, killed run left.
fn own(dir: &Path) -> Result<DirLock, SessionError> {
    std::fs::create_dir_all(dir).map_err(|source| SessionError::Write { path: dir.into(), source })?;
    let lock = DirLock::acquire(dir)?;
    match atomic::remove_stale_temps(dir) {
        Ok(0) => {}
        Ok(n) => tracing::info!("{}: removed {n} temporary file(s) an interrupted run left", dir.display()),
        Err(e) => tracing::warn!("{}: cannot clear old temporary files: {e}", dir.display()),
    }
    Ok(lock)
}

impl Session {
    /// A new run in `dir`, created if needed; refuses a directory that holds another run, or
    /// that another process is training in.
    pub fn create(dir: &Path, recipe: Recipe, arch: Arch) -> Result<Self, SessionError> {
        let lock = own(dir)?;
        if dir.join(STATE).exists() {
            return Err(SessionError::Occupied { dir: dir.into() });
        }
        let state = TrainState { recipe, arch, ..TrainState::default() };
        Ok(Session { dir: dir.into(), state, save_every: None, _lock: lock })
    }

    /// What a run that went wrong leaves: the last saved state, which `--resume` continues.
    fn kept(&self) -> String {
        let dir = self.dir.display();
        match self.dir.join(STATE).exists() {
            true => format!("{dir} keeps the state saved before it (--resume {dir} continues from there)"),
            false => format!("{dir} holds no saved state"),
        }
    }

    fn diverged(&self, diverged: Diverged) -> SessionError {
        SessionError::Diverged { diverged, lr: self.state.recipe.lr, kept: self.kept() }
    }

    fn device_failed(&self, failure: DeviceFailure) -> SessionError {
        SessionError::Device { failure, kept: self.kept() }
    }

    /// The run saved in `dir`: its network, parameters and optimizer moments, ready to upload.
    pub fn resume(dir: &Path) -> Result<Saved, SessionError> {
        let path = dir.join(STATE);
        // No run there (a missing or bad state) is an error before anything is created or
        // locked; the state is read again once the lock is held, as the last owner left it.
        CheckpointFile::open(&path)?;
        let lock = own(dir)?;
        let file = CheckpointFile::open(&path)?;
        let json: String = file.meta("state")?.ok_or_else(|| metadata_error(&path, "missing"))?;
        let state: TrainState = serde_json::from_str(&json).map_err(|e| metadata_error(&path, &e.to_string()))?;
        let net = Net::build(state.arch);
        let adam_stepped = state.steps > 0 && matches!(state.recipe.update(), Update::Adam(_));
        let groups: &[&str] = if adam_stepped { &[PARAM, MOMENTUM, SECOND_MOMENT] } else { &[PARAM, MOMENTUM] };
        let mut params = file.read(&net.layout, groups)?;
        let second_moment = adam_stepped.then(|| params.split_off(2 * net.layout.total));
        let momentum = params.split_off(net.layout.total);
        let session = Session { dir: dir.into(), state, save_every: None, _lock: lock };
        Ok(Saved { session, net, params, momentum, second_moment })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn save_state<B: Backend>(&self, model: &Model<B>) -> Result<(), SessionError> {
        let state = serde_json::to_string(&self.state).expect("the state serializes");
        let metadata = HashMap::from([("state".to_string(), state)]);
        let (params, momentum) = (model.params(), model.backend.download(&model.state.momentum));
        let second = model.state.second_moment.as_ref().map(|v| model.backend.download(v));
        let mut groups = vec![(PARAM, params.as_slice()), (MOMENTUM, momentum.as_slice())];
        groups.extend(second.as_deref().map(|v| (SECOND_MOMENT, v)));
        checkpoint::save(&self.path(STATE), &model.net.layout, &groups, metadata)?;
        Ok(())
    }

    /// `last`, and `best` when this epoch beats every earlier one.
    fn save_checkpoints<B: Backend>(&self, model: &Model<B>, report: &EpochReport) -> Result<(), SessionError> {
        let metadata = checkpoint_metadata(&self.state.recipe, self.state.arch, report);
        let params = model.params();
        checkpoint::save_params(&self.path(LAST), &model.net.layout, &params, metadata.clone())?;
        if crate::train::best(&self.state.history).is_some_and(|best| best.epoch == report.epoch) {
            checkpoint::save_params(&self.path(BEST), &model.net.layout, &params, metadata)?;
        }
        Ok(())
    }

    fn write_metrics(&self, layout: &Layout) -> Result<(), SessionError> {
        self.write(METRICS, &metrics_csv(&self.state.history))?;
        if !self.state.grad_norms.is_empty() {
            self.write(GRAD_NORMS, &grad_norms_csv(layout, &self.state.grad_norms))?;
        }
        Ok(())
    }

    fn write(&self, name: &str, text: &str) -> Result<(), SessionError> {
        let path = self.path(name);
        crate::atomic::write_atomic(&path, text.as_bytes()).map_err(|source| SessionError::Write { path, source })
    }
}

fn metadata_error(path: &Path, problem: &str) -> SessionError {
    CheckpointError::Metadata { path: path.into(), key: "state".into(), problem: problem.into() }.into()
}

/// The metadata keys of a model checkpoint: its epoch, test accuracy and recipe (JSON).
pub const META_EPOCH: &str = "epoch";
pub const META_ACCURACY: &str = "accuracy";
pub const META_RECIPE: &str = "recipe";

/// What a model checkpoint records about where it came from.
pub fn checkpoint_metadata(recipe: &Recipe, arch: Arch, report: &EpochReport) -> HashMap<String, String> {
    let mut metadata = HashMap::from([
        (META_EPOCH.to_string(), report.epoch.to_string()),
        (META_ACCURACY.to_string(), report.test.accuracy.to_string()),
        ("seed".to_string(), recipe.seed.to_string()),
        (META_RECIPE.to_string(), serde_json::to_string(recipe).expect("the recipe serializes")),
    ]);
    metadata.extend(checkpoint::arch_metadata(arch));
    metadata
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

/// One row per record: the step, the epoch, then each tensor's norm under its name.
pub fn grad_norms_csv(layout: &Layout, records: &[GradNorms]) -> String {
    let names: Vec<&str> = layout.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut csv = format!("step,epoch,{}\n", names.join(","));
    for r in records {
        let norms: Vec<String> = r.norms.iter().map(|n| format!("{n:e}")).collect();
        csv += &format!("{},{},{}\n", r.step, r.epoch, norms.join(","));
    }
    csv
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
    let total = batches_per_epoch(train.len, recipe.batch_size);
    while session.state.epoch < recipe.epochs {
        let epoch = session.state.epoch;
        let order = model.backend.upload_idx(&epoch_order(recipe.seed, epoch, train.len));
        // The epoch runs in stretches, each ending at its end, a stop, or a save that
        // `save_every` asks for; the state is saved after every stretch that ends early.
        while session.state.progress.batches < total {
            let from = session.state.progress;
            let until = session.save_every.map_or(total, |n| from.batches + n - model.state.steps as usize % n);
            let started = Instant::now();
            let grad_norms = &mut session.state.grad_norms;
            let progress = train_epoch(model, train, &order, &recipe, epoch + 1, from, until, stop, &mut |event| {
                if let Event::GradNorms(record) = &event {
                    grad_norms.push((*record).clone());
                }
                on_event(event);
            })
            .map_err(|diverged| session.diverged(diverged))?;
            model.backend.failure().map_err(|failure| session.device_failed(failure))?;
            let state = &mut session.state;
            (state.progress, state.steps) = (progress, model.state.steps);
            state.seconds += started.elapsed().as_secs_f64();
            if progress.batches < total {
                session.save_state(model)?;
            }
            if progress.batches < until.min(total) {
                return Ok(Outcome::Stopped { epoch, batch: progress.batches });
            }
        }
        let state = &session.state;
        let progress = state.progress;
        let report = EpochReport {
            epoch: epoch + 1,
            train_loss: progress.loss_sum / train.len as f64,
            test: evaluate(model, test),
            seconds: state.seconds,
            images_per_s: train.len as f64 / state.seconds,
        };
        model.backend.failure().map_err(|failure| session.device_failed(failure))?;
        let state = &mut session.state;
        state.history.push(report);
        (state.epoch, state.progress, state.seconds) = (epoch + 1, EpochProgress::default(), 0.0);
        on_event(Event::Epoch(&report));
        // Checkpoints before state: a kill in between redoes the epoch, to the same result.
        session.save_checkpoints(model, &report)?;
        session.save_state(model)?;
        session.write_metrics(&model.net.layout)?;
    }
    Ok(Outcome::Finished)
}
