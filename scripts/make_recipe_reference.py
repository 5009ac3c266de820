"""Generate tests/fixtures/recipes.safetensors, PyTorch's ground truth for the training recipes.

Run (not part of CI; the generated file is committed):

    pip install torch torchvision safetensors numpy && python3 scripts/make_recipe_reference.py [--mnist-dir DIR]

It writes, from the weights and batches of tests/fixtures/reference.safetensors:
- `{optimizer}.step4.{param}`: the parameters after four steps (batch0, batch1, batch0,
  batch1) of each optimizer under OneCycleLR(max_lr, total_steps=6) with its defaults, with
  CrossEntropyLoss(label_smoothing=0.1); `{optimizer}` is sgd (nesterov, weight decay),
  adam (weight decay) or adamw (weight decay);
- `smoothing.{logits,labels,loss,grad}`: CrossEntropyLoss(label_smoothing=0.1) on random
  logits, and its gradient;
- `affine.{images,params,out}`: u8 MNIST images, one (angle, tx, ty, scale) per image, and
  torchvision.transforms.v2.functional.affine of each image / 255 with those parameters,
  bilinear, zero fill.
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from reference_model import REPO_ROOT, Net, add_mnist_dir_argument, load_mnist

SMOOTHING = 0.1
TOTAL_STEPS = 6
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "adam": lambda params: torch.optim.Adam(params, lr=3e-3, weight_decay=1e-2),
    "adamw": lambda params: torch.optim.AdamW(params, lr=4e-3, weight_decay=1e-2),
}
# (angle in degrees, tx, ty, scale): the kinds of transform RandomAffine(10, (0.1, 0.1), (0.9, 1.1)) draws.
AFFINE_PARAMS = [(0.0, 0.0, 0.0, 1.0), (7.3, 1.0, -2.0, 0.93), (-9.8, -3.0, 3.0, 1.08), (2.5, 0.0, 1.0, 1.1)]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mnist_dir_argument(p)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "tests/fixtures/recipes.safetensors",
                   help="output safetensors file (default: %(default)s)")
    return p.parse_args()


def optimizer_runs(reference):
    out = {}
    batches = [(reference[f"batch{i}.x"], reference[f"batch{i}.y"]) for i in (0, 1)]
    for name, make in OPTIMIZERS.items():
        model = Net()
        model.load_state_dict({k[len("param."):]: v for k, v in reference.items() if k.startswith("param.")})
        opt = make(model.parameters())
        lr = opt.param_groups[0]["lr"]
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=TOTAL_STEPS)
        for x, y in batches * 2:
            opt.zero_grad()
            F.cross_entropy(model(x), y, label_smoothing=SMOOTHING).backward()
            opt.step()
            schedule.step()
        out.update({f"{name}.step4.{n}": p.detach().clone() for n, p in model.named_parameters()})
    return out


def smoothing_case():
    logits = torch.randn(7, 10) * 3
    logits.requires_grad_(True)
    labels = torch.tensor([0, 3, 9, 1, 1, 5, 7])
    loss = F.cross_entropy(logits, labels, label_smoothing=SMOOTHING)
    loss.backward()
    return {"smoothing.logits": logits.detach(), "smoothing.labels": labels,
            "smoothing.loss": loss.detach().reshape(1), "smoothing.grad": logits.grad}


def affine_case(mnist_dir):
    images, _ = load_mnist(mnist_dir, "train")
    images = torch.from_numpy(images[:len(AFFINE_PARAMS)].copy())
    outs = []
    for image, (angle, tx, ty, scale) in zip(images, AFFINE_PARAMS):
        img = image.to(torch.float32).reshape(1, 28, 28) / 255
        outs.append(TF.affine(img, angle=angle, translate=[tx, ty], scale=scale, shear=[0.0, 0.0],
                              interpolation=InterpolationMode.BILINEAR, fill=0.0))
    return {"affine.images": images.reshape(len(AFFINE_PARAMS), 784),
            "affine.params": torch.tensor(AFFINE_PARAMS, dtype=torch.float64),
            "affine.out": torch.stack(outs).reshape(len(AFFINE_PARAMS), 784)}


def main():
    args = parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    reference = load_file(str(REPO_ROOT / "tests/fixtures/reference.safetensors"))
    tensors = optimizer_runs(reference)
    tensors.update(smoothing_case())
    tensors.update(affine_case(args.mnist_dir))
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {"torch_version": torch.__version__, "smoothing": str(SMOOTHING), "total_steps": str(TOTAL_STEPS)}
    save_file(tensors, str(args.out), metadata=metadata)
    print(f"wrote {len(tensors)} tensors to {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
