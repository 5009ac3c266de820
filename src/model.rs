//! The reference network, layer by layer, with an explicit forward and backward for each.
//!
//! ```text
//! x 1×28×28 ─ conv1 5×5 ─ relu ─ pool ─ stage1 ─ conv2 5×5 ─ relu ─ pool ─ stage2 ─ fc ─ logits
//!                      16×24×24   16×12×12          32×8×8        32×4×4       512 → 10
//! ```
//! Each stage stacks `depth` residual blocks of one [`BlockKind`]; the reference is one
//! `original` block, `rblock(x) = relu(x + conv2(relu(conv1(x))))` (3×3 convs, padding 1).
//!
//! Parameters live in one flat buffer in PyTorch `state_dict` order, so a layer is an offset
//! into it and a checkpoint is the buffer cut at the [`Layout`]'s boundaries.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use clap::ValueEnum;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::augment::Augmentation;
use crate::backend::{Backend, ConvShape, Lanes, LinearShape, ParamSlot, Stats, StepKey, StepScalars, Update};
pub use crate::data::{CLASSES, IMAGE_SIDE};
use crate::recipe::Recipe;

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

/// The residual unit of every block: the variants of He et al. 2016, "Identity Mappings in Deep
/// Residual Networks", without batch norm, where `F = conv2 ∘ relu ∘ conv1` (3×3, padding 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BlockKind {
    /// relu(x + F(x)): the reference.
    #[default]
    Original,
    /// relu(F(x)): no skip, the baseline that shows what the skip buys.
    Plain,
    /// x + relu(F(x)).
    ReluBeforeAdd,
    /// x + F(relu(x)), with a ReLU after the last block of each stage.
    Preact,
    /// relu(0.5·x + 0.5·F(x)): the paper's constant scaling of the skip.
    Scaled,
    /// relu(conv1x1(x) + F(x)): a learned 1×1 projection on the skip.
    ConvShortcut,
}

impl BlockKind {
    /// A buffer beside the block's output: the pre-activation `relu(x)`, the ReLU'd branch,
    /// or the projected skip.
    fn has_aux(self) -> bool {
        matches!(self, Self::ReluBeforeAdd | Self::Preact | Self::ConvShortcut)
    }
}

impl fmt::Display for BlockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_possible_value().expect("no variant is hidden").get_name())
    }
}

impl FromStr for BlockKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        <Self as ValueEnum>::from_str(s, false)
    }
}

/// What varies between networks: the residual unit and how many blocks each stage stacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Arch {
    pub block: BlockKind,
    pub depth: usize,
}

impl Default for Arch {
    fn default() -> Self {
        Arch { block: BlockKind::Original, depth: 1 }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, depth {}", self.block, self.depth)
    }
}

impl Arch {
    /// Deepest stack a stage may have.
    pub const MAX_DEPTH: usize = 64;

    /// A name for files and directories, such as `preact-d10`.
    pub fn slug(&self) -> String {
        format!("{}-d{}", self.block, self.depth)
    }

    /// Tensor-name prefix of block `index` (0-based) of stage `stage` (1-based): the reference's
    /// `rblock1` at depth 1, and `stage1.0` … `stage1.{depth-1}` in deeper stacks.
    pub fn block_name(&self, stage: usize, index: usize) -> String {
        if self.depth == 1 {
            format!("rblock{stage}")
        } else {
            format!("stage{stage}.{index}")
        }
    }
}

/// The factor of the `scaled` join.
const SKIP_SCALE: f32 = 0.5;

/// One residual block on `channels` planes of `side × side`; its tensors are `NAME.conv1`,
/// `NAME.conv2` and, for `conv-shortcut`, the 1×1 `NAME.shortcut`.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub kind: BlockKind,
    pub conv1: Conv,
    pub conv2: Conv,
    pub shortcut: Option<Conv>,
    /// Preact's ReLU after the last block of a stage, fused into the join.
    closing_relu: bool,
}

impl Block {
    fn new(layout: &mut Layout, name: &str, kind: BlockKind, channels: usize, side: usize, last: bool) -> Self {
        let conv = |layout: &mut Layout, part: &str, kernel, pad| {
            Conv::new(layout, &format!("{name}.{part}"), channels, channels, side, kernel, pad)
        };
        let conv1 = conv(layout, "conv1", 3, 1);
        let conv2 = conv(layout, "conv2", 3, 1);
        let shortcut = (kind == BlockKind::ConvShortcut).then(|| conv(layout, "shortcut", 1, 0));
        Block { kind, conv1, conv2, shortcut, closing_relu: kind == BlockKind::Preact && last }
    }

    fn len(&self, batch: usize) -> usize {
        self.conv1.shape(batch).in_len()
    }

