//! `bench`: training and eval throughput on preloaded data.

use std::io::Write;
use std::time::Instant;

use anyhow::Result;
use resnet_mnist::backend::Backend;
use resnet_mnist::data::Dataset;
use resnet_mnist::model::{Examples, Model};
use resnet_mnist::train::{self, epoch_order, DeviceSplit};

use super::args::BenchArgs;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn bench<B: Backend>(backend: B, dataset: &Dataset, args: &BenchArgs) -> Result<()> {
    let threads = match args.common.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => usize::from(n),
    };
    let recipe = args.optim.recipe(args.common.seed);
    let (batch, steps) = (recipe.batch_size, args.steps as usize);
    if batch > dataset.train.len() {
        anyhow::bail!("--batch-size {batch}: the data set has only {} training examples", dataset.train.len());
    }
    // One workspace serves both passes, and evaluation fills it.
    let eval_batch = batch.max(args.eval_batch as usize);
    if eval_batch != args.eval_batch as usize {
        tracing::info!("--eval-batch {}: the eval pass runs batches of {batch}, the workspace's size", args.eval_batch);
    }
    let mut model = Model::fresh(backend, args.arch.arch(), args.common.seed, eval_batch);
    let train_split = DeviceSplit::new(&model.backend, &dataset.train);
    let test_split = DeviceSplit::new(&model.backend, &dataset.test);
    let (warm_up, repeats) = (20.min(steps), args.repeats as usize);
    // The schedule spans every step this command takes.
    let total_steps = (warm_up + repeats * steps) as u64;

    let mut time_steps = |repeat: usize, steps: usize| {
        let order = epoch_order(args.common.seed, repeat, train_split.len);
        let order = model.backend.upload_idx(&order);
        let augment = recipe.augmentation(repeat);
        let started = Instant::now();
        for step in 0..steps {
            let start = (step * batch) % (train_split.len - batch + 1);
            let examples =
                Examples { data: &train_split.data, order: &order, start, len: batch, augment: augment.as_ref() };
            model.train_batch(examples, &recipe, total_steps);
        }
        model.take_stats();
        (steps * batch) as f64 / started.elapsed().as_secs_f64()
    };
    time_steps(0, warm_up);
    let train_rate = median((0..repeats).map(|r| time_steps(r + 1, steps)).collect());

    // Untimed, as the training steps' warm-up: a first pass pays for what later ones reuse
    // (the CPU lanes' buffers; on a GPU, buffers grown for the eval batch's shapes).
    train::evaluate(&mut model, &test_split);
    let eval_rate = median(
        (0..repeats).map(|_| test_split.len as f64 / train::evaluate(&mut model, &test_split).seconds).collect(),
    );
    model.backend.failure()?;
    let (train_gflops, eval_gflops) =
        (train_rate * model.net.train_flops() as f64 / 1e9, eval_rate * 2.0 * model.net.forward_macs() as f64 / 1e9);
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{{\"device\":\"{}\",\"block\":\"{}\",\"depth\":{},\"threads\":{threads},\"batch\":{batch},\"eval_batch\":{eval_batch},\"steps\":{steps},\"train_images_per_s\":{train_rate:.1},\"eval_images_per_s\":{eval_rate:.1},\"train_gflops\":{train_gflops:.2},\"eval_gflops\":{eval_gflops:.2}}}",
            model.backend.name(),
            model.net.arch.block,
            model.net.arch.depth
        )?;
    } else {
        writeln!(
            out,
            "{} — {}, {steps} steps × {} repeats (median); {recipe}",
            model.backend.name(),
            model.net.arch,
            args.repeats
        )?;
        writeln!(out, "train: {train_rate:10.0} images/s  {train_gflops:7.1} GFLOP/s")?;
        writeln!(out, "eval:  {eval_rate:10.0} images/s  {eval_gflops:7.1} GFLOP/s  (batch {eval_batch})")?;
    }
    Ok(())
}
