//! How a network is trained: the optimizer, the learning-rate schedule, label smoothing and
//! the augmentation of training images, each with PyTorch's semantics, and the presets that
//! `--recipe` names.
//!
//! A recipe turns into two things per optimizer step: the [`Update`], which stays the same
//! over a run (a backend may record the step once and replay it), and the [`StepScalars`],
//! which the schedule changes every step and which the step reads from a small buffer.

use std::fmt;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::augment::{AffineRange, Augmentation};
use crate::backend::{AdamUpdate, SgdUpdate, StepScalars, Update};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// torch.optim.SGD: `g += wd·p; buf = μ·buf + g` (`buf = g` at the first step);
    /// `p -= lr·(g + μ·buf)` with --nesterov, else `p -= lr·buf`.
    #[default]
    Sgd,
    /// torch.optim.Adam: `g += wd·p; m = lerp(m, g, 1−β1); v = β2·v + (1−β2)·g²;
    /// p -= lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + eps)`.
    Adam,
    /// torch.optim.AdamW: Adam without the `g += wd·p`, and `p *= 1 − lr·wd` first.
    Adamw,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// `--lr` at every step.
    #[default]
    Constant,
    /// torch's OneCycleLR over the whole run, stepped per batch, with its defaults:
    /// `pct_start` 0.3, cosine annealing from `lr/25` up to `lr`, then down to `lr/25/1e4`;
    /// momentum (SGD's μ, Adam's β1) cycles the other way between 0.95 and 0.85.
    Onecycle,
    /// torch's CosineAnnealingLR over the whole run (`T_max` = its steps, `eta_min` 0),
    /// stepped per batch: `lr·(1 + cos(π·t/T))/2`.
    Cosine,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AugmentKind {
    #[default]
    None,
    /// A random whole-pixel translation of up to ±--max-shift pixels each way.
    Shift,
    /// torchvision's RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
    /// bilinear, zero fill.
    Affine,
}

/// The named recipes of `--recipe`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// The PyTorch tutorial's: SGD, lr 0.01, momentum 0.5, batch 64, 20 epochs.
    Reference,
    /// 99 % in one epoch: AdamW (lr 4e-3, weight decay 1e-4), batch 64, one-cycle, label
    /// smoothing 0.1, 1 epoch.
    Fast,
    /// As far as this network goes: `fast` with batch 128, lr 3e-3, affine augmentation and
    /// 20 epochs.
    Best,
}

/// Each choice prints as its flag value.
macro_rules! display_as_flag_value {
    ($($kind:ty),*) => {$(
        impl fmt::Display for $kind {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.to_possible_value().expect("no variant is hidden").get_name())
            }
        }
    )*};
}

display_as_flag_value!(OptimizerKind, ScheduleKind, AugmentKind, Preset);

/// OneCycleLR's defaults.
const ONECYCLE_PCT_START: f64 = 0.3;
const ONECYCLE_DIV_FACTOR: f64 = 25.0;
const ONECYCLE_FINAL_DIV_FACTOR: f64 = 1e4;
const ONECYCLE_BASE_MOMENTUM: f64 = 0.85;
const ONECYCLE_MAX_MOMENTUM: f64 = 0.95;

/// The optimization recipe, and what is recorded along the way; the defaults are the
/// reference tutorial's. Fields added after the first release default to it too, so that
/// the state of an older run reads back as what it was.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub epochs: usize,
    pub batch_size: usize,
    /// The learning rate; a schedule's peak.
    pub lr: f32,
    /// SGD's momentum.
    pub momentum: f32,
    pub seed: u64,
    /// Record every parameter tensor's gradient norm after every this many steps (0: never).
    #[serde(default)]
    pub grad_norm_every: usize,
    #[serde(default)]
    pub optimizer: OptimizerKind,
    #[serde(default)]
    pub nesterov: bool,
    #[serde(default)]
    pub weight_decay: f32,
    /// Adam's β1 and β2.
    #[serde(default = "default_betas")]
    pub betas: [f32; 2],
    /// Adam's eps.
    #[serde(default = "default_eps")]
    pub eps: f32,
    #[serde(default)]
    pub schedule: ScheduleKind,
    /// ε of `CrossEntropyLoss(label_smoothing=ε)`, for the training loss only.
    #[serde(default)]
    pub label_smoothing: f32,
    #[serde(default)]
    pub augment: AugmentKind,
    /// The largest translation of `shift` augmentation, in pixels.
    #[serde(default = "default_max_shift")]
    pub max_shift: u32,
}

