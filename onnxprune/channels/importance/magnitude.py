"""L1 / L2 filter norm (PFEC, Li et al. 2017), and the weight slices every criterion reads.

Score of channel c = sum over the group's filter banks (role "out" weight axes: every producer
of the group, e.g. the convs feeding a residual Add, a depthwise conv inside the group) of
``||W[position]||_p`` over all other axes, for every position c holds on that axis (a grouped
conv's channel holds one position per group, a depthwise multiplier several).

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


@dataclass(frozen=True)
class Slices:
    """The weight slices of one constant axis that a group's channels own.

    ``rows[k]`` is the weight at position ``where[k]`` along ``dim``'s axis, flattened over every
    other axis; ``owner[k]`` is the channel (index within the group) that position belongs to.
    ``full`` holds every position of the axis, for criteria that compare against the whole layer.
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


def role_slices(group: ChannelGroup, graph: gs.Graph, role: str) -> list[Slices]:
    """Slices of every constant axis of ``group`` whose role is ``role``, in float64."""
    tensors = graph.tensors()
    found = []
    for dim in group.dims_with_role(role):
        tensor = tensors.get(dim[0])
        value = None if tensor is None else constant_value(tensor)
        if value is None or not np.issubdtype(np.asarray(value).dtype, np.floating):
            continue
        full = np.moveaxis(np.asarray(value, dtype=np.float64), dim[1], 0)
        where, owner = group.members[dim]
        found.append(Slices(dim, full.reshape(full.shape[0], -1), where, owner))
    return found


def channel_weights(group: ChannelGroup, graph: gs.Graph) -> tuple[str, list[Slices]]:
    """The slices that define a channel: filters, else consumer columns, else biases (see module doc)."""
    outs = role_slices(group, graph, ROLE_OUT)
    filters = [s for s in outs if s.elements > 1]
    if filters:
        return "filters", filters
    columns = role_slices(group, graph, ROLE_IN)
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
        _, slices = channel_weights(group, graph)
        return per_channel(group, slices, lambda s: np.linalg.norm(s.rows, ord=self.p, axis=1))
