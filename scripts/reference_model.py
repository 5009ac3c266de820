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
        x = x.view(in_size, -1)
        return self.fc(x)


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
