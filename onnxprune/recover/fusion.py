"""Fuse each channel about to be pruned into the kept channel most like it.

Information fusion of APBM (Qu et al. 2022), done data-free as in Neuron Merging (Kim et al. 2020).

Before (channel r of conv1 is removed, channel k kept):
    y = W2[:, k] relu(w_k x + b_k) + W2[:, r] relu(w_r x + b_r) + ...
After (run BEFORE prune_channels, which then deletes r):
    y = (W2[:, k] + s W2[:, r]) relu(w_k x + b_k) + ...

Maths: every channel c of the group is described by the concatenation v_c, over the group's
producers, of its effective filter and bias ``[w_c, b_c]`` (a BatchNormalization reading the
producer's output directly is folded in: ``w <- γ/σ w``, ``b <- γ/σ (b - μ) + β``). For each removed
channel r, k = argmax over kept channels of cos(v_r, v_k); when cos > 0,

    s = <v_r, v_k> / ||v_k||^2 = (||v_r|| / ||v_k||) cos(v_r, v_k)

(the least-squares fit v_r ≈ s v_k) and every consumer's input columns (role "in" axes: the next
conv's ``W[:, c]``, a Gemm's block of columns behind a Flatten) get ``col_k += s col_r``. Channels
whose best similarity is not positive are dropped without compensation.

Preconditions for exactness: v_r = s v_k with s > 0, and every op between producers and consumers
positive-homogeneous (f(s z) = s f(z): Relu, LeakyRelu, max/average pooling, Add of activations,
Concat, reshapes), which makes channel r's activation exactly s times channel k's. Anything else
(a sigmoid/swish/hardswish, Clip, an SE gate, a per-channel constant, a depthwise conv inside the
group, a BN not directly after a producer) makes the merge an approximation; the report says which
op, and ``homogeneous_only=True`` skips such groups instead. The merge never needs data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.analysis import ChannelGraph, ChannelGroup
from onnxprune.channels.importance.magnitude import Slices, role_slices
from onnxprune.channels.relations import ROLE_IN, ROLE_OUT, ROLE_SCALE
from onnxprune.core.graph import Skip, constant_value
from onnxprune.core.linear import batchnorm_affine
from onnxprune.passes.base import PassReport

log = logging.getLogger(__name__)

NAME = "compensate"

HOMOGENEOUS = frozenset({
    "Relu", "LeakyRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum",
    "ReduceMax", "Add", "Sum", "Sub", "Concat", "Split", "Slice", "Pad", "Flatten", "Reshape", "Transpose",
    "Squeeze", "Unsqueeze", "Identity", "Dropout", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth",
})
ADDITIVE = frozenset({"Add", "Sum", "Sub"})  # homogeneous only between activations, not with a constant


@dataclass
class CompensateReport(PassReport):
    merged: int = 0
    similarities: list[float] = field(default_factory=list)

    @property
    def mean_similarity(self) -> float | None:
        return float(np.mean(self.similarities)) if self.similarities else None

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "merged": self.merged, "mean_similarity": self.mean_similarity}


@dataclass
class _Merge:
    """What a group's compensation needs: channel vectors, consumer columns, why it is approximate."""

    group: ChannelGroup
    removed: np.ndarray
    vectors: np.ndarray  # [channels, features]
    consumers: list[tuple[gs.Tensor, int, np.ndarray]]  # tensor, axis, [channels, positions] (-1: none)
    approximate: list[str]


def run(graph: gs.Graph, channel_graph: ChannelGraph, remove: Mapping[int, np.ndarray],
        homogeneous_only: bool = False) -> CompensateReport:
    """Merge the channels ``remove`` names (group id -> channel indices) into kept ones, in place.

    Call it before ``prune_channels.run`` with the same ``channel_graph`` and ``remove``; the graph
    keeps its structure (only consumer weights change), so the channel analysis stays valid.
    """
    report = CompensateReport(NAME)
    groups = {group.id: group for group in channel_graph.groups}
    for gid, channels in remove.items():
        channels = np.unique(np.asarray(channels, dtype=np.int64).reshape(-1))
        if not len(channels) or gid not in groups:
            continue
        try:
            found = match(graph, groups[gid], channels, homogeneous_only)
            report.rewrites.append(apply(found, report))
        except Skip as why:
            report.skipped.append(f"group {gid}: {why}")
    log.info("%s: %d channel(s) merged, mean similarity %s", NAME, report.merged, report.mean_similarity)
    return report


