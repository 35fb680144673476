"""Layer-pruning units: the residual blocks of a graph that can be removed by a direct connection.

Identity unit, before and after bypassing::

    x --+--> F --> f --> Add --> y --> Relu        x --> Relu
        +-----------------^

Projection unit: ``y = P(x) + F(x)`` with P a 1x1 Conv (+BN) or a parameter-free option-A shortcut
(Slice(+Slice) + Pad), reduced to ``y := P(x)``.

A unit is matched at an Add, or a Sum of two, whose two operands are variables:

- one operand is the *shortcut* s: x itself (identity), or P(x), a chain of shortcut ops (1x1 Conv,
  BatchNormalization, Slice, Pad, AveragePool, Identity) whose tensors have one reader each, back to
  x, the first tensor with more readers (projection);
- the other operand f = F(x): every path back from f ends at x or at a constant (x is F's only
  external input), F reads x, and no tensor of F is read outside F (but f by the Add) or is a graph
  output;
- s, f and y have the same, known shape (static, or equal symbolic dims): the Add does not
  broadcast, so ``y := s`` keeps every shape;
- a projection body holds more weighted layers (Conv, Gemm, MatMul) than P: replacing one parallel
  branch by another of the same depth (RepVGG's 3x3 + 1x1) removes no layer;
- F holds no other unit's Add: only innermost units are reported.

A unit's name is the common prefix (cut at a '/') of its nodes' names, e.g. '/layer2/layer2.3'.
Its ``macs`` are what bypassing removes (F's nodes and the Add) and ``params`` are F's, both
from :func:`onnxprune.measure.stats.model_stats` at batch 1.

Preconditions: the graph is cleaned, sorted and shape-inferred (``pipeline.prepare``; the state
``api.prepare_for_pruning`` leaves, BN not folded, or after a full ``optimize``).
"""

from __future__ import annotations

import logging
import math
import os.path
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core import data
from onnxprune.core.errors import InputError
from onnxprune.core.graph import (
    NotCandidate,
    Skip,
    constant_value,
    is_graph_output,
    producer,
)
from onnxprune.measure import stats

log = logging.getLogger(__name__)

IDENTITY = "identity"
PROJECTION = "projection"
MERGE_OPS = ("Add", "Sum")
SHORTCUT_OPS = ("Conv", "BatchNormalization", "Slice", "Pad", "AveragePool", "Identity")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

Order = Mapping[int, int]  # id(node) -> position in the sorted graph


@dataclass(frozen=True)
class Block:
    """One layer-pruning unit; nodes and tensors by name, so a block outlives graph copies."""

    name: str
    add: str  # the Add/Sum node that merges shortcut and body
    shortcut: str  # the Add's operand y becomes: x (identity) or P(x) (projection)
    source: str  # x, the tensor the unit starts from
    body: tuple[str, ...]  # F's nodes, in topological order
    projection: tuple[str, ...]  # P's nodes (empty for an identity unit)
    kind: str
    output_shape: tuple[Any, ...] | None
    macs: int = 0  # removed by bypassing: F's nodes and the Add
    params: int = 0  # F's parameters (float weight elements)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Scan:
    """What block detection found: the units, and the merges it could not prove to be units (why)."""

    blocks: list[Block]
    skipped: list[str]


def find_blocks(graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]] | None = None) -> list[Block]:
    """Every innermost layer-pruning unit of ``graph``, in topological order, with its costs.

    ``input_shapes`` fixes dynamic input dims for counting MACs (a dynamic batch becomes 1).
    Unnamed or twice-named nodes of ``graph`` are given unique names first: units refer to nodes
    by name.
    """
    return scan(graph, input_shapes).blocks


