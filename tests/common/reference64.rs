//! A direct, loop-by-loop `f64` forward pass of the reference network: the yardstick that
//! finite differences are taken on, free of the rounding noise and kinks an `f32` step meets.

use resnet_mnist::model::{Layout, CLASSES};

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

fn rblock(layout: &Layout, params: &[f64], name: &str, x: Tensor) -> Tensor {
    let h = relu(conv(layout, params, &format!("{name}.conv1"), &x, x.channels, 3, 1));
    let mut y = conv(layout, params, &format!("{name}.conv2"), &h, x.channels, 3, 1);
    y.data.iter_mut().zip(&x.data).for_each(|(y, x)| *y += x);
    relu(y)
}

/// Logits of one 28×28 image.
pub fn logits(layout: &Layout, params: &[f64], image: &[f64]) -> Vec<f64> {
    let x = Tensor { channels: 1, side: 28, data: image.to_vec() };
    let x = pool(&relu(conv(layout, params, "conv1", &x, 16, 5, 0)));
    let x = rblock(layout, params, "rblock1", x);
    let x = pool(&relu(conv(layout, params, "conv2", &x, 32, 5, 0)));
    let x = rblock(layout, params, "rblock2", x);
    let (w, b) = (param(layout, params, "fc.weight"), param(layout, params, "fc.bias"));
    (0..CLASSES)
        .map(|o| b[o] + w[o * x.data.len()..][..x.data.len()].iter().zip(&x.data).map(|(w, x)| w * x).sum::<f64>())
        .collect()
}

/// Mean softmax cross-entropy over a batch of images.
pub fn mean_loss(layout: &Layout, params: &[f64], images: &[f64], labels: &[u32]) -> f64 {
    let losses = images.chunks_exact(784).zip(labels).map(|(image, &label)| {
        let z = logits(layout, params, image);
        let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln() - z[label as usize]
    });
    losses.sum::<f64>() / labels.len() as f64
}
