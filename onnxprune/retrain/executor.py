"""ONNX graph -> torch ``nn.Module`` whose parameters *are* the graph's initializers, by name.

The graph stays the source of truth: :class:`OnnxModule` does not translate the model into torch
layers, it executes the ONNX nodes in their (topological) order with one small function per op
type, registered in :data:`OPS`. Float initializers read at a learnable position (a Conv's weight
and bias, a BatchNormalization's scale and bias, a Gemm/MatMul operand, a non-scalar Add/Mul
constant, ...) become ``nn.Parameter``s; every other initializer (BN running statistics, shapes,
Clip bounds, Pow exponents, scalars) and every Constant node's value becomes a buffer. Both keep
their ONNX name (:meth:`OnnxModule.initializer`), so writing trained values back is exact.

BatchNormalization follows ``module.training``: in train mode it normalises with batch statistics
and updates its running-statistics buffers (ONNX momentum m means torch momentum 1 - m); in eval
mode it uses them. Dropout is active in train mode whatever its ``training_mode`` input says: the
exported model was trained with it.

Preconditions: a model onnx's checker accepts, default-domain ops only. :func:`check_supported`
(run by the constructor) refuses an unknown op or an unsupported attribute form, naming every one,
before anything runs.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import Tensor, nn

from onnxprune.core.errors import UnsupportedModelError
from onnxprune.core.model import opset as model_opset

log = logging.getLogger(__name__)

Value = Tensor | None
Result = Tensor | Sequence[Tensor]

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
TORCH_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8, onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.INT16: torch.int16, onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.BOOL: torch.bool,
}


@dataclass(frozen=True)
class Node:
    """One ONNX node, attributes decoded once; ``""`` marks an omitted optional input."""

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 13
    domain: str = ""

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


@dataclass(frozen=True)
class OpSpec:
    """How to run an op: ``run(node, inputs, training)``; which inputs may be trained (a float
    initializer there becomes a Parameter if it has at least ``min_size`` elements); and an
    optional ``check(node)`` returning why a node's attribute form is not supported."""

    run: Callable[[Node, list[Value], bool], Result]
    learnable: tuple[int, ...] = ()
    min_size: int = 1
    check: Callable[[Node], str | None] | None = None


OPS: dict[str, OpSpec] = {}


def register(*op_types: str, learnable: tuple[int, ...] = (), min_size: int = 1,
             check: Callable[[Node], str | None] | None = None):
    """Decorator: register ``fn(node, inputs, training)`` for the given op types."""

    def decorate(fn):
        for op_type in op_types:
            OPS[op_type] = OpSpec(fn, learnable, min_size, check)
        return fn

    return decorate


def _arg(inputs: list[Value], index: int) -> Value:
    return inputs[index] if index < len(inputs) else None


def _ints(value: Value) -> list[int] | None:
    return None if value is None else [int(v) for v in value.reshape(-1).tolist()]


# --- padding helpers shared by convolutions and pools -------------------------------------------


