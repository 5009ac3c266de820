//! The ops the model is written against. Each backend (CPU here, CUDA behind the `cuda`
//! feature) implements them over its own storage; tests compare backends op by op.
//!
//! Tensors are NCHW `f32`. Parameters, gradients and optimizer moments each live in one flat buffer;
//! a layer finds its weight and bias there through a [`ParamSlot`].

use crate::augment::Augmentation;

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

/// Where one layer's parameters sit in the flat parameter buffer: the weight, then the bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamSlot {
    pub offset: usize,
    pub weight_len: usize,
    pub bias_len: usize,
}

impl ParamSlot {
    pub fn len(&self) -> usize {
        self.weight_len + self.bias_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn weight(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.weight_len
    }

    pub fn bias(&self) -> std::ops::Range<usize> {
        let start = self.offset + self.weight_len;
        start..start + self.bias_len
    }
}

/// A stride-1 square convolution with symmetric zero padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub pad: usize,
}

impl ConvShape {
    pub fn h_out(&self) -> usize {
        self.height + 2 * self.pad + 1 - self.kernel
    }

    pub fn w_out(&self) -> usize {
        self.width + 2 * self.pad + 1 - self.kernel
    }

    /// Elements of one image's input, and of the whole batch.
    pub fn in_image(&self) -> usize {
        self.c_in * self.height * self.width
    }

    pub fn in_len(&self) -> usize {
        self.batch * self.in_image()
    }

    pub fn out_image(&self) -> usize {
        self.c_out * self.h_out() * self.w_out()
    }

    pub fn out_len(&self) -> usize {
        self.batch * self.out_image()
    }

    /// Length of one filter: the GEMM reduction dimension.
    pub fn patch(&self) -> usize {
        self.c_in * self.kernel * self.kernel
    }

    pub fn weight_len(&self) -> usize {
        self.c_out * self.patch()
    }

    /// Multiply-adds of the forward pass over the batch.
    pub fn macs(&self) -> usize {
        self.out_len() * self.patch()
    }

    /// The 2×2 max-pool over this convolution's output.
    pub fn pool(&self) -> PoolShape {
        PoolShape { batch: self.batch, channels: self.c_out, height: self.h_out(), width: self.w_out() }
    }
}

/// A 2×2, stride-2 max-pool over `channels` planes of `height × width` per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl PoolShape {
    /// Elements of one input plane, and of one output plane (a last odd row or column is
    /// left out).
    pub fn in_plane(&self) -> usize {
        self.height * self.width
    }

    pub fn out_plane(&self) -> usize {
        (self.height / 2) * (self.width / 2)
    }

    pub fn in_len(&self) -> usize {
        self.batch * self.channels * self.in_plane()
    }

    pub fn out_len(&self) -> usize {
        self.batch * self.channels * self.out_plane()
    }
}

/// A fully connected layer `y = x·Wᵀ + b`, with `W` stored `[outputs, inputs]` as in PyTorch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    pub batch: usize,
    pub inputs: usize,
    pub outputs: usize,
}

/// SGD's part of an update that stays the same over a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdUpdate {
    pub nesterov: bool,
    pub weight_decay: f32,
}

/// Adam's part of an update that stays the same over a run; `l2` is Adam's weight decay
/// (added to the gradient), 0 for AdamW, whose decoupled decay is [`StepScalars::decay`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamUpdate {
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    pub l2: f32,
}

/// The optimizer update of every step of a run, with PyTorch's semantics (see
/// [`crate::recipe::OptimizerKind`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Update {
    Sgd(SgdUpdate),
    Adam(AdamUpdate),
}

/// What changes from one optimizer step to the next, in a small buffer that the update
/// reads on the device: so a recorded step replays with the next step's learning rate.
/// `kernels/optimizer.cu` declares the same struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepScalars {
    pub lr: f32,
    /// SGD's μ, or Adam's β1.
    pub momentum: f32,
    /// SGD: 1 at the first step, whose momentum buffer becomes the gradient.
    pub first: f32,
    /// AdamW: `1 − lr·weight_decay`, the decoupled decay; 1 for Adam.
    pub decay: f32,
    /// Adam: `1 − β1`, the weight of `m.lerp_(g, 1 − β1)`.
    pub lerp_weight: f32,
    /// Adam: `lr / (1 − β1ᵗ)`.
    pub step_size: f32,
    /// Adam: `√(1 − β2ᵗ)`.
    pub bias2_sqrt: f32,
}

