"""What op handlers tell the analysis: which tensor axes exist, and which of their indices move together.

A *dim* is one axis of one tensor, ``(tensor name, axis)``, with a static size. An *element* is
one index of a dim. Handlers link elements of different dims (index ``i`` of a conv's output
channel axis is row ``i`` of its weight, and column ``i`` of the next conv's weight ...) and
declare which dims of their node's tensors they can let shrink. Everything else about a node's
tensors is fixed: a dim that some handler links but another node cannot let shrink is blocked,
with that node named as the reason.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core.graph import constant_shape

Dim = tuple[str, int]

ROLE_OUT = "out"  # a weight axis indexed by the op's output channel (filters, biases): PFEC's importance
ROLE_IN = "in"  # a weight axis indexed by the op's input channel
ROLE_SCALE = "scale"  # a normalisation scale (BN gamma): network slimming's importance
ROLE_PARAM = "param"  # any other per-channel parameter (BN beta, mean, var, PRelu slope, constants)


@dataclass
class Relations:
    """Collects dims, links between their elements, accepted dims per node, and blocks."""

    graph: gs.Graph
    sizes: dict[Dim, int] = field(default_factory=dict)
    links: list[tuple[Dim, np.ndarray, Dim, np.ndarray]] = field(default_factory=list)
    accepted: dict[str, set[Dim]] = field(default_factory=lambda: defaultdict(set))
    blocked: dict[Dim, str] = field(default_factory=dict)
    roles: dict[Dim, tuple[str, str, str]] = field(default_factory=dict)
    inexact: dict[Dim, str] = field(default_factory=dict)

    def dim(self, tensor: gs.Tensor, axis: int) -> Dim | None:
        """Register ``axis`` of ``tensor`` (negative axes allowed); None when its size is not static."""
        shape = _shape(tensor)
        if shape is None or not -len(shape) <= axis < len(shape):
            return None
        axis %= len(shape)
        size = shape[axis]
        if not isinstance(size, (int, np.integer)) or size < 1:
            return None
        key = (tensor.name, axis)
        self.sizes[key] = int(size)
        return key

    def same(self, node: gs.Node, a: gs.Tensor, a_axis: int, b: gs.Tensor, b_axis: int) -> None:
        """Index ``i`` of one axis is index ``i`` of the other (sizes must agree)."""
        first, second = self.dim(a, a_axis), self.dim(b, b_axis)
        if first is None or second is None or self.sizes[first] != self.sizes[second]:
            self._refuse(node, (a, a_axis), (b, b_axis), reason="sizes are unknown or differ")
            return
        indices = np.arange(self.sizes[first])
        self.link(node, first, indices, second, indices)

    def link(self, node: gs.Node, a: Dim, a_index: np.ndarray, b: Dim, b_index: np.ndarray) -> None:
        """Element ``a_index[k]`` of ``a`` moves with element ``b_index[k]`` of ``b``."""
        self.links.append((a, np.asarray(a_index, dtype=np.int64), b, np.asarray(b_index, dtype=np.int64)))
        self.accepted[node.name].update((a, b))

    def accept(self, node: gs.Node, tensor: gs.Tensor, axis: int) -> Dim | None:
        """``node`` lets this dim shrink without linking it to anything (e.g. a reduced axis)."""
        key = self.dim(tensor, axis)
        if key is not None:
            self.accepted[node.name].add(key)
        return key

    def role(self, node: gs.Node, tensor: gs.Tensor, axis: int, role: str) -> None:
        """Say what a parameter axis means to ``node``, for importance criteria."""
        key = self.dim(tensor, axis)
        if key is not None:
            self.roles[key] = (node.name, node.op, role)

    def lossy(self, node: gs.Node, tensor: gs.Tensor, axis: int, reason: str) -> None:
        """Removing channels of this dim changes the other channels' values (e.g. a norm over it)."""
        key = self.dim(tensor, axis)
        if key is not None:
            self.inexact[key] = f"{node.op} '{node.name}': {reason}"

    def block(self, tensor: gs.Tensor, axis: int, reason: str) -> None:
        key = self.dim(tensor, axis)
        if key is not None:
            self.blocked.setdefault(key, reason)

    def block_all(self, tensor: gs.Tensor, reason: str) -> None:
        shape = _shape(tensor)
        for axis in range(len(shape) if shape is not None else 0):
            self.block(tensor, axis, reason)

    def _refuse(self, node: gs.Node, *dims: tuple[gs.Tensor, int], reason: str = "") -> None:
        for tensor, axis in dims:
            self.block(tensor, axis, f"{node.op} '{node.name}': {reason}")


def _shape(tensor: gs.Tensor) -> tuple | None:
    """Not ``.values.shape``: that reads a lazy weight and keeps a loaded copy on the graph."""
    shape = constant_shape(tensor)
    if shape is not None:
        return shape
    return None if tensor.shape is None else tuple(tensor.shape)
