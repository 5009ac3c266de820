//! The dispatcher: which subcommand runs, on which backend `--device` picks, with which data.
//! Each subcommand lives in its own module.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use resnet_mnist::backend::cpu::CpuBackend;
#[cfg(feature = "cuda")]
use resnet_mnist::backend::cuda::{hw::CudarcDevice, CudaBackend};
use resnet_mnist::backend::Backend;
use resnet_mnist::data::{self, Dataset, LoadOptions};
use resnet_mnist::model::Arch;

use super::args::{
    BenchArgs, Cli, Command, CommonArgs, CompareArgs, Device, EvalArgs, PredictArgs, ServeArgs, TrainArgs,
};
use super::{bench, compare, eval, memory, predict, samples, serve, train};

pub fn run(cli: Cli) -> Result<()> {
    match cli.command.unwrap_or(Command::Train(cli.train)) {
        Command::Train(args) => on_device(&args.common, &args),
        Command::Eval(args) => on_device(&args.common, &args),
        Command::Bench(args) => on_device(&args.common, &args),
        Command::Predict(args) => on_device(&args.common, &args),
        Command::Compare(args) => on_device(&args.common, &args),
        Command::Samples(args) => samples::samples(&load_data(&args.common)?, &args),
        Command::Serve(args) => on_device(&args.common, &args),
    }
}

/// A subcommand, written once over whichever backend `--device` picks.
trait OnBackend {
    fn run<B: Backend>(&self, backend: B) -> Result<()>;

    /// The networks and batch capacity the command will allocate, with the flag that set it,
    /// for checking the host's memory before a CPU run.
    fn workspace(&self) -> Option<(String, Vec<Arch>, usize)> {
        None
    }
}

/// The CPU backend, once the host has been found to have the memory `command` needs.
fn on_cpu(common: &CommonArgs, command: &impl OnBackend) -> Result<()> {
    if let Some((flag, archs, capacity)) = command.workspace() {
        memory::check(&flag, &archs, capacity)?;
    }
    command.run(cpu(common)?)
}

fn cpu(common: &CommonArgs) -> Result<CpuBackend> {
    Ok(CpuBackend::new(usize::from(common.threads))?)
}

/// Runs `command` on the GPU for `--device cuda`, on the CPU for `--device cpu`, and for
/// `--device auto` on the GPU when one answers, else on the CPU with one line saying why.
fn on_device(common: &CommonArgs, command: &impl OnBackend) -> Result<()> {
    if common.device == Device::Cpu {
        return on_cpu(common, command);
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
    on_cpu(common, command)
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

impl OnBackend for TrainArgs {
    fn run<B: Backend>(&self, backend: B) -> Result<()> {
        train::train(backend, &load_data(&self.common)?, self)
    }

    /// A resumed run keeps the batch size it has been training with.
    fn workspace(&self) -> Option<(String, Vec<Arch>, usize)> {
        let recipe = self.recipe();
        let flag = format!("--batch-size {}", recipe.batch_size);
        self.resume.is_none().then(|| (flag, vec![self.arch.arch()], train::capacity(&recipe)))
    }
}

impl OnBackend for CompareArgs {
    fn run<B: Backend>(&self, backend: B) -> Result<()> {
        compare::compare(backend, load_data(&self.common)?, self)
    }

    fn workspace(&self) -> Option<(String, Vec<Arch>, usize)> {
        let recipe = compare::recipes(self).into_iter().map(|(_, r)| r).max_by_key(|r| r.batch_size)?;
        Some((format!("--batch-size {}", recipe.batch_size), compare::archs(self), train::capacity(&recipe)))
    }
}

impl OnBackend for EvalArgs {
    fn run<B: Backend>(&self, backend: B) -> Result<()> {
        eval::eval(backend, &load_data(&self.common)?, self)
    }
}

impl OnBackend for BenchArgs {
    fn run<B: Backend>(&self, backend: B) -> Result<()> {
        bench::bench(backend, &load_data(&self.common)?, self)
    }

    fn workspace(&self) -> Option<(String, Vec<Arch>, usize)> {
        let batch = self.optim.recipe(self.common.seed).batch_size;
        let flag = format!("--batch-size {batch} with --eval-batch {}", self.eval_batch);
        Some((flag, vec![self.arch.arch()], batch.max(self.eval_batch as usize)))
    }
}

impl OnBackend for ServeArgs {
    fn run<B: Backend>(&self, backend: B) -> Result<()> {
        serve::serve(backend, self)
    }
}

impl OnBackend for PredictArgs {
    fn run<B: Backend>(&self, backend: B) -> Result<()> {
        predict::predict(backend, self)
    }
}