fn default_betas() -> [f32; 2] {
    Recipe::REFERENCE.betas
}

fn default_eps() -> f32 {
    Recipe::REFERENCE.eps
}

fn default_max_shift() -> u32 {
    Recipe::REFERENCE.max_shift
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe::REFERENCE
    }
}

impl Recipe {
    pub const REFERENCE: Recipe = Recipe {
        epochs: 20,
        batch_size: 64,
        lr: 0.01,
        momentum: 0.5,
        seed: 0,
        grad_norm_every: 0,
        optimizer: OptimizerKind::Sgd,
        nesterov: false,
        weight_decay: 0.0,
        betas: [0.9, 0.999],
        eps: 1e-8,
        schedule: ScheduleKind::Constant,
        label_smoothing: 0.0,
        augment: AugmentKind::None,
        max_shift: 2,
    };

    pub fn preset(preset: Preset) -> Recipe {
        let fast = Recipe {
            epochs: 1,
            lr: 4e-3,
            optimizer: OptimizerKind::Adamw,
            weight_decay: 1e-4,
            schedule: ScheduleKind::Onecycle,
            label_smoothing: 0.1,
            ..Recipe::REFERENCE
        };
        match preset {
            Preset::Reference => Recipe::REFERENCE,
            Preset::Fast => fast,
            Preset::Best => Recipe { epochs: 20, batch_size: 128, lr: 3e-3, augment: AugmentKind::Affine, ..fast },
        }
    }

    /// Whether the schedule spans the run's length, so that the run cannot be extended.
    pub fn spans_the_run(&self) -> bool {
        self.schedule != ScheduleKind::Constant
    }

    /// What every optimizer step of the run does.
    pub fn update(&self) -> Update {
        let weight_decay = self.weight_decay;
        match self.optimizer {
            OptimizerKind::Sgd => Update::Sgd(SgdUpdate { nesterov: self.nesterov, weight_decay }),
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let decoupled = self.optimizer == OptimizerKind::Adamw;
                let beta2 = self.betas[1];
                Update::Adam(AdamUpdate {
                    beta2,
                    one_minus_beta2: (1.0 - f64::from(beta2)) as f32,
                    eps: self.eps,
                    l2: if decoupled { 0.0 } else { weight_decay },
                })
            }
        }
    }

    /// The learning rate and momentum (SGD's μ, Adam's β1) of 0-based step `step` of a run
    /// of `total` steps, in f64 as PyTorch's schedulers compute them.
    pub fn schedule_at(&self, step: u64, total: u64) -> (f64, f64) {
        let lr = f64::from(self.lr);
        let momentum = f64::from(match self.optimizer {
            OptimizerKind::Sgd => self.momentum,
            OptimizerKind::Adam | OptimizerKind::Adamw => self.betas[0],
        });
        match self.schedule {
            ScheduleKind::Constant => (lr, momentum),
            ScheduleKind::Cosine => {
                (lr * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos()) / 2.0, momentum)
            }
            ScheduleKind::Onecycle => one_cycle(lr, step, total),
        }
    }

    /// The scalars of 0-based step `step` of a run of `total` steps.
    pub fn step_scalars(&self, step: u64, total: u64) -> StepScalars {
        let (lr, momentum) = self.schedule_at(step, total);
        match self.optimizer {
            OptimizerKind::Sgd => StepScalars {
                lr: lr as f32,
                momentum: momentum as f32,
                first: if step == 0 { 1.0 } else { 0.0 },
                ..StepScalars::default()
            },
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                // As torch.optim.Adam computes them: Python floats, from the step count after
                // its increment.
                let t = (step + 1) as f64;
                let bias1 = 1.0 - momentum.powf(t);
                let bias2 = 1.0 - f64::from(self.betas[1]).powf(t);
                let decoupled = self.optimizer == OptimizerKind::Adamw;
                StepScalars {
                    lr: lr as f32,
                    momentum: momentum as f32,
                    decay: if decoupled { (1.0 - lr * f64::from(self.weight_decay)) as f32 } else { 1.0 },
                    lerp_weight: (1.0 - momentum) as f32,
                    step_size: (lr / bias1) as f32,
                    bias2_sqrt: bias2.sqrt() as f32,
                    ..StepScalars::default()
                }
            }
        }
    }

    /// The augmentation of epoch `epoch` (0-based), if any.
    pub fn augmentation(&self, epoch: usize) -> Option<Augmentation> {
        let range = match self.augment {
            AugmentKind::None => return None,
            AugmentKind::Shift => AffineRange::shift(self.max_shift as f32),
            AugmentKind::Affine => AffineRange::RANDOM_AFFINE,
        };
        Some(Augmentation { range, seed: self.seed, epoch: epoch as u32 })
    }
}

