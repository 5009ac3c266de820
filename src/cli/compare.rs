//! `compare`: one run per (recipe, block, depth), each in its own run directory under
//! `--out`, then a Markdown table and one plot of every run's accuracy.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use resnet_mnist::backend::Backend;
use resnet_mnist::compare::{self, Run, Setup};
use resnet_mnist::data::{Dataset, Split};
use resnet_mnist::model::{Arch, BlockKind, Model};
use resnet_mnist::plot;
use resnet_mnist::recipe::Preset;
use resnet_mnist::session::{self, Outcome, Session};
use resnet_mnist::train::{DeviceSplit, EpochReport, Recipe};

use super::args::CompareArgs;
use super::signals::Interrupt;
use super::train::{capacity, default_run_dir, interrupted, resumed, run_session};

const TABLE: &str = "compare.md";
const SETUP: &str = "compare.json";

/// Every network `--blocks` and `--depths` ask for, in the order they are trained.
pub fn archs(args: &CompareArgs) -> Vec<Arch> {
    let blocks = match (args.blocks.is_empty(), args.recipes.is_empty()) {
        (false, _) => args.blocks.clone(),
        (true, true) => BlockKind::value_variants().to_vec(),
        (true, false) => vec![BlockKind::Original],
    };
    args.depths.iter().flat_map(|&depth| blocks.iter().map(move |&block| Arch { block, depth })).collect()
}

/// Every recipe `--recipes` (or `--recipe`) asks for, with the preset it starts from.
pub fn recipes(args: &CompareArgs) -> Vec<(Preset, Recipe)> {
    let presets = if args.recipes.is_empty() { vec![args.recipe.optim.recipe] } else { args.recipes.clone() };
    presets.into_iter().map(|p| (p, args.recipe.recipe_from(p, args.common.seed))).collect()
}

pub fn compare<B: Backend>(backend: B, mut dataset: Dataset, args: &CompareArgs) -> Result<()> {
    let archs = archs(args);
    let recipes = recipes(args);
    let dir = args.out.clone().unwrap_or_else(|| default_run_dir("compare-"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    subset(&mut dataset.train, args.train_subset, "--train-subset");
    subset(&mut dataset.test, args.test_subset, "--test-subset");
    claim(&dir, &Setup { dataset: dataset.kind.to_string(), train: dataset.train.len(), test: dataset.test.len() })?;
    let runs = recipes.iter().flat_map(|&(preset, recipe)| archs.iter().map(move |&arch| (preset, recipe, arch)));
    let runs: Vec<(Preset, Recipe, Arch)> = runs.collect();
    println!("Comparing {} runs on {}; in {}", runs.len(), setting(&dataset, &recipes), dir.display());
    let interrupt = Interrupt::install()?;
    let mut backend = Some(backend);
    let mut finished: Vec<(Preset, Arch, usize, Vec<EpochReport>)> = Vec::new();
    for (preset, recipe, arch) in runs {
        let b = backend.take().expect("each run hands the backend back");
        // One recipe keeps the directory names of a comparison of networks alone.
        let name = if recipes.len() == 1 { arch.slug() } else { format!("{preset}-{}", arch.slug()) };
        let (mut session, mut model) = open_run(b, &dir.join(name), recipe, arch)?;
        let params = model.net.layout.total;
        println!("== {arch}, recipe {preset} ({params} parameters) in {}", session.dir.display());
        let splits =
            (DeviceSplit::new(&model.backend, &dataset.train), DeviceSplit::new(&model.backend, &dataset.test));
        let outcome = run_session(&mut session, &mut model, (&splits.0, &splits.1), args.recipe.quiet, &interrupt)?;
        if let Outcome::Stopped { .. } = outcome {
            println!("Stopped; saved. To continue, run the same command with --out {}", dir.display());
            return interrupted(&interrupt);
        }
        finished.push((preset, arch, params, session.state.history));
        drop(splits);
        backend = Some(model.into_backend());
    }
    let runs: Vec<Run> = finished
        .iter()
        .map(|(preset, arch, params, history)| Run {
            recipe: preset.to_string(),
            arch: *arch,
            params: *params,
            history,
        })
        .collect();
    write_results(&dir, &dataset, &recipes, &runs, args.target)
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

/// The data and the recipes of the comparison, in words.
fn setting(dataset: &Dataset, recipes: &[(Preset, Recipe)]) -> String {
    let data = format!("{} ({} train / {} test)", dataset.kind, dataset.train.len(), dataset.test.len());
    match recipes {
        [(_, recipe)] => format!("{data}, {recipe}"),
        _ => {
            let each: Vec<String> = recipes.iter().map(|(preset, recipe)| format!("{preset}: {recipe}")).collect();
            format!("{data}; recipes {}", each.join("; "))
        }
    }
}

fn write_results(dir: &Path, dataset: &Dataset, recipes: &[(Preset, Recipe)], runs: &[Run], target: f64) -> Result<()> {
    let table = compare::markdown_table(runs, target);
    let caption = format!("{}\n\n", setting(dataset, recipes));
    let path = dir.join(TABLE);
    resnet_mnist::atomic::write_atomic(&path, format!("{caption}{table}").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    let label = |r: &Run| if recipes.len() == 1 { r.arch.to_string() } else { format!("{}, {}", r.recipe, r.arch) };
    let curves: Vec<(String, &[EpochReport])> = runs.iter().map(|r| (label(r), r.history)).collect();
    plot::accuracies(&dir.join("accuracy"), &format!("Accuracy on the {} test set", dataset.kind), &curves)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{table}")?;
    writeln!(out, "Wrote {}, accuracy.png and accuracy.svg in {}", TABLE, dir.display())?;
    Ok(())
}