def _torch_pads(pads: Sequence[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] -> F.pad's (bn, en, ..., b1, e1), last axis first."""
    n = len(pads) // 2
    out: list[int] = []
    for axis in reversed(range(n)):
        out += [pads[axis], pads[axis + n]]
    return out


def _spatial_pads(node: Node, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
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


def _split_pads(x: Tensor, pads: list[int], value: float = 0.0, max_pad: Sequence[int] | None = None) -> tuple[Tensor, list[int]]:
    """Symmetric pads (within ``max_pad``) go to the op's own ``padding``; others are applied here."""
    dims = len(pads) // 2
    begins, ends = pads[:dims], pads[dims:]
    if begins == ends and (max_pad is None or all(p <= m for p, m in zip(begins, max_pad))):
        return x, begins
    return F.pad(x, _torch_pads(pads), value=value), [0] * dims


# --- convolutions and linear ops ---------------------------------------------------------------

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv_geometry(node: Node, weight: Tensor) -> tuple[int, list[int], list[int], list[int]]:
    dims = weight.dim() - 2
    kernel = list(node.attr("kernel_shape", weight.shape[2:]))
    return dims, kernel, list(node.attr("strides", [1] * dims)), list(node.attr("dilations", [1] * dims))


@register("Conv", learnable=(1, 2))
def _conv(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x, weight, bias = inputs[0], inputs[1], _arg(inputs, 2)
    dims, kernel, strides, dilations = _conv_geometry(node, weight)
    pads = _spatial_pads(node, x.shape[2:], kernel, strides, dilations)
    x, padding = _split_pads(x, pads)
    return CONV[dims](x, weight, bias, strides, padding, dilations, node.attr("group", 1))


def _conv_transpose_pads(node: Node, x: Tensor, kernel, strides, dilations, out_pad) -> list[int]:
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
def _conv_transpose(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x, weight, bias = inputs[0], inputs[1], _arg(inputs, 2)
    dims, kernel, strides, dilations = _conv_geometry(node, weight)
    out_pad = list(node.attr("output_padding", [0] * dims))
    pads = _conv_transpose_pads(node, x, kernel, strides, dilations, out_pad)
    group = node.attr("group", 1)
    begins, ends = pads[:dims], pads[dims:]
    if begins == ends and min(begins, default=0) >= 0 and all(o < max(s, d) for o, s, d in zip(out_pad, strides, dilations)):
        return CONV_T[dims](x, weight, bias, strides, begins, out_pad, group, dilations)
    y = CONV_T[dims](x, weight, None, strides, 0, 0, group, dilations)
    y = F.pad(y, _torch_pads([-b for b in begins] + [o - e for o, e in zip(out_pad, ends)]))
    return y if bias is None else y + bias.reshape((1, -1) + (1,) * dims)


@register("Gemm", learnable=(1, 2))
def _gemm(node: Node, inputs: list[Value], training: bool) -> Tensor:
    a, b, c = inputs[0], inputs[1], _arg(inputs, 2)
    a = a.t() if node.attr("transA", 0) else a
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if node.attr("transB", 0) and c is not None and c.dim() <= 1 and alpha == 1.0 and beta == 1.0:
        return F.linear(a, b, c.reshape(-1).expand(b.shape[0]))
    y = a @ (b.t() if node.attr("transB", 0) else b)
    y = y * alpha if alpha != 1.0 else y
    if c is None:
        return y
    return y + (c * beta if beta != 1.0 else c)


@register("MatMul", learnable=(0, 1))
def _matmul(node: Node, inputs: list[Value], training: bool) -> Tensor:
    return torch.matmul(inputs[0], inputs[1])


@register("Einsum")
def _einsum(node: Node, inputs: list[Value], training: bool) -> Tensor:
    return torch.einsum(node.attr("equation"), *inputs)


# --- normalisation -----------------------------------------------------------------------------


def _check_batch_norm(node: Node) -> str | None:
    if node.opset < 9 and node.attr("spatial", 1) != 1:
        return "spatial=0"
    return None


@register("BatchNormalization", learnable=(1, 2), check=_check_batch_norm)
def _batch_norm(node: Node, inputs: list[Value], training: bool) -> Result:
    x, scale, bias, mean, var = inputs[:5]
    momentum = 1.0 - node.attr("momentum", 0.9)
    y = F.batch_norm(x, mean, var, scale, bias, training=training, momentum=momentum, eps=node.attr("epsilon", 1e-5))
    return (y, mean, var)[: len(node.outputs)]


def _single_output(node: Node) -> str | None:
    return "optional outputs" if sum(1 for name in node.outputs if name) > 1 else None


@register("LayerNormalization", learnable=(1, 2), check=_single_output)
def _layer_norm(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x, scale, bias = inputs[0], inputs[1], _arg(inputs, 2)
    axis = node.attr("axis", -1) % x.dim()
    shape = tuple(x.shape[axis:])
    bias = None if bias is None else bias.expand(shape)
    return F.layer_norm(x, shape, scale.expand(shape), bias, node.attr("epsilon", 1e-5))


@register("InstanceNormalization", learnable=(1, 2))
def _instance_norm(node: Node, inputs: list[Value], training: bool) -> Tensor:
    return F.instance_norm(inputs[0], weight=inputs[1], bias=inputs[2], eps=node.attr("epsilon", 1e-5))


# --- element-wise ------------------------------------------------------------------------------


def _div(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates


def _binary(fn, node: Node, inputs: list[Value], training: bool) -> Tensor:
    return fn(inputs[0], inputs[1])


def _variadic(fn, node: Node, inputs: list[Value], training: bool) -> Tensor:
    return functools.reduce(fn, inputs)


def _unary(fn, node: Node, inputs: list[Value], training: bool) -> Tensor:
    return fn(inputs[0])


BINARY = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div, "Pow": torch.pow,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
}
ARITHMETIC = ("Add", "Sub", "Mul", "Div")
VARIADIC = {"Sum": torch.add, "Max": torch.maximum, "Min": torch.minimum}
UNARY = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Sqrt": torch.sqrt,
    "Erf": torch.erf, "Neg": torch.neg, "Exp": torch.exp, "Log": torch.log, "Abs": torch.abs,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,
    "Sign": torch.sign, "Sin": torch.sin, "Cos": torch.cos, "Not": torch.logical_not,
    "Softplus": F.softplus, "Softsign": F.softsign, "Mish": F.mish,
    "Identity": lambda x: x,
}
for _op, _fn in BINARY.items():
    OPS[_op] = OpSpec(functools.partial(_binary, _fn), (0, 1) if _op in ARITHMETIC else (), min_size=2)
for _op, _fn in VARIADIC.items():
    OPS[_op] = OpSpec(functools.partial(_variadic, _fn))
for _op, _fn in UNARY.items():
    OPS[_op] = OpSpec(functools.partial(_unary, _fn))


@register("Mean")
def _mean(node: Node, inputs: list[Value], training: bool) -> Tensor:
    return functools.reduce(torch.add, inputs) / len(inputs)


@register("Where")
def _where(node: Node, inputs: list[Value], training: bool) -> Tensor:
    return torch.where(inputs[0], inputs[1], inputs[2])


# --- activations -------------------------------------------------------------------------------


@register("LeakyRelu")
def _leaky_relu(node: Node, inputs: list[Value], training: bool) -> Tensor:
    return F.leaky_relu(inputs[0], node.attr("alpha", 0.01))


@register("PRelu", learnable=(1,))
def _prelu(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x, slope = inputs
    return torch.where(x < 0, x * slope, x)


@register("Elu")
def _elu(node: Node, inputs: list[Value], training: bool) -> Tensor:
    return F.elu(inputs[0], node.attr("alpha", 1.0))


@register("Celu")
def _celu(node: Node, inputs: list[Value], training: bool) -> Tensor:
    return F.celu(inputs[0], node.attr("alpha", 1.0))


@register("Selu")
def _selu(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x = inputs[0]
    alpha, gamma = node.attr("alpha", 1.67326319217681884765625), node.attr("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@register("HardSigmoid")
def _hard_sigmoid(node: Node, inputs: list[Value], training: bool) -> Tensor:
    return torch.clamp(inputs[0] * node.attr("alpha", 0.2) + node.attr("beta", 0.5), 0.0, 1.0)


@register("HardSwish")
def _hard_swish(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x = inputs[0]
    return x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)


@register("Gelu")
def _gelu(node: Node, inputs: list[Value], training: bool) -> Tensor:
    return F.gelu(inputs[0], approximate=node.attr("approximate", "none"))


@register("Clip")
def _clip(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x = inputs[0]
    if node.opset < 11:
        return torch.clamp(x, node.attr("min", -math.inf), node.attr("max", math.inf))
    low, high = _arg(inputs, 1), _arg(inputs, 2)
    if low is None and high is None:
        return x
    return torch.clamp(x, low, high)


def _softmax_like(fn, node: Node, inputs: list[Value], training: bool) -> Tensor:
    """Opset 13+: along ``axis`` (default -1); before: over the flattened axes from ``axis`` on."""
    x = inputs[0]
    if node.opset >= 13:
        return fn(x, dim=node.attr("axis", -1))
    axis = node.attr("axis", 1) % max(x.dim(), 1)
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    return fn(flat, dim=1).reshape(x.shape)


OPS["Softmax"] = OpSpec(functools.partial(_softmax_like, torch.softmax))
OPS["LogSoftmax"] = OpSpec(functools.partial(_softmax_like, torch.log_softmax))


@register("Dropout")
def _dropout(node: Node, inputs: list[Value], training: bool) -> Result:
    x = inputs[0]
    ratio_input = _arg(inputs, 1)
    ratio = node.attr("ratio", 0.5) if node.opset < 12 else 0.5 if ratio_input is None else float(ratio_input.item())
    y = F.dropout(x, ratio, training=training) if ratio > 0 else x
    if len(node.outputs) < 2 or not node.outputs[1]:
        return y
    return y, (y != 0) if training else torch.ones_like(x, dtype=torch.bool)


# --- pooling -----------------------------------------------------------------------------------

MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pool_geometry(node: Node, x: Tensor) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = list(node.attr("kernel_shape"))
    dims = len(kernel)
    strides = list(node.attr("strides", [1] * dims))
    dilations = list(node.attr("dilations", [1] * dims))
    return kernel, strides, dilations, _spatial_pads(node, x.shape[2:], kernel, strides, dilations)


def _check_max_pool(node: Node) -> str | None:
    if len(node.outputs) > 1 and node.outputs[1]:
        return "Indices output"
    return None


@register("MaxPool", check=_check_max_pool)
def _max_pool(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x = inputs[0]
    kernel, strides, dilations, pads = _pool_geometry(node, x)
    x, padding = _split_pads(x, pads, -math.inf, [k // 2 for k in kernel])
    return MAX_POOL[len(kernel)](x, kernel, strides, padding, dilations, ceil_mode=bool(node.attr("ceil_mode", 0)))


def _check_average_pool(node: Node) -> str | None:
    if any(d != 1 for d in node.attr("dilations", [])):
        return "dilations"
    return None


@register("AveragePool", check=_check_average_pool)
def _average_pool(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x = inputs[0]
    kernel, strides, _, pads = _pool_geometry(node, x)
    include = bool(node.attr("count_include_pad", 0))
    ceil = bool(node.attr("ceil_mode", 0))
    pool = AVG_POOL[len(kernel)]
    padded, padding = _split_pads(x, pads, 0.0, [k // 2 for k in kernel])
    if padded is x:
        return pool(x, kernel, strides, padding, ceil_mode=ceil, count_include_pad=include)
    summed = pool(padded, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
    if include:
        return summed
    ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pads(pads))
    return summed / pool(ones, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)


@register("GlobalAveragePool")
def _global_average_pool(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x = inputs[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalMaxPool")
def _global_max_pool(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x = inputs[0]
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# --- shape and layout --------------------------------------------------------------------------


@register("Flatten")
def _flatten(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x = inputs[0]
    axis = node.attr("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@register("Reshape")
def _reshape(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x, shape = inputs[0], _ints(inputs[1])
    if not node.attr("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


@register("Transpose")
def _transpose(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x = inputs[0]
    return x.permute(node.attr("perm", list(reversed(range(x.dim())))))


@register("Concat")
def _concat(node: Node, inputs: list[Value], training: bool) -> Tensor:
    return torch.cat([t for t in inputs if t is not None], dim=node.attr("axis"))


@register("Split")
def _split(node: Node, inputs: list[Value], training: bool) -> Result:
    x, axis, parts = inputs[0], node.attr("axis", 0), len(node.outputs)
    sizes = _ints(_arg(inputs, 1)) if node.opset >= 13 else node.attr("split")
    if not sizes:
        length = x.shape[axis]
        size = math.ceil(length / node.attr("num_outputs", parts)) if node.opset >= 18 else length // parts
        sizes = size
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
def _slice(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x = inputs[0]
    if node.opset < 10:
        starts, ends = node.attr("starts"), node.attr("ends")
        axes, steps = node.attr("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes = _ints(_arg(inputs, 3)) or list(range(len(starts)))
        steps = _ints(_arg(inputs, 4)) or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        x = _slice_axis(x, axis % x.dim(), start, end, step)
    return x


PAD_MODES = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _check_pad(node: Node) -> str | None:
    mode = node.attr("mode", "constant")
    return None if mode == "constant" or mode in PAD_MODES else f"mode={mode}"


@register("Pad", check=_check_pad)
def _pad(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x = inputs[0]
    if node.opset < 11:
        pads, value = list(node.attr("pads")), node.attr("value", 0.0)
    else:
        pads = _ints(inputs[1])
        value = float(_arg(inputs, 2).item()) if _arg(inputs, 2) is not None else 0.0
        axes = _ints(_arg(inputs, 3))
        if axes:
            full = [0] * (2 * x.dim())
            for i, axis in enumerate(axes):
                full[axis % x.dim()], full[axis % x.dim() + x.dim()] = pads[i], pads[i + len(axes)]
            pads = full
    mode = node.attr("mode", "constant")
    torch_pads = _torch_pads(pads)
    if mode == "constant":
        return F.pad(x, torch_pads, value=value)
    while torch_pads and torch_pads[-1] == 0 and torch_pads[-2] == 0:
        torch_pads = torch_pads[:-2]
    return F.pad(x, torch_pads, mode=PAD_MODES[mode])


@register("Squeeze")
def _squeeze(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x = inputs[0]
    axes = _ints(_arg(inputs, 1)) if node.opset >= 13 else node.attr("axes")
    if not axes:
        return x.squeeze()
    return x.squeeze(tuple(a % x.dim() for a in axes))


@register("Unsqueeze")
def _unsqueeze(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x = inputs[0]
    axes = _ints(inputs[1]) if node.opset >= 13 else node.attr("axes")
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return x


@register("Expand")
def _expand(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x = inputs[0]
    return x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(inputs[1]))))


@register("Tile")
def _tile(node: Node, inputs: list[Value], training: bool) -> Tensor:
    return inputs[0].repeat(_ints(inputs[1]))


# --- shape-derived values ----------------------------------------------------------------------


@register("Shape")
def _shape(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x = inputs[0]
    dims = list(x.shape)[node.attr("start", 0): node.attr("end", None)]
    return torch.tensor(dims, dtype=torch.int64, device=x.device)


@register("Size")
def _size(node: Node, inputs: list[Value], training: bool) -> Tensor:
    return torch.tensor(inputs[0].numel(), dtype=torch.int64, device=inputs[0].device)


@register("ConstantOfShape")
def _constant_of_shape(node: Node, inputs: list[Value], training: bool) -> Tensor:
    value = node.attr("value")
    value = np.zeros(1, np.float32) if value is None else value
    fill = torch.from_numpy(np.array(value).reshape(-1)[:1].copy())
    return fill.to(inputs[0].device).expand(_ints(inputs[0])).clone()


@register("Gather")
def _gather(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x, index = inputs[0], inputs[1].long()
    axis = node.attr("axis", 0) % x.dim()
    index = torch.where(index < 0, index + x.shape[axis], index)
    picked = x.index_select(axis, index.reshape(-1))
    return picked.reshape(tuple(x.shape[:axis]) + tuple(index.shape) + tuple(x.shape[axis + 1:]))


@register("Range")
def _range(node: Node, inputs: list[Value], training: bool) -> Tensor:
    start, limit, delta = inputs
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


def _check_cast(node: Node) -> str | None:
    return None if node.attr("to") in TORCH_DTYPES else f"to={node.attr('to')}"


@register("Cast", check=_check_cast)
def _cast(node: Node, inputs: list[Value], training: bool) -> Tensor:
    return inputs[0].to(TORCH_DTYPES[node.attr("to")])


@register("CastLike")
def _cast_like(node: Node, inputs: list[Value], training: bool) -> Tensor:
    return inputs[0].to(inputs[1].dtype)


@register("ArgMax")
def _argmax(node: Node, inputs: list[Value], training: bool) -> Tensor:
    return torch.argmax(inputs[0], dim=node.attr("axis", 0), keepdim=bool(node.attr("keepdims", 1)))


REDUCE = {"ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax, "ReduceMin": torch.amin}


def _reduce(fn, node: Node, inputs: list[Value], training: bool) -> Tensor:
    """Axes come from an attribute before opset 18 (13 for ReduceSum), from an input after."""
    x = inputs[0]
    from_input = node.opset >= (13 if node.op_type == "ReduceSum" else 18)
    axes = _ints(_arg(inputs, 1)) if from_input else node.attr("axes")
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    return fn(x, dim=tuple(axes), keepdim=bool(node.attr("keepdims", 1)))


for _op, _fn in REDUCE.items():
    OPS[_op] = OpSpec(functools.partial(_reduce, _fn))


@register("Constant")
def _constant(node: Node, inputs: list[Value], training: bool) -> Tensor:
    raise AssertionError("Constant nodes are folded into buffers when the module is built")


# --- resizing ----------------------------------------------------------------------------------

INTERPOLATE = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _resize_mode(node: Node) -> tuple[str, bool | None] | str:
    """torch's (mode, align_corners) for the node's attributes, or why none matches."""
    mode = node.attr("mode", "nearest")
    if node.op_type == "Upsample" or node.opset < 11:
        return ("nearest", None) if mode == "nearest" else f"{node.op_type}-{node.opset} mode={mode}"
    coord = node.attr("coordinate_transformation_mode", "half_pixel")
    if node.attr("axes") is not None or node.attr("antialias", 0) or node.attr("exclude_outside", 0):
        return "axes/antialias/exclude_outside"
    if mode == "nearest":
        nearest = node.attr("nearest_mode", "round_prefer_floor")
        if coord == "asymmetric" and nearest == "floor":
            return "nearest", None
        if coord in ("half_pixel", "pytorch_half_pixel") and nearest == "round_prefer_ceil":
            return "nearest-exact", None
        return f"mode=nearest coordinate_transformation_mode={coord} nearest_mode={nearest}"
    if mode == "linear" and coord in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        return "linear", coord == "align_corners"
    if mode == "cubic" and coord in ("half_pixel", "align_corners") and node.attr("cubic_coeff_a", -0.75) == -0.75:
        return "bicubic", coord == "align_corners"
    return f"mode={mode} coordinate_transformation_mode={coord}"


def _check_resize(node: Node) -> str | None:
    mode = _resize_mode(node)
    return mode if isinstance(mode, str) else None


@register("Resize", "Upsample", check=_check_resize)
def _resize(node: Node, inputs: list[Value], training: bool) -> Tensor:
    x = inputs[0]
    if node.op_type == "Upsample" and node.opset < 9:
        scales, sizes = torch.tensor(node.attr("scales")), None
    elif node.op_type == "Upsample" or node.opset < 11:
        scales, sizes = inputs[1], None
    else:
        scales, sizes = _arg(inputs, 2), _arg(inputs, 3)
    mode, align = _resize_mode(node)
    dims = x.dim() - 2
    mode = INTERPOLATE[dims] if mode == "linear" else mode
    if sizes is not None and sizes.numel():
        return F.interpolate(x, size=_ints(sizes)[2:], mode=mode, align_corners=align)
    factors = [float(s) for s in scales.reshape(-1).tolist()]
    if factors[:2] != [1.0, 1.0]:
        raise UnsupportedModelError(f"{node.op_type} '{node.name}' scales the batch or channel axis")
    return F.interpolate(x, scale_factor=factors[2:], mode=mode, align_corners=align, recompute_scale_factor=False)


# --- the module --------------------------------------------------------------------------------


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    attrs = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, list):
            value = [v.decode() if isinstance(v, bytes) else v for v in value]
        attrs[attribute.name] = value
    return attrs


def _constant_value(node: Node) -> np.ndarray:
    for key, dtype in (("value", None), ("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in node.attrs:
            return np.array(node.attrs[key], dtype=dtype)
    raise UnsupportedModelError(f"Constant '{node.name}': only numeric values are supported, not {sorted(node.attrs)}")


def compile_nodes(model: onnx.ModelProto) -> list[Node]:
    version = model_opset(model)
    return [
        Node(n.op_type, n.name, tuple(n.input), tuple(n.output), _attributes(n), version,
             "" if n.domain == "ai.onnx" else n.domain)
        for n in model.graph.node
    ]


def check_supported(model: onnx.ModelProto) -> None:
    """Raise UnsupportedModelError naming every op (or attribute form) the executor cannot run."""
    problems: dict[str, int] = defaultdict(int)
    for node in compile_nodes(model):
        spec = OPS.get(node.op_type)
        if node.domain or spec is None:
            problems[f"{node.domain}::{node.op_type}" if node.domain else node.op_type] += 1
        elif spec.check is not None and (reason := spec.check(node)):
            problems[f"{node.op_type} ({reason})"] += 1
    if problems:
        listed = ", ".join(f"{op} x{count}" if count > 1 else op for op, count in sorted(problems.items()))
        raise UnsupportedModelError(f"the torch executor does not support: {listed}")


def learnable_initializers(model: onnx.ModelProto) -> set[str]:
    """Float initializers that every reader takes at a learnable position (see :class:`OpSpec`)."""
    floats = {t.name: math.prod(t.dims) for t in model.graph.initializer if t.data_type in FLOAT_TYPES}
    verdicts: dict[str, list[bool]] = defaultdict(list)
    for node in model.graph.node:
        spec = OPS.get(node.op_type)
        for position, name in enumerate(node.input):
            if name in floats:
                verdicts[name].append(spec is not None and position in spec.learnable and floats[name] >= spec.min_size)
    return {name for name, flags in verdicts.items() if all(flags)}


def _attribute_key(name: str, taken: set[str]) -> str:
    base = "t_" + re.sub(r"\W", "_", name)
    key, suffix = base, 1
    while key in taken:
        key, suffix = f"{base}_{suffix}", suffix + 1
    return key


def _to_torch(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(array, copy=True))


class OnnxModule(nn.Module):
    """An ONNX model as a differentiable torch module; parameters keep their initializer names.

    ``module(x)`` (positional in graph-input order, or by input name) returns the graph's output,
    or a tuple when it has several. ``tensor_hooks`` maps a tensor name to a function applied to
    that tensor as soon as it is computed (used to insert virtual channel scales).
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        check_supported(model)
        graph = model.graph
        initializer_names = {t.name for t in graph.initializer}
        self.input_names = [v.name for v in graph.input if v.name not in initializer_names]
        self.output_names = [v.name for v in graph.output]
        self.keys: dict[str, str] = {}
        self.initializer_names: list[str] = [t.name for t in graph.initializer]
        self.tensor_hooks: dict[str, Callable[[Tensor], Tensor]] = {}
        learnable = learnable_initializers(model)
        for tensor in graph.initializer:
            self._add(tensor.name, numpy_helper.to_array(tensor), tensor.name in learnable)
        self.nodes: list[Node] = []
        for node in compile_nodes(model):
            if node.op_type == "Constant":
                self._add(node.outputs[0], _constant_value(node), False)
            else:
                self.nodes.append(node)
        self._release = _release_plan(self.nodes, set(self.output_names))

    def _add(self, name: str, array: np.ndarray, learnable: bool) -> None:
        key = _attribute_key(name, set(self.keys.values()))
        self.keys[name] = key
        if learnable:
            self.register_parameter(key, nn.Parameter(_to_torch(array)))
        else:
            self.register_buffer(key, _to_torch(array))

    def initializer(self, name: str) -> Tensor:
        """The parameter or buffer holding the ONNX initializer (or Constant output) ``name``."""
        return getattr(self, self.keys[name])

    def onnx_parameters(self) -> dict[str, nn.Parameter]:
        """Trainable tensors by ONNX initializer name."""
        return {name: t for name in self.initializer_names if isinstance(t := self.initializer(name), nn.Parameter)}

    def initializer_arrays(self) -> dict[str, np.ndarray]:
        """Current values of every initializer (parameters and buffers), as NumPy, by name."""
        return {name: self.initializer(name).detach().cpu().numpy() for name in self.initializer_names}

    def forward(self, *args: Tensor, **named: Tensor) -> Tensor | tuple[Tensor, ...]:
        env: dict[str, Tensor] = {name: self.initializer(name) for name in self.keys}
        env.update(zip(self.input_names, args))
        env.update(named)
        missing = [name for name in self.input_names if name not in env]
        if missing:
            raise ValueError(f"missing model input(s): {', '.join(missing)}")
        for index, node in enumerate(self.nodes):
            self._run(node, env)
            for name in self._release[index]:
                env.pop(name, None)
        results = tuple(env[name] for name in self.output_names)
        return results[0] if len(results) == 1 else results

    def _run(self, node: Node, env: dict[str, Tensor]) -> None:
        inputs = [env[name] if name else None for name in node.inputs]
        result = OPS[node.op_type].run(node, inputs, self.training)
        values = (result,) if isinstance(result, Tensor) else tuple(result)
        for name, value in zip(node.outputs, values):
            if name:
                hook = self.tensor_hooks.get(name)
                env[name] = hook(value) if hook is not None else value


def _release_plan(nodes: list[Node], keep: set[str]) -> list[list[str]]:
    """For each node, the intermediate tensors no later node reads (freed to save memory)."""
    last_use: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.inputs:
            last_use[name] = index
    plan: list[list[str]] = [[] for _ in nodes]
    produced = {name for node in nodes for name in node.outputs}
    for name, index in last_use.items():
        if name in produced and name not in keep:
            plan[index].append(name)
    return plan
