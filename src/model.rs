//! The reference network, layer by layer, with an explicit forward and backward for each.
//!
//! ```text
//! x 1×28×28 ─ conv1 5×5 ─ relu ─ pool ─ rblock1 ─ conv2 5×5 ─ relu ─ pool ─ rblock2 ─ fc ─ logits
//!                      16×24×24   16×12×12           32×8×8        32×4×4        512 → 10
//! rblock(x) = relu(x + conv2(relu(conv1(x))))   (3×3 convs, padding 1)
//! ```
//!
//! Parameters live in one flat buffer in PyTorch `state_dict` order, so a layer is an offset
//! into it and a checkpoint is the buffer cut at the [`Layout`]'s boundaries.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backend::{Backend, ConvShape, LinearShape, ParamSlot, PoolShape, SgdStep, Stats, StepKey};
pub use crate::data::{CLASSES, IMAGE_SIDE};

/// One named parameter tensor inside the flat buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl TensorSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }

    /// PyTorch's default init bound for this tensor's layer, `1/√fan_in`.
    fn fan_in(&self, weight_shape: &[usize]) -> usize {
        weight_shape[1..].iter().product()
    }
}

/// The named tensors of the flat parameter buffer, in `state_dict` order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub tensors: Vec<TensorSpec>,
    pub total: usize,
}

impl Layout {
    /// Appends `name.weight` and `name.bias` and returns their slot.
    fn push_layer(&mut self, name: &str, weight_shape: Vec<usize>) -> ParamSlot {
        let bias_len = weight_shape[0];
        let weight_len = weight_shape.iter().product();
        let slot = ParamSlot { offset: self.total, weight_len, bias_len };
        self.tensors.push(TensorSpec { name: format!("{name}.weight"), shape: weight_shape, offset: slot.offset });
        self.tensors.push(TensorSpec {
            name: format!("{name}.bias"),
            shape: vec![bias_len],
            offset: slot.bias().start,
        });
        self.total += slot.len();
        slot
    }

    pub fn get(&self, name: &str) -> Option<&TensorSpec> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Fresh parameters like PyTorch's defaults: every weight and bias of a layer drawn from
    /// U(−1/√fan_in, 1/√fan_in), tensor by tensor in layout order.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut values = vec![0.0; self.total];
        for pair in self.tensors.chunks(2) {
            let weight_shape = &pair[0].shape;
            let bound = 1.0 / (pair[0].fan_in(weight_shape) as f32).sqrt();
            for t in pair {
                for v in &mut values[t.range()] {
                    *v = rng.random_range(-bound..bound);
                }
            }
        }
        values
    }
}

/// A convolution layer: stride 1, bias, and the input geometry it was built for.
#[derive(Clone, Copy, Debug)]
pub struct Conv {
    pub slot: ParamSlot,
    c_in: usize,
    c_out: usize,
    side: usize,
    kernel: usize,
    pad: usize,
}

impl Conv {
    fn new(layout: &mut Layout, name: &str, c_in: usize, c_out: usize, side: usize, kernel: usize, pad: usize) -> Self {
        let slot = layout.push_layer(name, vec![c_out, c_in, kernel, kernel]);
        Conv { slot, c_in, c_out, side, kernel, pad }
    }

    pub fn shape(&self, batch: usize) -> ConvShape {
        ConvShape {
            batch,
            c_in: self.c_in,
            c_out: self.c_out,
            height: self.side,
            width: self.side,
            kernel: self.kernel,
            pad: self.pad,
        }
    }

    fn out_side(&self) -> usize {
        self.side + 2 * self.pad + 1 - self.kernel
    }
}

/// `y = relu(x + conv2(relu(conv1(x))))` on `channels` planes of `side × side`.
#[derive(Clone, Copy, Debug)]
pub struct ResidualBlock {
    pub conv1: Conv,
    pub conv2: Conv,
}

impl ResidualBlock {
    fn new(layout: &mut Layout, name: &str, channels: usize, side: usize) -> Self {
        ResidualBlock {
            conv1: Conv::new(layout, &format!("{name}.conv1"), channels, channels, side, 3, 1),
            conv2: Conv::new(layout, &format!("{name}.conv2"), channels, channels, side, 3, 1),
        }
    }

