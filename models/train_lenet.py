"""Train LeNet-5 on MNIST on the CPU and save its state dict as ``models/lenet5_mnist.npz``.

No pretrained LeNet ships with the workplace, so this script makes one; the weights are stored as
a plain NumPy archive (the same format as the shared ResNet weights) for ``export.py`` to read.

    python models/train_lenet.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.reference import LeNet5, preprocess  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist.npz"
DEFAULT_OUT = ROOT / "models" / "lenet5_mnist.npz"


def load_mnist(path: Path) -> tuple[torch.Tensor, ...]:
    """Return normalised NCHW train/test images and int64 labels as tensors."""
    with np.load(path) as z:
        arrays = (preprocess(z["x_train"], "mnist"), z["y_train"].astype(np.int64),
                  preprocess(z["x_test"], "mnist"), z["y_test"].astype(np.int64))
    return tuple(torch.from_numpy(a) for a in arrays)


def train_epoch(model: LeNet5, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                batch: int, gen: torch.Generator) -> float:
    """One pass over a seeded shuffle of the training set; returns the mean loss."""
    model.train()
    order = torch.randperm(len(x), generator=gen)
    total = 0.0
    for start in range(0, len(x), batch):
        idx = order[start:start + batch]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
    return total / len(x)


@torch.no_grad()
def accuracy(model: LeNet5, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy in eval mode."""
    model.eval()
    correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
                  for i in range(0, len(x), batch))
    return correct / len(x)


def save_npz(model: LeNet5, path: Path) -> None:
    """Store the state dict as float32 arrays keyed by parameter name."""
    np.savez(path, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    x_train, y_train, x_test, y_test = load_mnist(args.data)
    model = LeNet5()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(1, args.epochs + 1):
        loss = train_epoch(model, opt, x_train, y_train, args.batch, gen)
        sched.step()
        print(f"epoch {epoch}: loss {loss:.4f}  test acc {accuracy(model, x_test, y_test):.4%}")
    save_npz(model, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} B)")


if __name__ == "__main__":
    main()