/// OneCycleLR's learning rate and momentum at step `step` of `total`, two phases, cosine
/// annealing (`torch.optim.lr_scheduler.OneCycleLR.get_lr`).
fn one_cycle(max_lr: f64, step: u64, total: u64) -> (f64, f64) {
    let initial = max_lr / ONECYCLE_DIV_FACTOR;
    let min = initial / ONECYCLE_FINAL_DIV_FACTOR;
    let (up, m_high, m_low) = (ONECYCLE_PCT_START * total as f64 - 1.0, ONECYCLE_MAX_MOMENTUM, ONECYCLE_BASE_MOMENTUM);
    let step = step as f64;
    let anneal =
        |start: f64, end: f64, pct: f64| end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0);
    if step <= up {
        let pct = step / up;
        (anneal(initial, max_lr, pct), anneal(m_high, m_low, pct))
    } else {
        let pct = (step - up) / (total as f64 - 1.0 - up);
        (anneal(max_lr, min, pct), anneal(m_low, m_high, pct))
    }
}

impl fmt::Display for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, batch {}, ", crate::counted(self.epochs, "epoch"), self.batch_size)?;
        write!(f, "{} lr {}", self.optimizer, self.lr)?;
        match self.optimizer {
            OptimizerKind::Sgd => {
                write!(f, " momentum {}", self.momentum)?;
                if self.nesterov {
                    write!(f, " nesterov")?;
                }
            }
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                write!(f, " betas ({}, {}) eps {:e}", self.betas[0], self.betas[1], self.eps)?
            }
        }
        if self.weight_decay != 0.0 {
            write!(f, " weight decay {:e}", self.weight_decay)?;
        }
        write!(f, ", {} schedule", self.schedule)?;
        if self.label_smoothing != 0.0 {
            write!(f, ", label smoothing {}", self.label_smoothing)?;
        }
        match self.augment {
            AugmentKind::None => {}
            AugmentKind::Shift => write!(f, ", shift augmentation (±{} px)", self.max_shift)?,
            AugmentKind::Affine => write!(f, ", affine augmentation")?,
        }
        write!(f, ", seed {}", self.seed)?;
        match self.grad_norm_every {
            0 => Ok(()),
            k => write!(f, ", gradient norms every {k} steps"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OneCycleLR(max_lr=1, total_steps=10) printed by PyTorch 2.x: lr and momentum
    /// (`cycle_momentum=True`) after each `scheduler.step()`, starting at step 0.
    #[test]
    fn one_cycle_follows_pytorch_at_its_ends_and_peak() {
        let recipe = Recipe { lr: 1.0, schedule: ScheduleKind::Onecycle, ..Recipe::REFERENCE };
        let (lr0, m0) = recipe.schedule_at(0, 10);
        assert!((lr0 - 0.04).abs() < 1e-15 && (m0 - 0.95).abs() < 1e-15);
        // pct_start · 10 − 1 = 2: the peak is at step 2.
        let (peak, m_peak) = recipe.schedule_at(2, 10);
        assert!((peak - 1.0).abs() < 1e-15 && (m_peak - 0.85).abs() < 1e-15);
        let (last, m_last) = recipe.schedule_at(9, 10);
        assert!((last - 4e-6).abs() < 1e-18 && (m_last - 0.95).abs() < 1e-15);
        let (mid, _) = recipe.schedule_at(1, 10);
        assert!((mid - (1.0 + (0.04 - 1.0) / 2.0 * ((std::f64::consts::PI * 0.5).cos() + 1.0))).abs() < 1e-15);
    }

    #[test]
    fn cosine_goes_from_lr_to_zero() {
        let recipe = Recipe { lr: 2.0, schedule: ScheduleKind::Cosine, ..Recipe::REFERENCE };
        assert_eq!(recipe.schedule_at(0, 8).0, 2.0);
        assert!((recipe.schedule_at(4, 8).0 - 1.0).abs() < 1e-15);
        assert!(recipe.schedule_at(7, 8).0 > 0.0);
    }

    #[test]
    fn the_reference_recipe_reads_back_from_an_older_state() {
        let old = r#"{"epochs":20,"batch_size":64,"lr":0.01,"momentum":0.5,"seed":0,"grad_norm_every":0}"#;
        assert_eq!(serde_json::from_str::<Recipe>(old).unwrap(), Recipe::REFERENCE);
    }
}
