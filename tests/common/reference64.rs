//! A direct, loop-by-loop `f64` forward pass of the network, in every block variant and depth:
//! the yardstick that finite differences are taken on, free of the rounding noise and kinks an
//! `f32` step meets.

use resnet_mnist::model::{BlockKind, Layout, Net, CLASSES};

struct Tensor {
    channels: usize,
    side: usize,
    data: Vec<f64>,
}

fn param<'a>(layout: &Layout, params: &'a [f64], name: &str) -> &'a [f64] {
    &params[layout.get(name).unwrap_or_else(|| panic!("no tensor {name}")).range()]
}

fn conv(layout: &Layout, params: &[f64], name: &str, x: &Tensor, c_out: usize, k: usize, pad: usize) -> Tensor {
    let w = param(layout, params, &format!("{name}.weight"));
    let b = param(layout, params, &format!("{name}.bias"));
    let side = x.side + 2 * pad + 1 - k;
    let mut data = vec![0.0; c_out * side * side];
    for co in 0..c_out {
        for oy in 0..side {
            for ox in 0..side {
                let mut acc = b[co];
                for ci in 0..x.channels {
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = ((oy + ky) as isize - pad as isize, (ox + kx) as isize - pad as isize);
                            if iy < 0 || ix < 0 || iy >= x.side as isize || ix >= x.side as isize {
                                continue;
                            }
                            let xv = x.data[(ci * x.side + iy as usize) * x.side + ix as usize];
                            acc += w[((co * x.channels + ci) * k + ky) * k + kx] * xv;
                        }
                    }
                }
                data[(co * side + oy) * side + ox] = acc;
            }
        }
    }
    Tensor { channels: c_out, side, data }
}

fn relu(mut t: Tensor) -> Tensor {
    t.data.iter_mut().for_each(|v| *v = v.max(0.0));
    t
}

fn pool(x: &Tensor) -> Tensor {
    let side = x.side / 2;
    let mut data = vec![0.0; x.channels * side * side];
    for c in 0..x.channels {
        for oy in 0..side {
            for ox in 0..side {
                let at = |dy: usize, dx: usize| x.data[(c * x.side + 2 * oy + dy) * x.side + 2 * ox + dx];
                data[(c * side + oy) * side + ox] = at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
            }
        }
    }
    Tensor { channels: x.channels, side, data }
}

fn zip(a: &Tensor, b: &Tensor, f: impl Fn(f64, f64) -> f64) -> Tensor {
    let data = a.data.iter().zip(&b.data).map(|(&a, &b)| f(a, b)).collect();
    Tensor { channels: a.channels, side: a.side, data }
}

/// One block of `net`'s kind, written from the formulas of [`BlockKind`]'s variants.
fn block(net: &Net, params: &[f64], name: &str, x: Tensor, last: bool) -> Tensor {
    let c = x.channels;
    let branch = |x: &Tensor| {
        let h = relu(conv(&net.layout, params, &format!("{name}.conv1"), x, c, 3, 1));
        conv(&net.layout, params, &format!("{name}.conv2"), &h, c, 3, 1)
    };
    match net.arch.block {
        BlockKind::Original => relu(zip(&x, &branch(&x), |x, f| x + f)),
        BlockKind::Plain => relu(branch(&x)),
        BlockKind::ReluBeforeAdd => zip(&x, &relu(branch(&x)), |x, f| x + f),
        BlockKind::Preact => {
            let pre = relu(Tensor { channels: c, side: x.side, data: x.data.clone() });
            let y = zip(&x, &branch(&pre), |x, f| x + f);
            if last {
                relu(y)
            } else {
                y
            }
        }
        BlockKind::Scaled => relu(zip(&x, &branch(&x), |x, f| 0.5 * x + 0.5 * f)),
        BlockKind::ConvShortcut => {
            let skip = conv(&net.layout, params, &format!("{name}.shortcut"), &x, c, 1, 0);
            relu(zip(&skip, &branch(&x), |s, f| s + f))
        }
    }
}

fn stage(net: &Net, params: &[f64], stage: usize, mut x: Tensor) -> Tensor {
    for i in 0..net.arch.depth {
        x = block(net, params, &net.arch.block_name(stage, i), x, i + 1 == net.arch.depth);
    }
    x
}

/// Logits of one 28×28 image.
pub fn logits(net: &Net, params: &[f64], image: &[f64]) -> Vec<f64> {
    let layout = &net.layout;
    let x = Tensor { channels: 1, side: 28, data: image.to_vec() };
    let x = pool(&relu(conv(layout, params, "conv1", &x, 16, 5, 0)));
    let x = stage(net, params, 1, x);
    let x = pool(&relu(conv(layout, params, "conv2", &x, 32, 5, 0)));
    let x = stage(net, params, 2, x);
    let (w, b) = (param(layout, params, "fc.weight"), param(layout, params, "fc.bias"));
    (0..CLASSES)
        .map(|o| b[o] + w[o * x.data.len()..][..x.data.len()].iter().zip(&x.data).map(|(w, x)| w * x).sum::<f64>())
        .collect()
}

/// Mean softmax cross-entropy over a batch of images.
pub fn mean_loss(net: &Net, params: &[f64], images: &[f64], labels: &[u32]) -> f64 {
    let losses = images.chunks_exact(784).zip(labels).map(|(image, &label)| {
        let z = logits(net, params, image);
        let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln() - z[label as usize]
    });
    losses.sum::<f64>() / labels.len() as f64
}