    fn forward<B: Backend>(&self, b: &B, batch: usize, params: &B::Buf, x: &B::Buf, acts: &mut BlockActs<B>) {
        let n = self.len(batch);
        let BlockActs { hidden, out, aux } = acts;
        match (self.kind, aux) {
            (BlockKind::Original, _) => self.branch_join_forward(b, batch, params, x, x, hidden, out),
            (BlockKind::Plain, _) => self.branch_forward(b, batch, params, x, hidden, out, true),
            (BlockKind::ReluBeforeAdd, Some(branch)) => {
                self.branch_forward(b, batch, params, x, hidden, branch, true);
                b.axpby(n, 1.0, x, 0.0, out, false);
                b.axpby(n, 1.0, branch, 1.0, out, false);
            }
            (BlockKind::Preact, Some(pre)) => {
                b.axpby(n, 1.0, x, 0.0, pre, true);
                self.branch_forward(b, batch, params, pre, hidden, out, false);
                b.axpby(n, 1.0, x, 1.0, out, self.closing_relu);
            }
            (BlockKind::Scaled, _) => {
                self.branch_forward(b, batch, params, x, hidden, out, false);
                b.axpby(n, SKIP_SCALE, x, SKIP_SCALE, out, true);
            }
            (BlockKind::ConvShortcut, Some(skip)) => {
                let shortcut = self.shortcut.expect("conv-shortcut blocks have a shortcut");
                b.conv2d_forward(&shortcut.shape(batch), x, params, shortcut.slot, skip, false);
                self.branch_join_forward(b, batch, params, x, skip, hidden, out);
            }
            (kind, None) => unreachable!("{kind} blocks get an aux buffer"),
        }
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
        acts: &BlockActs<B>,
        d: &mut B::Buf,
        scratch: &mut Scratch<B>,
    ) {
        let n = self.len(batch);
        let Scratch { d_hidden, d_aux } = scratch;
        let BlockActs { hidden, out, aux } = acts;
        match (self.kind, aux, d_aux) {
            // After the mask, `d` is the gradient of both the skip and the branch.
            (BlockKind::Original, ..) => {
                b.relu_backward(n, out, d);
                self.branch_backward(b, batch, params, grads, x, hidden, d, d_hidden, true);
            }
            (BlockKind::Plain, ..) => {
                b.relu_backward(n, out, d);
                self.branch_backward(b, batch, params, grads, x, hidden, d, d_hidden, false);
            }
            (BlockKind::ReluBeforeAdd, Some(branch), Some(d_branch)) => {
                b.axpby(n, 1.0, d, 0.0, d_branch, false);
                b.relu_backward(n, branch, d_branch);
                self.branch_backward(b, batch, params, grads, x, hidden, d_branch, d_hidden, false);
                b.axpby(n, 1.0, d_branch, 1.0, d, false);
            }
            (BlockKind::Preact, Some(pre), Some(d_pre)) => {
                if self.closing_relu {
                    b.relu_backward(n, out, d);
                }
                b.axpby(n, 1.0, d, 0.0, d_pre, false);
                self.branch_backward(b, batch, params, grads, pre, hidden, d_pre, d_hidden, false);
                b.relu_backward(n, pre, d_pre);
                b.axpby(n, 1.0, d_pre, 1.0, d, false);
            }
            (BlockKind::Scaled, ..) => {
                b.relu_backward(n, out, d);
                b.scale(n, SKIP_SCALE, d);
                self.branch_backward(b, batch, params, grads, x, hidden, d, d_hidden, true);
            }
            (BlockKind::ConvShortcut, Some(_), Some(d_skip)) => {
                b.relu_backward(n, out, d);
                let shortcut = self.shortcut.expect("conv-shortcut blocks have a shortcut");
                let s = shortcut.shape(batch);
                b.conv2d_backward_params(&s, x, d, grads, shortcut.slot);
                b.conv2d_backward_data(&s, d, params, shortcut.slot, d_skip, false);
                self.branch_backward(b, batch, params, grads, x, hidden, d, d_hidden, false);
                b.axpby(n, 1.0, d_skip, 1.0, d, false);
            }
            (kind, ..) => unreachable!("{kind} blocks get aux buffers"),
        }
    }

    /// `y = conv2(relu(conv1(x)))`, ReLU'd when `relu`.
    #[allow(clippy::too_many_arguments)]
    fn branch_forward<B: Backend>(
        &self,
        b: &B,
        batch: usize,
        params: &B::Buf,
        x: &B::Buf,
        hidden: &mut B::Buf,
        y: &mut B::Buf,
        relu: bool,
    ) {
        b.conv2d_forward(&self.conv1.shape(batch), x, params, self.conv1.slot, hidden, true);
        b.conv2d_forward(&self.conv2.shape(batch), hidden, params, self.conv2.slot, y, relu);
    }

