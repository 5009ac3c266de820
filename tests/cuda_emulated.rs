//! The CUDA backend's host code and kernels, run on the CPU through the host emulator
//! (`EmuDevice`), against the CPU backend: the op-by-op checks of `common/cuda_ops.rs`.
#![cfg(feature = "cuda")]

mod common;

use common::cuda_ops as ops;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use resnet_mnist::backend::cuda::emu::EmuDevice;
use resnet_mnist::backend::cuda::CudaBackend;
use resnet_mnist::backend::Backend;
use resnet_mnist::model::{Model, Net};
use resnet_mnist::recipe::Recipe;

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
fn optimizers_match_cpu() {
    ops::optimizers_match_cpu(&emulated(false));
}

#[test]
fn a_one_cycle_adamw_run_captures_one_graph() {
    ops::a_one_cycle_adamw_run_captures_one_graph(&emulated);
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
fn a_grown_partials_buffer_drops_the_captured_graphs() {
    ops::a_grown_partials_buffer_drops_the_captured_graphs(&emulated);
}

#[test]
fn the_start_up_self_test_passes() {
    emulated(false).self_test().expect("self test");
}

/// What one training step of the reference network queues on a GPU: 39 kernels of its own
/// (the batch gather aside) plus one `sum_splits` for each conv launch whose reduction is
/// split, which at batch 4 as at batch 64 is every one but conv1's forward; and 3 sgemms.
/// A change in the count is a change in the step's launch overhead (README › GPU).
#[test]
fn a_reference_training_step_queues_49_kernels_and_3_sgemms() {
    let net = Net::new();
    let init = net.layout.init(0);
    let mut model = Model::new(emulated(false), net, &init, 4);
    let data = ops::tiny_dataset(&mut ChaCha8Rng::seed_from_u64(1), 4);
    let data = model.backend.upload_data(&data.0, &data.1);
    let order = model.backend.upload_idx(&[0, 1, 2, 3]);
    model.backend.gather(&data, &order, 0, 4, &mut model.ws.x, &mut model.ws.labels, None);
    let before = model.backend.device().queued();
    model.train_step(4, &Recipe::REFERENCE, 1);
    let after = model.backend.device().queued();
    let step = (after.kernels - before.kernels, after.sgemms - before.sgemms);
    assert_eq!(step, (49, 3), "(kernels, sgemms) of one step");
}
