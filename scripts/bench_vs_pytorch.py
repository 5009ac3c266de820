"""Side-by-side training/eval throughput of PyTorch and resnet-mnist.

Both sides train the same residual CNN with the same recipe (batch 64,
SGD lr 0.01 momentum 0.5, cross-entropy) on the full MNIST training set in a
shuffled order, and time an inference pass over the 10k test images.

    pip install torch safetensors numpy
    cargo build --release
    python3 scripts/bench_vs_pytorch.py [--threads 2] [--only torch|ours] [--device cuda]
                                        [--block preact --depth 10]
                                        [--torch-mode all|eager|channels-last|compile|compile-channels-last
                                                      |compile-cudagraphs]

PyTorch runs in each `--torch-mode` (default: all of them): eager on NCHW tensors, eager on
channels_last (oneDNN's blocked kernels on a CPU), and either under torch.compile (inductor;
compile time falls in the untimed warm-up); with --device cuda also torch.compile's CUDA
graphs (mode "reduce-overhead"). PyTorch keeps its defaults, TF32 convolutions on a GPU
included. Ours is compared with each, and with the fastest mode of
each phase, which is what a PyTorch user who cares about speed would run.

Each round runs ours, then each PyTorch mode followed by ours again, --repeats rounds: a
mode's ratio divides the mean of the two runs of ours around it, seconds away, so that a
shared machine whose speed drifts within minutes moves both alike; reported rates are
medians over the rounds, and a ratio is the median of each round's ratio. FLOP counts
include only convolution and linear multiply-adds (2 FLOPs per MAC, as the direct
convolution does them); a training step counts 3x the forward pass minus conv1's input
gradient, which is never computed. Once per run the script also times the machine's sgemm
(on a CPU numpy's `a @ b`, 2048^3, best of 5, on --threads threads; on a GPU torch's FP32
matmul with TF32 off, 8192^3, median of 10) and gives every GFLOP/s as a fraction of it.
"""

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from reference_model import (GPU_TORCH_MODES, LR, MOMENTUM, REPO_ROOT, TORCH_MODES, Net, VariantNet,
                             add_mnist_dir_argument, in_mode, load_mnist, memory_format, normalize)

BATCH = 64
PHASE_KEYS = ("train_images_per_s", "eval_images_per_s")


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
    p.add_argument("--torch-mode", choices=("all",) + GPU_TORCH_MODES, default="all",
                   help="PyTorch's configuration, or all of them in every round (default: %(default)s)")
    args = p.parse_args()
    modes = GPU_TORCH_MODES if args.device == "cuda" else TORCH_MODES
    if args.torch_mode not in ("all",) + modes:
        p.error(f"--torch-mode {args.torch_mode} needs --device cuda")
    args.torch_modes = modes if args.torch_mode == "all" else (args.torch_mode,)
    return args


def make_net(args):
    """The tutorial's Net for the reference network, else VariantNet."""
    return Net() if (args.block, args.depth) == ("original", 1) else VariantNet(args.block, args.depth)


# Run in a child process so that its thread count can be set before OpenBLAS starts.
SGEMM = """
import time
import numpy as np
a, b = (np.random.default_rng(i).random((2048, 2048), dtype=np.float32) for i in range(2))
times = []
for _ in range(5):
    t = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - t)
print(2 * 2048 ** 3 / min(times) / 1e9)
"""