    /// `y = relu(conv2(relu(conv1(x))) + skip)`: the branch and the residual join after it.
    #[allow(clippy::too_many_arguments)]
    fn branch_join_forward<B: Backend>(
        &self,
        b: &B,
        batch: usize,
        params: &B::Buf,
        x: &B::Buf,
        skip: &B::Buf,
        hidden: &mut B::Buf,
        y: &mut B::Buf,
    ) {
        b.conv2d_forward(&self.conv1.shape(batch), x, params, self.conv1.slot, hidden, true);
        b.conv2d_add_relu_forward(&self.conv2.shape(batch), hidden, params, self.conv2.slot, skip, y);
    }

    /// Takes `d`, the gradient at the branch's output, to the gradient at its input `x`, which
    /// replaces `d` or, when `accumulate`, is added to it; writes both convolutions' gradients.
    #[allow(clippy::too_many_arguments)]
    fn branch_backward<B: Backend>(
        &self,
        b: &B,
        batch: usize,
        params: &B::Buf,
        grads: &mut B::Buf,
        x: &B::Buf,
        hidden: &B::Buf,
        d: &mut B::Buf,
        d_hidden: &mut B::Buf,
        accumulate: bool,
    ) {
        let (s1, s2) = (self.conv1.shape(batch), self.conv2.shape(batch));
        b.conv2d_backward_params(&s2, hidden, d, grads, self.conv2.slot);
        b.conv2d_backward_data(&s2, d, params, self.conv2.slot, d_hidden, false);
        b.relu_backward(self.len(batch), hidden, d_hidden);
        b.conv2d_backward_params(&s1, x, d_hidden, grads, self.conv1.slot);
        b.conv2d_backward_data(&s1, d_hidden, params, self.conv1.slot, d, accumulate);
    }
}

/// `depth` blocks of one kind on the same geometry, one after another.
#[derive(Clone, Debug)]
pub struct Stage {
    pub blocks: Vec<Block>,
}

impl Stage {
    fn new(layout: &mut Layout, arch: Arch, stage: usize, channels: usize, side: usize) -> Self {
        let blocks = (0..arch.depth)
            .map(|i| Block::new(layout, &arch.block_name(stage, i), arch.block, channels, side, i + 1 == arch.depth))
            .collect();
        Stage { blocks }
    }

    fn len(&self, batch: usize) -> usize {
        self.blocks[0].len(batch)
    }

    fn forward<B: Backend>(&self, b: &B, batch: usize, params: &B::Buf, x: &B::Buf, acts: &mut StageActs<B>) {
        for (i, block) in self.blocks.iter().enumerate() {
            let (done, rest) = acts.blocks.split_at_mut(i);
            block.forward(b, batch, params, done.last().map_or(x, |a| &a.out), &mut rest[0]);
        }
    }

