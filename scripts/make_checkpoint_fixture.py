"""Generate tests/fixtures/pytorch_state_dict.safetensors: a state_dict saved by PyTorch,
and the logits it gives on a few MNIST test images, for the checkpoint-loading test.

Run (not part of CI; the generated files are committed):

    pip install torch safetensors numpy && python3 scripts/make_checkpoint_fixture.py [--mnist-dir DIR]

Writes two files so the checkpoint itself is exactly what `save_file(net.state_dict())`
produces (nothing extra, no metadata):
  pytorch_state_dict.safetensors   Net().state_dict() after torch.manual_seed(1)
  pytorch_logits.safetensors       x [8,1,28,28] (normalized test images 0..8), logits [8,10],
                                   and trained_logits [8,10]: what tests/fixtures/trained.safetensors,
                                   a checkpoint written by resnet-mnist, gives in PyTorch

With --check PATH it instead loads a checkpoint written by resnet-mnist strictly into Net()
and prints its logits on the same images.
"""

import argparse
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from reference_model import Net, load_mnist, normalize

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests/fixtures"
IMAGES = 8


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mnist-dir", type=Path,
                   default=Path(os.environ.get("MNIST_DIR", REPO_ROOT.parent / "shared/data/mnist")))
    p.add_argument("--check", type=Path, help="a resnet-mnist checkpoint to load into Net() strictly")
    return p.parse_args()


def main():
    args = parse_args()
    torch.manual_seed(1)
    torch.set_num_threads(1)
    images, _ = load_mnist(args.mnist_dir, "t10k")
    x = torch.from_numpy(normalize(images[:IMAGES]).copy())
    net = Net()
    if args.check:
        net.load_state_dict(load_file(str(args.check)))
        with torch.no_grad():
            print(net(x))
        return
    trained = Net()
    trained.load_state_dict(load_file(str(FIXTURES / "trained.safetensors")))  # strict: names and shapes
    with torch.no_grad():
        logits, trained_logits = net(x), trained(x)
    save_file(net.state_dict(), str(FIXTURES / "pytorch_state_dict.safetensors"))
    tensors = {"x": x.contiguous(), "logits": logits.contiguous(), "trained_logits": trained_logits.contiguous()}
    save_file(tensors, str(FIXTURES / "pytorch_logits.safetensors"), metadata={"torch_version": torch.__version__})
    print(f"wrote {FIXTURES}/pytorch_state_dict.safetensors and pytorch_logits.safetensors")


if __name__ == "__main__":
    main()
