"""Regions of elementwise ops enclosed by a layout op and the op that undoes it (not a pass).

``cancel_reshapes`` and ``cancel_transposes`` both look for::

    y  = Opener(x)          a Reshape or a Transpose
    z  = f(y)               ops that commute with the layout change (elementwise, and for a
                            Transpose also reductions, their axes permuted)
    z2 = Closer(z)          the same op, undoing the opener

and rewrite it to ``z2 = f'(x)``. This module finds the region and checks that nothing outside
reads a tensor inside it; the passes check the layouts and rewrite the operands.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core.graph import (
    NotCandidate,
    Skip,
    constant_value,
    is_graph_output,
    producer,
    remove_node,
)

UNARY = frozenset(
    {
        "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Ceil", "Celu", "Cos", "Cosh", "Elu",
        "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity", "LeakyRelu", "Log",
        "Mish", "Neg", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin", "Sinh",
        "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu",
    }
)
BROADCASTING = frozenset(
    {
        "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Clip",
    }
)
MAX_REGION = 64  # nodes walked before giving up


@dataclass
class Region:
    opener: gs.Node  # y = Opener(x)
    closer: gs.Node  # z2 = Closer(z)
    nodes: list[gs.Node] = field(default_factory=list)  # from the closer upwards
    constants: list[tuple[gs.Node, int, np.ndarray]] = field(default_factory=list)  # (node, input, value)

    @property
    def source(self) -> gs.Tensor:
        return self.opener.inputs[0]

    @property
    def opened(self) -> gs.Tensor:
        return self.opener.outputs[0]

    def describe(self) -> str:
        ops = ", ".join(node.op for node in reversed(self.nodes)) or "nothing"
        opener, closer = self.opener, self.closer
        return f"removed {opener.op} '{opener.name}' and {closer.op} '{closer.name}' around {ops}"


@dataclass
class _Walk:
    """A region being collected: its opener is unknown until the walk reaches it."""

    closer: gs.Node
    extra: frozenset[str]  # ops admitted besides the elementwise ones
    opener: gs.Node | None = None
    nodes: list[gs.Node] = field(default_factory=list)
    constants: list[tuple[gs.Node, int, np.ndarray]] = field(default_factory=list)


def walk(graph: gs.Graph, closer: gs.Node, reductions: Iterable[str] = ()) -> Region:
    """The region between ``closer`` and the one node of the same op type that opens it.

    ``reductions`` are ops admitted besides the elementwise ones, read on their first input only
    (their other inputs are left to the caller). Raises NotCandidate when the ops above
    ``closer`` are not such a region, Skip when a tensor of the region is read from outside it.
    """
    first = producer(closer.inputs[0])
    if first is not None and first.op == closer.op:
        region = Region(opener=first, closer=closer)
    else:
        region = _collect(_Walk(closer, frozenset(reductions)), first)
    _check_private(graph, region)
    if not region.nodes and is_graph_output(graph, closer.outputs[0]):
        name = closer.outputs[0].name
        raise Skip(f"'{name}' is a graph output and '{region.source.name}' cannot take its name")
    return region


def bypass(graph: gs.Graph, region: Region) -> None:
    """Make the region read the opener's input and drop the closer (the opener becomes dead)."""
    for node in [*region.nodes, region.closer]:
        for index, tensor in enumerate(node.inputs):
            if tensor is region.opened:
                node.inputs[index] = region.source
    remove_node(graph, region.closer)  # cannot fail: z is read by the closer alone (checked)


def check_reshape_broadcast(value: np.ndarray, before: list | None, after: list | None) -> None:
    """A constant operand broadcasts alike against both shapes: one element, or per a shared last axis.

    Raises Skip otherwise (also when either rank is unknown).
    """
    if before is None or after is None:
        raise Skip("the rank before or after the Reshape is unknown")
    if value.ndim > min(len(before), len(after)):
        lowest = min(len(before), len(after))
        raise Skip(f"a rank-{value.ndim} constant would broadcast a rank-{lowest} tensor up")
    if value.size == 1:
        return
    if any(size != 1 for size in value.shape[:-1]):
        raise Skip(f"constant of shape {list(value.shape)} is not per last axis")
    last = value.shape[-1]
    if not (isinstance(before[-1], (int, np.integer)) and before[-1] == after[-1] == last):
        raise Skip(f"constant of shape {list(value.shape)} meets last axes {before[-1]} and {after[-1]}")


def _collect(state: _Walk, first: gs.Node | None) -> Region:
    if first is None or not _admitted(first, state.extra):
        raise NotCandidate(f"its input is not computed by an elementwise op or a {state.closer.op}")
    pending, seen = [first], {id(first)}
    while pending:
        node = pending.pop()
        if len(state.nodes) >= MAX_REGION:
            raise NotCandidate(f"more than {MAX_REGION} ops")
        if len(node.outputs) != 1:
            raise NotCandidate(f"{node.op} '{node.name}' has {len(node.outputs)} outputs")
        state.nodes.append(node)
        data = node.inputs[:1] if node.op in state.extra else node.inputs
        for index, tensor in enumerate(data):
            upstream = _visit(state, node, index, tensor)
            if upstream is not None and id(upstream) not in seen:
                seen.add(id(upstream))
                pending.append(upstream)
    if state.opener is None:
        raise NotCandidate(f"the ops do not start from a {state.closer.op}")
    return Region(state.opener, state.closer, state.nodes, state.constants)


def _visit(state: _Walk, node: gs.Node, index: int, tensor: gs.Tensor) -> gs.Node | None:
    """Record ``tensor`` (a constant, the opener's output) or return the region node that computes it."""
    if tensor.is_empty():
        return None
    value = constant_value(tensor)
    if value is not None:
        if node.op not in BROADCASTING:
            raise NotCandidate(f"{node.op} '{node.name}' has a constant data operand")
        state.constants.append((node, index, value))
        return None
    upstream = producer(tensor)
    if upstream is not None and upstream.op == state.closer.op:
        if state.opener is not None and upstream is not state.opener:
            raise NotCandidate(f"the ops read two different {upstream.op} outputs")
        state.opener = upstream
        return None
    if not _admitted(upstream, state.extra):
        raise NotCandidate(f"'{tensor.name}' comes from {upstream.op if upstream else 'a graph input'}")
    return upstream


def _admitted(node: gs.Node | None, extra: frozenset[str]) -> bool:
    return node is not None and (node.op in UNARY or node.op in BROADCASTING or node.op in extra)


def _check_private(graph: gs.Graph, region: Region) -> None:
    members = {id(node) for node in region.nodes}
    closing = region.closer.inputs[0]
    for tensor in [region.opened] + [node.outputs[0] for node in region.nodes]:
        if is_graph_output(graph, tensor):
            raise Skip(f"'{tensor.name}' inside the region is a graph output")
        allowed = members | ({id(region.closer)} if tensor is closing else set())
        if any(id(reader) not in allowed for reader in tensor.outputs):
            raise Skip(f"'{tensor.name}' inside the region is read outside it")