    /// Turns `d`, the gradient at the stage's output, into the gradient at its input `x`.
    #[allow(clippy::too_many_arguments)]
    fn backward<B: Backend>(
        &self,
        b: &B,
        batch: usize,
        params: &B::Buf,
        grads: &mut B::Buf,
        x: &B::Buf,
        acts: &mut StageActs<B>,
        d: &mut B::Buf,
    ) {
        let StageActs { blocks, scratch } = acts;
        for (i, block) in self.blocks.iter().enumerate().rev() {
            let input = if i == 0 { x } else { &blocks[i - 1].out };
            block.backward(b, batch, params, grads, input, &blocks[i], d, scratch);
        }
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

/// The network: layer geometry and where each layer's parameters live.
#[derive(Clone, Debug)]
pub struct Net {
    pub arch: Arch,
    pub layout: Layout,
    pub conv1: Conv,
    pub stage1: Stage,
    pub conv2: Conv,
    pub stage2: Stage,
    pub fc: Linear,
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

impl Net {
    /// The reference network.
    pub fn new() -> Self {
        Self::build(Arch::default())
    }

    pub fn build(arch: Arch) -> Self {
        assert!((1..=Arch::MAX_DEPTH).contains(&arch.depth), "depth {} outside 1..={}", arch.depth, Arch::MAX_DEPTH);
        let mut layout = Layout::default();
        let conv1 = Conv::new(&mut layout, "conv1", 1, 16, IMAGE_SIDE, 5, 0);
        let side1 = conv1.out_side() / 2;
        let stage1 = Stage::new(&mut layout, arch, 1, 16, side1);
        let conv2 = Conv::new(&mut layout, "conv2", 16, 32, side1, 5, 0);
        let side2 = conv2.out_side() / 2;
        let stage2 = Stage::new(&mut layout, arch, 2, 32, side2);
        let fc = Linear::new(&mut layout, "fc", 32 * side2 * side2, CLASSES);
        Net { arch, layout, conv1, stage1, conv2, stage2, fc }
    }

    /// Every convolution, from the input up.
    pub fn convs(&self) -> Vec<Conv> {
        let stage = |s: &Stage| -> Vec<Conv> {
            s.blocks.iter().flat_map(|b| [Some(b.conv1), Some(b.conv2), b.shortcut].into_iter().flatten()).collect()
        };
        [vec![self.conv1], stage(&self.stage1), vec![self.conv2], stage(&self.stage2)].concat()
    }

    /// Multiply-adds of one image's forward pass.
    pub fn forward_macs(&self) -> usize {
        self.convs().iter().map(|c| c.shape(1).macs()).sum::<usize>() + self.fc.inputs * self.fc.outputs
    }

    /// Floating-point operations of one image's training step: the forward pass, then the
    /// data and parameter gradients of every layer except the input's own gradient.
    pub fn train_flops(&self) -> usize {
        let input_grad = self.conv1.shape(1).macs();
        2 * (3 * self.forward_macs() - input_grad)
    }

    /// Computes logits for the batch in `ws.x` and adds its loss (against labels smoothed by
    /// `smoothing`) and accuracy to `stats`; leaves the gradient of the mean loss in
    /// `ws.d_logits`.
    pub fn forward<B: Backend>(
        &self,
        b: &B,
        params: &B::Buf,
        ws: &mut Workspace<B>,
        batch: usize,
        smoothing: f32,
        stats: &mut B::StatsBuf,
    ) {
        assert!(batch <= ws.capacity, "batch {batch} exceeds workspace capacity {}", ws.capacity);
        let (conv1, conv2) = (self.conv1.shape(batch), self.conv2.shape(batch));
        b.conv2d_relu_maxpool_forward(&conv1, &ws.x, params, self.conv1.slot, &mut ws.c1, &mut ws.p1, &mut ws.argmax1);
        self.stage1.forward(b, batch, params, &ws.p1, &mut ws.stage1);
        let x2 = ws.stage1.out();
        b.conv2d_relu_maxpool_forward(&conv2, x2, params, self.conv2.slot, &mut ws.c2, &mut ws.p2, &mut ws.argmax2);
        self.stage2.forward(b, batch, params, &ws.p2, &mut ws.stage2);
        b.linear_forward(&self.fc.shape(batch), ws.stage2.out(), params, self.fc.slot, &mut ws.logits);
        b.softmax_cross_entropy(batch, CLASSES, smoothing, &ws.logits, &ws.labels, &mut ws.d_logits, stats);
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
        b.linear_backward_params(&fc, ws.stage2.out(), &ws.d_logits, grads, self.fc.slot);
        b.linear_backward_data(&fc, &ws.d_logits, params, self.fc.slot, &mut ws.d_stage2);
        self.stage2.backward(b, batch, params, grads, &ws.p2, &mut ws.stage2, &mut ws.d_stage2);

        // ReLU, then max-pool: the pool hands each gradient to its window's maximum, which is
        // the pooled value, so the ReLU's mask applies on the pooled side, a quarter the size.
        let pool2 = self.conv2.shape(batch).pool();
        b.relu_backward(pool2.out_len(), &ws.p2, &mut ws.d_stage2);
        b.maxpool_backward(&pool2, &ws.d_stage2, &ws.argmax2, &mut ws.d_c2);
        let conv2 = self.conv2.shape(batch);
        b.conv2d_backward_params(&conv2, ws.stage1.out(), &ws.d_c2, grads, self.conv2.slot);
        b.conv2d_backward_data(&conv2, &ws.d_c2, params, self.conv2.slot, &mut ws.d_stage1, false);
        self.stage1.backward(b, batch, params, grads, &ws.p1, &mut ws.stage1, &mut ws.d_stage1);

        // conv1 needs no input gradient, so its full-size output gradient serves only its
        // filter gradient, which a backend may compute straight from the pooled one.
        let conv1 = self.conv1.shape(batch);
        b.relu_backward(conv1.pool().out_len(), &ws.p1, &mut ws.d_stage1);
        b.conv2d_maxpool_backward_params(
            &conv1,
            &ws.x,
            &ws.d_stage1,
            &ws.argmax1,
            &mut ws.d_c1,
            grads,
            self.conv1.slot,
        );
    }
}

/// What one block's forward keeps for its backward.
pub struct BlockActs<B: Backend> {
    pub hidden: B::Buf,
    pub out: B::Buf,
    /// See [`BlockKind::has_aux`].
    pub aux: Option<B::Buf>,
}

/// Gradient buffers a block's backward uses and leaves: one set serves a whole stage.
struct Scratch<B: Backend> {
    d_hidden: B::Buf,
    d_aux: Option<B::Buf>,
}

/// The activations of a stage's blocks.
pub struct StageActs<B: Backend> {
    pub blocks: Vec<BlockActs<B>>,
    scratch: Scratch<B>,
}

impl<B: Backend> StageActs<B> {
    fn new(b: &B, stage: &Stage, capacity: usize) -> Self {
        let len = stage.len(capacity);
        let aux = |kind: BlockKind| kind.has_aux().then(|| b.zeros(len));
        let blocks = stage
            .blocks
            .iter()
            .map(|block| BlockActs { hidden: b.zeros(len), out: b.zeros(len), aux: aux(block.kind) })
            .collect();
        StageActs { blocks, scratch: Scratch { d_hidden: b.zeros(len), d_aux: aux(stage.blocks[0].kind) } }
    }

    /// The stage's output: its last block's.
    pub fn out(&self) -> &B::Buf {
        &self.blocks.last().expect("a stage has at least one block").out
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
    pub stage1: StageActs<B>,
    pub c2: B::Buf,
    pub p2: B::Buf,
    pub argmax2: B::Idx,
    pub stage2: StageActs<B>,
    pub logits: B::Buf,
    pub d_logits: B::Buf,
    pub d_stage2: B::Buf,
    pub d_c2: B::Buf,
    pub d_stage1: B::Buf,
    pub d_c1: B::Buf,
}

/// Elements a [`Workspace`] of `capacity` allocates (`f32` and `u32` alike, 4 bytes each),
/// term by term as [`Workspace::new`] allocates them (a test holds the two together): what
/// `--batch-size` costs in memory, to check before allocating.
pub fn workspace_elements(net: &Net, capacity: usize) -> usize {
    let n = capacity;
    let (conv1, conv2) = (net.conv1.shape(n), net.conv2.shape(n));
    let (c1, p1) = (conv1.out_len(), conv1.pool().out_len());
    let (c2, p2) = (conv2.out_len(), conv2.pool().out_len());
    let stage = |stage: &Stage| {
        let len = stage.len(n);
        let aux = |kind: BlockKind| if kind.has_aux() { len } else { 0 };
        stage.blocks.iter().map(|block| 2 * len + aux(block.kind)).sum::<usize>() + len + aux(stage.blocks[0].kind)
    };
    let input = conv1.in_len();
    input + n + 2 * c1 + 3 * p1 + stage(&net.stage1) + 2 * c2 + 3 * p2 + stage(&net.stage2) + 2 * n * CLASSES
}

impl<B: Backend> Workspace<B> {
    pub fn new(b: &B, net: &Net, capacity: usize) -> Self {
        let n = capacity;
        let c1 = net.conv1.shape(n).out_len();
        let p1 = net.conv1.shape(n).pool().out_len();
        let c2 = net.conv2.shape(n).out_len();
        let p2 = net.conv2.shape(n).pool().out_len();
        Workspace {
            capacity,
            x: b.zeros(net.conv1.shape(n).in_len()),
            labels: b.zeros_idx(n),
            c1: b.zeros(c1),
            p1: b.zeros(p1),
            argmax1: b.zeros_idx(p1),
            stage1: StageActs::new(b, &net.stage1, n),
            c2: b.zeros(c2),
            p2: b.zeros(p2),
            argmax2: b.zeros_idx(p2),
            stage2: StageActs::new(b, &net.stage2, n),
            logits: b.zeros(n * CLASSES),
            d_logits: b.zeros(n * CLASSES),
            d_stage2: b.zeros(p2),
            d_c2: b.zeros(c2),
            d_stage1: b.zeros(p1),
            d_c1: b.zeros(c1),
        }
    }
}

/// Parameters with their gradients and optimizer state, each one flat buffer.
pub struct ParamState<B: Backend> {
    pub values: B::Buf,
    pub grads: B::Buf,
    /// SGD's momentum buffer, or Adam's first moment.
    pub momentum: B::Buf,
    /// Adam's second moment, allocated at Adam's first step.
    pub second_moment: Option<B::Buf>,
    /// The [`StepScalars`] of the step in flight.
    pub scalars: B::Buf,
    /// Optimizer steps taken: PyTorch's momentum starts from the first gradient, and a
    /// schedule and Adam's bias corrections go by this count.
    pub steps: u64,
}

impl<B: Backend> ParamState<B> {
    pub fn new(b: &B, values: &[f32]) -> Self {
        ParamState {
            values: b.upload(values),
            grads: b.zeros(values.len()),
            momentum: b.zeros(values.len()),
            second_moment: None,
            scalars: b.zeros(StepScalars::LEN),
            steps: 0,
        }
    }

    /// The optimizer's step from `grads`, with the scalars already written.
    fn update(&mut self, b: &B, update: Update) {
        let ParamState { values, grads, momentum, second_moment, scalars, .. } = self;
        match (update, second_moment) {
            (Update::Sgd(u), _) => b.sgd_step(u, scalars, values, grads, momentum),
            (Update::Adam(u), Some(v)) => b.adam_step(u, scalars, values, grads, momentum, v),
            (Update::Adam(_), None) => unreachable!("allocated by Model::prepare_step"),
        }
    }
}

/// Examples `order[start..start + len]` of `data`, each transformed by `augment` when given:
/// a training batch, which [`Model::train_batch`] gathers.
pub struct Examples<'a, B: Backend> {
    pub data: &'a B::Data,
    pub order: &'a B::Idx,
    pub start: usize,
    pub len: usize,
    pub augment: Option<&'a Augmentation>,
}

impl<B: Backend> Examples<'_, B> {
    fn gather(&self, b: &B, ws: &mut Workspace<B>) {
        b.gather(self.data, self.order, self.start, self.len, &mut ws.x, &mut ws.labels, self.augment);
    }

    /// Chunk `k` of the runs of `size` examples, the last one shorter when `size` does not
    /// divide.
    fn chunk(&self, k: usize, size: usize) -> Self {
        let at = k * size;
        Examples { start: self.start + at, len: size.min(self.len - at), ..*self }
    }
}

impl<B: Backend> Clone for Examples<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for Examples<'_, B> {}

/// A network bound to a backend, its parameters and its workspace: what training drives.
pub struct Model<B: Backend> {
    pub backend: B,
    pub net: Net,
    pub state: ParamState<B>,
    pub ws: Workspace<B>,
    pub stats: B::StatsBuf,
    /// The workspace and stats of each lane of [`Model::evaluate`] and
    /// [`Model::train_batch`] after the first, which uses the model's own; allocated on
    /// first use.
    lanes: Vec<(Workspace<B>, B::StatsBuf)>,
    /// The gradient and stats of each chunk of a [`Model::train_batch`] split into chunks,
    /// each locked by the lane that computes it.
    chunks: Vec<Mutex<(B::Buf, Stats)>>,
    /// The stats of the chunks trained since [`Model::take_stats`].
    chunk_stats: Stats,
}

/// The workspace and stats of each lane: the model's own, then the spare ones.
fn lane_buffers<'a, B: Backend>(
    ws: &'a mut Workspace<B>,
    stats: &'a mut B::StatsBuf,
    spare: &'a mut [(Workspace<B>, B::StatsBuf)],
) -> impl Iterator<Item = (&'a mut Workspace<B>, &'a mut B::StatsBuf)> {
    std::iter::once((ws, stats)).chain(spare.iter_mut().map(|(ws, stats)| (ws, stats)))
}

impl<B: Backend> Model<B> {
    pub fn new(backend: B, net: Net, values: &[f32], capacity: usize) -> Self {
        let state = ParamState::new(&backend, values);
        let ws = Workspace::new(&backend, &net, capacity);
        let stats = backend.new_stats();
        Model { backend, net, state, ws, stats, lanes: Vec::new(), chunks: Vec::new(), chunk_stats: Stats::default() }
    }

