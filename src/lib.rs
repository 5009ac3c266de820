//! resnet-mnist: a small residual CNN trained on MNIST with explicit per-layer forward and
//! backward passes over a backend trait of ops (CPU now, CUDA behind the `cuda` feature).

pub mod atomic;
pub mod backend;
pub mod data;
pub mod model;
pub mod train;
