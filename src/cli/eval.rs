//! `eval`: test accuracy, loss, per-class accuracy and the confusion matrix of a checkpoint,
//! or of fresh weights.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use resnet_mnist::backend::Backend;
use resnet_mnist::checkpoint::{self, Checkpoint};
use resnet_mnist::data::Dataset;
use resnet_mnist::inference;
use resnet_mnist::model::{Model, Net};
use resnet_mnist::plot;
use resnet_mnist::session;
use resnet_mnist::train::{self, DeviceSplit, EVAL_BATCH};

use super::args::EvalArgs;

pub fn eval<B: Backend>(backend: B, dataset: &Dataset, args: &EvalArgs) -> Result<()> {
    if let Some(path) = &args.checkpoint {
        return eval_checkpoint(backend, dataset, path, args.plot.as_deref());
    }
    let mut model = Model::fresh(backend, args.arch.arch(), args.common.seed, EVAL_BATCH);
    let test = DeviceSplit::new(&model.backend, &dataset.test);
    let e = train::evaluate(&mut model, &test);
    model.backend.failure()?;
    writeln!(
        std::io::stdout().lock(),
        "Accuracy on test set: {:.2} % ({} / {}), test loss {:.4}  (fresh weights of {}, seed {}; {} on {})",
        e.accuracy,
        e.correct,
        e.total,
        e.loss,
        model.net.arch,
        args.common.seed,
        dataset.kind,
        model.backend.name()
    )?;
    Ok(())
}

fn eval_checkpoint<B: Backend>(backend: B, dataset: &Dataset, path: &Path, plot: Option<&Path>) -> Result<()> {
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

/// What the checkpoint says about itself, for the report's first line.
fn describe(path: &Path, net: &Net, checkpoint: &Checkpoint) -> Result<String> {
    let epoch: Option<usize> = checkpoint.meta(path, session::META_EPOCH)?;
    Ok(match epoch {
        Some(epoch) => format!("{} (epoch {epoch}, {})", path.display(), net.arch),
        None => format!("{} ({})", path.display(), net.arch),
    })
}
