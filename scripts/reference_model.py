"""Reference PyTorch model, MNIST IDX reader and input normalization.

The two model classes are the PyTorch tutorial's, unchanged; resnet-mnist
reimplements exactly this network and training recipe. Shared by
make_reference.py and bench_vs_pytorch.py.
"""

import argparse
import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
IDX_UBYTE = 0x08
# The reference recipe's optimizer settings.
LR = 0.01
MOMENTUM = 0.5
REPO_ROOT = Path(__file__).resolve().parent.parent


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = self.conv2(y)
        return F.relu(x + y)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5)
        self.mp = nn.MaxPool2d(2)
        self.rblock1 = ResidualBlock(16)
        self.rblock2 = ResidualBlock(32)
        self.fc = nn.Linear(512, 10)

    def forward(self, x):
        in_size = x.size(0)
        x = self.mp(F.relu(self.conv1(x)))
        x = self.rblock1(x)
        x = self.mp(F.relu(self.conv2(x)))
        x = self.rblock2(x)
        # The tutorial's `view`, as `reshape`: channels_last tensors refuse a view here.
        x = x.reshape(in_size, -1)
        return self.fc(x)


class VariantBlock(nn.Module):
    """The residual units of He et al. 2016 that resnet-mnist's --block offers, F = conv2(relu(conv1(x)))."""

    def __init__(self, channels, kind, last):
        super().__init__()
        self.kind = kind
        self.closing_relu = kind == "preact" and last
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        if kind == "conv-shortcut":
            self.shortcut = nn.Conv2d(channels, channels, kernel_size=1)

    def branch(self, x):
        return self.conv2(F.relu(self.conv1(x)))

    def forward(self, x):
        if self.kind == "original":
            return F.relu(x + self.branch(x))
        if self.kind == "plain":
            return F.relu(self.branch(x))
        if self.kind == "relu-before-add":
            return x + F.relu(self.branch(x))
        if self.kind == "preact":
            y = x + self.branch(F.relu(x))
            return F.relu(y) if self.closing_relu else y
        if self.kind == "scaled":
            return F.relu(0.5 * x + 0.5 * self.branch(x))
        if self.kind == "conv-shortcut":
            return F.relu(self.shortcut(x) + self.branch(x))
        raise ValueError(f"unknown block kind {self.kind}")


class VariantNet(nn.Module):
    """Net with `depth` blocks of one kind per stage, under resnet-mnist's tensor names:
    `rblock1`/`rblock2` at depth 1, `stage1.<i>`/`stage2.<i>` deeper."""

    def __init__(self, kind, depth):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5)

        def stage(channels):
            blocks = [VariantBlock(channels, kind, i + 1 == depth) for i in range(depth)]
            return blocks[0] if depth == 1 else nn.Sequential(*blocks)

        names = ("rblock1", "rblock2") if depth == 1 else ("stage1", "stage2")
        setattr(self, names[0], stage(16))
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5)
        setattr(self, names[1], stage(32))
        self.stages = names
        self.mp = nn.MaxPool2d(2)
        self.fc = nn.Linear(512, 10)

    def forward(self, x):
        x = self.mp(F.relu(self.conv1(x)))
        x = getattr(self, self.stages[0])(x)
        x = self.mp(F.relu(self.conv2(x)))
        x = getattr(self, self.stages[1])(x)
        return self.fc(x.flatten(1))


# PyTorch's configurations the scripts compare against: memory format, torch.compile or not,
# and on a GPU torch.compile's CUDA graphs (mode "reduce-overhead"), which a small network's
# launch-bound step needs there and which do nothing on a CPU.
TORCH_MODES = ("eager", "channels-last", "compile", "compile-channels-last")
GPU_TORCH_MODES = TORCH_MODES + ("compile-cudagraphs",)


def memory_format(mode):
    return torch.channels_last if mode.endswith("channels-last") else torch.contiguous_format


def in_mode(model, mode):
    """`model` in `mode`'s memory format, and the callable that runs its forward pass."""
    model = model.to(memory_format=memory_format(mode))
    if mode == "compile-cudagraphs":
        return model, torch.compile(model, mode="reduce-overhead")
    return model, torch.compile(model) if mode.startswith("compile") else model


def read_idx(path):
    """Read a gzip-compressed IDX file of unsigned bytes into a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != IDX_UBYTE:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    header_len = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    return np.frombuffer(data, dtype=np.uint8, count=int(np.prod(dims)), offset=header_len).reshape(dims)


def load_mnist(mnist_dir, split):
    """Return (images [N,28,28] uint8, labels [N] uint8) for split 'train' or 't10k'."""
    mnist_dir = Path(mnist_dir)
    images = read_idx(mnist_dir / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(mnist_dir / f"{split}-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise ValueError(f"{mnist_dir}: {len(images)} {split} images but {len(labels)} labels")
    return images, labels


def normalize(images):
    """uint8 [N,28,28] -> float32 [N,1,28,28] computed as (x/255 - mean)/std in float32."""
    x = images.astype(np.float32) / np.float32(255)
    x = (x - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)
    return x[:, None, :, :]


def add_mnist_dir_argument(parser: argparse.ArgumentParser):
    """The --mnist-dir flag both scripts take, defaulting like the Rust tests do."""
    parser.add_argument("--mnist-dir", type=Path,
                        default=Path(os.environ.get("MNIST_DIR", REPO_ROOT.parent / "shared/data/mnist")),
                        help="directory with the MNIST *-idx?-ubyte.gz files (default: $MNIST_DIR or ../shared/data/mnist)")
