"""Conv and ConvTranspose, and the ONNX -> torch padding rules they share with the pools.

ONNX pads are explicit ``[b1..bn, e1..en]`` or derived from ``auto_pad``; torch's convolutions and
pools take one symmetric padding per axis. Symmetric pads go to the op itself, anything else is
applied with ``F.pad`` first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from onnxprune.retrain.kernels import Inputs, register

if TYPE_CHECKING:
    from onnxprune.retrain.interpreter import Node

CONV: dict[int, Callable[..., Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T: dict[int, Callable[..., Tensor]] = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def torch_pads(pads: Sequence[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] -> F.pad's (bn, en, ..., b1, e1), last axis first."""
    n = len(pads) // 2
    out: list[int] = []
    for axis in reversed(range(n)):
        out += [pads[axis], pads[axis + n]]
    return out


def spatial_pads(node: Node, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                 dilations: Sequence[int]) -> list[int]:
    """Explicit pads from ``pads`` or ``auto_pad`` (SAME_UPPER puts the odd pixel at the end)."""
    auto = node.attr("auto_pad", "NOTSET")
    dims = len(kernel)
    if auto in ("NOTSET", ""):
        return list(node.attr("pads", [0] * (2 * dims)))
    if auto == "VALID":
        return [0] * (2 * dims)
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else large)
        ends.append(large if auto == "SAME_UPPER" else small)
    return begins + ends


def split_pads(x: Tensor, pads: list[int], value: float = 0.0,
               max_pad: Sequence[int] | None = None) -> tuple[Tensor, list[int]]:
    """Symmetric pads (within ``max_pad``) go to the op's own ``padding``; others are applied here."""
    dims = len(pads) // 2
    begins, ends = pads[:dims], pads[dims:]
    if begins == ends and (max_pad is None or all(p <= m for p, m in zip(begins, max_pad))):
        return x, begins
    return F.pad(x, torch_pads(pads), value=value), [0] * dims


def _conv_geometry(node: Node, weight: Tensor) -> tuple[int, list[int], list[int], list[int]]:
    dims = weight.dim() - 2
    kernel = list(node.attr("kernel_shape", weight.shape[2:]))
    return dims, kernel, list(node.attr("strides", [1] * dims)), list(node.attr("dilations", [1] * dims))


@register("Conv", learnable=(1, 2))
def _conv(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x, weight, bias = inputs[0], inputs[1], inputs.optional(2)
    dims, kernel, strides, dilations = _conv_geometry(node, weight)
    pads = spatial_pads(node, x.shape[2:], kernel, strides, dilations)
    x, padding = split_pads(x, pads)
    return CONV[dims](x, weight, bias, strides, padding, dilations, node.attr("group", 1))


def _conv_transpose_pads(node: Node, x: Tensor, kernel: list[int], strides: list[int], dilations: list[int],
                         out_pad: list[int]) -> list[int]:
    """Pads from ``pads``, or from ``output_shape`` / SAME auto_pad (ONNX's total-padding rule)."""
    dims = len(kernel)
    output_shape = node.attr("output_shape")
    auto = node.attr("auto_pad", "NOTSET")
    if output_shape is None and auto not in ("SAME_UPPER", "SAME_LOWER"):
        return list(node.attr("pads", [0] * (2 * dims)))
    spatial = x.shape[2:]
    targets = list(output_shape)[-dims:] if output_shape is not None else [s * st for s, st in zip(spatial, strides)]
    begins, ends = [], []
    for size, k, s, d, op, target in zip(spatial, kernel, strides, dilations, out_pad, targets):
        total = s * (size - 1) + op + ((k - 1) * d + 1) - target
        half = total // 2
        begins.append(half if auto == "SAME_UPPER" else total - half)
        ends.append(total - half if auto == "SAME_UPPER" else half)
    return begins + ends


@register("ConvTranspose", learnable=(1, 2))
def _conv_transpose(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x, weight, bias = inputs[0], inputs[1], inputs.optional(2)
    dims, kernel, strides, dilations = _conv_geometry(node, weight)
    out_pad = list(node.attr("output_padding", [0] * dims))
    pads = _conv_transpose_pads(node, x, kernel, strides, dilations, out_pad)
    group = node.attr("group", 1)
    begins, ends = pads[:dims], pads[dims:]
    torch_out_pad = all(o < max(s, d) for o, s, d in zip(out_pad, strides, dilations))
    if begins == ends and min(begins, default=0) >= 0 and torch_out_pad:
        return CONV_T[dims](x, weight, bias, strides, begins, out_pad, group, dilations)
    y = CONV_T[dims](x, weight, None, strides, 0, 0, group, dilations)
    y = F.pad(y, torch_pads([-b for b in begins] + [o - e for o, e in zip(out_pad, ends)]))
    return y if bias is None else y + bias.reshape((1, -1) + (1,) * dims)
