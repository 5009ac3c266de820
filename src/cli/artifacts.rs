//! The subcommands that produce or use run artifacts: training into a run directory,
//! evaluating a checkpoint, predicting images, and writing sample digits.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use resnet_mnist::backend::Backend;
use resnet_mnist::checkpoint::{self, Checkpoint};
use resnet_mnist::data::{Dataset, IMAGE_PIXELS};
use resnet_mnist::inference::{self, argmax};
use resnet_mnist::model::{Arch, Model, Net};
use resnet_mnist::session::{self, Outcome, Saved, Session};
use resnet_mnist::train::{DeviceSplit, Recipe, EVAL_BATCH};
use resnet_mnist::{digit, plot};

use super::args::{PredictArgs, SamplesArgs, TrainArgs};
use super::commands::{fresh_model, print_summary};
use super::progress::Reporter;
use super::signals::Interrupt;

/// A fresh run in `--out`, or the run in `--resume DIR` with its momentum and position.
fn start<B: Backend>(backend: B, args: &TrainArgs) -> Result<(Session, Model<B>)> {
    let Some(dir) = &args.resume else {
        let (recipe, arch) = (args.recipe(), args.arch.arch());
        let dir = args.out.clone().unwrap_or_else(|| default_run_dir(""));
        return Ok((Session::create(&dir, recipe, arch)?, fresh_model(backend, arch, recipe.seed, capacity(&recipe))));
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

/// The model of a saved run, with its momentum and step count restored.
pub(super) fn resumed<B: Backend>(backend: B, saved: Saved) -> (Session, Model<B>) {
    let Saved { session, net, params, momentum } = saved;
    let mut model = Model::new(backend, net, &params, capacity(&session.state.recipe));
    session::restore_optimizer(&mut model, &session.state, &momentum);
    (session, model)
}

/// `runs/<prefix><UTC time>`, with `-` for `:` so the name is valid everywhere.
pub(super) fn default_run_dir(prefix: &str) -> PathBuf {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    PathBuf::from("runs").join(format!("{prefix}{}", now.replace(':', "-")))
}

pub fn train<B: Backend>(backend: B, dataset: &Dataset, args: &TrainArgs) -> Result<()> {
    let (mut session, mut model) = start(backend, args)?;
    let recipe = session.state.recipe;
    let (train, test) =
        (DeviceSplit::new(&model.backend, &dataset.train), DeviceSplit::new(&model.backend, &dataset.test));
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Training {} on {}: {} ({} train / {} test), {} epochs, batch {}, lr {}, momentum {}, seed {}; run directory {}",
        model.net.arch,
        model.backend.name(),
        dataset.kind,
        train.len,
        test.len,
        recipe.epochs,
        recipe.batch_size,
        recipe.lr,
        recipe.momentum,
        recipe.seed,
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

/// What the checkpoint says about itself, for the report's first line.
fn describe(path: &Path, net: &Net, checkpoint: &Checkpoint) -> Result<String> {
    let epoch: Option<usize> = checkpoint.meta(path, "epoch")?;
    Ok(match epoch {
        Some(epoch) => format!("{} (epoch {epoch}, {})", path.display(), net.arch),
        None => format!("{} ({})", path.display(), net.arch),
    })
}

pub fn eval_checkpoint<B: Backend>(backend: B, dataset: &Dataset, path: &Path, plot: Option<&Path>) -> Result<()> {
    let (net, checkpoint) = checkpoint::load_net(path)?;
    let mut model = Model::new(backend, net, &checkpoint.params, EVAL_BATCH);
    let report = inference::report(&mut model, &dataset.test);
    model.backend.failure()?;
    let e = &report.evaluation;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Accuracy on test set: {:.2} % ({} / {}), test loss {:.4}  (checkpoint {}; {} on {})",
        e.accuracy,
        e.correct,
        e.total,
        e.loss,
        describe(path, &model.net, &checkpoint)?,
        dataset.kind,
        model.backend.name()
    )?;
    for (class, accuracy) in report.per_class().iter().enumerate() {
        let accuracy = accuracy.map_or("no examples".into(), |a| format!("{a:6.2} %"));
        writeln!(out, "class {class}: {accuracy}")?;
    }
    writeln!(out, "confusion matrix (rows: true class, columns: predicted)")?;
    writeln!(out, "     {}", (0..10).map(|c| format!("{c:>6}")).collect::<String>())?;
    for (class, row) in report.confusion.iter().enumerate() {
        writeln!(out, "{class:>5}{}", row.iter().map(|n| format!("{n:>6}")).collect::<String>())?;
    }
    if let Some(stem) = plot {
        let title = format!("Confusion matrix, {} test set: {:.2} %", dataset.kind, e.accuracy);
        plot::confusion(stem, &title, &report.confusion)?;
        writeln!(out, "Wrote {} and .svg", stem.with_extension("png").display())?;
    }
    Ok(())
}

pub fn predict<B: Backend>(backend: B, args: &PredictArgs) -> Result<()> {
    let (net, checkpoint) = checkpoint::load_net(&args.checkpoint)?;
    let loaded: Vec<Result<[u8; IMAGE_PIXELS], digit::DigitError>> =
        args.images.iter().map(|p| digit::load(p)).collect();
    let images: Vec<[u8; IMAGE_PIXELS]> = loaded.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    let mut model = Model::new(backend, net, &checkpoint.params, images.len().clamp(1, EVAL_BATCH));
    let mut probabilities = inference::probabilities(&mut model, &images).into_iter();
    model.backend.failure()?;
    // Each picture gets its line, in order: a bad one hides none of the others.
    let mut out = std::io::stdout().lock();
    for (path, image) in args.images.iter().zip(&loaded) {
        match (image, args.json) {
            (Ok(_), json) => {
                let p = probabilities.next().expect("one result per image read");
                let class = argmax(&p);
                if json {
                    writeln!(out, "{}", serde_json::json!({ "image": path, "class": class, "probabilities": p }))?;
                } else {
                    let probs: Vec<String> = p.iter().map(|v| format!("{v:.3}")).collect();
                    writeln!(out, "{}: {class} ({:.1} %)  [{}]", path.display(), 100.0 * p[class], probs.join(" "))?;
                }
            }
            (Err(e), true) => writeln!(out, "{}", serde_json::json!({ "image": path, "error": e.to_string() }))?,
            (Err(e), false) => {
                out.flush()?;
                eprintln!("error: {e}");
            }
        }
    }
    let failed = loaded.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} pictures could not be read", loaded.len());
    }
    Ok(())
}

pub fn samples(dataset: &Dataset, args: &SamplesArgs) -> Result<()> {
    let test = &dataset.test;
    let count = (args.count as usize).min(test.len());
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    for i in 0..count {
        let path = args.out.join(format!("{i:05}-label{}.png", test.labels[i]));
        digit::save_png(&path, &test.images[i * IMAGE_PIXELS..(i + 1) * IMAGE_PIXELS])?;
    }
    println!(
        "Wrote {count} {} test digits to {}; try: resnet-mnist predict --checkpoint runs/<run>/best.safetensors {}",
        dataset.kind,
        args.out.display(),
        args.out.join(format!("00000-label{}.png", test.labels[0])).display()
    );
    Ok(())
}
