//! What each subcommand does, over whichever backend the flags pick.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use resnet_mnist::backend::cpu::CpuBackend;
#[cfg(feature = "cuda")]
use resnet_mnist::backend::cuda::{hw::CudarcDevice, CudaBackend};
use resnet_mnist::backend::Backend;
use resnet_mnist::data::{self, Dataset, LoadOptions};
use resnet_mnist::model::{Arch, Model, Net};
use resnet_mnist::train::{self, epoch_order, DeviceSplit, EpochReport, Event, Recipe, EVAL_BATCH};

use super::args::{BenchArgs, Cli, Command, CommonArgs, CompareArgs, Device, EvalArgs, PredictArgs, TrainArgs};
use super::{artifacts, compare};

pub fn run(cli: Cli) -> Result<()> {
    match cli.command.unwrap_or(Command::Train(cli.train)) {
        Command::Train(args) => on_device(&args.common, &args),
        Command::Eval(args) => on_device(&args.common, &args),
        Command::Bench(args) => on_device(&args.common, &args),
        Command::Predict(args) => on_device(&args.common, &args),
        Command::Compare(args) => on_device(&args.common, &args),
        Command::Samples(args) => artifacts::samples(&load_data(&args.common)?, &args),
    }
}

/// A subcommand, written once over whichever backend `--device` picks.
trait OnBackend {
    fn run<B: Backend>(&self, backend: B) -> Result<()>;
}

fn cpu(common: &CommonArgs) -> Result<CpuBackend> {
    Ok(CpuBackend::new(usize::from(common.threads))?)
}

/// Runs `command` on the GPU for `--device cuda`, on the CPU for `--device cpu`, and for
/// `--device auto` on the GPU when one answers, else on the CPU with one line saying why.
fn on_device(common: &CommonArgs, command: &impl OnBackend) -> Result<()> {
    if common.device == Device::Cpu {
        return command.run(cpu(common)?);
    }
    let why = match gpu() {
        #[cfg(feature = "cuda")]
        Ok(gpu) => return command.run(gpu),
        #[cfg(not(feature = "cuda"))]
        Ok(never) => match never {},
        Err(why) => why,
    };
    if common.device == Device::Cuda {
        bail!("--device cuda: {why}");
    }
    tracing::info!("device auto: using the CPU ({why})");
    command.run(cpu(common)?)
}

#[cfg(feature = "cuda")]
fn gpu() -> Result<CudaBackend<CudarcDevice>, String> {
    let open = || {
        let backend = CudaBackend::new(CudarcDevice::new(0)?, true);
        backend.self_test()?;
        Ok(backend)
    };
    open().map_err(|e: resnet_mnist::backend::cuda::CudaError| format!("no usable GPU: {e}"))
}

#[cfg(not(feature = "cuda"))]
fn gpu() -> Result<std::convert::Infallible, String> {
    Err("this binary was built without CUDA support; rebuild it with `cargo build --release --features cuda`".into())
}