impl StepScalars {
    pub const LEN: usize = 7;

    pub fn to_array(self) -> [f32; Self::LEN] {
        let StepScalars { lr, momentum, first, decay, lerp_weight, step_size, bias2_sqrt } = self;
        [lr, momentum, first, decay, lerp_weight, step_size, bias2_sqrt]
    }

    pub fn from_slice(s: &[f32]) -> Self {
        let [lr, momentum, first, decay, lerp_weight, step_size, bias2_sqrt] =
            s[..Self::LEN].try_into().expect("the scalars buffer holds StepScalars::LEN floats");
        StepScalars { lr, momentum, first, decay, lerp_weight, step_size, bias2_sqrt }
    }
}

/// What identifies a training step's sequence of ops to a backend that records and replays
/// it: the batch size, the update and the label smoothing. Everything else that changes
/// between steps (the batch itself, parameters, the [`StepScalars`]) lives in buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StepKey {
    batch: usize,
    constants: [u32; 6],
}

impl StepKey {
    pub fn new(batch: usize, update: Update, smoothing: f32) -> Self {
        let constants = match update {
            Update::Sgd(u) => [0, u.nesterov.into(), u.weight_decay.to_bits(), 0, 0, smoothing.to_bits()],
            Update::Adam(u) => [
                1,
                u.beta2.to_bits(),
                u.one_minus_beta2.to_bits(),
                u.eps.to_bits(),
                u.l2.to_bits(),
                smoothing.to_bits(),
            ],
        };
        StepKey { batch, constants }
    }
}

/// How a backend best runs a batch ([`Backend::lanes`]): `count` lanes at once, each taking
/// `chunk` images at a time through the whole network (forward only, or forward and backward
/// for a training batch split into chunks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lanes {
    pub count: usize,
    pub chunk: usize,
}

/// Running sums a backend accumulates on its own side of the bus, read when printed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// Sum of per-example cross-entropy losses.
    pub loss_sum: f64,
    /// Examples whose arg-max logit equals the label.
    pub correct: u64,
}

impl std::ops::Add for Stats {
    type Output = Stats;

    fn add(self, other: Stats) -> Stats {
        Stats { loss_sum: self.loss_sum + other.loss_sum, correct: self.correct + other.correct }
    }
}

/// A device that stopped working after it started (a lost GPU, a failing kernel, memory
/// exhausted): what it computed since is not to be trusted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DeviceFailure(pub String);

/// The ops a model is built from. Buffers are owned by the backend; the model only holds them.
pub trait Backend {
    /// `f32` storage. `Sync`, so that [`Backend::run_lanes`]' lanes can share parameters.
    type Buf: Send + Sync;
    /// `u32` storage: labels, shuffled orders and max-pool arg-maxes.
    type Idx: Send + Sync;
    /// A data set's images (`u8`, 784 per image) and labels, resident where the ops run.
    type Data: Sync;
    /// The accumulator behind [`Stats`].
    type StatsBuf: Send;

    fn name(&self) -> String;

    fn zeros(&self, len: usize) -> Self::Buf;
    fn zeros_idx(&self, len: usize) -> Self::Idx;
    fn upload(&self, src: &[f32]) -> Self::Buf;
    fn upload_idx(&self, src: &[u32]) -> Self::Idx;
    fn upload_data(&self, images: &[u8], labels: &[u8]) -> Self::Data;
    fn download(&self, src: &Self::Buf) -> Vec<f32>;
    fn new_stats(&self) -> Self::StatsBuf;
    /// Reads the accumulated stats and resets them to zero.
    fn take_stats(&self, stats: &mut Self::StatsBuf) -> Stats;

