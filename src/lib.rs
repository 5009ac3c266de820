//! resnet-mnist: a small residual CNN trained on MNIST with explicit per-layer forward and
//! backward passes over a backend trait of ops (CPU now, CUDA behind the `cuda` feature).

pub mod atomic;
pub mod augment;
pub mod backend;
pub mod checkpoint;
pub mod compare;
pub mod data;
pub mod digit;
pub mod inference;
pub mod lock;
pub mod model;
pub mod plot;
pub mod recipe;
pub mod session;
pub mod train;

/// `n` and `noun`, plural unless `n` is 1: "1 epoch", "20 epochs".
pub fn counted(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}
