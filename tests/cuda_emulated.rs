//! The CUDA backend's host code and kernels, run on the CPU through the host emulator
//! (`EmuDevice`), against the CPU backend: the op-by-op checks of `common/cuda_ops.rs`.
#![cfg(feature = "cuda")]

mod common;

use common::cuda_ops as ops;
use resnet_mnist::backend::cuda::emu::EmuDevice;
use resnet_mnist::backend::cuda::CudaBackend;

fn emulated(graphs: bool) -> CudaBackend<EmuDevice> {
    CudaBackend::new(EmuDevice::new(), graphs)
}

#[test]
fn conv2d_matches_cpu() {
    ops::conv2d_matches_cpu(&emulated(false));
}

#[test]
fn conv2d_backward_params_splits_long_reductions() {
    ops::conv2d_backward_params_splits_long_reductions(&emulated(false));
}

#[test]
fn maxpool_and_elementwise_match_cpu() {
    ops::maxpool_and_elementwise_match_cpu(&emulated(false));
}

#[test]
fn linear_and_loss_match_cpu() {
    ops::linear_and_loss_match_cpu(&emulated(false));
}

#[test]
fn gather_matches_cpu() {
    ops::gather_matches_cpu(&emulated(false));
}

#[test]
fn sgemm_matches_the_column_major_definition() {
    ops::sgemm_matches_the_column_major_definition(&EmuDevice::new());
}

#[test]
fn training_steps_match_cpu_with_and_without_graphs() {
    ops::training_steps_match_cpu_with_and_without_graphs(&emulated);
}

#[test]
fn every_block_variant_trains_like_cpu() {
    ops::every_block_variant_trains_like_cpu(&emulated);
}

#[test]
fn a_reused_backend_forgets_the_graphs_of_the_last_model() {
    ops::a_reused_backend_forgets_the_graphs_of_the_last_model(&emulated);
}

#[test]
fn the_start_up_self_test_passes() {
    emulated(false).self_test().expect("self test");
}