def scan(graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Scan:
    """:func:`find_blocks`, plus one line per Add/Sum that looked like a unit but was refused."""
    name_nodes(graph)
    order = node_order(graph)
    found, skipped = [], []
    for node in graph.nodes:
        if node.op not in MERGE_OPS or not node.outputs:
            continue
        try:
            found.append(match_unit(graph, node, order))
        except NotCandidate:
            continue
        except Skip as reason:
            skipped.append(f"{node.op} '{node.name}': {reason}")
    innermost = _innermost(found, skipped)
    return Scan(_with_costs(graph, _unique_names(innermost), input_shapes), skipped)


def name_nodes(graph: gs.Graph) -> None:
    """Give every unnamed or twice-named node a unique name: blocks refer to nodes by name."""
    seen: set[str] = set()
    for index, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            node.name = f"{node.name or node.op}_{index}"
        seen.add(node.name)


def node_order(graph: gs.Graph) -> dict[int, int]:
    return {id(node): index for index, node in enumerate(graph.nodes)}


def match_unit(graph: gs.Graph, add: gs.Node, order: Order | None = None) -> Block:
    """The unit merged by ``add`` (costs not counted), or Skip/NotCandidate saying why it is none.

    Identity is tried before projection, the second operand as shortcut before the first.
    """
    order = node_order(graph) if order is None else order
    operands = _operands(add)
    refused: Skip | None = None
    for make in (_identity, _projection):
        for index in (1, 0):
            try:
                return make(graph, add, operands[index], operands[1 - index], order)
            except NotCandidate:
                continue
            except Skip as reason:
                refused = refused or reason
    raise refused or NotCandidate("neither operand is a shortcut of the other's subgraph")


def _operands(add: gs.Node) -> list[gs.Variable]:
    operands = [t for t in add.inputs if t.name]
    if len(operands) != 2 or len(add.outputs) != 1:
        raise NotCandidate("not a merge of two tensors")
    if any(isinstance(t, gs.Constant) or constant_value(t) is not None for t in operands):
        raise NotCandidate("an operand is constant (a bias, not a shortcut)")
    if operands[0] is operands[1]:
        raise NotCandidate("adds a tensor to itself")
    return operands


def _identity(graph: gs.Graph, add: gs.Node, shortcut: gs.Tensor, branch: gs.Tensor, order: Order) -> Block:
    body = _body(branch, shortcut, order)
    _check_unit(graph, add, shortcut, branch, body)
    return _block(add, shortcut, shortcut, body, [], IDENTITY)


def _projection(graph: gs.Graph, add: gs.Node, shortcut: gs.Tensor, branch: gs.Tensor, order: Order) -> Block:
    chain, source = _shortcut_chain(graph, shortcut)
    body = _body(branch, source, order)
    _check_unit(graph, add, shortcut, branch, body)
    if _depth(body) <= _depth(chain):
        raise Skip(f"the body has no more weighted layers ({_depth(body)}) than the projection ({_depth(chain)}): "
                   "reducing it to the projection removes no layer")
    return _block(add, shortcut, source, body, chain, PROJECTION)


def _body(branch: gs.Tensor, source: gs.Tensor, order: Order) -> list[gs.Node]:
    """F: the nodes between ``source`` and ``branch``; NotCandidate unless every path back ends at
    ``source`` or a constant. Nodes sorted before x's producer cannot descend from x: the walk stops."""
    start = producer(source)
    floor = order[id(start)] if start is not None else -1
    nodes: dict[int, gs.Node] = {}
    reads_source = False
    stack = [branch]
    while stack:
        tensor = stack.pop()
        if tensor is source:
            reads_source = True
            continue
        if not tensor.name or isinstance(tensor, gs.Constant) or constant_value(tensor) is not None:
            continue
        node = producer(tensor)
        if node is None or order.get(id(node), -1) <= floor:
            raise NotCandidate(f"'{branch.name}' depends on '{tensor.name}', not only on '{source.name}'")
        if id(node) not in nodes:
            nodes[id(node)] = node
            stack.extend(node.inputs)
    if not reads_source:
        raise NotCandidate(f"'{branch.name}' does not depend on '{source.name}'")
    return sorted(nodes.values(), key=lambda n: order[id(n)])


def _check_unit(graph: gs.Graph, add: gs.Node, shortcut: gs.Tensor, branch: gs.Tensor,
                body: Sequence[gs.Node]) -> None:
    """Skip unless F is closed (read only by itself and the Add) and the Add does not broadcast."""
    members = {id(node) for node in body} | {id(add)}
    for node in body:
        for tensor in node.outputs:
            if is_graph_output(graph, tensor):
                raise Skip(f"'{tensor.name}' inside the body is a graph output")
            outside = [reader.name for reader in tensor.outputs if id(reader) not in members]
            if outside:
                raise Skip(f"'{tensor.name}' inside the body is also read by '{outside[0]}'")
    output = add.outputs[0]
    if not same_shape(shortcut, branch, output):
        raise Skip(f"shapes differ or are unknown (shortcut {_shape(shortcut)}, body {_shape(branch)}, "
                   f"output {_shape(output)}): bypassing would change the output's shape")


def _shortcut_chain(graph: gs.Graph, shortcut: gs.Tensor) -> tuple[list[gs.Node], gs.Tensor]:
    """P's nodes (first to last) and x: walk back over shortcut ops while each tensor has one reader."""
    chain: list[gs.Node] = []
    tensor = shortcut
    while True:
        node = producer(tensor)
        if node is None or not _is_shortcut_op(node):
            raise NotCandidate(f"'{shortcut.name}' is not a projection of a shared tensor")
        chain.append(node)
        tensor = node.inputs[0]
        if isinstance(tensor, gs.Constant):
            raise NotCandidate(f"'{shortcut.name}' is computed from a constant")
        if producer(tensor) is None or len(tensor.outputs) > 1 or is_graph_output(graph, tensor):
            return chain[::-1], tensor


def _is_shortcut_op(node: gs.Node) -> bool:
    if node.op not in SHORTCUT_OPS or len(node.outputs) != 1 or not node.inputs:
        return False
    parameters = [t for t in node.inputs[1:] if t.name]
    if any(not isinstance(t, gs.Constant) and constant_value(t) is None for t in parameters):
        return False
    if node.op == "Conv":
        weight = constant_value(node.inputs[1])
        return weight is not None and math.prod(weight.shape[2:]) == 1
    return True


def _depth(nodes: Iterable[gs.Node]) -> int:
    return sum(node.op in WEIGHTED_OPS for node in nodes)


def same_shape(*tensors: gs.Tensor) -> bool:
    """All shapes known (ints, or symbolic names) and equal."""
    shapes = [t.shape for t in tensors]
    if any(shape is None or any(d is None or (isinstance(d, (int, np.integer)) and d < 0) for d in shape)
           for shape in shapes):
        return False
    first = [int(d) if isinstance(d, (int, np.integer)) else d for d in shapes[0]]
    return all([int(d) if isinstance(d, (int, np.integer)) else d for d in s] == first for s in shapes[1:])


def _shape(tensor: gs.Tensor) -> str:
    return "?" if tensor.shape is None else "[" + ", ".join("?" if d is None else str(d) for d in tensor.shape) + "]"


def _block(add: gs.Node, shortcut: gs.Tensor, source: gs.Tensor, body: Sequence[gs.Node],
           chain: Sequence[gs.Node], kind: str) -> Block:
    shape = add.outputs[0].shape
    return Block(
        name=unit_name([*body, add, *chain]) or add.name,
        add=add.name,
        shortcut=shortcut.name,
        source=source.name,
        body=tuple(node.name for node in body),
        projection=tuple(node.name for node in chain),
        kind=kind,
        output_shape=None if shape is None else tuple(shape),
    )


def unit_name(nodes: Iterable[gs.Node]) -> str:
    """The common prefix of the nodes' names, cut at the last '/': '/layer2/layer2.3'."""
    prefix = os.path.commonprefix([node.name for node in nodes])
    return prefix[: prefix.rfind("/")] if "/" in prefix else ""


def _innermost(found: list[Block], skipped: list[str]) -> list[Block]:
    adds = {block.add for block in found}
    kept = []
    for block in found:
        inner = adds.intersection(block.body)
        if inner:
            skipped.append(f"unit at '{block.add}': holds the unit at '{min(inner)}'; only innermost units")
        else:
            kept.append(block)
    return kept


def _unique_names(found: list[Block]) -> list[Block]:
    seen: dict[str, int] = {}
    for block in found:
        seen[block.name] = seen.get(block.name, 0) + 1
    return [block if seen[block.name] == 1 else replace(block, name=block.add) for block in found]


def _with_costs(graph: gs.Graph, found: list[Block], input_shapes: Mapping[str, Sequence[int]] | None) -> list[Block]:
    if not found:
        return found
    per_node = node_costs(graph, input_shapes)
    costed = []
    for block in found:
        body = [per_node.get(name, (0, 0)) for name in block.body]
        macs = sum(m for m, _ in body) + per_node.get(block.add, (0, 0))[0]
        costed.append(replace(block, macs=macs, params=sum(p for _, p in body)))
    return costed


def node_costs(graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, tuple[int, int]]:
    """(MACs, params) per node name, counted by ``stats.model_stats`` on an export of ``graph``."""
    model = gs.export_onnx(graph, do_type_check=False)
    try:
        shapes = data.resolve_input_shapes(model, input_shapes)
    except InputError as exc:
        log.warning("MACs of the blocks not counted where shapes are unknown: %s", exc)
        shapes = None
    counted = stats.model_stats(model, shapes)
    return {node.name: (cost.macs, cost.params) for node, cost in zip(graph.nodes, counted.per_node)}


def model_macs(graph: gs.Graph, input_shapes: Mapping[str, Sequence[int]] | None = None) -> int:
    return sum(macs for macs, _ in node_costs(graph, input_shapes).values())