    /// The network `arch` with PyTorch's default initialization from `seed`.
    pub fn fresh(backend: B, arch: Arch, seed: u64, capacity: usize) -> Self {
        let net = Net::build(arch);
        let params = net.layout.init(seed);
        Model::new(backend, net, &params, capacity)
    }

    /// One optimizer step of `recipe` on the batch already gathered into the workspace, in a
    /// run of `total_steps` steps (the length a schedule spans), the whole batch at once.
    pub fn train_step(&mut self, batch: usize, recipe: &Recipe, total_steps: u64) {
        self.prepare_step(recipe, total_steps);
        let (update, smoothing) = (recipe.update(), recipe.label_smoothing);
        let Model { backend, net, state, ws, stats, .. } = self;
        backend.run_step(StepKey::new(batch, update, smoothing), &mut |b| {
            net.forward(b, &state.values, ws, batch, smoothing, stats);
            net.backward(b, &state.values, &mut state.grads, ws, batch);
            state.update(b, update);
        });
        self.state.steps += 1;
    }

    /// One optimizer step of `recipe` on `examples`, as [`Model::train_step`] takes it. Where
    /// the backend's [`Lanes`] take fewer images than the batch, the batch splits into chunks
    /// of that many, each gathered, run forward and backward on a lane of its own (on the
    /// CPU, a core whose caches keep the chunk's activations, and no op waits for the other
    /// cores), and the chunks' gradients add up weighted by their share of the batch.
    pub fn train_batch(&mut self, examples: Examples<'_, B>, recipe: &Recipe, total_steps: u64) {
        let lanes = self.backend.lanes(examples.len);
        if lanes.chunk >= examples.len {
            examples.gather(&self.backend, &mut self.ws);
            return self.train_step(examples.len, recipe, total_steps);
        }
        self.prepare_step(recipe, total_steps);
        self.chunk_step(examples, lanes, recipe);
        let chunks = &mut self.chunks[..examples.len.div_ceil(lanes.chunk)];
        // In chunk order, so that the sums do not depend on the lane count.
        for chunk in chunks.iter_mut() {
            self.chunk_stats = self.chunk_stats + chunk.get_mut().expect("a lane panicked").1;
        }
        self.state.steps += 1;
    }

