"""L1 / L2 filter norm (PFEC, Li et al. 2017), and the weight slices every criterion reads.

Score of channel c = sum over the group's filter banks (role "out" weight axes: every producer
of the group, e.g. the convs feeding a residual Add, a depthwise conv inside the group) of
``||filter_o||_p`` for every output channel o of that producer that c holds (a grouped conv's
channel holds one per group, a depthwise multiplier several). Filters are the weight slices
``onnxprune.core.layout`` gives, so a grouped ConvTranspose's filter ``W[rows of its group, j]``
is one filter, not the column ``W[:, j]`` that spans every group. Any other axis is read by
position: ``||A[position]||_p`` over all other axes.

Fallbacks, in order, when a group has no filter bank (no constant "out" axis with more than one
element per position, e.g. only a Gemm bias, or no producer at all):

1. the consumers' input columns (role "in" axes: the next conv's ``W[:, c]``, a Gemm's columns
   behind a Flatten, one per spatial position), with the same norm;
2. the 1-element "out" parameters (biases): ``|b_c|``;
3. nothing to read: every score is NaN, which policies treat as "do not prune this group".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.analysis import ChannelGroup
from onnxprune.channels.relations import ROLE_IN, ROLE_OUT, Dim
from onnxprune.core.graph import constant_value
from onnxprune.core.layout import weight_layout


@dataclass(frozen=True)
class Slices:
    """The weight slices of one constant axis that a group's channels own.

    ``rows[k]`` is the weight at position ``where[k]`` along ``dim``'s axis, flattened over every
    other axis; ``owner[k]`` is the channel (index within the group) that position belongs to.
    ``full`` holds every position of the axis, for criteria that compare against the whole layer.
    For a producer's filters (role "out" on a linear op's weight) positions are its output
    channels and rows its filters, which index like its bias and a BN after it.
    """

    dim: Dim
    full: np.ndarray
    where: np.ndarray
    owner: np.ndarray

    @property
    def rows(self) -> np.ndarray:
        return self.full[self.where]

    @property
    def elements(self) -> int:
        return self.full.shape[1]


def role_slices(group: ChannelGroup, graph: gs.Graph, role: str, as_float64: bool = True) -> list[Slices]:
    """Slices of every constant axis of ``group`` whose role is ``role``, in float64.

    ``as_float64`` False keeps each weight's own float type: a criterion that reads it block by
    block (:func:`row_norms`) then never holds a float64 copy of a whole large weight.
    """
    nodes = {node.name: node for node in graph.nodes}
    found = []
    for dim in group.dims_with_role(role):
        tensor = _role_tensor(graph, nodes.get(group.roles[dim][0]), dim)
        value = None if tensor is None else constant_value(tensor)
        if value is None or not np.issubdtype(np.asarray(value).dtype, np.floating):
            continue
        value = np.asarray(value, dtype=np.float64) if as_float64 else np.asarray(value)
        where, owner = group.members[dim]
        filters = _filter_slices(nodes.get(group.roles[dim][0]), dim, value, where, owner) if role == ROLE_OUT else None
        if filters is not None:
            found.append(filters)
            continue
        full = np.moveaxis(value, dim[1], 0)
        found.append(Slices(dim, full.reshape(full.shape[0], -1), where, owner))
    return found


def _role_tensor(graph: gs.Graph, node: gs.Node | None, dim: Dim) -> gs.Tensor | None:
    """The tensor of ``dim``: an input of the node that gave it its role (the whole graph is searched
    only when that fails: ``graph.tensors()`` walks every node, and scoring asks once per group)."""
    tensor = next((t for t in node.inputs if t.name == dim[0]), None) if node is not None else None
    return tensor if tensor is not None else graph.tensors().get(dim[0])


def _filter_slices(node: gs.Node | None, dim: Dim, value: np.ndarray, where: np.ndarray,
                   owner: np.ndarray) -> Slices | None:
    """``node``'s filters, one row per output channel, when ``dim`` is an axis of its weight; else None.

    Kept: the output channels whose filter lies at a position of ``dim`` that the group holds.
    """
    if node is None or len(node.inputs) < 2 or node.inputs[1].name != dim[0]:
        return None
    layout = weight_layout(node)
    positions = None if layout is None else layout.output_positions(dim[1])
    if layout is None or positions is None:
        return None
    holder = np.full(layout.shape[dim[1]], -1, dtype=np.int64)
    holder[where] = owner
    channels = np.flatnonzero(holder[positions] >= 0)
    return Slices(dim, layout.filter_rows(value), channels, holder[positions[channels]])


def channel_weights(group: ChannelGroup, graph: gs.Graph, as_float64: bool = True) -> tuple[str, list[Slices]]:
    """The slices that define a channel: filters, else consumer columns, else biases (see module doc)."""
    outs = role_slices(group, graph, ROLE_OUT, as_float64)
    filters = [s for s in outs if s.elements > 1]
    if filters:
        return "filters", filters
    columns = role_slices(group, graph, ROLE_IN, as_float64)
    if columns:
        return "columns", columns
    return ("biases", outs) if outs else ("", [])


def per_channel(group: ChannelGroup, slices: list[Slices], values_of) -> np.ndarray:
    """Sum ``values_of(s)`` (one value per row of ``s``) into the channels owning the rows; NaN without slices."""
    if not slices:
        return np.full(group.size, np.nan)
    score = np.zeros(group.size)
    for entry in slices:
        np.add.at(score, entry.owner, values_of(entry))
    return score


@dataclass(frozen=True)
class Magnitude:
    """``||W_c||_p`` summed over the group's producers (p=1: PFEC's L1, p=2: L2)."""

    p: float = 1.0
    needs_data = False

    def __call__(self, group: ChannelGroup, graph: gs.Graph) -> np.ndarray:
        _, slices = channel_weights(group, graph, as_float64=False)  # row_norms reads float64 blocks
        return per_channel(group, slices, lambda s: row_norms(s, self.p))


#: Float64 elements of one block of rows read at a time by :func:`row_norms`.
NORM_BLOCK = 1 << 22


def row_norms(entry: Slices, p: float) -> np.ndarray:
    """``np.linalg.norm(entry.rows, ord=p, axis=1)``, a block of rows at a time.

    ``rows`` gathers a copy of the whole weight and the norm another: two more weight-sized
    float64 arrays, gigabytes for the classifier of a large model. Rows are independent, so
    the blocks give the same numbers. When the rows are all of a C-contiguous weight, in order,
    a block is a view of it instead of a gathered copy: the same memory layout, the same sums.
    Each block is summed in float64 whatever the weight's type.
    """
    step = max(1, NORM_BLOCK // max(entry.elements, 1))
    rows = len(entry.where)
    whole = entry.full.flags.c_contiguous and rows == len(entry.full) and bool((entry.where == np.arange(rows)).all())
    parts = [np.linalg.norm(np.asarray(entry.full[i:i + step] if whole else entry.full[entry.where[i:i + step]],
                                       dtype=np.float64), ord=p, axis=1)
             for i in range(0, rows, step)]
    return np.concatenate(parts) if parts else np.zeros(0)
