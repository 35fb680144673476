"""Labelled data sets and top-1/top-5 accuracy with onnxruntime (no torch needed here).

Data come from ``.npz`` files with keys ``x_train``/``y_train`` (training) and ``x_test``/``y_test``
(evaluation). Images become inputs by the rules of :mod:`onnxprune.core.datasets`, the same ones
``prune --data`` feeds are built by; this module adds the labels, their checks and the accuracy.
Evaluation covers every image: the last partial batch is run too, zero-padded only for a model
whose batch dim is static, and the padding rows' outputs are discarded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from onnxprune.core import data
from onnxprune.core.datasets import Dim, Preprocess, array_names, fit_input, normalisation, read_arrays
from onnxprune.core.errors import InputError, OptionError
from onnxprune.measure import verify

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


@dataclass
class LabelledData:
    """Images in the model's layout (stored dtype), int64 labels, and the steps that make images inputs."""

    images: np.ndarray
    labels: np.ndarray
    preprocess: Preprocess = Preprocess()
    source: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, index: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Model inputs for ``index``: scaled, normalised and cast like every other path's feeds."""
        return self.preprocess(self.images[index])

    def batches(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(inputs, labels) in file order, the last batch possibly shorter."""
        for start in range(0, len(self), size):
            window = slice(start, start + size)
            yield self.inputs(window), self.labels[window]


def _check_npz(path: Path) -> None:
    if path.suffix.lower() != ".npz":
        raise InputError(f"data file '{path}' must be an .npz with x_train/y_train and/or x_test/y_test arrays")


def available_splits(path: str | os.PathLike) -> set[str]:
    """The splits ``path`` holds both arrays of (``x_<split>`` and ``y_<split>``)."""
    _check_npz(Path(path))
    keys = set(array_names(path))
    return {split for split in SPLITS if {f"x_{split}", f"y_{split}"} <= keys}


def model_input(model: onnx.ModelProto, shape: Sequence[int] | None = None) -> tuple[data.InputSpec, tuple[Dim, ...]]:
    """The single float input and its shape (``shape`` overrides the declared one)."""
    specs = data.input_specs(model)
    if len(specs) != 1:
        raise InputError(f"labelled data needs a model with one input; this one has {len(specs)}")
    spec = specs[0]
    if spec.dtype.kind != "f":
        raise InputError(f"input '{spec.name}' is {spec.dtype}; labelled image data needs a float input")
    target = tuple(shape) if shape is not None else spec.shape
    if target is None:
        raise OptionError(f"input '{spec.name}' has no declared shape; give {{}}", "input_shape")
    return spec, target


def model_classes(model: onnx.ModelProto) -> int | None:
    """The class count from the first output's last dim, when it is declared."""
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None


def _labels(values: np.ndarray, count: int, key: str, path: Path, classes: int | None) -> np.ndarray:
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or len(values) != count:
        raise InputError(f"{path}: '{key}' has shape {list(values.shape)}; expected [{count}], one label per image")
    if values.dtype.kind == "f" and not np.all(np.mod(values, 1) == 0):
        raise InputError(f"{path}: '{key}' holds non-integer labels")
    if values.dtype.kind not in "iuf":
        raise InputError(f"{path}: '{key}' has dtype {values.dtype}; labels must be integers")
    labels = values.astype(np.int64)
    check_label_range(labels, classes, f"{path}: '{key}'")
    return labels


def check_label_range(labels: np.ndarray, classes: int | None, where: str) -> None:
    """Labels must lie in [0, classes)."""
    if not len(labels):
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or classes is not None and high >= classes:
        bad = low if low < 0 else high
        bound = f"[0, {classes - 1}]" if classes is not None else "0 or more"
        raise InputError(f"{where}: label {bad} is out of range (the model has {classes} classes: {bound})")


def load_labelled(path: str | os.PathLike, model: onnx.ModelProto, split: str = "test",
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  limit: int | None = None, input_shape: Sequence[int] | None = None) -> LabelledData:
    """Images ``x_<split>`` and labels ``y_<split>`` from ``path``, checked against ``model``.

    Raises InputError with the file and key for a missing array, a shape that does not fit the
    model's input, a label count that differs from the image count, or a label out of range.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(path)
    _check_npz(path)
    x_key, y_key = f"x_{split}", f"y_{split}"
    names = array_names(path)
    missing = [key for key in (x_key, y_key) if key not in names]
    if missing:
        raise InputError(f"{path}: no {' or '.join(repr(k) for k in missing)} array (it has: "
                         f"{', '.join(sorted(names)) or 'nothing'}); training reads x_train/y_train, "
                         "evaluation x_test/y_test")
    arrays = read_arrays(path, (x_key, y_key))
    spec, target = model_input(model, input_shape)
    images = fit_input(arrays[x_key], target, f"{path}: {x_key!r}")
    labels = _labels(arrays[y_key], len(images), y_key, path, model_classes(model))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if not len(labels):
        raise InputError(f"{path}: '{x_key}' holds no samples")
    pixels = images.dtype == np.uint8 and np.dtype(spec.dtype).kind == "f"
    mean, std = normalisation(model, mean, std, pixels, f"{path}: {x_key!r}")
    return LabelledData(images, labels, Preprocess.for_input(spec.dtype, images.shape, mean, std), f"{path}:{x_key}")


@dataclass(frozen=True)
class Accuracy:
    """Fractions of images whose label is the arg-max (top-1) or among the 5 largest logits."""

    top1: float
    top5: float
    count: int

    def __str__(self) -> str:
        return f"top-1 {100 * self.top1:.2f} %  top-5 {100 * self.top5:.2f} %  ({self.count} images)"

    def to_dict(self) -> dict:
        return asdict(self)


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    """How many labels are among the k largest logits of their row."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return int((top == labels[:, None]).any(axis=1).sum())


def _static_batch(session) -> int | None:
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) and dim > 0 else None


def _run_padded(session, name: str, x: np.ndarray, batch: int) -> np.ndarray:
    """Run a batch, zero-padding it to a static batch size and dropping the padding after."""
    rows = len(x)
    if rows < batch:
        x = np.concatenate([x, np.zeros((batch - rows, *x.shape[1:]), x.dtype)])
    logits = verify.run(session, [{name: x}])[0]
    return next(iter(logits.values()))[:rows]


def evaluate(model: verify.ModelLike, labelled: LabelledData, batch_size: int = 256,
             threads: int | None = None, progress: bool = False) -> Accuracy:
    """Top-1/top-5 accuracy of ``model`` (a ModelProto or path) on ``labelled``, with onnxruntime.

    A model with a static batch dim is fed batches of exactly that size (the last one padded).
    """
    session = verify.session(model, threads=threads)
    name = session.get_inputs()[0].name
    batch = _static_batch(session) or batch_size
    hits1 = hits5 = 0
    with tqdm(total=len(labelled), desc="evaluate", unit="img", disable=None if progress else True, leave=False) as bar:
        for x, y in labelled.batches(batch):
            logits = _run_padded(session, name, x, batch)
            if logits.ndim != 2:
                raise InputError(f"the model's first output has shape {list(logits.shape)}; expected [batch, classes]")
            check_label_range(y, logits.shape[1], labelled.source)
            hits1 += topk_hits(logits, y, 1)
            hits5 += topk_hits(logits, y, 5)
            bar.update(len(y))
    return Accuracy(hits1 / len(labelled), hits5 / len(labelled), len(labelled))
