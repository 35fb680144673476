"""Fold constant subgraphs into initializers with onnx-graphsurgeon's ``Graph.fold_constants``.

Before:  W -> Identity -> BatchNormalization        shape(x) -> Gather(1) -> Reshape(y, ...)
         Constant -> Add(x, .)                      ConstantOfShape([3]) -> Mul(x, .)
After:   W' -> BatchNormalization                   Reshape(y, [.., 3, ..])
         Add(x, C)                                  Mul(x, C)

Maths: a node whose inputs are all constants computes a constant; onnxruntime evaluates it once
and the value replaces the node's output (same name). ``Shape`` of a tensor whose inferred shape
is static (or a ``Gather``/``Slice`` that selects only static dimensions of it) is that shape.

Preconditions and guards (the graph is left alone where they fail, with the reason reported):

* the graph is topologically sorted, shapes come from ``infer_shapes`` (the pipeline does both);
* nothing is folded into a tensor over ``size_limit`` bytes (default 16 MiB), so an ``Expand``
  or ``Tile`` of a tiny constant is not materialised;
* nondeterministic ops (``Random*``, ``Multinomial``, ``Bernoulli``, ``Dropout``) and ops outside
  the default domain are never folded, nor anything downstream of them;
* a node that writes a graph output is not folded (outputs stay computed; a Constant node there
  is kept as a node), so graph outputs never turn into initializers;
* a shape that depends on a dynamic dimension is never folded (gs only folds static shapes and
  static dimensions picked out of a partly dynamic one, e.g. ``shape(x)[1]`` of ``[N, 3, H, W]``);
* when onnxruntime cannot evaluate the constant subgraphs as one model, they are evaluated part
  by part and the failing parts are left as they are;
* onnx-graphsurgeon 0.6 has two inexact shape-folding steps, disarmed here: its cast elision
  rewrites ``Cast(int->float) -> Mul(0.5) -> Cast(->int)`` into an integer ``Mul`` by 0, so such
  chains are temporarily marked as graph outputs (which gs refuses to elide); and its ``Shape``
  folding ignores the ``start``/``end`` attributes (opset >= 15), so the input shape of such a
  ``Shape`` node is hidden from it for the duration of the call;
* subgraphs and functions are not folded (gs would not apply the guards above inside them);
* graph inputs and outputs keep their names: folded tensors become constants in place.

Speed: a graph with nothing gs could fold (no node reads only constants, no Constant, Shape, Cast
or If node) is left as it is, without calling gs, which would copy and export the graph first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

from onnxprune.passes.base import PassReport

log = logging.getLogger(__name__)

NAME = "fold_constants"
SIZE_LIMIT = 16 << 20  # bytes
NEVER_FOLD = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"}
)
# The ops onnx-graphsurgeon's cast elision rewrites between a float Cast and an integer Cast.
CAST_ELISION_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Greater", "Less", "Concat"})
INT_TYPES = (onnx.TensorProto.INT32, onnx.TensorProto.INT64)
# Ops gs' folding rewrites without their inputs being constant: Constant nodes become constants,
# Shape (and a Gather or Slice of it) folds from a static shape, Cast chains are elided, an If on a
# constant condition is flattened.
FOLDS_ANYWAY = frozenset({"Constant", "Shape", "Cast", "If"})


def run(graph: gs.Graph, *, size_limit: int = SIZE_LIMIT) -> PassReport:
    """Fold every constant-computable node whose result is at most ``size_limit`` bytes."""
    report = PassReport(NAME)
    if not may_fold(graph):
        return report
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    before = list(graph.nodes)
    writers = {tensor.name: tensor.inputs[0] for tensor in graph.outputs if tensor.inputs}
    writer_ids = frozenset(map(id, writers.values()))
    with _guarded(graph) as guarded, G_LOGGER.suppress():
        _fold(graph, size_limit, partial(_never_fold, writer_ids))
    _restore_output_writers(graph, writers)
    graph.cleanup(remove_unused_graph_inputs=False)
    alive = {id(node) for node in graph.nodes}
    report.rewrites.extend(f"folded {node.op} '{node.name}'" for node in before if id(node) not in alive)
    report.skipped.extend(f"{node.op} '{node.name}': {why}" for node, why in guarded if id(node) in alive)
    report.skipped.extend(_unfolded(graph, size_limit, writer_ids))
    for line in report.rewrites:
        log.debug("%s: %s", NAME, line)
    return report


def _fold(graph: gs.Graph, size_limit: int, exclude: Callable[[gs.Node], bool]) -> None:
    """One onnxruntime session for all constant subgraphs; one per failing part if that fails."""
    settings = {
        "fold_shapes": True,
        "recurse_subgraphs": False,
        "size_threshold": size_limit,
        "should_exclude_node": exclude,
        "recurse_functions": False,
    }
    try:
        graph.fold_constants(partitioning=None, error_ok=False, **settings)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors derive from Exception only
        log.debug("%s: whole evaluation failed (%s), folding part by part", NAME, exc)
        graph.fold_constants(partitioning="recursive", error_ok=True, **settings)


def may_fold(graph: gs.Graph) -> bool:
    """Whether gs' ``fold_constants`` could change ``graph``; False means it would leave it exactly as it is.

    Conservative: any node that reads only constants (or nothing), any op of ``FOLDS_ANYWAY``, any
    node holding a subgraph and any local function count as foldable.
    """
    if graph.functions:
        return True
    for node in graph.nodes:
        if node.op in FOLDS_ANYWAY or any(isinstance(value, gs.Graph) for value in node.attrs.values()):
            return True
        if all(isinstance(tensor, gs.Constant) for tensor in node.inputs if not tensor.is_empty()):
            return True
    return False


def _never_fold(writers: frozenset[int], node: gs.Node) -> bool:
    """Nondeterministic, custom-domain and graph-output-writing nodes (by id) stay as they are."""
    return node.op in NEVER_FOLD or node.domain not in ("", "ai.onnx", None) or id(node) in writers


def _restore_output_writers(graph: gs.Graph, writers: dict[str, gs.Node]) -> None:
    """Give back to its Constant node a graph output that gs lowered to an initializer."""
    for tensor in graph.outputs:
        node = writers.get(tensor.name)
        if isinstance(tensor, gs.Constant) and node is not None:
            tensor.to_variable(shape=list(tensor.shape))
            node.outputs = [tensor]


@contextmanager
def _guarded(graph: gs.Graph) -> Iterator[list[tuple[gs.Node, str]]]:
    """Disarm gs' inexact shape folding within the block; yields the guarded nodes and why."""
    outputs = list(graph.outputs)
    chains = _cast_chains(graph)
    shapes = [node for node in graph.nodes if _is_sliced_shape(node)]
    hidden = {node.inputs[0].name: (node.inputs[0], node.inputs[0].shape) for node in shapes}
    for node in chains:
        graph.outputs.extend(tensor for tensor in node.outputs if tensor not in outputs)
    for tensor, _ in hidden.values():
        tensor.shape = None
    try:
        yield [(node, "kept between Casts: gs' cast elision is not exact") for node in chains] + [
            (node, "start/end attributes: gs' shape folding ignores them") for node in shapes
        ]
    finally:
        graph.outputs = outputs
        for tensor, shape in hidden.values():
            tensor.shape = shape