fn load_data(common: &CommonArgs) -> Result<Dataset> {
    let dir = data::resolve_dir(common.data_dir.as_deref(), common.dataset);
    let started = Instant::now();
    let dataset = data::load(&LoadOptions { dir: dir.clone(), kind: common.dataset, offline: common.offline })
        .with_context(|| format!("cannot load {} from {}", common.dataset, dir.display()))?;
    tracing::info!(
        "loaded {} from {}: {} train, {} test images in {:.2} s",
        common.dataset,
        dir.display(),
        dataset.train.len(),
        dataset.test.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(dataset)
}

pub(super) fn fresh_model<B: Backend>(backend: B, arch: Arch, seed: u64, capacity: usize) -> Model<B> {
    let net = Net::build(arch);
    let params = net.layout.init(seed);
    Model::new(backend, net, &params, capacity)
}

impl OnBackend for TrainArgs {
    fn run<B: Backend>(&self, backend: B) -> Result<()> {
        artifacts::train(backend, &load_data(&self.common)?, self)
    }
}

impl OnBackend for CompareArgs {
    fn run<B: Backend>(&self, backend: B) -> Result<()> {
        compare::compare(backend, load_data(&self.common)?, self)
    }
}

impl OnBackend for EvalArgs {
    fn run<B: Backend>(&self, backend: B) -> Result<()> {
        eval(self, backend)
    }
}

impl OnBackend for BenchArgs {
    fn run<B: Backend>(&self, backend: B) -> Result<()> {
        bench(self, backend)
    }
}

impl OnBackend for PredictArgs {
    fn run<B: Backend>(&self, backend: B) -> Result<()> {
        artifacts::predict(backend, self)
    }
}

pub(super) fn print_event(out: &mut impl Write, event: &Event) -> std::io::Result<()> {
    match event {
        Event::Step { .. } | Event::GradNorms(_) => Ok(()),
        Event::RunningLoss { epoch, batch, loss } => writeln!(out, "[{epoch}, {batch:5}] loss: {loss:.3}"),
        Event::Epoch(r) => writeln!(
            out,
            "Accuracy on test set: {:.2} %  (epoch {}: {:.2} s, {:.0} images/s; train loss {:.4}, test loss {:.4})",
            r.test.accuracy, r.epoch, r.seconds, r.images_per_s, r.train_loss, r.test.loss
        ),
    }
}

pub(super) fn print_summary(out: &mut impl Write, reports: &[EpochReport]) -> std::io::Result<()> {
    let accuracies: Vec<String> = reports.iter().map(|r| format!("{:.2}", r.test.accuracy)).collect();
    writeln!(out, "[{}]", accuracies.join(", "))?;
    let best = reports.iter().max_by(|a, b| a.test.accuracy.total_cmp(&b.test.accuracy));
    if let (Some(best), Some(last)) = (best, reports.last()) {
        let seconds: f64 = reports.iter().map(|r| r.seconds).sum();
        writeln!(
            out,
            "Best {:.2} % at epoch {}, last {:.2} %; {:.1} s of training, {:.0} images/s",
            best.test.accuracy,
            best.epoch,
            last.test.accuracy,
            seconds,
            reports.iter().map(|r| r.images_per_s * r.seconds).sum::<f64>() / seconds
        )?;
    }
    Ok(())
}

fn eval<B: Backend>(args: &EvalArgs, backend: B) -> Result<()> {
    let dataset = load_data(&args.common)?;
    if let Some(path) = &args.checkpoint {
        return artifacts::eval_checkpoint(backend, &dataset, path, args.plot.as_deref());
    }
    let mut model = fresh_model(backend, args.arch.arch(), args.common.seed, EVAL_BATCH);
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench<B: Backend>(args: &BenchArgs, backend: B) -> Result<()> {
    let threads = match args.common.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => usize::from(n),
    };
    let dataset = load_data(&args.common)?;
    let (batch, steps) = (args.batch_size as usize, args.steps as usize);
    // One workspace serves both passes, and evaluation fills it.
    let eval_batch = batch.max(args.eval_batch as usize);
    if eval_batch != args.eval_batch as usize {
        tracing::info!("--eval-batch {}: the eval pass runs batches of {batch}, the workspace's size", args.eval_batch);
    }
    let mut model = fresh_model(backend, args.arch.arch(), args.common.seed, eval_batch);
    let train_split = DeviceSplit::new(&model.backend, &dataset.train);
    let test_split = DeviceSplit::new(&model.backend, &dataset.test);
    let recipe = Recipe { batch_size: batch, ..Recipe::default() };

    let mut time_steps = |repeat: usize, steps: usize| {
        let order = epoch_order(args.common.seed, repeat, train_split.len);
        let order = model.backend.upload_idx(&order);
        let started = Instant::now();
        for step in 0..steps {
            let start = (step * batch) % (train_split.len - batch + 1);
            model.backend.gather(&train_split.data, &order, start, batch, &mut model.ws.x, &mut model.ws.labels);
            model.train_step(batch, recipe.lr, recipe.momentum);
        }
        model.take_stats();
        (steps * batch) as f64 / started.elapsed().as_secs_f64()
    };
    time_steps(0, 20.min(steps));
    let train_rate = median((0..args.repeats as usize).map(|r| time_steps(r + 1, steps)).collect());

    let eval_rate = median(
        (0..args.repeats as usize)
            .map(|_| test_split.len as f64 / train::evaluate(&mut model, &test_split).seconds)
            .collect(),
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
            "{} — {}, batch {batch}, {steps} steps × {} repeats (median)",
            model.backend.name(),
            model.net.arch,
            args.repeats
        )?;
        writeln!(out, "train: {train_rate:10.0} images/s  {train_gflops:7.1} GFLOP/s")?;
        writeln!(out, "eval:  {eval_rate:10.0} images/s  {eval_gflops:7.1} GFLOP/s  (batch {eval_batch})")?;
    }
    Ok(())
}
