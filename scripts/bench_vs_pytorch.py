"""Side-by-side training/eval throughput of PyTorch and resnet-mnist.

Both sides train the same residual CNN with the same recipe (batch 64,
SGD lr 0.01 momentum 0.5, cross-entropy) on the full MNIST training set in a
shuffled order, and time an inference pass over the 10k test images.

    pip install torch safetensors numpy
    cargo build --release
    python3 scripts/bench_vs_pytorch.py [--threads 2] [--only torch|ours] [--device cuda]
                                        [--block preact --depth 10]
                                        [--torch-mode eager|channels-last|compiled]

PyTorch runs eager on NCHW tensors by default; `channels-last` converts the model and the
data to channels_last, and `compiled` also wraps the model in torch.compile (its compile
time falls in the untimed warm-up).

The two sides run in turn, --repeats rounds each, so that both meet the same
phases of a shared machine; reported rates are medians over the rounds, and
the ratio is the median of each round's ratio. FLOP counts include
only convolution and linear multiply-adds (2 FLOPs per MAC); a training step
counts 3x the forward pass minus conv1's input gradient, which is never
computed.
"""

import argparse
import itertools
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from reference_model import (LR, MOMENTUM, REPO_ROOT, Net, VariantNet, add_mnist_dir_argument, load_mnist,
                             normalize)

