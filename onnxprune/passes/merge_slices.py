"""Merge two consecutive Slices on different axes into one Slice.

Before::

    y = Slice(x, starts1, ends1, axes1, steps1)
    z = Slice(y, starts2, ends2, axes2, steps2)

After::

    z = Slice(x, starts1 + starts2, ends1 + ends2, axes1 + axes2, steps1 + steps2)

Exporters write strided subsampling such as ``x[:, :, ::2, ::2]`` (ResNet option-A shortcuts) as
one Slice per axis. Slicing distinct axes commutes, so one Slice with the concatenated operands is
exactly the composition.

Preconditions: opset >= 10 (operands as inputs); every operand constant; the axes of the two
Slices, made non-negative with the input's inferred rank, are disjoint; the tensor between them
has no other reader and is not a graph output.
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
    rank,
    remove_node,
)
from onnxprune.passes.base import PassReport, rewrite_nodes

log = logging.getLogger(__name__)

NAME = "merge_slices"


def run(graph: gs.Graph) -> PassReport:
    return rewrite_nodes(graph, NAME, ("Slice",), _match, _apply)


def _match(graph: gs.Graph, second: gs.Node) -> tuple[gs.Node, gs.Node, list[np.ndarray]]:
    first = producer(second.inputs[0])
    if first is None or first.op != "Slice":
        raise NotCandidate("input is not produced by a Slice")
    if "starts" in first.attrs or "starts" in second.attrs:
        raise Skip("opset < 10 Slice keeps its operands in attributes")
    if not is_private(graph, second.inputs[0]):
        raise Skip(f"'{second.inputs[0].name}' has other readers or is a graph output")
    data_rank = rank(first.inputs[0])
    if data_rank is None:
        raise Skip("input rank is unknown")
    operands = [_operands(node, data_rank) for node in (first, second)]
    axes = [set(ops[2].tolist()) for ops in operands]
    if axes[0] & axes[1]:
        raise Skip(f"both Slices cut axes {sorted(axes[0] & axes[1])}")
    merged = [np.concatenate([a, b]).astype(np.int64) for a, b in zip(*operands)]
    return first, second, merged


def _apply(graph: gs.Graph, found: tuple[gs.Node, gs.Node, list[np.ndarray]]) -> str:
    first, second, merged = found
    names = ("starts", "ends", "axes", "steps")
    constants = [new_constant(graph, f"{first.name}.{name}", values) for name, values in zip(names, merged)]
    data = first.inputs[0]
    first.inputs.clear()
    first.inputs.extend([data, *constants])
    remove_node(graph, second)
    return f"merged Slice '{second.name}' into Slice '{first.name}' (axes {merged[2].tolist()})"


def _operands(node: gs.Node, data_rank: int) -> list[np.ndarray]:
    """``starts, ends, axes, steps`` as int64 arrays, with defaults filled in and axes made non-negative."""
    values = []
    for index in range(1, 5):
        tensor = node.inputs[index] if index < len(node.inputs) else None
        value = None if tensor is None or tensor.is_empty() else constant_value(tensor)
        if value is None and tensor is not None and not tensor.is_empty():
            raise Skip(f"Slice '{node.name}' input {index} is not a constant")
        values.append(value)
    starts, ends, axes, steps = values
    if starts is None or ends is None:
        raise Skip(f"Slice '{node.name}' has no starts or ends input")
    count = starts.size
    axes = np.arange(count) if axes is None else axes.reshape(-1)
    steps = np.ones(count, dtype=np.int64) if steps is None else steps.reshape(-1)
    axes = np.where(axes < 0, axes + data_rank, axes)
    return [starts.reshape(-1), ends.reshape(-1), axes, steps]