def match(graph: gs.Graph, group: ChannelGroup, removed: np.ndarray, homogeneous_only: bool = False) -> _Merge:
    """Read what merging needs, or raise Skip with the reason (before touching anything)."""
    if len(removed) >= group.size:
        raise Skip("every channel is removed: nothing to merge into")
    tensors = graph.tensors()
    nodes = {node.name: node for node in graph.nodes}
    vectors, folded = _vectors(graph, group, nodes)
    consumers = [(tensors[s.dim[0]], s.dim[1], _positions(group, s)) for s in role_slices(group, graph, ROLE_IN)]
    if not consumers:
        raise Skip("no consumer weights (role 'in') to merge into")
    approximate = _approximations(group, tensors, folded)
    if homogeneous_only and approximate:
        raise Skip("not exact: " + "; ".join(approximate[:3]))
    return _Merge(group, removed, vectors, consumers, approximate)


def apply(found: _Merge, report: CompensateReport) -> str:
    """Add each removed channel's scaled consumer columns onto its most similar kept channel."""
    removed, kept, cosine, scale = _pairs(found.vectors, found.removed)
    if not len(removed):
        raise Skip("no kept channel has a positive similarity to a removed one")
    for tensor, axis, positions in found.consumers:
        values = np.array(constant_value(tensor), dtype=np.float64)
        columns = np.moveaxis(values, axis, 0)  # a view: writing it writes values
        source, target = positions[removed], positions[kept]
        usable = (source >= 0) & (target >= 0)
        weights = np.broadcast_to(scale[:, None], source.shape)[usable]
        moved = columns[source[usable]] * weights.reshape((-1,) + (1,) * (columns.ndim - 1))
        np.add.at(columns, target[usable], moved)  # several removed channels may share a kept one
        _write(tensor, values)
    report.merged += len(removed)
    report.similarities.extend(cosine.tolist())
    note = f"; approximate: {'; '.join(found.approximate[:2])}" if found.approximate else ""
    return (f"group {found.group.id}: merged {len(removed)} of {len(found.removed)} removed channels "
            f"(mean cos {cosine.mean():.3f}){note}")