    /// Copies `src` into the start of `dst`.
    fn write(&self, dst: &mut Self::Buf, src: &[f32]);

    /// Gathers examples `order[start..start + count]` into normalized images `x`
    /// (`(p/255 − mean)/std`) and their labels; with `augment`, each image is first
    /// transformed as [`crate::augment`] describes.
    #[allow(clippy::too_many_arguments)]
    fn gather(
        &self,
        data: &Self::Data,
        order: &Self::Idx,
        start: usize,
        count: usize,
        x: &mut Self::Buf,
        labels: &mut Self::Idx,
        augment: Option<&Augmentation>,
    );

    /// `y = conv(x, W) + b`, then ReLU when `relu`.
    fn conv2d_forward(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        params: &Self::Buf,
        slot: ParamSlot,
        y: &mut Self::Buf,
        relu: bool,
    );
    /// `y = relu(conv(x, W) + b + skip)`: the convolution that closes a residual join.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_add_relu_forward(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        params: &Self::Buf,
        slot: ParamSlot,
        skip: &Self::Buf,
        y: &mut Self::Buf,
    ) {
        self.conv2d_forward(s, x, params, slot, y, false);
        self.axpby(s.out_len(), 1.0, skip, 1.0, y, true);
    }
    /// `relu(conv(x, W) + b)`, max-pooled into `pooled` and `argmax` as
    /// [`Backend::maxpool_forward`] does. `y` is the convolution's output on the way, which
    /// nothing reads afterwards: a backend that fuses the two may leave it unwritten.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_relu_maxpool_forward(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        params: &Self::Buf,
        slot: ParamSlot,
        y: &mut Self::Buf,
        pooled: &mut Self::Buf,
        argmax: &mut Self::Idx,
    ) {
        self.conv2d_forward(s, x, params, slot, y, true);
        self.maxpool_forward(&s.pool(), y, pooled, argmax);
    }
    /// `dx (+)= conv_transpose(dy, W)`; adds into `dx` when `accumulate`.
    fn conv2d_backward_data(
        &self,
        s: &ConvShape,
        dy: &Self::Buf,
        params: &Self::Buf,
        slot: ParamSlot,
        dx: &mut Self::Buf,
        accumulate: bool,
    );
    /// Writes the weight and bias gradients of the layer at `slot` into `grads`.
    fn conv2d_backward_params(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        grads: &mut Self::Buf,
        slot: ParamSlot,
    );
    /// [`Backend::conv2d_backward_params`] of a convolution whose output was max-pooled, from
    /// the gradient of the pooled output: the pool's backward ([`Backend::maxpool_backward`]
    /// over `argmax`) then the filter gradient. `dy` is the full-size gradient on the way,
    /// which nothing reads afterwards: a backend that fuses the two may leave it unwritten.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_maxpool_backward_params(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        d_pooled: &Self::Buf,
        argmax: &Self::Idx,
        dy: &mut Self::Buf,
        grads: &mut Self::Buf,
        slot: ParamSlot,
    ) {
        self.maxpool_backward(&s.pool(), d_pooled, argmax, dy);
        self.conv2d_backward_params(s, x, dy, grads, slot);
    }

    /// `dy *= (y > 0)` over the first `len` elements, the backward of a ReLU whose output was
    /// `y`. Also the backward of a residual join `relu(a + b)`: the masked gradient flows
    /// unchanged into both `a` and `b`.
    fn relu_backward(&self, len: usize, y: &Self::Buf, dy: &mut Self::Buf);
    /// `y = alpha·a + beta·y` over the first `len` elements, then ReLU when `relu`: the residual
    /// joins and the gradient sums of their backward. With `beta = 0`, `y` is written without
    /// being read, which makes this a copy (or a ReLU) of `a`.
    fn axpby(&self, len: usize, alpha: f32, a: &Self::Buf, beta: f32, y: &mut Self::Buf, relu: bool);
    /// `y *= alpha` over the first `len` elements.
    fn scale(&self, len: usize, alpha: f32, y: &mut Self::Buf);

    fn maxpool_forward(&self, s: &PoolShape, x: &Self::Buf, y: &mut Self::Buf, argmax: &mut Self::Idx);
    /// Routes `dy` to the arg-max of each window; every other element of `dx` becomes zero.
    fn maxpool_backward(&self, s: &PoolShape, dy: &Self::Buf, argmax: &Self::Idx, dx: &mut Self::Buf);

    fn linear_forward(&self, s: &LinearShape, x: &Self::Buf, params: &Self::Buf, slot: ParamSlot, y: &mut Self::Buf);
    fn linear_backward_data(
        &self,
        s: &LinearShape,
        dy: &Self::Buf,
        params: &Self::Buf,
        slot: ParamSlot,
        dx: &mut Self::Buf,
    );
    fn linear_backward_params(
        &self,
        s: &LinearShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        grads: &mut Self::Buf,
        slot: ParamSlot,
    );

    /// Softmax cross-entropy over `classes` logits per example, against targets smoothed as
    /// `CrossEntropyLoss(label_smoothing=smoothing)` smooths them (`(1 − ε)·onehot + ε/classes`):
    /// writes the gradient of the batch-mean loss into `dlogits` and adds the loss sum and
    /// correct count to `stats`.
    #[allow(clippy::too_many_arguments)]
    fn softmax_cross_entropy(
        &self,
        batch: usize,
        classes: usize,
        smoothing: f32,
        logits: &Self::Buf,
        labels: &Self::Idx,
        dlogits: &mut Self::Buf,
        stats: &mut Self::StatsBuf,
    );

    /// One SGD update over the whole flat parameter buffer, with the [`StepScalars`] in
    /// `scalars` (torch.optim.SGD, see [`crate::recipe::OptimizerKind::Sgd`]).
    fn sgd_step(
        &self,
        update: SgdUpdate,
        scalars: &Self::Buf,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        momentum: &mut Self::Buf,
    );
    /// One Adam or AdamW update over the whole flat parameter buffer, with its first and
    /// second moments `m` and `v` (torch.optim.Adam, see [`crate::recipe::OptimizerKind::Adam`]).
    #[allow(clippy::too_many_arguments)]
    fn adam_step(
        &self,
        update: AdamUpdate,
        scalars: &Self::Buf,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
    );

    /// Runs `ops`, a sequence of this backend's ops (a forward pass, say). The CPU backend
    /// runs them on a thread of its pool, so that each op's parallel loop forks right there
    /// instead of waking the pool from outside and sleeping until the op is done.
    fn run(&self, ops: &mut (dyn FnMut(&Self) + Send)) {
        ops(self);
    }

    /// Runs `step`, the ops of one training step (forward, backward, update), like
    /// [`Backend::run`]. A backend may record them the first times a `key` is seen and later
    /// replay the recording instead of calling `step` (the CUDA backend captures a CUDA graph).
    fn run_step(&self, key: StepKey, step: &mut (dyn FnMut(&Self) + Send)) {
        let _ = key;
        self.run(step);
    }

    /// How [`Backend::run_lanes`] best takes batches of up to `batch` images. By default, one
    /// lane takes whole batches, which a training step then runs as one.
    fn lanes(&self, batch: usize) -> Lanes {
        Lanes { count: 1, chunk: batch }
    }

    /// Runs each of `lanes`, sequences of ops like [`Backend::run`]'s, at once where the
    /// backend can ([`Backend::lanes`]' count of them); by default one after the other.
    fn run_lanes(&self, lanes: &mut [&mut (dyn FnMut(&Self) + Send)]) {
        for lane in lanes {
            self.run(*lane);
        }
    }

    /// The first failure of the device since it started, if any. After one, ops do nothing
    /// and reads return zeros, so callers check this before they save or print results.
    fn failure(&self) -> Result<(), DeviceFailure> {
        Ok(())
    }
    /// Forgets every step [`Backend::run_step`] recorded, because the buffers they ran on are
    /// about to be freed.
    fn forget_steps(&self) {}
}
