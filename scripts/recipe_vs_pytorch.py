"""Wall time and test accuracy of a training recipe, resnet-mnist next to PyTorch, on one machine.

Both sides train the reference network with the same recipe from scratch on the full MNIST
training set, data resident in memory, and test it on the 10k test images after every epoch:
- fast: AdamW (lr 4e-3, weight decay 1e-4), batch 64, OneCycleLR over the run, label
  smoothing 0.1, 1 epoch;
- best: the same with batch 128, lr 3e-3, per-example RandomAffine(10, (0.1, 0.1), (0.9, 1.1)) and 20
  epochs (PyTorch side: one batched affine_grid + grid_sample per batch, its fastest way).

PyTorch runs in `--torch-mode`: eager (NCHW), channels-last, compile (torch.compile) or
compile-channels-last (the default; compile time is part of its wall time, and is reported
apart as well). Seeds alternate between the two sides so that both meet the same
phases of a shared machine. Wall time runs from the process start to the last printed
accuracy.

    pip install torch torchvision numpy
    cargo build --release
    python3 scripts/recipe_vs_pytorch.py --recipe fast --seeds 0,1,2 [--torch-mode channels-last] [--threads 2]
"""

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reference_model import REPO_ROOT, TORCH_MODES, add_mnist_dir_argument

