"""Channel dependency analysis: which (tensor, axis, index) positions must be removed together.

Handlers link elements (indices of tensor axes); the connected components of those links are the
*channels*, the units pruning removes. Channels that share an axis form a *group* (a conv's
output channels with its BN, the next conv's input columns, a residual partner ...): policies
rank and keep channels per group. A channel is prunable only when it holds a parameter to remove
and none of its elements lies on a blocked axis: a graph input or output, an op without a
handler, an axis some op cannot let shrink. Blocks are never guessed away; their reasons are kept.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from onnxprune.channels.handlers import load_all
from onnxprune.channels.relations import Dim, Relations

log = logging.getLogger(__name__)

OUTSIDE_GROUPS = "in no channel group (shapes unknown there, or no axis any handler relates)"


@dataclass
class ChannelGroup:
    """Channels that share tensor axes; ``members`` maps each axis to (positions, channel of each)."""

    id: int
    size: int
    members: dict[Dim, tuple[np.ndarray, np.ndarray]]
    prunable: np.ndarray
    constants: list[Dim]
    roles: dict[Dim, tuple[str, str, str]]
    reasons: list[str] = field(default_factory=list)
    inexact: list[str] = field(default_factory=list)

    @property
    def is_prunable(self) -> bool:
        return bool(self.prunable.any())

    def positions(self, dim: Dim, channels: np.ndarray) -> np.ndarray:
        """Positions along ``dim`` that hold any of ``channels`` (indices within the group; others are ignored)."""
        where, owner = self.members[dim]
        picked = np.asarray(channels).reshape(-1)
        if picked.dtype.kind not in "iu":
            return where[np.isin(owner, picked)]
        chosen = np.zeros(self.size, dtype=bool)  # a mask, not np.isin: surgery asks for every dim of a group
        chosen[picked[(picked >= 0) & (picked < self.size)]] = True
        return where[chosen[owner]]

    def dims_with_role(self, role: str) -> list[Dim]:
        return [dim for dim in self.constants if self.roles.get(dim, ("", "", ""))[2] == role]

    def describe(self) -> str:
        """One line: size, members, and why it is (not) prunable."""
        tensors = sorted({name for name, _ in self.members})
        status = "prunable" if self.is_prunable else "not prunable: " + "; ".join(self.reasons[:3])
        return f"group {self.id}: {self.size} channels over {len(tensors)} tensors ({status})"


@dataclass
class ChannelGraph:
    """The groups of ``graph``; ``blocked_params`` counts, by reason, the parameters no group can cut."""

    graph: gs.Graph
    groups: list[ChannelGroup]
    relations: Relations
    blocked_params: dict[str, int] = field(default_factory=dict)

    @property
    def prunable(self) -> list[ChannelGroup]:
        return [group for group in self.groups if group.is_prunable]


def analyse(graph: gs.Graph) -> ChannelGraph:
    """Channel groups of ``graph``; it must be cleaned, sorted and shape-inferred (pipeline.prepare)."""
    rel = _collect(graph)
    dims = list(rel.sizes)
    offsets = dict(zip(dims, np.cumsum([0] + [rel.sizes[d] for d in dims[:-1]]).tolist()))
    total = sum(rel.sizes.values())
    labels = _components(total, _edges(rel, offsets))
    groups = _build_groups(graph, rel, dims, offsets, labels)
    log.info("channel analysis: %d groups, %d prunable", len(groups), sum(g.is_prunable for g in groups))
    return ChannelGraph(graph, groups, rel, _blocked_params(graph, groups))


def _blocked_params(graph: gs.Graph, groups: list[ChannelGroup]) -> dict[str, int]:
    """Elements of the float constants that no prunable group touches, by the first reason that blocks them.

    Counted here, before any surgery or folding changes the graph: on a CNN+LSTM the recurrent
    weights and the head hold most parameters and no group can cut them, which a user should be
    told rather than find a ratio of 0.5 leave 96 % of the parameters. A constant that some
    prunable group cuts along any axis (the last conv before the LSTM, by its input channels) is
    not counted; one in no group at all (its reader's shapes are unknown, or a scalar) is, under
    ``OUTSIDE_GROUPS``. Largest first.
    """
    touching: dict[str, list[ChannelGroup]] = defaultdict(list)
    for group in groups:
        for name in dict.fromkeys(name for name, _ in group.constants):
            touching[name].append(group)
    blocked: Counter[str] = Counter()
    for name, tensor in graph.tensors().items():
        owners = touching.get(name, [])
        if not isinstance(tensor, gs.Constant) or not np.issubdtype(np.dtype(tensor.dtype), np.floating):
            continue
        if not any(group.is_prunable for group in owners):
            reason = next((reason for group in owners for reason in group.reasons), OUTSIDE_GROUPS)
            blocked[reason] += int(np.prod(tensor.shape))
    return dict(blocked.most_common())


def _collect(graph: gs.Graph) -> Relations:
    handlers = load_all()
    rel = Relations(graph)
    for node in graph.nodes:
        handler = handlers.get(node.op)
        if handler is None or node.domain not in (None, "", "ai.onnx"):
            for tensor in [*node.inputs, *node.outputs]:
                rel.block_all(tensor, f"{node.op} '{node.name}' has no channel handler")
            continue
        handler.relate(rel, node)
    for tensor in graph.inputs:
        rel.block_all(tensor, f"graph input '{tensor.name}'")
    for tensor in graph.outputs:
        rel.block_all(tensor, f"graph output '{tensor.name}'")
    _block_unaccepted(graph, rel)
    return rel


def _block_unaccepted(graph: gs.Graph, rel: Relations) -> None:
    """A dim may only shrink where every node touching its tensor accepted it."""
    by_tensor: dict[str, list[Dim]] = defaultdict(list)
    for dim in rel.sizes:
        by_tensor[dim[0]].append(dim)
    for node in graph.nodes:
        accepted = rel.accepted.get(node.name, set())
        for tensor in [*node.inputs, *node.outputs]:
            for dim in by_tensor.get(tensor.name, ()):
                if dim not in accepted:
                    rel.blocked.setdefault(dim, f"{node.op} '{node.name}' cannot change axis {dim[1]} of '{dim[0]}'")


def _edges(rel: Relations, offsets: dict[Dim, int]) -> tuple[np.ndarray, np.ndarray]:
    if not rel.links:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    first = np.concatenate([offsets[a] + ai for a, ai, _, _ in rel.links])
    second = np.concatenate([offsets[b] + bi for _, _, b, bi in rel.links])
    return first, second


def _components(count: int, edges: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    first, second = edges
    matrix = coo_matrix((np.ones(len(first), dtype=np.int8), (first, second)), shape=(count, count))
    return connected_components(matrix, directed=False)[1]


def _build_groups(
    graph: gs.Graph, rel: Relations, dims: list[Dim], offsets: dict[Dim, int], labels: np.ndarray
) -> list[ChannelGroup]:
    constants = {name for name, tensor in graph.tensors().items() if isinstance(tensor, gs.Constant)}
    blocked_channels, channel_reasons = _blocked(rel, offsets, labels)
    dim_of = np.repeat(np.arange(len(dims), dtype=np.int64), [rel.sizes[dim] for dim in dims])  # per element
    with_param = np.zeros(labels.max() + 1 if len(labels) else 0, dtype=bool)
    with_param[labels[np.array([dim[0] in constants for dim in dims], dtype=bool)[dim_of]]] = True
    group_of = _group_labels(dim_of, labels)
    return [
        _group(index, rel, dim_map, constants, blocked_channels, channel_reasons, with_param)
        for index, dim_map in enumerate(_members(dims, offsets, dim_of, group_of, labels))
    ]


def _members(dims: list[Dim], offsets: dict[Dim, int], dim_of: np.ndarray, group_of: np.ndarray,
             labels: np.ndarray) -> list[dict[Dim, tuple[np.ndarray, np.ndarray]]]:
    """Per group (by label), per dim in ``dims`` order: the positions along it the group holds, and their channels.

    One stable sort of all elements by (group, dim) instead of a pass over the groups of every dim.
    """
    order = np.argsort(group_of[labels].astype(np.int64) * max(len(dims), 1) + dim_of, kind="stable")
    group_sorted, dim_sorted = group_of[labels][order], dim_of[order]
    starts = np.flatnonzero((np.diff(group_sorted) != 0) | (np.diff(dim_sorted) != 0)) + 1
    members: list[dict[Dim, tuple[np.ndarray, np.ndarray]]] = []
    for first, last in zip([0, *starts.tolist()], [*starts.tolist(), len(order)]):
        if first == 0 or group_sorted[first] != group_sorted[first - 1]:
            members.append({})
        dim = dims[dim_sorted[first]]
        elements = order[first:last]
        members[-1][dim] = (elements - offsets[dim], labels[elements])
    return members


def _group(index, rel, dim_map, constants, blocked_channels, channel_reasons, with_param) -> ChannelGroup:
    channels = distinct(np.concatenate([owner for _, owner in dim_map.values()]))
    renumbered = {dim: (where, np.searchsorted(channels, owner)) for dim, (where, owner) in dim_map.items()}
    prunable = ~blocked_channels[channels] & with_param[channels]
    reasons = Counter(channel_reasons[int(c)] for c in channels if int(c) in channel_reasons)
    if not with_param[channels].any():
        reasons["holds no parameter to remove"] += len(channels)
    inexact = sorted({rel.inexact[dim] for dim in dim_map if dim in rel.inexact})
    group_constants = [dim for dim in dim_map if dim[0] in constants]
    roles = {dim: rel.roles[dim] for dim in group_constants if dim in rel.roles}
    return ChannelGroup(index, len(channels), renumbered, prunable, group_constants, roles,
                        [reason for reason, _ in reasons.most_common()], inexact)


def _blocked(rel: Relations, offsets: dict[Dim, int], labels: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """Channels with an element on a blocked dim, and the reason of the first such dim for each."""
    blocked = np.zeros(labels.max() + 1 if len(labels) else 0, dtype=bool)
    entries = [(dim, reason) for dim, reason in rel.blocked.items() if dim in offsets]
    if not entries:
        return blocked, {}
    spans = [labels[offsets[dim] : offsets[dim] + rel.sizes[dim]] for dim, _ in entries]
    channels = np.concatenate(spans)
    blocked[channels] = True
    entry_of = np.repeat(np.arange(len(entries)), [len(span) for span in spans])
    unique, first = np.unique(channels, return_index=True)
    return blocked, {int(channel): entries[entry][1] for channel, entry in zip(unique, entry_of[first])}


def _group_labels(dim_of: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Channels that appear on a common axis belong to one group: each axis chains its distinct channels."""
    count = labels.max() + 1 if len(labels) else 0
    pairs = distinct(dim_of * max(count, 1) + labels)  # sorted by dim, then channel
    dim, channel = np.divmod(pairs, max(count, 1))
    same = dim[1:] == dim[:-1]
    return _components(count, (channel[:-1][same], channel[1:][same]))


def distinct(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` by sorting: numpy 2.4's hashing ``unique`` takes about 1 µs per element."""
    ordered = np.sort(values, axis=None)
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))] if len(ordered) else ordered