    /// Writes the step's scalars and allocates what its optimizer needs first.
    fn prepare_step(&mut self, recipe: &Recipe, total_steps: u64) {
        let Model { backend, net, state, .. } = self;
        backend.write(&mut state.scalars, &recipe.step_scalars(state.steps, total_steps).to_array());
        if matches!(recipe.update(), Update::Adam(_)) && state.second_moment.is_none() {
            state.second_moment = Some(backend.zeros(net.layout.total));
        }
    }

    /// The gradient of the mean loss over each chunk of `examples`, and its stats, into
    /// `chunks`, chunk `k` on lane `k % lanes.count`; then, on the lane that finishes last,
    /// the chunks' gradients summed and the optimizer's update. (Run after the lanes, from
    /// this thread, the update waited for a pool's thread to wake and this one to wake again:
    /// 75 µs of a training step's 3.3 ms, where the update itself takes 50.)
    fn chunk_step(&mut self, examples: Examples<'_, B>, lanes: Lanes, recipe: &Recipe) {
        let count = examples.len.div_ceil(lanes.chunk);
        self.add_lanes(lanes.count);
        while self.chunks.len() < count {
            self.chunks.push(Mutex::new((self.backend.zeros(self.net.layout.total), Stats::default())));
        }
        let Model { backend, net, state, ws, stats, lanes: spare, chunks, .. } = self;
        let (net, chunks, len) = (&*net, &chunks[..count], net.layout.total);
        let (state, running) = (RwLock::new(state), AtomicUsize::new(lanes.count));
        let update = |b: &B| {
            let mut state = state.write().expect("a lane panicked");
            for (k, chunk) in chunks.iter().enumerate() {
                let share = examples.chunk(k, lanes.chunk).len as f32 / examples.len as f32;
                let grads = &chunk.lock().expect("a lane panicked").0;
                b.axpby(len, share, grads, if k == 0 { 0.0 } else { 1.0 }, &mut state.grads, false);
            }
            state.update(b, recipe.update());
        };
        let (state, running, update) = (&state, &running, &update);
        let mut runs: Vec<_> = lane_buffers(ws, stats, spare)
            .take(lanes.count)
            .enumerate()
            .map(|(lane, (ws, stats))| {
                move |b: &B| {
                    let params = state.read().expect("a lane panicked");
                    for k in (lane..count).step_by(lanes.count) {
                        let (chunk, mut slot) =
                            (examples.chunk(k, lanes.chunk), chunks[k].lock().expect("a lane panicked"));
                        chunk.gather(b, ws);
                        net.forward(b, &params.values, ws, chunk.len, recipe.label_smoothing, stats);
                        net.backward(b, &params.values, &mut slot.0, ws, chunk.len);
                        slot.1 = b.take_stats(stats);
                    }
                    drop(params);
                    if running.fetch_sub(1, Ordering::AcqRel) == 1 {
                        update(b);
                    }
                }
            })
            .collect();
        backend.run_lanes(&mut runs.iter_mut().map(|run| run as &mut (dyn FnMut(&B) + Send)).collect::<Vec<_>>());
    }

