"""Merge a constant per-channel Mul, Add, Sub or Div into the Conv, ConvTranspose, Gemm or MatMul beside it.

Before, after the op::             Before, before the op::

    y = Conv(x, W, b)                  z = Sub(x, mean)
    z = Mul(y, c)                      y = Conv(z, W, b)
After::                            After::

    z = Conv(x, W', b')                y = Conv(x, W', b')

Covers Caffe BN+Scale exported as Mul+Add, layer-scale gammas and input normalisation.

Maths: each rewritten node is ``z = s v + t`` per channel in its variable operand ``v``:
``v * c``: s = c; ``v + c``: t = c; ``v - c``: t = -c; ``c - v``: s = -1, t = c; ``v / c``: s = 1/c.
``c / v`` is not affine in ``v`` and is skipped. After the op, ``s (W x + b) + t`` gives
W'[o] = s[o] W[o], b' = s b + t. Before it, ``W (s x + t) + b`` gives b' = b + W t (with the
original W), then W' = W s along the input channels. Computed in float64, written back in the
op's dtype.

Preconditions: exactly one operand is a constant of the variable operand's dtype; the tensor
between the node and the op has one reader and is not a graph output; with r the rank of the
variable operand (from inferred shapes), the constant right-aligned to rank r is 1 on every axis
but the op's channel axis (1 for Conv/ConvTranspose, r-1 for Gemm/MatMul), where it is 1 or the
channel count, and its rank is at most r, so it never broadcasts the tensor up (a [C] constant
beside an NCHW tensor scales W, not C, and is rejected); the variable operand's channel dimension
is the op's channel count; no division by 0; an input shift only where padding cannot change the
border; the folded parameters are finite in the op's dtype. Merging after the op is preferred.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core.graph import (
    NotCandidate,
    Skip,
    constant_value,
    consumers,
    is_private,
    producer,
    remove_node,
)
from onnxprune.core.linear import LINEAR_OPS, LinearOp, as_linear
from onnxprune.passes.base import PassReport, rewrite_nodes

log = logging.getLogger(__name__)

NAME = "merge_affine"
AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


@dataclass
class _Merge:
    node: gs.Node
    keep: int
    op: LinearOp
    side: str


def run(graph: gs.Graph) -> PassReport:
    """Merge every constant affine node that sits next to a linear op it can be folded into."""
    return rewrite_nodes(graph, NAME, AFFINE_OPS, _match, _apply)


def _match(graph: gs.Graph, node: gs.Node) -> _Merge:
    keep, scale, shift = _terms(node)
    if _ends_gelu(node):
        raise Skip("it completes a GELU, x (1 + erf(x / sqrt 2)) / 2, that runtimes fuse into one op")
    reasons = []
    sides: tuple[tuple[str, Callable, Callable], ...] = (
        ("after", _upstream, _merge_after),
        ("before", _downstream, _merge_before),
    )
    for side, neighbour, merge in sides:
        linear = neighbour(node, keep)
        if linear is None:
            continue
        try:
            op = merge(graph, node, keep, linear, scale, shift)
            op.check_finite()
            return _Merge(node, keep, op, side)
        except Skip as reason:
            reasons.append(f"{side} {linear.op} '{linear.name}': {reason}")
    raise Skip("; ".join(reasons) or "no adjacent linear op")


def _ends_gelu(node: gs.Node) -> bool:
    """``node`` is the Mul by 1/2 closing ``x * (1 + erf(x / sqrt 2))`` (onnxruntime's GeluFusion pattern)."""
    if node.op != "Mul":
        return False
    product = next((producer(tensor) for tensor in node.inputs if producer(tensor) is not None), None)
    if product is None or product.op != "Mul":
        return False
    return any(_is_erf_plus_one(producer(tensor)) for tensor in product.inputs)


def _is_erf_plus_one(node: gs.Node | None) -> bool:
    return node is not None and node.op == "Add" and any(
        source is not None and source.op == "Erf" for source in map(producer, node.inputs)
    )


def _apply(graph: gs.Graph, merge: _Merge) -> str:
    merge.op.commit(graph)
    # Cannot fail: the tensor between the node and the op is private, as _merge_after/_merge_before checked.
    remove_node(graph, merge.node, keep_input=merge.keep)
    op = merge.op
    return f"merged {merge.node.op} '{merge.node.name}' into {op.kind} '{op.node.name}' ({merge.side} it)"


def _terms(node: gs.Node) -> tuple[int, np.ndarray | None, np.ndarray | None]:
    """The variable operand's index and the constant's ``(s, t)`` in ``z = s v + t`` (None: 1 or 0)."""
    values = [constant_value(tensor) for tensor in node.inputs]
    constants = [(index, value) for index, value in enumerate(values) if value is not None]
    if len(values) != 2 or len(constants) != 1:
        raise NotCandidate("needs exactly one constant and one variable operand")
    [(constant, value)] = constants
    keep = 1 - constant
    variable = node.inputs[keep]
    if variable.dtype is None or not np.issubdtype(value.dtype, np.floating) or value.dtype != variable.dtype:
        raise Skip(f"constant of dtype {value.dtype} beside '{variable.name}' of dtype {variable.dtype}")
    value = value.astype(np.float64)
    constant_first = keep == 1
    if node.op == "Mul":
        return keep, value, None
    if node.op == "Add":
        return keep, None, value
    if node.op == "Sub":
        return (keep, -np.ones(()), value) if constant_first else (keep, None, -value)
    if constant_first:
        raise Skip("c / x is not affine in x")
    if not np.all(value):
        raise Skip("divides by a constant that contains 0")
    return keep, 1.0 / value, None


def _upstream(node: gs.Node, keep: int) -> gs.Node | None:
    linear = producer(node.inputs[keep])
    return linear if linear is not None and linear.op in LINEAR_OPS else None


def _downstream(node: gs.Node, keep: int) -> gs.Node | None:
    return next((linear for linear in consumers(node.outputs[0]) if linear.op in LINEAR_OPS), None)


def _merge_after(
    graph: gs.Graph, node: gs.Node, keep: int, linear: gs.Node, scale: np.ndarray | None, shift: np.ndarray | None
) -> LinearOp:
    source = node.inputs[keep]
    if not is_private(graph, source):
        raise Skip(f"its output '{source.name}' has other readers")
    op = as_linear(linear)
    if scale is not None:
        op.scale_output(_per_channel(scale, source, op.channel_axis, op.out_channels))
    if shift is not None:
        op.shift_output(_per_channel(shift, source, op.channel_axis, op.out_channels))
    return op


def _merge_before(
    graph: gs.Graph, node: gs.Node, keep: int, linear: gs.Node, scale: np.ndarray | None, shift: np.ndarray | None
) -> LinearOp:
    target, source = node.outputs[0], node.inputs[keep]
    if not is_private(graph, target):
        raise Skip(f"the {node.op} output '{target.name}' has other readers")
    if linear.inputs[0] is not target:
        raise Skip(f"the {node.op} output is not its data input")
    op = as_linear(linear)
    if shift is not None:
        op.shift_input(_per_channel(shift, source, op.channel_axis, op.in_channels))
    if scale is not None:
        op.scale_input(_per_channel(scale, source, op.channel_axis, op.in_channels))
    return op


def _per_channel(values: np.ndarray, tensor: gs.Tensor, axis: int, channels: int) -> np.ndarray:
    """``values`` as one number per channel of ``tensor``, or Skip when broadcasting does anything else."""
    if tensor.shape is None:
        raise Skip(f"the rank of '{tensor.name}' is unknown")
    tensor_rank = len(tensor.shape)
    if values.ndim > tensor_rank:
        raise Skip(f"a rank-{values.ndim} constant would broadcast the rank-{tensor_rank} tensor up")
    axis %= tensor_rank
    if tensor.shape[axis] != channels:
        raise Skip(f"'{tensor.name}' has {tensor.shape[axis]} on axis {axis}, not the {channels} channels")
    aligned = (1,) * (tensor_rank - values.ndim) + values.shape
    if aligned[axis] not in (1, channels) or any(size != 1 for index, size in enumerate(aligned) if index != axis):
        raise Skip(f"a constant of shape {values.shape} is not per channel on axis {axis} of rank {tensor_rank}")
    return np.broadcast_to(values.reshape(-1), (channels,)).copy()