    fn len(&self, batch: usize) -> usize {
        self.conv1.shape(batch).in_len()
    }

    fn forward<B: Backend>(&self, b: &B, batch: usize, params: &B::Buf, x: &B::Buf, acts: &mut BlockActs<B>) {
        b.conv2d_forward(&self.conv1.shape(batch), x, params, self.conv1.slot, &mut acts.hidden, true);
        b.conv2d_forward(&self.conv2.shape(batch), &acts.hidden, params, self.conv2.slot, &mut acts.branch, false);
        b.add_relu(self.len(batch), x, &acts.branch, &mut acts.out);
    }

    /// Turns `d`, the gradient at the block's output, into the gradient at its input `x`.
    #[allow(clippy::too_many_arguments)]
    fn backward<B: Backend>(
        &self,
        b: &B,
        batch: usize,
        params: &B::Buf,
        grads: &mut B::Buf,
        x: &B::Buf,
        acts: &mut BlockActs<B>,
        d: &mut B::Buf,
    ) {
        let (s1, s2) = (self.conv1.shape(batch), self.conv2.shape(batch));
        // After the mask, `d` is the gradient of both the skip and the branch.
        b.relu_backward(self.len(batch), &acts.out, d);
        b.conv2d_backward_params(&s2, &acts.hidden, d, grads, self.conv2.slot);
        b.conv2d_backward_data(&s2, d, params, self.conv2.slot, &mut acts.d_hidden, false);
        b.relu_backward(self.len(batch), &acts.hidden, &mut acts.d_hidden);
        b.conv2d_backward_params(&s1, x, &acts.d_hidden, grads, self.conv1.slot);
        b.conv2d_backward_data(&s1, &acts.d_hidden, params, self.conv1.slot, d, true);
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub slot: ParamSlot,
    inputs: usize,
    outputs: usize,
}

impl Linear {
    fn new(layout: &mut Layout, name: &str, inputs: usize, outputs: usize) -> Self {
        Linear { slot: layout.push_layer(name, vec![outputs, inputs]), inputs, outputs }
    }

    pub fn shape(&self, batch: usize) -> LinearShape {
        LinearShape { batch, inputs: self.inputs, outputs: self.outputs }
    }
}

/// The architecture: layer geometry and where each layer's parameters live.
#[derive(Clone, Debug)]
pub struct Net {
    pub layout: Layout,
    pub conv1: Conv,
    pub rblock1: ResidualBlock,
    pub conv2: Conv,
    pub rblock2: ResidualBlock,
    pub fc: Linear,
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

impl Net {
    pub fn new() -> Self {
        let mut layout = Layout::default();
        let conv1 = Conv::new(&mut layout, "conv1", 1, 16, IMAGE_SIDE, 5, 0);
        let side1 = conv1.out_side() / 2;
        let rblock1 = ResidualBlock::new(&mut layout, "rblock1", 16, side1);
        let conv2 = Conv::new(&mut layout, "conv2", 16, 32, side1, 5, 0);
        let side2 = conv2.out_side() / 2;
        let rblock2 = ResidualBlock::new(&mut layout, "rblock2", 32, side2);
        let fc = Linear::new(&mut layout, "fc", 32 * side2 * side2, CLASSES);
        Net { layout, conv1, rblock1, conv2, rblock2, fc }
    }

    fn pool(conv: &Conv, batch: usize) -> PoolShape {
        let side = conv.out_side();
        PoolShape { batch, channels: conv.c_out, height: side, width: side }
    }

    /// Multiply-adds of one image's forward pass.
    pub fn forward_macs(&self) -> usize {
        let convs =
            [self.conv1, self.rblock1.conv1, self.rblock1.conv2, self.conv2, self.rblock2.conv1, self.rblock2.conv2];
        convs.iter().map(|c| c.shape(1).macs()).sum::<usize>() + self.fc.inputs * self.fc.outputs
    }

