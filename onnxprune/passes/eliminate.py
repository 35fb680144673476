"""Remove nodes that compute their input unchanged.

Before:  x -> Identity | Dropout | Reshape(same shape) | Transpose(identity perm) | Cast(same type)
              | Pad(all zero) | Slice(whole tensor) | Expand(same shape)
              | Mul(1) | Add(0) | Sub(0) | Div(1) -> y -> consumers
After:   x -> consumers        (``remove_node``: every reader of y reads x instead)

Maths: each node is ``y = x`` elementwise with ``shape(y) == shape(x)`` and ``dtype(y) ==
dtype(x)``. For the arithmetic ones, ``x * 1 = x / 1 = x - 0 = x`` bit for bit and ``x + 0 = x``
except that a ``-0.0`` element becomes ``+0.0`` (equal under ``==``); the constant's broadcast
must not enlarge ``x``: its shape, right-aligned against ``shape(x)``, has no more axes and each
of its dimensions is 1 or equals the (static) dimension of ``x``. ``Expand`` obeys the same rule.

Preconditions (each matcher raises ``Skip`` with the reason otherwise):

* the operands that decide the no-op (perm, pads, starts/ends/axes/steps, shape, the neutral
  constant) are known constants, in the form the model's opset uses (Pad pads: attribute < 11,
  input >= 11; Slice: attributes < 10, inputs >= 10);
* shapes are the inferred ones (static where a dimension is compared with a number);
* Dropout: ``training_mode`` (opset >= 12) absent or a constant false, the mask output unused;
* a node whose output is a graph output is removed only when ``remove_node`` can give that name
  to the producer of its input (never when the input is a graph input or an initializer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.core.graph import (
    NotCandidate,
    Skip,
    constant_value,
    is_graph_output,
    producer,
    rank,
    remove_node,
    static_shape,
)
from onnxprune.passes.base import PassReport, rewrite_nodes

log = logging.getLogger(__name__)

NAME = "eliminate"
INT64_MAX = np.iinfo(np.int64).max

Dim = int | str | None


def run(graph: gs.Graph) -> PassReport:
    return rewrite_nodes(graph, NAME, MATCHERS, _match, _apply)


def _match(graph: gs.Graph, node: gs.Node) -> tuple[gs.Node, int]:
    """The node and the index of the input its output equals."""
    return node, MATCHERS[node.op](graph, node)


def _apply(graph: gs.Graph, found: tuple[gs.Node, int]) -> str:
    node, keep = found
    if not remove_node(graph, node, keep):
        raise Skip("its output is a graph output and its input cannot take that name")
    return f"removed no-op {node.op} '{node.name}'"


def _identity(graph: gs.Graph, node: gs.Node) -> int:
    return 0


def _dropout(graph: gs.Graph, node: gs.Node) -> int:
    if len(node.inputs) > 2 and not node.inputs[2].is_empty():
        training = constant_value(node.inputs[2])
        if training is None or training.any():
            raise Skip("training_mode is not a constant false")
    if len(node.outputs) > 1 and (node.outputs[1].outputs or is_graph_output(graph, node.outputs[1])):
        raise Skip("its mask output is used")
    return 0


def _reshape(graph: gs.Graph, node: gs.Node) -> int:
    source = node.inputs[0]
    target = constant_value(node.inputs[1])
    if target is not None and source.shape is not None:
        if _reshape_keeps(list(source.shape), [int(d) for d in target], node.attrs.get("allowzero", 0)):
            return 0
    elif static_shape(source) is not None and static_shape(source) == static_shape(node.outputs[0]):
        return 0
    raise Skip("target shape not proven equal to the input shape")


def _reshape_keeps(shape: list[Dim], target: list[int], allowzero: int) -> bool:
    """Every target entry copies its input dimension: 0 (without allowzero), equal, or one -1."""
    if len(shape) != len(target) or target.count(-1) > 1 or (-1 in target and 0 in shape):
        return False
    return all((want == 0 and not allowzero) or want == -1 or want == dim for dim, want in zip(shape, target))


def _transpose(graph: gs.Graph, node: gs.Node) -> int:
    perm = node.attrs.get("perm")
    if perm is None:
        data_rank = rank(node.inputs[0])
        if data_rank is None or data_rank > 1:
            raise Skip("no perm (reverses the axes) and rank is not known to be <= 1")
    elif list(perm) != list(range(len(perm))):
        raise Skip(f"perm {list(perm)} is not the identity")
    return 0


def _cast(graph: gs.Graph, node: gs.Node) -> int:
    source = node.inputs[0]
    dtype = source.values.dtype if isinstance(source, gs.Constant) else source.dtype
    if dtype is None or not isinstance(dtype, np.dtype):
        raise Skip("input dtype unknown")
    if dtype != onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"]):
        raise Skip(f"casts {dtype} to another type")
    return 0


def _pad(graph: gs.Graph, node: gs.Node) -> int:
    if graph.opset < 11:
        pads = node.attrs.get("pads")
    else:
        pads = constant_value(node.inputs[1])
    if pads is None:
        raise Skip("pads are not a known constant")
    if np.any(np.asarray(pads) != 0):
        raise Skip("pads are not all zero")
    return 0


def _slice(graph: gs.Graph, node: gs.Node) -> int:
    shape = node.inputs[0].shape
    if shape is None:
        raise Skip("input rank unknown")
    starts, ends, axes, steps = _slice_operands(graph, node)
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise Skip("starts, ends, axes and steps differ in length")
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if not _takes_all(int(start), int(end), int(step), shape[int(axis)]):
            raise Skip(f"axis {int(axis)} is not taken whole")
    return 0


def _slice_operands(
    graph: gs.Graph, node: gs.Node
) -> tuple[Sequence[int], Sequence[int], Sequence[int] | None, Sequence[int] | None]:
    """starts, ends, axes, steps (the last two None when omitted), from attributes (< 10) or inputs."""
    operands: list[Sequence[int] | None]
    if graph.opset < 10:
        operands = [node.attrs.get(key) for key in ("starts", "ends", "axes")] + [None]
    else:
        operands = [_optional_constant(node, index) for index in range(1, 5)]
    starts, ends, axes, steps = operands
    if starts is None or ends is None:
        raise Skip("starts/ends missing")
    return starts, ends, axes, steps


def _optional_constant(node: gs.Node, index: int) -> list[int] | None:
    """Input ``index`` as a flat list, None when omitted; Skip when it is not a constant."""
    tensor = node.inputs[index] if index < len(node.inputs) else None
    if tensor is None or tensor.is_empty():
        return None
    value = constant_value(tensor)
    if value is None:
        raise Skip(f"input {index} is not a constant")
    return value.reshape(-1).tolist()


def _takes_all(start: int, end: int, step: int, dim: Dim) -> bool:
    """Slicing ``[start:end:step]`` keeps every element of an axis of length ``dim``."""
    if step != 1:
        return False
    if not isinstance(dim, int):
        return start == 0 and end == INT64_MAX
    return (start if start >= 0 else start + dim) <= 0 and end >= dim


def _expand(graph: gs.Graph, node: gs.Node) -> int:
    target = constant_value(node.inputs[1])
    shape = node.inputs[0].shape
    if target is None or shape is None:
        raise Skip("target shape or input shape unknown")
    if not _broadcasts_into(target.reshape(-1).tolist(), list(shape)):
        raise Skip(f"expanding to {target.tolist()} enlarges the input")
    return 0


def _broadcasts_into(small: Sequence[int], shape: Sequence[Dim]) -> bool:
    """Broadcasting ``small`` against ``shape`` gives ``shape`` (dims are 1 or equal, no new axes)."""
    if len(small) > len(shape):
        return False
    aligned = shape[len(shape) - len(small) :]
    return all(want == 1 or (isinstance(dim, int) and want == dim) for want, dim in zip(small, aligned))


def _neutral(neutral: int, positions: Sequence[int], graph: gs.Graph, node: gs.Node) -> int:
    """``x op c`` (or ``c op x`` for commutative ops) where ``c`` is all ``neutral``.

    Arithmetic with a non-neutral or no constant is ordinary: NotCandidate, unreported.
    """
    values = [constant_value(tensor) for tensor in node.inputs]
    if all(value is not None for value in values):
        raise NotCandidate("both operands are constants (left to fold_constants)")
    for position in positions:
        constant, kept = values[position], node.inputs[1 - position]
        if constant is None:
            continue
        if not np.all(constant == neutral):
            raise NotCandidate(f"constant is not all {neutral}")
        if constant.ndim and (kept.shape is None or not _broadcasts_into(constant.shape, list(kept.shape))):
            raise Skip(f"constant of shape {list(constant.shape)} may enlarge the other operand")
        if kept.dtype is not None and kept.dtype != constant.dtype:
            raise Skip("operand dtypes differ")
        return 1 - position
    raise NotCandidate("no constant operand in a neutral position")


def _repeated_activation(graph: gs.Graph, node: gs.Node) -> int:
    """Relu(Relu(x)) = Relu(x): the outer one is a no-op (left behind when a residual unit is bypassed)."""
    upstream = producer(node.inputs[0])
    if upstream is None or upstream.op != node.op:
        raise NotCandidate("input is not produced by the same activation")
    return 0


MATCHERS: dict[str, Callable[[gs.Graph, gs.Node], int]] = {
    "Relu": _repeated_activation,
    "Identity": _identity,
    "Dropout": _dropout,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Cast": _cast,
    "Pad": _pad,
    "Slice": _slice,
    "Expand": _expand,
    "Mul": partial(_neutral, 1, (1, 0)),
    "Add": partial(_neutral, 0, (1, 0)),
    "Sub": partial(_neutral, 0, (1,)),
    "Div": partial(_neutral, 1, (1,)),
}
