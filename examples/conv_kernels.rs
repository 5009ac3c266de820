//! Each convolution of the reference network with this CPU's kernels against the AVX2 ones
//! (without AVX-512), timed in interleaved rounds so that both meet the same phases of a
//! noisy host: `cargo run --release --example conv_kernels [-- ROUNDS]`.
//!
//! Per layer and pass: both sides' median GFLOP/s (2 FLOP per multiply-add) and the median
//! of the rounds' ratios.

use std::time::Instant;

use resnet_mnist::backend::cpu::CpuBackend;
use resnet_mnist::backend::Backend;
use resnet_mnist::model::Net;
use resnet_mnist::recipe::Recipe;

/// Calls per timed run: about 10 ms each.
const CALLS: usize = 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds = std::env::args().nth(1).map_or(Ok(15), |r| r.parse()).expect("ROUNDS: a whole number");
    let net = Net::new();
    let native = CpuBackend::new(0).expect("thread pool");
    let avx2 = CpuBackend::new(0).expect("thread pool").without_avx512();
    println!("{} against {}, batch {}, {rounds} rounds", native.name(), avx2.name(), Recipe::default().batch_size);
    let params = native.upload(&net.layout.init(0));
    let mut grads = native.zeros(net.layout.total);
    let (rblock1, rblock2) = (net.stage1.blocks[0].conv1, net.stage2.blocks[0].conv1);
    let layers = [("conv1", net.conv1), ("rblock1", rblock1), ("conv2", net.conv2), ("rblock2", rblock2)];
    println!("{:8} {:16} {:>8} {:>8} {:>7}", "layer", "pass", "native", "avx2", "ratio");
    for (name, conv) in layers {
        let s = conv.shape(Recipe::default().batch_size);
        let x: Vec<f32> = (0..s.in_len()).map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5).collect();
        let dy: Vec<f32> = (0..s.out_len()).map(|i| ((i * 104729) % 255) as f32 / 255.0 - 0.5).collect();
        let (mut y, mut dx) = (vec![0.0; s.out_len()], vec![0.0; s.in_len()]);
        let flop = 2.0 * s.macs() as f64 * CALLS as f64;
        let mut time = |b: &CpuBackend, pass: usize| {
            let start = Instant::now();
            for _ in 0..CALLS {
                match pass {
                    0 => b.conv2d_forward(&s, &x, &params, conv.slot, &mut y, true),
                    1 => b.conv2d_backward_data(&s, &dy, &params, conv.slot, &mut dx, false),
                    _ => b.conv2d_backward_params(&s, &x, &dy, &mut grads, conv.slot),
                }
            }
            flop / start.elapsed().as_secs_f64() / 1e9
        };
        for (pass, what) in ["forward", "backward data", "backward params"].iter().enumerate() {
            if pass == 1 && name == "conv1" {
                continue;
            }
            let (mut ours, mut theirs, mut ratios) = (vec![], vec![], vec![]);
            for _ in 0..rounds {
                let (a, b) = (time(&native, pass), time(&avx2, pass));
                ours.push(a);
                theirs.push(b);
                ratios.push(a / b);
            }
            println!("{name:8} {what:16} {:8.1} {:8.1} {:6.2}×", median(ours), median(theirs), median(ratios));
        }
    }
}
