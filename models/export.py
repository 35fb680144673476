"""Export the reference networks to ONNX, keeping BatchNormalization nodes, and check them.

``TrainingMode.PRESERVE`` stops the exporter from folding BatchNorm into Conv itself, so the
graphs look like what a typical exporter hands to onnxprune, whose job is to fold them.

    python models/export.py resnet20 resnet56 lenet5
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.reference import PREPROCESSING, CifarResNet, LeNet5  # noqa: E402
from onnxprune.core.datasets import declare_normalisation  # noqa: E402

MODELS_DIR = ROOT / "models"
DEFAULT_WEIGHTS = ROOT.parent / "shared" / "models"
OUTPUT_NAMES = {
    "resnet20": "resnet20_cifar10.onnx",
    "resnet56": "resnet56_cifar10.onnx",
    "lenet5": "lenet5_mnist.onnx",
}
DATASETS = {"resnet20": "cifar10", "resnet56": "cifar10", "lenet5": "mnist"}


def build(name: str, weights_dir: Path) -> tuple[nn.Module, tuple[int, ...]]:
    """Return the named model with its weights loaded (strictly) and its input shape (C, H, W)."""
    if name == "lenet5":
        model, weights, shape = LeNet5(), MODELS_DIR / "lenet5_mnist.npz", (1, 28, 28)
    else:
        depth = int(name.removeprefix("resnet"))
        model, shape = CifarResNet(depth), (3, 32, 32)
        weights = weights_dir / f"resnet{depth}_cifar10.npz"
    with np.load(weights) as z:
        model.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files}, strict=True)
    return model.eval(), shape


def export(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    """Trace to ONNX opset 13 with a dynamic batch axis and BatchNorm left in the graph.

    Two warnings are silenced because they do not apply: the legacy exporter is chosen on purpose,
    and the constant-folding advice concerns models exported in training mode (ours is in eval).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message=".*constant folding be turned off")
        _export(model, x, path)


def declare_preprocessing(path: Path, dataset: str) -> None:
    """Write the input normalisation of ``dataset`` into the model's metadata, so that ``evaluate``,
    ``finetune`` and ``--data`` apply it without --mean/--std."""
    model = onnx.load(path)
    declare_normalisation(model, PREPROCESSING[dataset]["mean"], PREPROCESSING[dataset]["std"])
    onnx.save(model, path)


def _export(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    """The exporter call itself, with the settings the project's test graphs rely on."""
    torch.onnx.export(model.eval(), (x,), str(path), dynamo=False,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
                      opset_version=13, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


@torch.no_grad()
def max_abs_error(model: nn.Module, path: Path, x: torch.Tensor) -> float:
    """Largest |torch - onnxruntime| over the logits for input ``x``."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {"input": x.numpy()})
    return float(np.abs(model(x).numpy() - ort_out).max())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", choices=sorted(OUTPUT_NAMES))
    parser.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS,
                        help="folder with resnet{20,56}_cifar10.npz")
    parser.add_argument("--out-dir", type=Path, default=MODELS_DIR)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    for name in args.models:
        model, shape = build(name, args.weights_dir)
        path = args.out_dir / OUTPUT_NAMES[name]
        export(model, torch.randn(1, *shape), path)
        declare_preprocessing(path, DATASETS[name])
        error = max_abs_error(model, path, torch.randn(8, *shape))
        print(f"{name}: wrote {path} ({path.stat().st_size:,} B), "
              f"max |torch - onnxruntime| on a batch of 8: {error:.2e}")


if __name__ == "__main__":
    main()
