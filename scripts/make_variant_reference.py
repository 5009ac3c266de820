"""Generate tests/fixtures/variants.safetensors: PyTorch's forward and backward of every block
variant at depth 2 (VariantNet in reference_model.py), for resnet-mnist's parity test.

Run (not part of CI; the generated file is committed):

    pip install torch safetensors numpy && python3 scripts/make_variant_reference.py

Inputs and weights come from closed-form formulas that tests/pytorch_parity.rs evaluates the
same way, so the fixture holds only results: per variant, the logits, the loss, each gradient
tensor's L2 norm and its values at SAMPLES indices `k * 7919 % len`.
"""

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from reference_model import REPO_ROOT, VariantNet, normalize

KINDS = ["original", "plain", "relu-before-add", "preact", "scaled", "conv-shortcut"]
DEPTH = 2
BATCH = 4
SAMPLES = 64


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "tests/fixtures/variants.safetensors",
                   help="output safetensors file (default: %(default)s)")
    return p.parse_args()


def formula_params(model):
    """Tensor t of the state_dict, element i: bound * sin(0.618 (i + 1) + 1.7 t), bound = 1/sqrt(fan_in)."""
    with torch.no_grad():
        for t, (name, p) in enumerate(model.state_dict().items()):
            weight = model.state_dict()[name.rsplit(".", 1)[0] + ".weight"]
            bound = 1.0 / math.sqrt(np.prod(weight.shape[1:]))
            i = np.arange(p.numel(), dtype=np.float64)
            values = bound * np.sin(0.618 * (i + 1) + 1.7 * t)
            p.copy_(torch.from_numpy(values.astype(np.float32)).reshape(p.shape))


def formula_batch():
    """Pixel p of image n: (n * 784 + p) * 37 mod 256; label n mod 10."""
    pixels = (np.arange(BATCH * 784, dtype=np.int64) * 37 % 256).astype(np.uint8).reshape(BATCH, 28, 28)
    return torch.from_numpy(normalize(pixels)), torch.arange(BATCH) % 10


def main():
    args = parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x, y = formula_batch()
    tensors = {}
    for kind in KINDS:
        model = VariantNet(kind, DEPTH)
        formula_params(model)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        tensors[f"{kind}.logits"] = logits.detach().contiguous()
        tensors[f"{kind}.loss"] = loss.detach().reshape(1)
        for name, p in model.named_parameters():
            g = p.grad.flatten()
            idx = torch.arange(SAMPLES) * 7919 % g.numel()
            tensors[f"{kind}.norm.{name}"] = g.norm().reshape(1)
            tensors[f"{kind}.sample.{name}"] = g[idx].contiguous()
    save_file(tensors, str(args.out), metadata={"depth": str(DEPTH), "batch": str(BATCH), "samples": str(SAMPLES)})
    print(f"wrote {args.out}: {len(tensors)} tensors")


if __name__ == "__main__":
    main()
