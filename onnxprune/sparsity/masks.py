"""The weights unstructured pruning reads and zeroes, and the counts a sparse model is judged by.

Pruned: the constant weight matrices of the linear ops (Conv, ConvTranspose, Gemm, MatMul): float
tensors of at least two dimensions and ``min_elements`` elements. Biases, BN parameters and tiny
tensors (LeNet-5's first conv, 150 weights and the only view of the image) are left whole:
they hold next to nothing of the size and much of the accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from onnxprune.measure.stats import FLOAT_TYPES

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
MIN_ELEMENTS = 256


def prunable_weights(graph: gs.Graph, min_elements: int = MIN_ELEMENTS) -> dict[str, gs.Constant]:
    """The weight constants of ``graph``'s linear ops that pruning may zero, by name (a shared one once)."""
    found: dict[str, gs.Constant] = {}
    for node in graph.nodes:
        if node.op not in LINEAR_OPS:
            continue
        for tensor in node.inputs[:2]:
            if (isinstance(tensor, gs.Constant) and np.issubdtype(tensor.values.dtype, np.floating)
                    and tensor.values.ndim >= 2 and tensor.values.size >= min_elements):
                found[tensor.name] = tensor
    return found


def apply(weights: Mapping[str, gs.Constant], keep: Mapping[str, np.ndarray]) -> int:
    """Zero every weight ``keep`` marks False, in place; returns how many were nonzero before."""
    zeroed = 0
    for name, constant in weights.items():
        values = np.asarray(constant.values)
        zeroed += int(np.count_nonzero(values[~keep[name]]))
        constant.values = np.where(keep[name], values, 0).astype(values.dtype)
    return zeroed


@dataclass(frozen=True)
class Counts:
    """Float parameters of a model with dense initializers: all of them, and those not zero."""

    total: int
    nonzero: int

    @property
    def density(self) -> float:
        return self.nonzero / self.total if self.total else 1.0

    def to_dict(self) -> dict[str, float]:
        return {"total": self.total, "nonzero": self.nonzero, "density": self.density}


def count(model: onnx.ModelProto) -> Counts:
    """Elements and nonzero elements of the float initializers (weights and biases)."""
    total = nonzero = 0
    for tensor in model.graph.initializer:
        if tensor.data_type in FLOAT_TYPES:
            values = numpy_helper.to_array(tensor)
            total += values.size
            nonzero += int(np.count_nonzero(values))
    return Counts(total, nonzero)
