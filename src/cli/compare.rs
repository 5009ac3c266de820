//! `compare`: one run per (block, depth), each in its own run directory under `--out`, then a
//! Markdown table and one plot of every run's accuracy.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use resnet_mnist::backend::Backend;
use resnet_mnist::compare::{self, Run, Setup};
use resnet_mnist::data::{Dataset, Split};
use resnet_mnist::model::{Arch, BlockKind, Model};
use resnet_mnist::plot;
use resnet_mnist::session::{self, Outcome, Session};
use resnet_mnist::train::{DeviceSplit, EpochReport, Recipe};

use super::args::CompareArgs;
use super::signals::Interrupt;
use super::train::{capacity, default_run_dir, interrupted, resumed, run_session};

const TABLE: &str = "compare.md";
const SETUP: &str = "compare.json";

/// Every network `--blocks` and `--depths` ask for, in the order they are trained.
pub fn archs(args: &CompareArgs) -> Vec<Arch> {
    let blocks = if args.blocks.is_empty() { BlockKind::value_variants().to_vec() } else { args.blocks.clone() };
    args.depths.iter().flat_map(|&depth| blocks.iter().map(move |&block| Arch { block, depth })).collect()
}

pub fn compare<B: Backend>(backend: B, mut dataset: Dataset, args: &CompareArgs) -> Result<()> {
    let archs = archs(args);
    let recipe = args.recipe.recipe(args.common.seed);
    let dir = args.out.clone().unwrap_or_else(|| default_run_dir("compare-"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    subset(&mut dataset.train, args.train_subset, "--train-subset");
    subset(&mut dataset.test, args.test_subset, "--test-subset");
    claim(&dir, &Setup { dataset: dataset.kind.to_string(), train: dataset.train.len(), test: dataset.test.len() })?;
    println!("Comparing {} networks on {}; in {}", archs.len(), setting(&dataset, &recipe), dir.display());
    let interrupt = Interrupt::install()?;
    let mut backend = Some(backend);
    let mut finished: Vec<(Arch, usize, Vec<EpochReport>)> = Vec::new();
    for arch in archs {
        let b = backend.take().expect("each run hands the backend back");
        let (mut session, mut model) = open_run(b, &dir.join(arch.slug()), recipe, arch)?;
        println!("== {arch} ({} parameters) in {}", model.net.layout.total, session.dir.display());
        let splits =
            (DeviceSplit::new(&model.backend, &dataset.train), DeviceSplit::new(&model.backend, &dataset.test));
        let outcome = run_session(&mut session, &mut model, (&splits.0, &splits.1), args.recipe.quiet, &interrupt)?;
        if let Outcome::Stopped { .. } = outcome {
            println!("Stopped; saved. To continue, run the same command with --out {}", dir.display());
            return interrupted(&interrupt);
        }
        finished.push((arch, model.net.layout.total, session.state.history));
        drop(splits);
        backend = Some(model.into_backend());
    }
    let runs: Vec<Run> =
        finished.iter().map(|(arch, params, history)| Run { arch: *arch, params: *params, history }).collect();
    write_results(&dir, &dataset, &recipe, &runs, args.target)
}

/// Records `setup` in `dir`, or checks that the runs already there used the same data: a run
/// continued on other data would mix two experiments in one table.
fn claim(dir: &Path, setup: &Setup) -> Result<()> {
    let path = dir.join(SETUP);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let saved: Setup =
                serde_json::from_str(&text).with_context(|| format!("{}: not a comparison setup", path.display()))?;
            if saved != *setup {
                bail!(
                    "{} holds a comparison on {} ({} train / {} test), not {} ({} train / {} test); pick another --out",
                    dir.display(),
                    saved.dataset,
                    saved.train,
                    saved.test,
                    setup.dataset,
                    setup.train,
                    setup.test
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_json::to_string_pretty(setup).expect("the setup serializes");
            resnet_mnist::atomic::write_atomic(&path, text.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Keeps the first `n` examples; says so when there are fewer.
fn subset(split: &mut Split, n: Option<u32>, flag: &str) {
    if let Some(n) = n {
        if n as usize > split.len() {
            tracing::info!("{flag} {n}: there are only {} examples, and all of them are used", split.len());
        }
        split.truncate(n as usize);
    }
}

/// A fresh run in `dir`, or the one an interrupted comparison left there if it was started
/// with the same recipe.
fn open_run<B: Backend>(backend: B, dir: &Path, recipe: Recipe, arch: Arch) -> Result<(Session, Model<B>)> {
    if !dir.join(session::STATE).exists() {
        let session = Session::create(dir, recipe, arch)?;
        return Ok((session, Model::fresh(backend, arch, recipe.seed, capacity(&recipe))));
    }
    let saved = Session::resume(dir).with_context(|| format!("cannot continue the run in {}", dir.display()))?;
    let state = &saved.session.state;
    if state.recipe != recipe || state.arch != arch {
        bail!(
            "{} holds a run of {} with recipe {:?}, not {arch} with {recipe:?}; pick another --out",
            dir.display(),
            state.arch,
            state.recipe
        );
    }
    Ok(resumed(backend, saved))
}

/// The data and recipe every run of the comparison shares, in words.
fn setting(dataset: &Dataset, recipe: &Recipe) -> String {
    format!(
        "{} ({} train / {} test), {} epochs, batch {}, lr {}, momentum {}, seed {}",
        dataset.kind,
        dataset.train.len(),
        dataset.test.len(),
        recipe.epochs,
        recipe.batch_size,
        recipe.lr,
        recipe.momentum,
        recipe.seed
    )
}

fn write_results(dir: &Path, dataset: &Dataset, recipe: &Recipe, runs: &[Run], target: f64) -> Result<()> {
    let table = compare::markdown_table(runs, target);
    let caption = format!("{}\n\n", setting(dataset, recipe));
    let path = dir.join(TABLE);
    resnet_mnist::atomic::write_atomic(&path, format!("{caption}{table}").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    let curves: Vec<(String, &[EpochReport])> = runs.iter().map(|r| (r.arch.to_string(), r.history)).collect();
    plot::accuracies(&dir.join("accuracy"), &format!("Accuracy on the {} test set", dataset.kind), &curves)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{table}")?;
    writeln!(out, "Wrote {}, accuracy.png and accuracy.svg in {}", TABLE, dir.display())?;
    Ok(())
}
