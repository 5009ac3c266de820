"""Generate tests/fixtures/reference.safetensors, the PyTorch ground truth for resnet-mnist.

Run (not part of CI; the generated file is committed):

    pip install torch safetensors numpy && python3 scripts/make_reference.py [--mnist-dir DIR]

The output is deterministic: fixed seed, float32, one thread, deterministic
algorithms. See tests/fixtures/README.md for the keys it writes.
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from reference_model import LR, MOMENTUM, REPO_ROOT, Net, add_mnist_dir_argument, load_mnist, normalize

BATCH = 8
SEED = 0


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mnist_dir_argument(p)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "tests/fixtures/reference.safetensors",
                   help="output safetensors file (default: %(default)s)")
    return p.parse_args()


def make_deterministic():
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def load_batches(mnist_dir):
    """The first 2*BATCH training images, as two batches (x normalized float32, y int64)."""
    images, labels = load_mnist(mnist_dir, "train")
    x = torch.from_numpy(normalize(images[:2 * BATCH]).copy())
    y = torch.from_numpy(labels[:2 * BATCH].astype("int64"))
    return [(x[i:i + BATCH], y[i:i + BATCH]) for i in (0, BATCH)]


def capture_activations(model, acts):
    """Record each stage's output: a residual block's input is the preceding conv+relu+pool output."""
    def hook(prefix_in, prefix_out):
        def record(_module, inputs, output):
            acts[prefix_in] = inputs[0].detach().clone()
            acts[prefix_out] = output.detach().clone()
        return record

    return [model.rblock1.register_forward_hook(hook("act.conv1", "act.rblock1")),
            model.rblock2.register_forward_hook(hook("act.conv2", "act.rblock2"))]


def initial_pass(model, x, y):
    """Forward + backward on one batch from the initial weights: logits, loss, activations, grads."""
    out = {}
    handles = capture_activations(model, out)
    logits = model(x)
    for h in handles:
        h.remove()
    loss = F.cross_entropy(logits, y)
    loss.backward()
    out["batch0.logits"] = logits.detach()
    out["batch0.loss"] = loss.detach().reshape(1)
    out.update({f"grad.{n}": p.grad.detach().clone() for n, p in model.named_parameters()})
    model.zero_grad(set_to_none=True)
    return out


def two_sgd_steps(model, batches):
    """Two SGD steps (batch0 then batch1); returns the parameters and momentum buffers afterwards."""
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    out = {}
    for n, p in model.named_parameters():
        out[f"step2.{n}"] = p.detach().clone()
        out[f"step2.momentum.{n}"] = opt.state[p]["momentum_buffer"].clone()
    return out


def main():
    args = parse_args()
    make_deterministic()
    model = Net()
    batches = load_batches(args.mnist_dir)

    tensors = {f"param.{n}": t.clone() for n, t in model.state_dict().items()}
    for i, (x, y) in enumerate(batches):
        tensors[f"batch{i}.x"] = x
        tensors[f"batch{i}.y"] = y
    tensors.update(initial_pass(model, *batches[0]))
    tensors.update(two_sgd_steps(model, batches))

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {"torch_version": torch.__version__, "seed": str(SEED), "batch": str(BATCH),
                "lr": str(LR), "momentum": str(MOMENTUM)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=metadata)
    print(f"wrote {len(tensors)} tensors to {args.out} ({args.out.stat().st_size / 1024:.0f} KiB), "
          f"batch0 loss {tensors['batch0.loss'].item():.6f}")


if __name__ == "__main__":
    main()
