//! Command-line flags (clap derive). Values are checked here, so commands get sane numbers.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use resnet_mnist::data::DatasetKind;
use resnet_mnist::model::{Arch, BlockKind};
use resnet_mnist::recipe::{AugmentKind, OptimizerKind, Preset, Recipe, ScheduleKind};
use resnet_mnist::train::EVAL_BATCH;

#[derive(Parser, Debug)]
#[command(version, about = "Train and benchmark a small residual CNN on MNIST", args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand, `train` runs with these flags.
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train with the reference recipe and report test accuracy after every epoch; saves
    /// checkpoints, metrics.csv and curves into a run directory. Ctrl-C stops and saves.
    Train(TrainArgs),
    /// Test accuracy, loss, per-class accuracy and confusion matrix of a checkpoint (or of
    /// freshly initialized weights).
    Eval(EvalArgs),
    /// Predict the digit in each image (PNG, JPEG; any size, dark-on-light or light-on-dark).
    Predict(PredictArgs),
    /// Write test-set digits as PNG files, to try `predict` on.
    Samples(SamplesArgs),
    /// Serve a page to draw digits on and watch a checkpoint read them, and a JSON API:
    /// `GET /`, `GET /model`, `POST /predict` (PNG, JPEG, or `{"pixels": [784 values]}`).
    Serve(ServeArgs),
    /// Training and evaluation throughput on preloaded data.
    Bench(BenchArgs),
    /// Train several block variants, depths and recipes with one seed; writes a Markdown table
    /// (best and last accuracy, first epoch and time at --target, seconds) and one accuracy plot.
    Compare(CompareArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// The GPU when this build has CUDA and a device answers, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// Where the data comes from and what runs it: shared by every subcommand.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Directory with the four IDX files (plain or .gz) [default: $MNIST_DIR or
    /// $FASHION_MNIST_DIR, else data/<dataset>]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DatasetKind::Mnist)]
    pub dataset: DatasetKind,
    /// Never download: a missing file is an error that says where to put it.
    #[arg(long, env = "RESNET_MNIST_OFFLINE", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub offline: bool,
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// CPU threads (0 = one per core).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub threads: u16,
    /// Seed of the weight initialization and of the shuffling.
    #[arg(long, default_value_t = Recipe::default().seed)]
    pub seed: u64,
}

/// Which network: the residual unit and how many blocks each stage stacks.
#[derive(Args, Debug, Clone, Copy)]
pub struct ArchArgs {
    /// Residual unit of every block (He et al. 2016, "Identity Mappings in Deep Residual Networks")
    #[arg(long, value_enum, default_value_t = BlockKind::Original)]
    pub block: BlockKind,
    /// Blocks per stage (1 = the reference network).
    #[arg(long, default_value_t = 1, value_parser = depth)]
    pub depth: usize,
}

impl ArchArgs {
    pub fn arch(&self) -> Arch {
        Arch { block: self.block, depth: self.depth }
    }
}

