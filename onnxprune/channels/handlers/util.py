"""Helpers the shape-op handlers share: static shapes, int operands in attribute or input form."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.handlers import Removed
from onnxprune.channels.relations import Relations
from onnxprune.core.graph import constant_value, set_constant

INT64_MIN = int(np.iinfo(np.int64).min)


def _static(shape) -> list[int] | None:
    if shape is None or any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        return None
    return [int(d) for d in shape]


def _has(node: gs.Node, index: int) -> bool:
    return len(node.inputs) > index and not node.inputs[index].is_empty()


def _ints(node: gs.Node, attr: str, index: int) -> list[int] | None:
    """An integer list from attribute ``attr`` or, when absent, constant input ``index``; None if neither."""
    if attr in node.attrs:
        return [int(v) for v in np.asarray(node.attrs[attr]).reshape(-1)]
    if _has(node, index):
        value = constant_value(node.inputs[index])
        return None if value is None else [int(v) for v in value.reshape(-1)]
    return None


def _write_ints(graph: gs.Graph, node: gs.Node, attr: str, index: int, values: list[int]) -> None:
    """Store ``values`` where the node keeps them: the attribute when it has one, else constant input ``index``."""
    if attr in node.attrs:
        node.attrs[attr] = [int(v) for v in values]
        return
    dtype = np.dtype(np.int64)
    if _has(node, index):
        current = constant_value(node.inputs[index])
        assert current is not None, "callers write back values _ints read, so this input is constant"
        dtype = current.dtype
    set_constant(graph, node, index, np.asarray(values, dtype=dtype), f"{node.name}_{attr}")


def _gone(removed: Removed, tensor: gs.Tensor, axis: int) -> np.ndarray:
    return np.sort(np.asarray(removed.get((tensor.name, axis), ()), dtype=np.int64))


def _renumber(positions: np.ndarray, gone: np.ndarray) -> np.ndarray:
    """New index of each kept position once the sorted ``gone`` positions are deleted."""
    return positions - np.searchsorted(gone, positions)


def _block(rel: Relations, node: gs.Node, dims: list[tuple[gs.Tensor, int]], reason: str) -> None:
    for tensor, axis in dims:
        rel.block(tensor, axis, f"{node.op} '{node.name}': {reason}")


# --- Concat and Split ------------------------------------------------------------------------------


def _shape_of(tensor: gs.Tensor) -> tuple | None:
    value = constant_value(tensor)
    if value is not None:
        return value.shape
    return None if tensor.shape is None else tuple(tensor.shape)


# --- axis renumbering -------------------------------------------------------------------------------