    /// Floating-point operations of one image's training step: the forward pass, then the
    /// data and parameter gradients of every layer except the input's own gradient.
    pub fn train_flops(&self) -> usize {
        let input_grad = self.conv1.shape(1).macs();
        2 * (3 * self.forward_macs() - input_grad)
    }

    /// Computes logits for the batch in `ws.x` and adds its loss and accuracy to `stats`;
    /// leaves the gradient of the mean loss in `ws.d_logits`.
    pub fn forward<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        ws: &mut Workspace<B>,
        batch: usize,
        stats: &mut B::StatsBuf,
    ) {
        assert!(batch <= ws.capacity, "batch {batch} exceeds workspace capacity {}", ws.capacity);
        b.conv2d_forward(&self.conv1.shape(batch), &ws.x, params, self.conv1.slot, &mut ws.c1, true);
        b.maxpool_forward(&Self::pool(&self.conv1, batch), &ws.c1, &mut ws.p1, &mut ws.argmax1);
        self.rblock1.forward(b, batch, params, &ws.p1, &mut ws.block1);
        b.conv2d_forward(&self.conv2.shape(batch), &ws.block1.out, params, self.conv2.slot, &mut ws.c2, true);
        b.maxpool_forward(&Self::pool(&self.conv2, batch), &ws.c2, &mut ws.p2, &mut ws.argmax2);
        self.rblock2.forward(b, batch, params, &ws.p2, &mut ws.block2);
        b.linear_forward(&self.fc.shape(batch), &ws.block2.out, params, self.fc.slot, &mut ws.logits);
        b.softmax_cross_entropy(batch, CLASSES, &ws.logits, &ws.labels, &mut ws.d_logits, stats);
    }

    /// Writes every parameter's gradient into `grads`, from the activations `forward` left.
    pub fn backward<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        grads: &mut B::Buf,
        ws: &mut Workspace<B>,
        batch: usize,
    ) {
        let fc = self.fc.shape(batch);
        b.linear_backward_params(&fc, &ws.block2.out, &ws.d_logits, grads, self.fc.slot);
        b.linear_backward_data(&fc, &ws.d_logits, params, self.fc.slot, &mut ws.d_block2);
        self.rblock2.backward(b, batch, params, grads, &ws.p2, &mut ws.block2, &mut ws.d_block2);

        b.maxpool_backward(&Self::pool(&self.conv2, batch), &ws.d_block2, &ws.argmax2, &mut ws.d_c2);
        b.relu_backward(self.conv2.shape(batch).out_len(), &ws.c2, &mut ws.d_c2);
        let conv2 = self.conv2.shape(batch);
        b.conv2d_backward_params(&conv2, &ws.block1.out, &ws.d_c2, grads, self.conv2.slot);
        b.conv2d_backward_data(&conv2, &ws.d_c2, params, self.conv2.slot, &mut ws.d_block1, false);
        self.rblock1.backward(b, batch, params, grads, &ws.p1, &mut ws.block1, &mut ws.d_block1);

        b.maxpool_backward(&Self::pool(&self.conv1, batch), &ws.d_block1, &ws.argmax1, &mut ws.d_c1);
        b.relu_backward(self.conv1.shape(batch).out_len(), &ws.c1, &mut ws.d_c1);
        b.conv2d_backward_params(&self.conv1.shape(batch), &ws.x, &ws.d_c1, grads, self.conv1.slot);
    }
}

/// The activations of one residual block, and the gradient scratch its backward needs.
pub struct BlockActs<B: Backend> {
    pub hidden: B::Buf,
    pub branch: B::Buf,
    pub out: B::Buf,
    pub d_hidden: B::Buf,
}

impl<B: Backend> BlockActs<B> {
    fn new(b: &B, len: usize) -> Self {
        BlockActs { hidden: b.zeros(len), branch: b.zeros(len), out: b.zeros(len), d_hidden: b.zeros(len) }
    }
}

