"""Give Reshape a constant target when its only run-time entry copies a dimension of its own input.

Before::

    n = Unsqueeze(Gather(Shape(t), k))          # t's dim k is x's dim j (same symbol)
    s = Concat(c0, .., n, .., c4)                # n at position j
    y = Reshape(x, s)

After::

    y = Reshape(x, [c0, .., 0, .., c4])          # 0 copies x's dim j (allowzero = 0)

Exporters write ``x.view(x.size(0), g, c, h, w)``; with a dynamic batch the target stays a
run-time computation, which blocks channel analysis (the channel shuffle of ShuffleNet) and costs
a few nodes. Copying the same dimension with 0 is exactly what the target computed.

Preconditions: ``allowzero`` is 0; the target is the private output of a Concat of int64
pieces, every piece a constant or ``Unsqueeze(Gather(Shape(t), k))`` (or
``Slice(Shape(t), k, k + 1)``) whose dimension provably equals the input's dimension at that
position (the same tensor and axis, or the same symbolic name). Constant 0 and -1 entries keep
their meaning.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core.graph import (
    NotCandidate,
    Skip,
    constant_value,
    is_private,
    new_constant,
    producer,
)
from onnxprune.passes.base import PassReport, rewrite_nodes

log = logging.getLogger(__name__)

NAME = "canonicalize_reshape"


def run(graph: gs.Graph) -> PassReport:
    return rewrite_nodes(graph, NAME, ("Reshape",), _match, _apply)


def _match(graph: gs.Graph, node: gs.Node) -> tuple[gs.Node, np.ndarray]:
    target = node.inputs[1]
    concat = producer(target)
    if constant_value(target) is not None or concat is None or concat.op != "Concat":
        raise NotCandidate("the target is not a run-time Concat")
    if int(node.attrs.get("allowzero", 0)):
        raise Skip("allowzero = 1: 0 would mean an empty dimension")
    if not is_private(graph, target):
        raise Skip(f"target '{target.name}' has other readers")
    values: list[int] = []
    for piece in concat.inputs:
        values.extend(_piece(node.inputs[0], len(values), piece))
    return node, np.array(values, dtype=np.int64)


def _apply(graph: gs.Graph, found: tuple[gs.Node, np.ndarray]) -> str:
    node, values = found
    node.inputs[1] = new_constant(graph, f"{node.name}.shape", values)
    return f"Reshape '{node.name}' target made constant {values.tolist()}"


def _piece(data: gs.Tensor, position: int, piece: gs.Tensor) -> list[int]:
    """A constant piece's values, or [0] when the piece copies ``data``'s dim at ``position``."""
    value = constant_value(piece)
    if value is not None:
        return [int(v) for v in value.reshape(-1)]
    source, axis = _shape_entry(piece)
    if not _same_dim(data, position, source, axis):
        raise Skip(f"target entry {position} reads dim {axis} of '{source.name}', not provably dim {position} of "
                   f"'{data.name}'")
    return [0]


def _shape_entry(piece: gs.Tensor) -> tuple[gs.Tensor, int]:
    """(t, k) for ``Unsqueeze(Gather(Shape(t), k))`` or ``Slice(Shape(t), k, k + 1)``."""
    node = producer(piece)
    if node is not None and node.op == "Unsqueeze":
        node = producer(node.inputs[0])
    if node is None or node.op not in ("Gather", "Slice"):
        raise Skip(f"target piece '{piece.name}' is neither a constant nor one dimension of a Shape")
    shape = producer(node.inputs[0])
    if shape is None or shape.op != "Shape" or shape.attrs.get("start", 0) or "end" in shape.attrs:
        raise Skip(f"target piece '{piece.name}' does not read a whole Shape")
    index = constant_value(node.inputs[1])
    if index is None or index.size != 1 or (node.op == "Gather" and int(node.attrs.get("axis", 0)) != 0):
        raise Skip(f"target piece '{piece.name}' reads a non-constant position")
    if node.op == "Slice":
        ends = constant_value(node.inputs[2]) if len(node.inputs) > 2 else None
        if ends is None or int(ends.reshape(-1)[0]) != int(index.reshape(-1)[0]) + 1 or len(node.inputs) > 4:
            raise Skip(f"target piece '{piece.name}' slices more than one dimension")
    axis = int(index.reshape(-1)[0])
    source = shape.inputs[0]
    if axis < 0 and source.shape is not None:
        axis += len(source.shape)
    return source, axis


def _same_dim(data: gs.Tensor, position: int, source: gs.Tensor, axis: int) -> bool:
    if source is data and axis == position:
        return True
    if data.shape is None or source.shape is None or position >= len(data.shape) or axis >= len(source.shape):
        return False
    mine, theirs = data.shape[position], source.shape[axis]
    return isinstance(mine, str) and mine == theirs