def _pairs(vectors: np.ndarray, removed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Removed channels r, their best kept match k, cos(v_r, v_k) and s, where that cos is positive.

    The best match is searched in float32; cos and s of the chosen pairs are recomputed in float64.
    """
    kept = np.setdiff1d(np.arange(len(vectors)), removed)
    norms = np.linalg.norm(vectors, axis=1)
    unit = np.divide(vectors, norms[:, None], out=np.zeros_like(vectors), where=norms[:, None] > 0).astype(np.float32)
    best = kept[np.argmax(unit[removed] @ unit[kept].T, axis=1)]
    dots = np.einsum("ij,ij->i", vectors[removed], vectors[best])
    denominator = norms[removed] * norms[best]
    cosine = np.divide(dots, denominator, out=np.zeros_like(dots), where=denominator > 0)
    chosen = cosine > 0
    scale = dots[chosen] / norms[best[chosen]] ** 2
    return removed[chosen], best[chosen], cosine[chosen], scale


def _vectors(graph: gs.Graph, group: ChannelGroup, nodes: dict[str, gs.Node]) -> tuple[np.ndarray, set[str]]:
    """[channels, features]: each producer's effective filter and bias, BN folded; the folded BNs."""
    by_node: dict[str, list[Slices]] = {}
    for entry in role_slices(group, graph, ROLE_OUT):
        by_node.setdefault(group.roles[entry.dim][0], []).append(entry)
    parts, folded = [], set()
    for name, slices in by_node.items():
        filters = [s for s in slices if s.elements > 1]
        if len(filters) != 1:
            continue
        weight = filters[0]
        bias = next((s.full[:, 0] for s in slices if s.elements == 1), np.zeros(len(weight.full)))
        rows = np.concatenate([weight.rows, bias[weight.where, None]], axis=1)
        bn = _batchnorm_after(nodes.get(name), group)
        if bn is not None:
            scale, shift = batchnorm_affine(bn)
            rows *= scale[weight.where, None]
            rows[:, -1] += shift[weight.where]
            folded.add(bn.name)
        parts.append(_by_channel(group, weight.where, weight.owner, rows))
    if not parts:
        raise Skip("no producer filters (role 'out') to compare channels by")
    return np.concatenate(parts, axis=1), folded


def _batchnorm_after(producer: gs.Node | None, group: ChannelGroup) -> gs.Node | None:
    """The BatchNormalization of this group that reads ``producer``'s output alone, if foldable."""
    if producer is None or len(producer.outputs[0].outputs) != 1:
        return None
    reader = producer.outputs[0].outputs[0]
    holds_scale = any(role == ROLE_SCALE and node == reader.name for node, _, role in group.roles.values())
    if reader.op != "BatchNormalization" or not holds_scale:
        return None
    try:
        batchnorm_affine(reader)
    except Skip:
        return None
    return reader


def _by_channel(group: ChannelGroup, where: np.ndarray, owner: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[channels, positions * width]: each channel's rows in position order; zeros where it has none."""
    counts = np.bincount(owner, minlength=group.size)
    present = counts > 0
    if len(np.unique(counts[present])) != 1:
        raise Skip("channels hold different numbers of positions on a producer's axis")
    out = np.zeros((group.size, counts[present][0] * rows.shape[1]))
    if counts[present][0] == 1:
        out[owner] = rows
        return out
    order = np.lexsort((where, owner))
    out[present] = rows[order].reshape(int(present.sum()), -1)
    return out


def _positions(group: ChannelGroup, entry: Slices) -> np.ndarray:
    """[channels, positions]: the positions each channel holds on a consumer axis, -1 where none."""
    counts = np.bincount(entry.owner, minlength=group.size)
    present = counts > 0
    if len(np.unique(counts[present])) != 1:
        raise Skip(f"channels hold different numbers of positions on '{entry.dim[0]}'")
    order = np.lexsort((entry.where, entry.owner))
    out = np.full((group.size, counts[present][0]), -1, dtype=np.int64)
    out[present] = entry.where[order].reshape(int(present.sum()), -1)
    return out


def _approximations(group: ChannelGroup, tensors: dict[str, gs.Tensor], folded: set[str]) -> list[str]:
    """Why channel r's activation is not exactly s times channel k's between producers and consumers."""
    constants = {name for name, _ in group.constants}
    members = {name for name, _ in group.members if name not in constants}
    producers = {node for node, _, role in group.roles.values() if role == ROLE_OUT}
    consumers = {node for node, _, role in group.roles.values() if role == ROLE_IN}
    touching = {node.name: node for name in members for node in [*tensors[name].inputs, *tensors[name].outputs]}
    reasons = []
    for name, node in touching.items():
        if name in producers:
            if any(tensor.name in members for tensor in node.inputs):
                reasons.append(f"{node.op} '{name}' reads and writes the group's channels")
        elif name in consumers or name in folded:
            continue
        elif node.op not in HOMOGENEOUS:
            reasons.append(f"{node.op} '{name}' is not positive-homogeneous")
        elif node.op in ADDITIVE and any(isinstance(tensor, gs.Constant) for tensor in node.inputs):
            reasons.append(f"{node.op} '{name}' adds a constant")
    return sorted(reasons)


def _write(tensor: gs.Tensor, values: np.ndarray) -> None:
    """Store ``values`` in a constant (an initializer or a Constant node's output), in its dtype."""
    if isinstance(tensor, gs.Constant):
        tensor.values = np.ascontiguousarray(values.astype(tensor.values.dtype))
        return
    holder = tensor.inputs[0].attrs["value"]
    holder.values = np.ascontiguousarray(values.astype(holder.values.dtype))