def cuda_median_seconds(f, warmup=3, repeats=10):
    """The median time of `f()` on the GPU over `repeats` runs after `warmup`, timed with events."""
    times = []
    for i in range(warmup + repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        f()
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def gpu_sgemm_gflops():
    """The GPU's FP32 matmul rate (TF32 off), 8192^3, median of 10, in GFLOP/s. PyTorch's own
    setting is restored after: its side runs with its defaults."""
    default_tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
    a, b = (torch.rand(8192, 8192, device="cuda", generator=torch.Generator("cuda").manual_seed(i))
            for i in range(2))
    seconds = cuda_median_seconds(lambda: a @ b)
    torch.backends.cuda.matmul.allow_tf32 = default_tf32
    return 2 * 8192 ** 3 / seconds / 1e9


def sgemm_gflops(args):
    """The machine's sgemm rate in GFLOP/s: the GPU's with --device cuda, else numpy (OpenBLAS)
    `a @ b` at 2048^3, best of 5, on --threads threads."""
    if args.device == "cuda":
        return gpu_sgemm_gflops()
    threads = args.threads
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    result = subprocess.run([sys.executable, "-c", SGEMM], env=env, capture_output=True, text=True, check=True)
    return float(result.stdout.strip())


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
    """One PyTorch mode, set up and warmed up once; each call of `run` is one timed round."""

    def __init__(self, args, mode):
        torch.manual_seed(0)
        torch.set_num_threads(args.threads)
        self.args = args
        memory = memory_format(mode)
        self.x_train, self.y_train = load_split(args.mnist_dir, "train", args.device, memory)
        self.x_test, _ = load_split(args.mnist_dir, "t10k", args.device, memory)
        net, self.model = in_mode(make_net(args).to(args.device), mode)
        self.opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
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


def progress(round_index, side, rates):
    """One line per run on stderr, so that a run cut short still shows what it measured."""
    print(f"round {round_index + 1}: {side}: " + ", ".join(f"{k} {rates[k]:.0f}" for k in PHASE_KEYS),
          file=sys.stderr, flush=True)


def bench(args):
    """Rounds that take every PyTorch mode in turn, each between two runs of ours, so that
    every ratio compares runs a few seconds apart: the shared machine's speed drifts by up to
    2x within minutes, too fast for rounds of one run a side. Each round is {side: {phase key:
    images/s}}: ours is its runs' median, and "ours beside <mode>" the mean of the two runs
    around that mode, which is what the mode's ratio divides."""
    modes = args.torch_modes if args.only != "ours" else ()
    torch_sides = {}  # set up in the first round, so that a run cut short has measured something
    with_ours = args.only != "torch"
    rounds = []
    for _ in range(args.repeats):
        r, ours = {}, [run_ours(args)] if with_ours else []
        for mode in modes:
            if mode not in torch_sides:
                torch_sides[mode] = TorchBench(args, mode)
            r[mode] = torch_sides[mode].run()
            progress(len(rounds), f"torch {mode}", r[mode])
            if with_ours:
                ours.append(run_ours(args))
                progress(len(rounds), "ours", ours[-1])
                r[f"ours beside {mode}"] = {key: (ours[-2][key] + ours[-1][key]) / 2 for key in PHASE_KEYS}
        if with_ours:
            r["ours"] = {key: statistics.median(o[key] for o in ours) for key in PHASE_KEYS}
        rounds.append(r)
    return rounds


def machine_description(args):
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    parts = [cpu, f"{args.threads} threads", f"torch {torch.__version__}"]
    if args.device == "cuda":
        parts.append(torch.cuda.get_device_name())
    return ", ".join(parts)


def median_of(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio_of(rounds, key, mode):
    """The median over the rounds of ours / `mode` for `key` (ours from the runs around the
    mode's), and each round's ratio."""
    beside = f"ours beside {mode}"
    per_round = [r[beside][key] / r[mode][key] for r in rounds if beside in r]
    return median_of(per_round), per_round


def print_report(args, rounds, sgemm):
    fwd_flops, train_flops = flops_per_image(args)
    how = "torch FP32 8192^3" if args.device == "cuda" else "numpy 2048^3"
    print(f"machine: {machine_description(args)}; sgemm ({how}) {sgemm:.1f} GFLOP/s")
    print(f"{args.block} blocks, depth {args.depth}; device {args.device}, batch {BATCH}, {args.steps} train steps, "
          f"eval batch {args.eval_batch}, median of {args.repeats} rounds, each mode between two runs of ours")
    print(f"FLOPs/image: forward {fwd_flops / 1e6:.3f} M, training step {train_flops / 1e6:.3f} M")
    sides = [s for s in (*args.torch_modes, "ours") if s in rounds[0]]
    for phase, flops in (("train", train_flops), ("eval", fwd_flops)):
        key = f"{phase}_images_per_s"
        rates = {s: median_of(r[s][key] for r in rounds) for s in sides}
        torch_modes = [s for s in sides if s != "ours"]
        fastest = max(torch_modes, key=rates.get) if torch_modes else None
        print(f"\n{phase:38} {'images/s':>12} {'GFLOP/s':>8} {'of sgemm':>9} {'ours/it':>8}  per round")
        for s in sides:
            gflops = rates[s] * flops / 1e9
            ratio, per_round = ratio_of(rounds, key, s) if s != "ours" else (None, [])
            name = f"torch {s}" + (" (fastest)" if s == fastest else "") if s != "ours" else "ours"
            shown = f"{ratio:7.2f}x" if ratio is not None else " " * 8
            print(f"  {name:38} {rates[s]:10.1f} {gflops:8.1f} {100 * gflops / sgemm:8.0f}% {shown}  "
                  + " ".join(f"{x:.2f}" for x in per_round))
        if fastest and "ours" in sides:
            print(f"  ours / PyTorch's fastest {phase} mode ({fastest}): {ratio_of(rounds, key, fastest)[0]:.2f}x")


def main():
    args = parse_args()
    sgemm = sgemm_gflops(args)
    print_report(args, bench(args), sgemm)


if __name__ == "__main__":
    main()