RECIPES = {
    "fast": dict(lr=4e-3, weight_decay=1e-4, batch=64, smoothing=0.1, epochs=1, augment=False),
    "best": dict(lr=3e-3, weight_decay=1e-4, batch=128, smoothing=0.1, epochs=20, augment=True),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mnist_dir_argument(p)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="fast")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one run per side each")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for both sides")
    p.add_argument("--torch-mode", choices=TORCH_MODES, default="compile-channels-last")
    p.add_argument("--bin", type=Path, default=REPO_ROOT / "target/release/resnet-mnist")
    p.add_argument("--only", choices=["torch", "ours"], help="run only one side")
    p.add_argument("--torch-run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args()


def torch_run(args):
    """One PyTorch training run in this process; prints one JSON line."""
    started = time.perf_counter()
    import torch
    import torch.nn.functional as F

    from reference_model import Net, in_mode, load_mnist, memory_format, normalize

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    r = dict(RECIPES[args.recipe])
    if args.epochs:
        r["epochs"] = args.epochs
    images, labels = load_mnist(args.mnist_dir, "train")
    x = torch.from_numpy(images.copy()).to(torch.float32).div_(255).unsqueeze(1)
    y = torch.from_numpy(labels.astype("int64"))
    test_images, test_labels = load_mnist(args.mnist_dir, "t10k")
    tx = torch.from_numpy(normalize(test_images).copy())
    ty = torch.from_numpy(test_labels.astype("int64"))
    memory = memory_format(args.torch_mode)
    tx = tx.contiguous(memory_format=memory)
    model, forward = in_mode(Net(), args.torch_mode)
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    steps_per_epoch = math.ceil(len(y) / r["batch"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r["lr"], total_steps=r["epochs"] * steps_per_epoch)
    mean, std = 0.1307, 0.3081

    def augment(xb):
        n = xb.shape[0]
        angle = torch.empty(n).uniform_(-10, 10).deg2rad_()
        shift = torch.empty(n, 2).uniform_(-2.8, 2.8).round_()
        scale = torch.empty(n).uniform_(0.9, 1.1)
        cos, sin = angle.cos() / scale, angle.sin() / scale
        # torchvision's inverse matrix, in grid_sample's normalized coordinates (side 28).
        theta = torch.stack([torch.stack([cos, sin, -(cos * shift[:, 0] + sin * shift[:, 1]) / 14], 1),
                             torch.stack([-sin, cos, -(-sin * shift[:, 0] + cos * shift[:, 1]) / 14], 1)], 1)
        grid = F.affine_grid(theta, list(xb.shape), align_corners=False)
        return F.grid_sample(xb, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    reports, compile_s = [], None
    for epoch in range(r["epochs"]):
        order = torch.randperm(len(y))
        epoch_started = time.perf_counter()
        for i, start in enumerate(range(0, len(y), r["batch"])):
            idx = order[start:start + r["batch"]]
            xb = x[idx]
            if r["augment"]:
                xb = augment(xb)
            xb = ((xb - mean) / std).contiguous(memory_format=memory)
            step_started = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(forward(xb), y[idx], label_smoothing=r["smoothing"]).backward()
            opt.step()
            sched.step()
            if epoch == 0 and i == 0:
                compile_s = time.perf_counter() - step_started
        train_s = time.perf_counter() - epoch_started
        correct = 0
        with torch.no_grad():
            for start in range(0, len(ty), 1000):
                correct += (forward(tx[start:start + 1000]).argmax(1) == ty[start:start + 1000]).sum().item()
        reports.append(dict(epoch=epoch + 1, accuracy=100 * correct / len(ty), train_s=train_s))
    print(json.dumps(dict(side="torch", mode=args.torch_mode, seed=args.seed, reports=reports,
                          first_step_s=compile_s, wall_s=time.perf_counter() - started)))


def run_torch(args, seed):
    cmd = [sys.executable, __file__, "--torch-run", "--recipe", args.recipe, "--seed", str(seed),
           "--threads", str(args.threads), "--torch-mode", args.torch_mode, "--mnist-dir", str(args.mnist_dir)]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_ours(args, seed):
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(args.bin), "train", "--recipe", args.recipe, "--seed", str(seed), "--device", "cpu",
               "--threads", str(args.threads), "--data-dir", str(args.mnist_dir), "--offline", "--quiet",
               "--out", tmp]
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        reports, last = [], started
        for line in proc.stdout:
            m = re.search(r"Accuracy on test set: ([\d.]+) %  \(epoch (\d+): ([\d.]+) s", line)
            if m:
                last = time.perf_counter()
                reports.append(dict(epoch=int(m.group(2)), accuracy=float(m.group(1)), train_s=float(m.group(3))))
        if proc.wait() != 0:
            raise SystemExit(f"resnet-mnist exited with {proc.returncode}")
        return dict(side="ours", seed=seed, reports=reports, wall_s=last - started)


def summary(name, runs):
    walls = [r["wall_s"] for r in runs]
    first = [r["reports"][0]["accuracy"] for r in runs]
    last = [r["reports"][-1]["accuracy"] for r in runs]
    best = [max(e["accuracy"] for e in r["reports"]) for r in runs]
    line = (f"{name:28} wall {statistics.median(walls):7.1f} s (median of {len(runs)})  "
            f"epoch 1: {', '.join(f'{a:.2f}' for a in first)} %  best: {statistics.median(best):.2f} %  "
            f"last: {statistics.median(last):.2f} %")
    if runs and runs[0].get("first_step_s") is not None:
        line += f"  first step (compile) {statistics.median(r['first_step_s'] for r in runs):.1f} s"
    return line


def main():
    args = parse_args()
    if args.torch_run:
        return torch_run(args)
    seeds = [int(s) for s in args.seeds.split(",")]
    ours, theirs = [], []
    for seed in seeds:
        if args.only != "torch":
            ours.append(run_ours(args, seed))
            print(json.dumps(ours[-1]), flush=True)
        if args.only != "ours":
            theirs.append(run_torch(args, seed))
            print(json.dumps(theirs[-1]), flush=True)
    print(f"\nrecipe {args.recipe}, {args.threads} threads, {os.uname().machine}, seeds {seeds}")
    if ours:
        print(summary("resnet-mnist (cpu)", ours))
    if theirs:
        print(summary(f"PyTorch {args.torch_mode}", theirs))
    if ours and theirs:
        ratio = statistics.median(t["wall_s"] / o["wall_s"] for o, t in zip(ours, theirs))
        print(f"PyTorch wall time / ours: {ratio:.2f}x (median of per-seed ratios)")


if __name__ == "__main__":
    main()
