"""Move a Reshape that follows a Gemm or MatMul below the constant Mul, Add, Sub or Div reading it.

Before::

    u = Gemm(x, W, b)                    u: [256, 16]
    v = Reshape(u, s)                    v: [1, 16, 16, 16]
    z = Mul(v, c)                        c: [16], per last axis (a layer-scale gamma)

After::

    w = Mul(u, c)
    z = Reshape(w, s)

``matmul_to_gemm`` leaves a Reshape between a Linear layer and the per-channel scale or shift
that follows it (ConvNeXt's layer scale); below the Reshape, ``merge_affine`` folds that op into
the Gemm's weight and bias. Maths: the op is elementwise and a Reshape keeps the row-major order
of the elements, so ``reshape(u) op c = reshape(u op c)`` whenever ``c`` broadcasts the same way
against both shapes: a single element anywhere, or a vector along the last axis when both shapes
end in that axis.

Preconditions: exactly one operand is a constant; the Reshape's input is computed by a Gemm or
MatMul and read by the Reshape alone, and its output is read by the op alone, neither a graph
output; the constant has rank at most that of ``u`` and of ``v`` and is one element or per a
last axis that ``u`` and ``v`` share (static).
"""

from __future__ import annotations

import logging

import onnx_graphsurgeon as gs

from onnxprune.core.graph import (
    NotCandidate,
    Skip,
    constant_value,
    is_private,
    producer,
    unique_name,
)
from onnxprune.passes.base import PassReport, rewrite_nodes
from onnxprune.passes.region import check_reshape_broadcast

log = logging.getLogger(__name__)

NAME = "sink_reshapes"
AFFINE_OPS = ("Mul", "Add", "Sub", "Div")
LINEAR = ("Gemm", "MatMul")


def run(graph: gs.Graph) -> PassReport:
    return rewrite_nodes(graph, NAME, AFFINE_OPS, _match, _apply)


def _match(graph: gs.Graph, node: gs.Node) -> tuple[gs.Node, gs.Node, int]:
    """The op, the Reshape it reads, and the index of that variable operand."""
    values = [constant_value(tensor) for tensor in node.inputs]
    constants = [(index, value) for index, value in enumerate(values) if value is not None]
    if len(values) != 2 or len(constants) != 1:
        raise NotCandidate("needs exactly one constant and one variable operand")
    [(constant, value)] = constants
    keep = 1 - constant
    reshaped = node.inputs[keep]
    reshape = producer(reshaped)
    if reshape is None or reshape.op != "Reshape":
        raise NotCandidate("the variable operand is not a Reshape output")
    source = reshape.inputs[0]
    linear = producer(source)
    if linear is None or linear.op not in LINEAR:
        raise NotCandidate("the Reshape does not follow a Gemm or MatMul")
    if not is_private(graph, source) or not is_private(graph, reshaped):
        raise Skip("the tensor before or after the Reshape has other readers or is a graph output")
    check_reshape_broadcast(value, source.shape, reshaped.shape)
    return node, reshape, keep


def _apply(graph: gs.Graph, found: tuple[gs.Node, gs.Node, int]) -> str:
    node, reshape, keep = found
    source, result = reshape.inputs[0], node.outputs[0]
    moved = gs.Variable(unique_name(graph, f"{node.outputs[0].name}_before_reshape"), dtype=source.dtype)
    node.outputs[0] = moved
    reshape.outputs[0] = result
    reshape.inputs[0] = moved
    node.inputs[keep] = source
    return f"moved Reshape '{reshape.name}' below {node.op} '{node.name}'"