BATCH = 64


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mnist_dir_argument(p)
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="CPU threads for both sides (default: %(default)s)")
    p.add_argument("--steps", type=int, default=300, help="timed training steps per run (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=20, help="untimed PyTorch warm-up steps (default: %(default)s)")
    p.add_argument("--eval-batch", type=int, default=1000, help="batch size of the eval pass (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed rounds, each side in turn; medians are reported (default: %(default)s)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device for both sides (default: cpu)")
    p.add_argument("--bin", type=Path, default=REPO_ROOT / "target/release/resnet-mnist",
                   help="resnet-mnist binary (default: target/release/resnet-mnist)")
    p.add_argument("--only", choices=["torch", "ours"], help="run only one side")
    p.add_argument("--block", choices=["original", "plain", "relu-before-add", "preact", "scaled", "conv-shortcut"],
                   default="original", help="residual unit of both sides (default: %(default)s)")
    p.add_argument("--depth", type=int, default=1, help="blocks per stage (default: %(default)s, the reference)")
    p.add_argument("--torch-mode", choices=["eager", "channels-last", "compiled"], default="eager",
                   help="PyTorch's configuration (default: %(default)s)")
    return p.parse_args()


def make_net(args):
    """The tutorial's Net for the reference network in eager mode, else VariantNet (which is
    Net at original/1, with the `flatten` that channels_last tensors need for Net's `view`)."""
    reference = (args.block, args.depth) == ("original", 1) and args.torch_mode == "eager"
    return Net() if reference else VariantNet(args.block, args.depth)


def memory_format(args):
    return torch.contiguous_format if args.torch_mode == "eager" else torch.channels_last


def layer_macs(model):
    """Multiply-accumulates per image of every Conv2d/Linear layer, by module name."""
    macs = {}

    def hook(name):
        def record(module, _inputs, output):
            per_output = module.weight[0].numel()  # in_channels/groups * kh * kw, or in_features
            macs[name] = output[0].numel() * per_output
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    for h in handles:
        h.remove()
    return macs


def flops_per_image(args):
    """(forward FLOPs, training-step FLOPs) per image."""
    macs = layer_macs(make_net(args))
    forward = 2 * sum(macs.values())
    return forward, 3 * forward - 2 * macs["conv1"]


def load_split(mnist_dir, split, device, memory=torch.contiguous_format):
    images, labels = load_mnist(mnist_dir, split)
    x = torch.from_numpy(normalize(images).copy()).to(device).contiguous(memory_format=memory)
    y = torch.from_numpy(labels.astype("int64")).to(device)
    return x, y


def shuffled_batches(n, device, seed=0):
    """Endless index batches over a fresh permutation of range(n) each epoch; partial batches dropped."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen).to(device)
        for i in range(0, n - BATCH + 1, BATCH):
            yield perm[i:i + BATCH]


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def train_rate(model, opt, x, y, order, steps, device):
    """Run `steps` SGD steps and return training images/s."""
    model.train()
    synchronize(device)
    start = time.perf_counter()
    for idx in itertools.islice(order, steps):
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    synchronize(device)
    return steps * BATCH / (time.perf_counter() - start)


@torch.no_grad()
def eval_rate(model, x, eval_batch, device):
    """Run inference over all of x and return images/s."""
    model.eval()
    synchronize(device)
    start = time.perf_counter()
    for i in range(0, len(x), eval_batch):
        model(x[i:i + eval_batch])
    synchronize(device)
    return len(x) / (time.perf_counter() - start)


class TorchBench:
    """The PyTorch side, set up and warmed up once; each call of `run` is one timed round."""

    def __init__(self, args):
        torch.manual_seed(0)
        torch.set_num_threads(args.threads)
        self.args = args
        memory = memory_format(args)
        self.x_train, self.y_train = load_split(args.mnist_dir, "train", args.device, memory)
        self.x_test, _ = load_split(args.mnist_dir, "t10k", args.device, memory)
        net = make_net(args).to(args.device).to(memory_format=memory)
        self.opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
        self.model = torch.compile(net) if args.torch_mode == "compiled" else net
        self.order = shuffled_batches(len(self.x_train), args.device)
        train_rate(self.model, self.opt, self.x_train, self.y_train, self.order, args.warmup, args.device)
        eval_rate(self.model, self.x_test[:args.eval_batch], args.eval_batch, args.device)

    def run(self):
        a = self.args
        return {"train_images_per_s": train_rate(self.model, self.opt, self.x_train, self.y_train, self.order,
                                                 a.steps, a.device),
                "eval_images_per_s": eval_rate(self.model, self.x_test, a.eval_batch, a.device)}


def run_ours(args):
    """One timed round of this project's `bench` command (it warms up on its own)."""
    if not args.bin.exists():
        raise SystemExit(f"{args.bin} not found: run `cargo build --release` first (or pass --bin)")
    cmd = [str(args.bin), "bench", "--device", args.device, "--threads", str(args.threads),
           "--steps", str(args.steps), "--eval-batch", str(args.eval_batch), "--repeats", "1",
           "--block", args.block, "--depth", str(args.depth), "--json", "--data-dir", str(args.mnist_dir)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {result.returncode}:\n{result.stderr}")
    json_lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not json_lines:
        raise SystemExit(f"no JSON line in the output of {' '.join(cmd)}:\n{result.stdout}")
    return json.loads(json_lines[-1])


def bench(args):
    """Rounds of both sides taken in turn, so that both meet the same phases of a shared,
    noisy machine; the ratio reported is the median of each round's ratio."""
    torch_side = TorchBench(args) if args.only != "ours" else None
    rounds = []
    for _ in range(args.repeats):
        t = torch_side.run() if torch_side else {}
        o = run_ours(args) if args.only != "torch" else {}
        rounds.append((t, o))
    return rounds


def machine_description(args):
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    parts = [cpu, f"{args.threads} threads", f"torch {torch.__version__} ({args.torch_mode})"]
    if args.device == "cuda":
        parts.append(torch.cuda.get_device_name())
    return ", ".join(parts)


def fmt(value, width, decimals):
    return "-".rjust(width) if value is None else f"{value:{width}.{decimals}f}"


def median_of(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def print_report(args, rounds):
    fwd_flops, train_flops = flops_per_image(args)
    print(f"machine: {machine_description(args)}")
    print(f"{args.block} blocks, depth {args.depth}; device {args.device}, batch {BATCH}, {args.steps} train steps, eval batch {args.eval_batch}, "
          f"median of {args.repeats} rounds, the two sides in turn")
    print(f"FLOPs/image: forward {fwd_flops / 1e6:.3f} M, training step {train_flops / 1e6:.3f} M")
    print()
    print(f"{'':6} {'PyTorch img/s':>14} {'ours img/s':>12} {'ours/torch':>10} "
          f"{'PyTorch GFLOP/s':>16} {'ours GFLOP/s':>13}")
    for phase, flops in (("train", train_flops), ("eval", fwd_flops)):
        key = f"{phase}_images_per_s"
        t = median_of(r[0].get(key) for r in rounds)
        o = median_of(r[1].get(key) for r in rounds)
        ratio = median_of(r[1][key] / r[0][key] if key in r[0] and key in r[1] else None for r in rounds)
        print(f"{phase:6} {fmt(t, 14, 1)} {fmt(o, 12, 1)} {fmt(ratio, 10, 2)} "
              f"{fmt(t and t * flops / 1e9, 16, 2)} {fmt(o and o * flops / 1e9, 13, 2)}")
    if args.only is None and len(rounds) > 1:
        for phase in ("train", "eval"):
            key = f"{phase}_images_per_s"
            ratios = " ".join(f"{o[key] / t[key]:.2f}" for t, o in rounds)
            print(f"{phase} ratio per round: {ratios}")


def main():
    args = parse_args()
    print_report(args, bench(args))


if __name__ == "__main__":
    main()