def _cast_chains(graph: gs.Graph) -> list[gs.Node]:
    """Nodes gs' cast elision would rewrite: read a Cast to float, feed only Casts to int."""
    found = []
    for node in graph.nodes:
        if node.op not in CAST_ELISION_OPS or not node.outputs:
            continue
        readers = [reader for tensor in node.outputs for reader in tensor.outputs]
        casts_in = [t.inputs[0] for t in node.inputs if t.inputs and t.inputs[0].op == "Cast"]
        if (
            readers
            and all(reader.op == "Cast" for reader in readers)
            and any(reader.attrs.get("to") in INT_TYPES for reader in readers)
            and any(cast.attrs.get("to") == onnx.TensorProto.FLOAT for cast in casts_in)
        ):
            found.append(node)
    return found


def _is_sliced_shape(node: gs.Node) -> bool:
    """A ``Shape`` with ``start``/``end`` whose input shape gs would fold in full."""
    return (
        node.op == "Shape"
        and ("start" in node.attrs or "end" in node.attrs)
        and isinstance(node.inputs[0], gs.Variable)
        and node.inputs[0].shape is not None
    )


def _unfolded(graph: gs.Graph, size_limit: int, writers: frozenset[int]) -> list[str]:
    """Reasons for the nodes left whose inputs are all constants."""
    reasons = []
    for node in graph.nodes:
        present = [tensor for tensor in node.inputs if not tensor.is_empty()]
        if not present or not all(isinstance(tensor, gs.Constant) for tensor in present):
            continue
        if id(node) in writers:
            why = "writes a graph output, kept as a node"
        elif _never_fold(writers, node):
            why = "nondeterministic or custom-domain op, never folded"
        else:
            why = f"result over {size_limit} bytes or not evaluable by onnxruntime"
        reasons.append(f"{node.op} '{node.name}': {why}")
    return reasons
