//! `train`: a run directory trained from scratch or resumed, and the helpers `compare`
//! shares to run each of its networks the same way.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use resnet_mnist::backend::Backend;
use resnet_mnist::data::Dataset;
use resnet_mnist::model::{Arch, Model};
use resnet_mnist::plot;
use resnet_mnist::session::{self, Outcome, Saved, Session};
use resnet_mnist::train::{DeviceSplit, Recipe, EVAL_BATCH};

use super::args::TrainArgs;
use super::output::print_summary;
use super::progress::Reporter;
use super::signals::Interrupt;

/// A fresh run in `--out`, or the run in `--resume DIR` with its momentum and position.
fn start<B: Backend>(backend: B, args: &TrainArgs) -> Result<(Session, Model<B>)> {
    let Some(dir) = &args.resume else {
        let (recipe, arch) = (args.recipe(), args.arch.arch());
        let dir = args.out.clone().unwrap_or_else(|| default_run_dir(""));
        return Ok((Session::create(&dir, recipe, arch)?, Model::fresh(backend, arch, recipe.seed, capacity(&recipe))));
    };
    let mut saved = Session::resume(dir).with_context(|| format!("cannot resume the run in {}", dir.display()))?;
    if let Some(epochs) = args.recipe.epochs {
        extend(&mut saved.session, epochs as usize)?;
    }
    // Flags equal to the defaults may just be unset, so only a changed recipe is worth a word.
    let (asked, state) = (Recipe { epochs: saved.session.state.recipe.epochs, ..args.recipe() }, &saved.session.state);
    if (asked != Recipe::default() && asked != state.recipe)
        || (args.arch.arch() != Arch::default() && args.arch.arch() != state.arch)
    {
        tracing::warn!(
            "--resume continues with the saved recipe ({}) and network ({}); the flags given are ignored",
            state.recipe,
            state.arch
        );
    }
    Ok(resumed(backend, saved))
}

/// `--resume DIR --epochs N`: the run goes on to `N` epochs in all, as one started with `N`
/// would have (each epoch's order depends on its index, not on the total).
fn extend(session: &mut Session, epochs: usize) -> Result<()> {
    let done = session.state.epoch;
    if epochs < done || (epochs == done && session.state.progress.batches > 0) {
        anyhow::bail!(
            "--epochs {epochs}: the run in {} has already trained {done} epoch{}; give a larger total to extend it",
            session.dir.display(),
            if done == 1 { "" } else { "s" }
        );
    }
    let recipe = &session.state.recipe;
    if epochs != recipe.epochs && recipe.spans_the_run() {
        anyhow::bail!(
            "--epochs {epochs}: the run in {} follows a {} schedule over its {}, which a longer run would have \
             followed differently; train a new run with --epochs {epochs} instead",
            session.dir.display(),
            recipe.schedule,
            resnet_mnist::counted(recipe.epochs, "epoch")
        );
    }
    if epochs != session.state.recipe.epochs {
        tracing::info!(
            "--epochs {epochs}: the run goes on to {epochs} epochs (it was to stop at {})",
            session.state.recipe.epochs
        );
    }
    session.state.recipe.epochs = epochs;
    Ok(())
}

/// Workspace capacity: the training batch, and the test pass's.
pub(super) fn capacity(recipe: &Recipe) -> usize {
    recipe.batch_size.max(EVAL_BATCH)
}

/// The model of a saved run, with its optimizer state and step count restored.
pub(super) fn resumed<B: Backend>(backend: B, saved: Saved) -> (Session, Model<B>) {
    let capacity = capacity(&saved.session.state.recipe);
    saved.into_model(backend, capacity)
}

/// `runs/<prefix><UTC time>`, with `-` for `:` so the name is valid everywhere.
pub(super) fn default_run_dir(prefix: &str) -> PathBuf {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    PathBuf::from("runs").join(format!("{prefix}{}", now.replace(':', "-")))
}

pub fn train<B: Backend>(backend: B, dataset: &Dataset, args: &TrainArgs) -> Result<()> {
    let (mut session, mut model) = start(backend, args)?;
    session.save_every = args.save_every.map(|n| n as usize);
    let recipe = session.state.recipe;
    let (train, test) =
        (DeviceSplit::new(&model.backend, &dataset.train), DeviceSplit::new(&model.backend, &dataset.test));
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Training {} on {}: {} ({} train / {} test), {recipe}; run directory {}",
        model.net.arch,
        model.backend.name(),
        dataset.kind,
        train.len,
        test.len,
        session.dir.display()
    )?;
    if args.resume.is_some() {
        let state = &session.state;
        writeln!(out, "Resuming at epoch {}, batch {}", state.epoch + 1, state.progress.batches)?;
    }
    drop(out);
    let interrupt = Interrupt::install()?;
    let outcome = run_session(&mut session, &mut model, (&train, &test), args.recipe.quiet, &interrupt)?;
    let mut out = std::io::stdout().lock();
    match outcome {
        Outcome::Finished => print_summary(&mut out, &session.state.history)?,
        Outcome::Stopped { epoch, batch } => writeln!(
            out,
            "Stopped in epoch {} after batch {batch}; saved. Continue with: resnet-mnist train --resume {}",
            epoch + 1,
            session.dir.display()
        )?,
    }
    writeln!(out, "Artifacts in {}", session.dir.display())?;
    interrupted(&interrupt)
}

/// The error that makes the process exit with the signal's status, if one stopped the run.
pub(super) fn interrupted(interrupt: &Interrupt) -> Result<()> {
    match interrupt.raised() {
        Some(signal) => Err(signal.into()),
        None => Ok(()),
    }
}

/// Trains from wherever `session` stands, reporting as it goes, until the recipe ends or a
/// signal arrives; then draws the curves of the epochs run so far.
pub(super) fn run_session<B: Backend>(
    session: &mut Session,
    model: &mut Model<B>,
    (train, test): (&DeviceSplit<B>, &DeviceSplit<B>),
    quiet: bool,
    interrupt: &Interrupt,
) -> Result<Outcome> {
    let mut reporter = Reporter::new(quiet, session.state.recipe.batch_size);
    let mut written = Ok(());
    let outcome = session::run(session, model, train, test, &|| interrupt.raised().is_some(), &mut |e| {
        if written.is_ok() {
            written = reporter.handle(&e);
        }
    })?;
    reporter.finish();
    written?;
    let state = &session.state;
    if !state.history.is_empty() {
        plot::curves(&session.dir, &state.history)?;
    }
    if !state.grad_norms.is_empty() {
        plot::grad_norms(&session.dir, &model.net.layout, &state.grad_norms)?;
    }
    Ok(outcome)
}
