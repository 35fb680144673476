"""Reductions (ReduceMean, ReduceL2, ReduceProd, ...) and ArgMax.

Axes come from an attribute before opset 18 (13 for ReduceSum), from an input after; no axes
reduce everything unless ``noop_with_empty_axes``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from onnxprune.retrain.kernels import Inputs, ints, register

if TYPE_CHECKING:
    from onnxprune.retrain.interpreter import Node

Reduction = Callable[[Tensor, tuple[int, ...], bool], Tensor]


def _mean(x: Tensor, dims: tuple[int, ...], keepdim: bool) -> Tensor:
    return torch.mean(x, dim=dims, keepdim=keepdim)


def _sum(x: Tensor, dims: tuple[int, ...], keepdim: bool) -> Tensor:
    return torch.sum(x, dim=dims, keepdim=keepdim)


def _max(x: Tensor, dims: tuple[int, ...], keepdim: bool) -> Tensor:
    return torch.amax(x, dim=dims, keepdim=keepdim)


def _min(x: Tensor, dims: tuple[int, ...], keepdim: bool) -> Tensor:
    return torch.amin(x, dim=dims, keepdim=keepdim)


def _l1(x: Tensor, dims: tuple[int, ...], keepdim: bool) -> Tensor:
    return torch.sum(x.abs(), dim=dims, keepdim=keepdim)


def _l2(x: Tensor, dims: tuple[int, ...], keepdim: bool) -> Tensor:
    return torch.linalg.vector_norm(x, 2, dim=dims, keepdim=keepdim)


def _sum_square(x: Tensor, dims: tuple[int, ...], keepdim: bool) -> Tensor:
    return torch.sum(x * x, dim=dims, keepdim=keepdim)


def _log_sum_exp(x: Tensor, dims: tuple[int, ...], keepdim: bool) -> Tensor:
    return torch.logsumexp(x, dim=dims, keepdim=keepdim)


def _prod(x: Tensor, dims: tuple[int, ...], keepdim: bool) -> Tensor:
    """torch.prod takes one axis at a time."""
    for dim in dims:
        x = torch.prod(x, dim=dim, keepdim=True)
    return x if keepdim else x.squeeze(dims)


REDUCE: dict[str, Reduction] = {
    "ReduceMean": _mean, "ReduceSum": _sum, "ReduceMax": _max, "ReduceMin": _min, "ReduceProd": _prod,
    "ReduceL1": _l1, "ReduceL2": _l2, "ReduceSumSquare": _sum_square, "ReduceLogSumExp": _log_sum_exp,
}


def _reduce(fn: Reduction, node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    from_input = node.opset >= (13 if node.op_type == "ReduceSum" else 18)
    axes = ints(inputs.optional(1)) if from_input else node.attr("axes")
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    return fn(x, tuple(axes), bool(node.attr("keepdims", 1)))


for _op, _fn in REDUCE.items():
    register(_op)(functools.partial(_reduce, _fn))


@register("ArgMax")
def _argmax(node: Node, inputs: Inputs, training: bool) -> Tensor:
    return torch.argmax(inputs[0], dim=node.attr("axis", 0), keepdim=bool(node.attr("keepdims", 1)))
