"""Layout and shape ops: views (Reshape, Transpose, Squeeze, ...), Concat/Split/Slice/Pad/Gather,
and the ops that compute shapes or constants at run time (Shape, Size, Range, ConstantOfShape).

Attributes moved to inputs across opsets (Split sizes and Squeeze axes at 13, Slice bounds at 10,
Pad amounts at 11); each kernel reads whichever its node's opset uses.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from onnxprune.retrain.kernels import Inputs, Result, ints, register
from onnxprune.retrain.kernels.conv import torch_pads

if TYPE_CHECKING:
    from onnxprune.retrain.interpreter import Node

PAD_MODES = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@register("Flatten")
def _flatten(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    axis = node.attr("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@register("Reshape")
def _reshape(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x, shape = inputs[0], ints(inputs[1])
    if not node.attr("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


@register("Transpose")
def _transpose(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    return x.permute(node.attr("perm", list(reversed(range(x.dim())))))


@register("Concat")
def _concat(node: Node, inputs: Inputs, training: bool) -> Tensor:
    return torch.cat([t for t in inputs.values if t is not None], dim=node.attr("axis"))


@register("Split")
def _split(node: Node, inputs: Inputs, training: bool) -> Result:
    x, axis, parts = inputs[0], node.attr("axis", 0), len(node.outputs)
    sizes: list[int] | int | None = ints(inputs.optional(1)) if node.opset >= 13 else node.attr("split")
    if not sizes:
        length = x.shape[axis]
        sizes = math.ceil(length / node.attr("num_outputs", parts)) if node.opset >= 18 else length // parts
    return torch.split(x, sizes, dim=axis)


def _slice_axis(x: Tensor, axis: int, start: int, end: int, step: int) -> Tensor:
    """ONNX clamping: negative indices count from the end; a negative step walks backwards."""
    dim = x.shape[axis]
    start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
    if step > 0:
        index = [slice(None)] * axis + [slice(min(max(start, 0), dim), min(max(end, 0), dim), step)]
        return x[tuple(index)]
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return x.index_select(axis, torch.arange(start, end, step, device=x.device))


@register("Slice")
def _slice(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    if node.opset < 10:
        starts, ends = node.attr("starts"), node.attr("ends")
        axes, steps = node.attr("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = ints(inputs[1]), ints(inputs[2])
        axes = ints(inputs.optional(3)) or list(range(len(starts)))
        steps = ints(inputs.optional(4)) or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        x = _slice_axis(x, axis % x.dim(), start, end, step)
    return x


def _check_pad(node: Node) -> str | None:
    mode = node.attr("mode", "constant")
    return None if mode == "constant" or mode in PAD_MODES else f"mode={mode}"


def _onnx_pads(node: Node, inputs: Inputs, rank: int) -> tuple[list[int], float]:
    """[b1..bn, e1..en] over every axis and the constant value, from attributes or inputs."""
    if node.opset < 11:
        return list(node.attr("pads")), node.attr("value", 0.0)
    pads = ints(inputs[1])
    value = inputs.optional(2)
    axes = ints(inputs.optional(3))
    if axes:
        full = [0] * (2 * rank)
        for i, axis in enumerate(axes):
            full[axis % rank], full[axis % rank + rank] = pads[i], pads[i + len(axes)]
        pads = full
    return pads, 0.0 if value is None else float(value.item())


@register("Pad", check=_check_pad)
def _pad(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    pads, value = _onnx_pads(node, inputs, x.dim())
    mode = node.attr("mode", "constant")
    padding = torch_pads(pads)
    if mode == "constant":
        return F.pad(x, padding, value=value)
    while padding and padding[-1] == 0 and padding[-2] == 0:
        padding = padding[:-2]
    return F.pad(x, padding, mode=PAD_MODES[mode])


@register("Squeeze")
def _squeeze(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    axes = ints(inputs.optional(1)) if node.opset >= 13 else node.attr("axes")
    if not axes:
        return x.squeeze()
    return x.squeeze(tuple(a % x.dim() for a in axes))


@register("Unsqueeze")
def _unsqueeze(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    axes = ints(inputs[1]) if node.opset >= 13 else node.attr("axes")
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return x


@register("Expand")
def _expand(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    return x.expand(torch.broadcast_shapes(x.shape, tuple(ints(inputs[1]))))


@register("Tile")
def _tile(node: Node, inputs: Inputs, training: bool) -> Tensor:
    return inputs[0].repeat(ints(inputs[1]))


@register("Gather")
def _gather(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x, index = inputs[0], inputs[1].long()
    axis = node.attr("axis", 0) % x.dim()
    index = torch.where(index < 0, index + x.shape[axis], index)
    picked = x.index_select(axis, index.reshape(-1))
    return picked.reshape(tuple(x.shape[:axis]) + tuple(index.shape) + tuple(x.shape[axis + 1:]))


@register("Shape")
def _shape(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    dims = list(x.shape)[node.attr("start", 0): node.attr("end", None)]
    return torch.tensor(dims, dtype=torch.int64, device=x.device)


@register("Size")
def _size(node: Node, inputs: Inputs, training: bool) -> Tensor:
    return torch.tensor(inputs[0].numel(), dtype=torch.int64, device=inputs[0].device)


@register("ConstantOfShape")
def _constant_of_shape(node: Node, inputs: Inputs, training: bool) -> Tensor:
    value = node.attr("value")
    value = np.zeros(1, np.float32) if value is None else value
    fill = torch.from_numpy(np.array(value).reshape(-1)[:1].copy())
    return fill.to(inputs[0].device).expand(ints(inputs[0])).clone()


@register("Range")
def _range(node: Node, inputs: Inputs, training: bool) -> Tensor:
    start, limit, delta = inputs
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)
