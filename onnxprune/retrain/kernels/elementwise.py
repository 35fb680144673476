"""Element-wise ops: arithmetic, comparisons and logic (broadcasting), unary maths, casts.

Most are one torch function each, listed in the tables below; integer semantics that differ from
torch's defaults (Div truncates, Mod's two modes, BitShift on unsigned types) get their own kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import onnx
import torch
import torch.nn.functional as F
from torch import Tensor

from onnxprune.retrain.kernels import Inputs, register

if TYPE_CHECKING:
    from onnxprune.retrain.interpreter import Node

TORCH_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8, onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.INT16: torch.int16, onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.BOOL: torch.bool,
}
INT64_MAX = 2**63 - 1


def _div(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates


def _identity(x: Tensor) -> Tensor:
    return x


BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div, "Pow": torch.pow,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
}
ARITHMETIC = ("Add", "Sub", "Mul", "Div")
VARIADIC: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"Sum": torch.add, "Max": torch.maximum, "Min": torch.minimum}
UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Sqrt": torch.sqrt,
    "Erf": torch.erf, "Neg": torch.neg, "Exp": torch.exp, "Log": torch.log, "Abs": torch.abs,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,
    "Sign": torch.sign, "Sin": torch.sin, "Cos": torch.cos, "Not": torch.logical_not, "IsNaN": torch.isnan,
    "Softplus": F.softplus, "Softsign": F.softsign, "Mish": F.mish,
    "Identity": _identity,
}


def _fold(fn: Callable[[Tensor, Tensor], Tensor], node: Node, inputs: Inputs, training: bool) -> Tensor:
    """A binary op on two inputs, a variadic one folded left over all of them."""
    return functools.reduce(fn, inputs)


def _unary(fn: Callable[[Tensor], Tensor], node: Node, inputs: Inputs, training: bool) -> Tensor:
    return fn(inputs[0])


for _op, _binary in {**BINARY, **VARIADIC}.items():
    _spec = register(_op, learnable=(0, 1), min_size=2) if _op in ARITHMETIC else register(_op)
    _spec(functools.partial(_fold, _binary))
for _op, _function in UNARY.items():
    register(_op)(functools.partial(_unary, _function))


@register("Mean")
def _mean(node: Node, inputs: Inputs, training: bool) -> Tensor:
    return functools.reduce(torch.add, inputs) / len(inputs)


@register("Where")
def _where(node: Node, inputs: Inputs, training: bool) -> Tensor:
    return torch.where(inputs[0], inputs[1], inputs[2])


@register("Mod")
def _mod(node: Node, inputs: Inputs, training: bool) -> Tensor:
    """fmod=1: the remainder takes the dividend's sign (C fmod); fmod=0 (integers): the divisor's."""
    return (torch.fmod if node.attr("fmod", 0) else torch.remainder)(inputs[0], inputs[1])


@register("BitShift")
def _bit_shift(node: Node, inputs: Inputs, training: bool) -> Tensor:
    """Shifted in int64, which holds the bits of every unsigned type (torch shifts only uint8);
    a right shift is made logical so that a uint64 with its top bit set shifts in zeros."""
    x, amount = inputs[0], inputs[1].to(torch.int64)
    wide = x.to(torch.int64)
    if node.attr("direction") == "LEFT":
        return (wide << amount).to(x.dtype)
    logical = ((wide >> 1) & INT64_MAX) >> (amount - 1).clamp(min=0)
    return torch.where(amount > 0, logical, wide).to(x.dtype)


@register("IsInf")
def _is_inf(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    found = torch.isinf(x)
    if not node.attr("detect_positive", 1):
        found &= x < 0
    if not node.attr("detect_negative", 1):
        found &= x > 0
    return found


def _check_cast(node: Node) -> str | None:
    return None if node.attr("to") in TORCH_DTYPES else f"to={node.attr('to')}"


@register("Cast", check=_check_cast)
def _cast(node: Node, inputs: Inputs, training: bool) -> Tensor:
    return inputs[0].to(TORCH_DTYPES[node.attr("to")])


@register("CastLike")
def _cast_like(node: Node, inputs: Inputs, training: bool) -> Tensor:
    return inputs[0].to(inputs[1].dtype)