    /// Spare workspaces for `count` lanes in all, each for the chunks [`Backend::lanes`]
    /// gives the workspace's capacity.
    fn add_lanes(&mut self, count: usize) {
        let chunk = self.backend.lanes(self.ws.capacity).chunk;
        while self.lanes.len() + 1 < count {
            self.lanes.push((Workspace::new(&self.backend, &self.net, chunk), self.backend.new_stats()));
        }
    }

    /// Forward only, accumulating loss and accuracy.
    pub fn eval_batch(&mut self, batch: usize) {
        let Model { backend, net, state, ws, stats, .. } = self;
        backend.run(&mut |b| net.forward(b, &state.values, ws, batch, 0.0, stats));
    }

    /// Loss and accuracy over the first `len` images of `data` in `order`, forward only, in
    /// chunks on the backend's [`Lanes`](crate::backend::Lanes); with `logits`, each image's
    /// logits go there, `CLASSES` per image in order. The chunks' stats add up in chunk order,
    /// so the result does not depend on which lane took which chunk.
    pub fn evaluate(&mut self, data: &B::Data, order: &B::Idx, len: usize, logits: Option<&mut [f32]>) -> Stats {
        let lanes = self.backend.lanes(self.ws.capacity);
        self.add_lanes(lanes.count);
        self.take_stats();
        let outs = logits.into_iter().flat_map(|out| out[..len * CLASSES].chunks_mut(lanes.chunk * CLASSES));
        let outs = outs.map(Some).chain(std::iter::repeat_with(|| None));
        let queue = Mutex::new((0..len).step_by(lanes.chunk).zip(outs).enumerate());
        let done = Mutex::new(Vec::new());
        let Model { backend, net, state, ws, stats, lanes: spare, .. } = self;
        let (net, params) = (&*net, &state.values);
        let mut runs: Vec<_> = lane_buffers(ws, stats, spare)
            .take(lanes.count)
            .map(|(ws, stats)| {
                let (queue, done) = (&queue, &done);
                move |b: &B| loop {
                    // Its own statement, so that the lock is released before the chunk runs.
                    let next = queue.lock().expect("a lane panicked").next();
                    let Some((index, (start, out))) = next else { break };
                    let batch = lanes.chunk.min(len - start);
                    b.gather(data, order, start, batch, &mut ws.x, &mut ws.labels, None);
                    net.forward(b, params, ws, batch, 0.0, stats);
                    if let Some(out) = out {
                        out.copy_from_slice(&b.download(&ws.logits)[..batch * CLASSES]);
                    }
                    done.lock().expect("a lane panicked").push((index, b.take_stats(stats)));
                }
            })
            .collect();
        backend.run_lanes(&mut runs.iter_mut().map(|run| run as &mut (dyn FnMut(&B) + Send)).collect::<Vec<_>>());
        let mut done = done.into_inner().expect("a lane panicked");
        done.sort_by_key(|&(index, _)| index);
        done.into_iter().fold(Stats::default(), |sum, (_, chunk)| sum + chunk)
    }

