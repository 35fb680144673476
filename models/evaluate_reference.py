"""Measure top-1 accuracy of the exported reference ONNX models with onnxruntime.

Each model is scored on its full test set (``../shared/data``) and on the 1000-image subset that
ships in ``models/data``, so later results on the subset can be read against the full figure.

    python models/evaluate_reference.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.reference import preprocess  # noqa: E402

MODELS_DIR = ROOT / "models"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
REFERENCE_MODELS = {
    "resnet20_cifar10.onnx": "cifar10",
    "resnet56_cifar10.onnx": "cifar10",
    "lenet5_mnist.onnx": "mnist",
}


def load_test_set(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Raw uint8 test images and labels from an .npz with keys x_test, y_test."""
    with np.load(path) as z:
        return z["x_test"], z["y_test"]


def top1_accuracy(session: ort.InferenceSession, images: np.ndarray, labels: np.ndarray,
                  dataset: str, batch: int) -> float:
    """Fraction of images whose arg-max logit equals the label."""
    input_name = session.get_inputs()[0].name
    correct = 0
    for start in range(0, len(images), batch):
        x = preprocess(images[start:start + batch], dataset)
        (logits,) = session.run(None, {input_name: x})
        correct += int((logits.argmax(1) == labels[start:start + batch]).sum())
    return correct / len(images)


def evaluate(model_path: Path, dataset: str, data_dir: Path, batch: int) -> tuple[float, float]:
    """Accuracy on the full test set and on the shipped 1000-image subset."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    sources = (data_dir / f"{dataset}.npz", MODELS_DIR / "data" / f"{dataset}_test1000.npz")
    full, subset = (top1_accuracy(session, *load_test_set(p), dataset, batch) for p in sources)
    return full, subset


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--batch", type=int, default=500)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    print("| model | dataset | full test set | first 1000 (models/data) |")
    print("| --- | --- | --- | --- |")
    for filename, dataset in REFERENCE_MODELS.items():
        full, subset = evaluate(MODELS_DIR / filename, dataset, args.data_dir, args.batch)
        print(f"| `{filename}` | {dataset} | {full:.2%} | {subset:.2%} |")


if __name__ == "__main__":
    main()