/// Every activation and activation gradient of a batch, allocated once for the largest batch.
/// Ops read and write the leading part of each buffer, so a shorter last batch reuses them.
pub struct Workspace<B: Backend> {
    pub capacity: usize,
    pub x: B::Buf,
    pub labels: B::Idx,
    pub c1: B::Buf,
    pub p1: B::Buf,
    pub argmax1: B::Idx,
    pub block1: BlockActs<B>,
    pub c2: B::Buf,
    pub p2: B::Buf,
    pub argmax2: B::Idx,
    pub block2: BlockActs<B>,
    pub logits: B::Buf,
    pub d_logits: B::Buf,
    pub d_block2: B::Buf,
    pub d_c2: B::Buf,
    pub d_block1: B::Buf,
    pub d_c1: B::Buf,
}

impl<B: Backend> Workspace<B> {
    pub fn new(b: &B, net: &Net, capacity: usize) -> Self {
        let n = capacity;
        let c1 = net.conv1.shape(n).out_len();
        let p1 = Net::pool(&net.conv1, n).out_len();
        let c2 = net.conv2.shape(n).out_len();
        let p2 = Net::pool(&net.conv2, n).out_len();
        Workspace {
            capacity,
            x: b.zeros(net.conv1.shape(n).in_len()),
            labels: b.zeros_idx(n),
            c1: b.zeros(c1),
            p1: b.zeros(p1),
            argmax1: b.zeros_idx(p1),
            block1: BlockActs::new(b, net.rblock1.len(n)),
            c2: b.zeros(c2),
            p2: b.zeros(p2),
            argmax2: b.zeros_idx(p2),
            block2: BlockActs::new(b, net.rblock2.len(n)),
            logits: b.zeros(n * CLASSES),
            d_logits: b.zeros(n * CLASSES),
            d_block2: b.zeros(p2),
            d_c2: b.zeros(c2),
            d_block1: b.zeros(p1),
            d_c1: b.zeros(c1),
        }
    }
}

/// Parameters with their gradients and momentum, each one flat buffer.
pub struct ParamState<B: Backend> {
    pub values: B::Buf,
    pub grads: B::Buf,
    pub momentum: B::Buf,
    /// Optimizer steps taken: PyTorch's momentum starts from the first gradient.
    pub steps: u64,
}

impl<B: Backend> ParamState<B> {
    pub fn new(b: &B, values: &[f32]) -> Self {
        ParamState { values: b.upload(values), grads: b.zeros(values.len()), momentum: b.zeros(values.len()), steps: 0 }
    }
}

/// A network bound to a backend, its parameters and its workspace: what training drives.
pub struct Model<B: Backend> {
    pub backend: B,
    pub net: Net,
    pub state: ParamState<B>,
    pub ws: Workspace<B>,
    pub stats: B::StatsBuf,
}

impl<B: Backend> Model<B> {
    pub fn new(backend: B, net: Net, values: &[f32], capacity: usize) -> Self {
        let state = ParamState::new(&backend, values);
        let ws = Workspace::new(&backend, &net, capacity);
        let stats = backend.new_stats();
        Model { backend, net, state, ws, stats }
    }

    /// One SGD step on the batch already gathered into the workspace.
    pub fn train_step(&mut self, batch: usize, lr: f32, momentum: f32) {
        let step = SgdStep { lr, momentum, first: self.state.steps == 0 };
        let Model { backend: b, net, state, ws, stats } = self;
        b.run_step(StepKey::new(batch, step), &mut || {
            net.forward(b, &state.values, ws, batch, stats);
            net.backward(b, &state.values, &mut state.grads, ws, batch);
            b.sgd_step(step, &mut state.values, &state.grads, &mut state.momentum);
        });
        self.state.steps += 1;
    }

    /// Forward only, accumulating loss and accuracy.
    pub fn eval_batch(&mut self, batch: usize) {
        self.net.forward(&self.backend, &self.state.values, &mut self.ws, batch, &mut self.stats);
    }

    pub fn take_stats(&mut self) -> Stats {
        self.backend.take_stats(&mut self.stats)
    }

    pub fn params(&self) -> Vec<f32> {
        self.backend.download(&self.state.values)
    }
}
