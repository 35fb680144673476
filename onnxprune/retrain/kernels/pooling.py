"""Pools: Max, Average and Lp over windows, and their global forms.

Asymmetric or oversized pads are applied before the pool (``-inf`` for MaxPool, zeros otherwise);
AveragePool without ``count_include_pad`` then divides by the real element count of each window.
LpPool's window sum is a depthwise convolution with ones, which takes dilations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from onnxprune.retrain.kernels import Inputs, register
from onnxprune.retrain.kernels.conv import CONV, spatial_pads, split_pads, torch_pads

if TYPE_CHECKING:
    from onnxprune.retrain.interpreter import Node

MAX_POOL: dict[int, Callable[..., Tensor]] = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVG_POOL: dict[int, Callable[..., Tensor]] = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pool_geometry(node: Node, x: Tensor) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = list(node.attr("kernel_shape"))
    dims = len(kernel)
    strides = list(node.attr("strides", [1] * dims))
    dilations = list(node.attr("dilations", [1] * dims))
    return kernel, strides, dilations, spatial_pads(node, x.shape[2:], kernel, strides, dilations)


def _check_max_pool(node: Node) -> str | None:
    if len(node.outputs) > 1 and node.outputs[1]:
        return "Indices output"
    return None


@register("MaxPool", check=_check_max_pool)
def _max_pool(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    kernel, strides, dilations, pads = _pool_geometry(node, x)
    x, padding = split_pads(x, pads, -math.inf, [k // 2 for k in kernel])
    return MAX_POOL[len(kernel)](x, kernel, strides, padding, dilations, ceil_mode=bool(node.attr("ceil_mode", 0)))


def _check_average_pool(node: Node) -> str | None:
    if any(d != 1 for d in node.attr("dilations", [])):
        return "dilations"
    return None


@register("AveragePool", check=_check_average_pool)
def _average_pool(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    kernel, strides, _, pads = _pool_geometry(node, x)
    include = bool(node.attr("count_include_pad", 0))
    ceil = bool(node.attr("ceil_mode", 0))
    pool = AVG_POOL[len(kernel)]
    padded, padding = split_pads(x, pads, 0.0, [k // 2 for k in kernel])
    if padded is x:
        return pool(x, kernel, strides, padding, ceil_mode=ceil, count_include_pad=include)
    summed = pool(padded, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
    if include:
        return summed
    ones = F.pad(torch.ones_like(x[:1, :1]), torch_pads(pads))
    return summed / pool(ones, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)


def _ceil_extra(spatial: list[int], pads: list[int], kernel: list[int], strides: list[int],
                dilations: list[int]) -> list[int]:
    """End padding that gives ceil_mode's last, partial window: the output size rounds up, but
    (as in onnxruntime and torch) a window starting past the input and its begin pad is dropped."""
    extra = []
    for size, begin, end, k, s, d in zip(spatial, pads, pads[len(kernel):], kernel, strides, dilations):
        span, padded = (k - 1) * d + 1, size + begin + end
        outputs = math.ceil((padded - span) / s) + 1
        outputs -= (outputs - 1) * s >= size + begin
        extra.append(max(0, (outputs - 1) * s + span - padded))
    return extra


@register("LpPool")
def _lp_pool(node: Node, inputs: Inputs, training: bool) -> Tensor:
    """(Σ |x|^p)^(1/p) over each window; padding adds nothing to the sum."""
    x = inputs[0]
    kernel, strides, dilations, pads = _pool_geometry(node, x)
    p = node.attr("p", 2)
    if node.attr("ceil_mode", 0):
        extra = _ceil_extra(list(x.shape[2:]), pads, kernel, strides, dilations)
        pads = pads[:len(kernel)] + [end + more for end, more in zip(pads[len(kernel):], extra)]
    powered = F.pad(x.abs() ** p, torch_pads(pads))
    batch, channels = x.shape[:2]
    ones = torch.ones((1, 1, *kernel), dtype=x.dtype, device=x.device)
    summed = CONV[len(kernel)](powered.reshape(batch * channels, 1, *powered.shape[2:]), ones, None, strides, 0,
                               dilations)
    return summed.reshape(batch, channels, *summed.shape[2:]) ** (1.0 / p)


@register("GlobalAveragePool")
def _global_average_pool(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalMaxPool")
def _global_max_pool(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalLpPool")
def _global_lp_pool(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    return torch.linalg.vector_norm(x, node.attr("p", 2), dim=tuple(range(2, x.dim())), keepdim=True)
