"""Fold an inference-mode BatchNormalization into the Conv, ConvTranspose, Gemm or MatMul beside it.

Before (a), BN after the op::          Before (b), BN before the op::

    y = Conv(x, W, b)                      z = BatchNormalization(x, g, beta, mean, var)
    z = BatchNormalization(y, g, beta,     y = Conv(z, W, b)
                           mean, var)
After::                                After::

    z = Conv(x, W', b')                    y = Conv(x, W', b')

Maths: in inference form BN is an affine map along channel axis 1,

    BN(y)[c] = s[c] y[c] + t[c],    s = g / sqrt(var + eps),    t = beta - mean s

(a) after the op:  W'[o] = s[o] W[o],   b' = s b + t;
(b) before it:     W'[o, j] = W[o, j] s[c(o, j)],   b'[o] = b[o] + sum_{j,k} W[o, j, k] t[c(o, j)]
    (the shift is applied with the original W, then the scale), where c(o, j) is the input
    channel that weight column j of output o reads. All of it is computed in float64 and written
    back in the op's dtype.

Preconditions: g, beta, mean, var constant, 1-D and of the op's channel count; inference form
(opset 7-8 ``spatial=1``, opset >= 14 ``training_mode=0``) and only output Y declared
(a BN that declares its running-statistics outputs normalises with batch statistics);
the tensor between BN and the op has no other reader and is not a graph output; BN's channel axis 1
is the op's channel axis (always for Conv/ConvTranspose; Gemm/MatMul only on rank-2 tensors);
for (b) the op has no padding that an input shift would change; the folded parameters are finite
in the op's dtype. (a) is preferred over (b). A BN with no linear neighbour is left alone:
onnxruntime runs it as one fused pass, and rewriting it as Mul/Add would enable no merge here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core.graph import Skip, consumers, is_private, producer, rank, remove_node
from onnxprune.core.linear import LINEAR_OPS, LinearOp, as_linear, batchnorm_affine
from onnxprune.passes.base import PassReport, rewrite_nodes

log = logging.getLogger(__name__)

NAME = "fold_batchnorm"
NO_NEIGHBOUR = "no adjacent linear op; onnxruntime runs it as one fused pass"


@dataclass
class _Fold:
    bn: gs.Node
    op: LinearOp
    side: str


def run(graph: gs.Graph) -> PassReport:
    """Fold every foldable BatchNormalization; the report says why the others were kept."""
    return rewrite_nodes(graph, NAME, ("BatchNormalization",), _match, _apply)


def _match(graph: gs.Graph, bn: gs.Node) -> _Fold:
    scale, shift = batchnorm_affine(bn)
    reasons = []
    sides: tuple[tuple[str, Callable, Callable], ...] = (
        ("after", _upstream, _fold_after),
        ("before", _downstream, _fold_before),
    )
    for side, neighbour, fold in sides:
        node = neighbour(bn)
        if node is None:
            continue
        try:
            op = fold(graph, bn, node, scale, shift)
            op.check_finite()
            return _Fold(bn, op, side)
        except Skip as reason:
            reasons.append(f"{side} {node.op} '{node.name}': {reason}")
    raise Skip("; ".join(reasons) or NO_NEIGHBOUR)


def _apply(graph: gs.Graph, fold: _Fold) -> str:
    fold.op.commit(graph)
    # Cannot fail: the tensor between BN and the op is private, as _fold_after/_fold_before checked.
    remove_node(graph, fold.bn)
    return f"folded BatchNormalization '{fold.bn.name}' into {fold.op.kind} '{fold.op.node.name}' ({fold.side} it)"


def _upstream(bn: gs.Node) -> gs.Node | None:
    node = producer(bn.inputs[0])
    return node if node is not None and node.op in LINEAR_OPS else None


def _downstream(bn: gs.Node) -> gs.Node | None:
    return next((node for node in consumers(bn.outputs[0]) if node.op in LINEAR_OPS), None)


def _fold_after(graph: gs.Graph, bn: gs.Node, node: gs.Node, scale: np.ndarray, shift: np.ndarray) -> LinearOp:
    source = bn.inputs[0]
    if not is_private(graph, source):
        raise Skip(f"its output '{source.name}' has other readers")
    op = as_linear(node)
    _check_channels(op, source, scale, op.out_channels)
    op.scale_output(scale)
    op.shift_output(shift)
    return op


def _fold_before(graph: gs.Graph, bn: gs.Node, node: gs.Node, scale: np.ndarray, shift: np.ndarray) -> LinearOp:
    target = bn.outputs[0]
    if not is_private(graph, target):
        raise Skip(f"the BatchNormalization output '{target.name}' has other readers")
    if node.inputs[0] is not target:
        raise Skip("the BatchNormalization output is not its data input")
    op = as_linear(node)
    _check_channels(op, target, scale, op.in_channels)
    if np.any(shift):
        op.shift_input(shift)
    op.scale_input(scale)
    return op


def _check_channels(op: LinearOp, tensor: gs.Tensor, scale: np.ndarray, channels: int) -> None:
    """BN works on axis 1: it must be the op's channel axis, with the same channel count."""
    if op.channel_axis != 1 and rank(tensor) != 2:
        raise Skip(f"BatchNormalization uses axis 1, {op.kind} the last axis of a rank-{rank(tensor)} tensor")
    if scale.shape != (channels,):
        raise Skip(f"BatchNormalization has {scale.shape[0]} channels, {op.kind} has {channels}")