/// The optimization recipe: a preset, and flags that override its parts. Shared by
/// `train`, `compare` and `bench`.
#[derive(Args, Debug, Clone)]
pub struct OptimArgs {
    /// The preset the other recipe flags override.
    #[arg(long, value_enum, default_value_t = Preset::Reference)]
    pub recipe: Preset,
    /// Training batch size [default: the preset's: 64 reference and fast, 128 best]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub batch_size: Option<u32>,
    /// Learning rate, a schedule's peak [default: the preset's: 0.01 reference, 4e-3 fast, 3e-3 best]
    #[arg(long, value_parser = positive, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    /// The optimizer, as torch.optim computes it [default: the preset's: sgd reference,
    /// adamw fast and best]
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    /// SGD's momentum μ, in [0, 1) [default: 0.5]
    #[arg(long, value_parser = unit_interval, allow_negative_numbers = true)]
    pub momentum: Option<f32>,
    /// SGD with Nesterov momentum: `p -= lr·(g + μ·buf)`.
    #[arg(long)]
    pub nesterov: bool,
    /// Weight decay: L2 added to the gradient for sgd and adam (`g += wd·p`), decoupled
    /// for adamw (`p *= 1 − lr·wd`) [default: the preset's: 0 reference, 1e-4 fast and best]
    #[arg(long, value_parser = non_negative, allow_negative_numbers = true)]
    pub weight_decay: Option<f32>,
    /// Adam's β1,β2, each in [0, 1) [default: 0.9,0.999]
    #[arg(long, value_name = "B1,B2", value_parser = betas, allow_negative_numbers = true)]
    pub betas: Option<[f32; 2]>,
    /// Adam's eps, added to `√v̂` [default: 1e-8]
    #[arg(long, value_parser = positive, allow_negative_numbers = true)]
    pub eps: Option<f32>,
    /// Learning-rate schedule, stepped every batch [default: the preset's: constant
    /// reference, onecycle fast and best]
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    /// ε of PyTorch's `CrossEntropyLoss(label_smoothing=ε)`, in [0, 1): the training loss
    /// is taken against `(1 − ε)·onehot + ε/10` [default: the preset's: 0 reference, 0.1 fast and best]
    #[arg(long, value_parser = unit_interval, allow_negative_numbers = true)]
    pub label_smoothing: Option<f32>,
    /// Random transform of every training image, drawn per (seed, epoch, example)
    /// [default: the preset's: none reference and fast, affine best]
    #[arg(long, value_enum)]
    pub augment: Option<AugmentKind>,
    /// Largest translation of `--augment shift`, in pixels [default: 2]
    #[arg(long, value_name = "PIXELS", value_parser = clap::value_parser!(u32).range(1..=14))]
    pub max_shift: Option<u32>,
}

impl OptimArgs {
    /// The preset `--recipe` names with every given flag put over it.
    pub fn recipe(&self, seed: u64) -> Recipe {
        self.recipe_from(self.recipe, seed)
    }

    /// `preset` with every given flag put over it.
    pub fn recipe_from(&self, preset: Preset, seed: u64) -> Recipe {
        let preset = Recipe::preset(preset);
        Recipe {
            batch_size: self.batch_size.map_or(preset.batch_size, |n| n as usize),
            lr: self.lr.unwrap_or(preset.lr),
            optimizer: self.optimizer.unwrap_or(preset.optimizer),
            momentum: self.momentum.unwrap_or(preset.momentum),
            nesterov: self.nesterov || preset.nesterov,
            weight_decay: self.weight_decay.unwrap_or(preset.weight_decay),
            betas: self.betas.unwrap_or(preset.betas),
            eps: self.eps.unwrap_or(preset.eps),
            schedule: self.schedule.unwrap_or(preset.schedule),
            label_smoothing: self.label_smoothing.unwrap_or(preset.label_smoothing),
            augment: self.augment.unwrap_or(preset.augment),
            max_shift: self.max_shift.unwrap_or(preset.max_shift),
            seed,
            ..preset
        }
    }
}

/// How to train, shared by `train` and `compare`.
#[derive(Args, Debug, Clone)]
pub struct RecipeArgs {
    /// Epochs to train [default: the preset's: 20 reference and best, 1 fast]; with
    /// --resume, the new total of a run to extend.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub epochs: Option<u32>,
    #[command(flatten)]
    pub optim: OptimArgs,
    /// Record every parameter tensor's gradient L2 norm every STEPS steps, into grad_norms.csv
    /// and a log-scale plot per layer.
    #[arg(long, value_name = "STEPS", value_parser = clap::value_parser!(u32).range(1..))]
    pub grad_norms: Option<u32>,
    /// Plain log lines instead of a progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl RecipeArgs {
    pub fn recipe(&self, seed: u64) -> Recipe {
        self.recipe_from(self.optim.recipe, seed)
    }