    /// The backend, for a next model; this one's buffers are freed, and the steps the backend
    /// recorded on them forgotten.
    pub fn into_backend(self) -> B {
        self.backend.forget_steps();
        self.backend
    }

    pub fn take_stats(&mut self) -> Stats {
        self.backend.take_stats(&mut self.stats) + std::mem::take(&mut self.chunk_stats)
    }

    pub fn params(&self) -> Vec<f32> {
        self.backend.download(&self.state.values)
    }

    /// The L2 norm of each parameter tensor's gradient from the last step, in layout order.
    pub fn grad_norms(&self) -> Vec<f32> {
        let grads = self.backend.download(&self.state.grads);
        let norm = |g: &[f32]| g.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt() as f32;
        self.net.layout.tensors.iter().map(|t| norm(&grads[t.range()])).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    fn stage_len(acts: &StageActs<CpuBackend>) -> usize {
        let blocks: usize =
            acts.blocks.iter().map(|b| b.hidden.len() + b.out.len() + b.aux.as_ref().map_or(0, Vec::len)).sum();
        blocks + acts.scratch.d_hidden.len() + acts.scratch.d_aux.as_ref().map_or(0, Vec::len)
    }

    #[test]
    fn workspace_elements_counts_what_the_workspace_allocates() {
        let b = CpuBackend::new(1).unwrap();
        for block in [BlockKind::Original, BlockKind::ConvShortcut, BlockKind::Preact] {
            for (depth, capacity) in [(1, 7), (3, 2)] {
                let net = Net::build(Arch { block, depth });
                let ws = Workspace::new(&b, &net, capacity);
                let buffers = [&ws.x, &ws.c1, &ws.p1, &ws.c2, &ws.p2, &ws.logits, &ws.d_logits, &ws.d_stage2, &ws.d_c2];
                let rest = [&ws.d_stage1, &ws.d_c1].iter().map(|v| v.len()).sum::<usize>();
                let indices = ws.labels.len() + ws.argmax1.len() + ws.argmax2.len();
                let total = buffers.iter().map(|v| v.len()).sum::<usize>()
                    + rest
                    + indices
                    + stage_len(&ws.stage1)
                    + stage_len(&ws.stage2);
                assert_eq!(workspace_elements(&net, capacity), total, "{block:?} depth {depth}, capacity {capacity}");
            }
        }
    }
}