    pub fn recipe_from(&self, preset: Preset, seed: u64) -> Recipe {
        let recipe = self.optim.recipe_from(preset, seed);
        Recipe {
            epochs: self.epochs.map_or(recipe.epochs, |n| n as usize),
            grad_norm_every: self.grad_norms.map_or(0, |k| k as usize),
            ..recipe
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[command(flatten)]
    pub arch: ArchArgs,
    /// Run directory for checkpoints, metrics.csv and curves [default: runs/<UTC timestamp>]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the interrupted run in DIR with its saved recipe (recipe flags are ignored,
    /// but --epochs extends it).
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// Also save a resumable state every STEPS optimizer steps within an epoch (one is always
    /// saved at the end of each epoch), so that a killed long epoch loses at most STEPS steps.
    #[arg(long, value_name = "STEPS", value_parser = clap::value_parser!(u32).range(1..))]
    pub save_every: Option<u32>,
    #[command(flatten)]
    pub common: CommonArgs,
}

impl TrainArgs {
    pub fn recipe(&self) -> Recipe {
        self.recipe.recipe(self.common.seed)
    }
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Block variants to train, comma-separated [default: all; original with --recipes]
    #[arg(long, value_enum, value_delimiter = ',')]
    pub blocks: Vec<BlockKind>,
    /// Recipe presets to train each network with, comma-separated, each with the other
    /// recipe flags put over it [default: --recipe's alone]
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with = "recipe")]
    pub recipes: Vec<Preset>,
    /// Blocks per stage to train each variant at, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = depth)]
    pub depths: Vec<usize>,
    /// Test accuracy (%) whose first epoch, and training time to it, the table reports.
    #[arg(long, default_value_t = 99.0, value_parser = percent)]
    pub target: f64,
    /// Train on the first N training examples only.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub train_subset: Option<u32>,
    /// Test on the first N test examples only.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub test_subset: Option<u32>,
    /// Directory for compare.md, the accuracy plot and one run directory per network; an
    /// interrupted comparison continues when run again with the same flags
    /// [default: runs/compare-<UTC timestamp>]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// A safetensors state_dict (from `train`, or saved by PyTorch), which records its own
    /// network [default: fresh weights of --block and --depth]
    #[arg(long, value_name = "PATH", conflicts_with = "ArchArgs")]
    pub checkpoint: Option<PathBuf>,
    /// Also draw the confusion matrix into PATH.png and PATH.svg (it is always printed)
    #[arg(long, value_name = "PATH", requires = "checkpoint")]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub arch: ArchArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug, Clone)]
pub struct PredictArgs {
    /// A safetensors state_dict (from `train`, or saved by PyTorch).
    #[arg(long, value_name = "PATH")]
    pub checkpoint: PathBuf,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Pictures of single digits; each is fitted into 28×28 the way MNIST digits are.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// A safetensors state_dict (from `train`, or saved by PyTorch).
    #[arg(long, value_name = "PATH")]
    pub checkpoint: PathBuf,
    /// Address to listen on; the default answers this machine only, and another one (such as
    /// 0.0.0.0:8080) has to be asked for. Port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug, Clone)]
pub struct SamplesArgs {
    /// How many test-set digits to write, from the first.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub count: u32,
    #[arg(long, value_name = "DIR", default_value = "samples")]
    pub out: PathBuf,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Timed training steps per repeat.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub steps: u32,
    #[command(flatten)]
    pub optim: OptimArgs,
    /// Batch size of the timed test-set pass (at least --batch-size: one workspace serves both).
    /// The CPU takes it in chunks of at most 32 images, a chunk per thread at a time.
    #[arg(long, default_value_t = EVAL_BATCH as u32, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub eval_batch: u32,
    #[command(flatten)]
    pub arch: ArchArgs,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeats: u32,
    /// One JSON line on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

fn positive(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(_) => Err(format!("{s} is not a positive finite number")),
        Err(e) => Err(format!("{s} is not a number: {e}")),
    }
}

fn depth(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v) if (1..=Arch::MAX_DEPTH).contains(&v) => Ok(v),
        Ok(_) => Err(format!("{s} is outside 1..={}", Arch::MAX_DEPTH)),
        Err(e) => Err(format!("{s} is not a whole number: {e}")),
    }
}

fn percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
        Ok(_) => Err(format!("{s} is outside [0, 100]")),
        Err(e) => Err(format!("{s} is not a number: {e}")),
    }
}

fn non_negative(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        Ok(_) => Err(format!("{s} is not a non-negative finite number")),
        Err(e) => Err(format!("{s} is not a number: {e}")),
    }
}

fn betas(s: &str) -> Result<[f32; 2], String> {
    match s.split(',').map(unit_interval).collect::<Result<Vec<_>, _>>()?[..] {
        [b1, b2] => Ok([b1, b2]),
        _ => Err(format!("{s} is not two numbers B1,B2")),
    }
}

fn unit_interval(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        Ok(_) => Err(format!("{s} is outside [0, 1)")),
        Err(e) => Err(format!("{s} is not a number: {e}")),
    }
}
