"""Cost model: MACs and parameters a graph keeps as channels are removed, for FLOPs/params targets.

Predicting the pruned model's cost from the analysis (instead of pruning and re-counting) lets a
policy search for the removal that meets a target in milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.analysis import ChannelGraph, ChannelGroup
from onnxprune.channels.relations import ROLE_IN, Dim
from onnxprune.core.graph import constant_value
from onnxprune.measure.stats import ModelStats


@dataclass
class ChannelCost:
    """First-order MACs and parameters one channel of a group removes, alone."""

    macs: np.ndarray
    params: np.ndarray


class CostModel:
    """MACs and parameters of a graph as a function of the positions removed on each channel axis.

    A node with MACs (from ``ModelStats.per_node``) scales with every channel axis it depends on:
    the axes of its output that belong to a channel group (its output channels, for Conv, BN, pools,
    element-wise ops) and the role-"in" axes of its constant inputs (the input channels of a Conv,
    Gemm or MatMul). A node without weights whose output has no axis that can shrink (a ReduceMean
    over channels) scales with its first input's axes instead. With r_d of s_d positions removed on
    axis d, the node keeps ``macs * prod_d (1 - r_d / s_d)``: exact for Conv (output elements x
    input channels per group x kernel), ConvTranspose (input elements x output channels per group x
    kernel), grouped and depthwise ones, Gemm, MatMul and ops linear in their channels. A constant
    keeps ``elements * prod_d (1 - r_d / s_d)`` over its channel axes.
    """

    def __init__(self, channel_graph: ChannelGraph, stats: ModelStats) -> None:
        self.macs = float(stats.macs)
        self.params = float(stats.params)
        dims = list(dict.fromkeys(dim for group in channel_graph.groups for dim in group.members))
        self.index: dict[Dim, int] = {dim: i for i, dim in enumerate(dims)}
        self.sizes = np.array([channel_graph.relations.sizes[dim] for dim in dims], dtype=np.float64)
        by_tensor: dict[str, list[tuple[Dim, int]]] = {}
        for dim, i in self.index.items():
            by_tensor.setdefault(dim[0], []).append((dim, i))
        self._nodes = _Terms(*_node_terms(channel_graph, stats, by_tensor))
        self._constants = _Terms(*_constant_terms(channel_graph, by_tensor))

    @classmethod
    def build(cls, channel_graph: ChannelGraph, stats: ModelStats | None = None) -> CostModel:
        """From ``stats`` of this graph, or counted now with its declared input shapes (batch 1)."""
        if stats is None:
            from onnxprune.core.data import resolve_input_shapes
            from onnxprune.measure.stats import model_stats

            model = gs.export_onnx(channel_graph.graph, do_type_check=False)
            stats = model_stats(model, resolve_input_shapes(model))
        return cls(channel_graph, stats)

    def left(self, removed: np.ndarray) -> tuple[float, float]:
        """(MACs, params) the graph keeps with ``removed[i]`` positions gone from axis i."""
        keep = 1.0 - removed / self.sizes
        return self.macs - self._nodes.loss(keep), self.params - self._constants.loss(keep)

    def removed(self, remove: Mapping[int, np.ndarray], channel_graph: ChannelGraph) -> np.ndarray:
        """Positions removed per axis by the channels ``remove`` names (group id -> channel indices)."""
        groups = {group.id: group for group in channel_graph.groups}
        counts = np.zeros(len(self.sizes))
        for gid, channels in remove.items():
            for dim in groups[gid].members:
                counts[self.index[dim]] += len(groups[gid].positions(dim, np.asarray(channels)))
        return counts

    def positions(self, group: ChannelGroup) -> list[tuple[int, np.ndarray]]:
        """(axis index, positions each channel holds there) for every axis of ``group``."""
        return [(self.index[dim], np.bincount(owner, minlength=group.size))
                for dim, (_, owner) in group.members.items()]

    def cumulative(self, group: ChannelGroup, order: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Per axis: positions removed when the first k channels of ``order`` go, for k = 0..len(order)."""
        return [(index, np.concatenate([[0], np.cumsum(held[order])])) for index, held in self.positions(group)]

    def channel_costs(self, channel_graph: ChannelGraph) -> dict[int, ChannelCost]:
        """First-order cost of each channel of every prunable group: what removing it alone saves."""
        macs_per_position = self._nodes.weight_per_position(len(self.sizes)) / self.sizes
        params_per_position = self._constants.weight_per_position(len(self.sizes)) / self.sizes
        costs = {}
        for group in channel_graph.prunable:
            held = self.positions(group)
            costs[group.id] = ChannelCost(
                sum((macs_per_position[i] * counts for i, counts in held), np.zeros(group.size)),
                sum((params_per_position[i] * counts for i, counts in held), np.zeros(group.size)),
            )
        return costs


def channel_costs(channel_graph: ChannelGraph, stats: ModelStats | None = None) -> dict[int, ChannelCost]:
    """MACs and parameters removed by each channel of each prunable group, alone (first order)."""
    return CostModel.build(channel_graph, stats).channel_costs(channel_graph)


@dataclass
class _Terms:
    """Weighted products over axes: term t is ``base[t] * prod(keep[axis] for its axes)``."""

    base: np.ndarray
    term: np.ndarray  # one entry per (term, axis) pair: the term
    axis: np.ndarray  # ... and the axis

    def loss(self, keep: np.ndarray) -> float:
        product = np.ones(len(self.base))
        np.multiply.at(product, self.term, keep[self.axis])
        return float((self.base * (1.0 - product)).sum())

    def weight_per_position(self, axes: int) -> np.ndarray:
        return np.bincount(self.axis, weights=self.base[self.term], minlength=axes)


def _node_terms(channel_graph: ChannelGraph, stats: ModelStats, by_tensor: dict[str, list[tuple[Dim, int]]]):
    macs = {cost.name: cost.macs for cost in stats.per_node}
    roles = channel_graph.relations.roles
    prunable = {dim for group in channel_graph.prunable for dim in group.members}
    base: list[float] = []
    term: list[int] = []
    axis: list[int] = []
    for position, node in enumerate(channel_graph.graph.nodes):
        value = macs.get(node.name or f"{node.op}_{position}", 0)
        if not value or not node.outputs:
            continue
        columns = [i for tensor in node.inputs for dim, i in by_tensor.get(tensor.name, [])
                   if roles.get(dim, ("", "", ""))[2] == ROLE_IN]
        outputs = by_tensor.get(node.outputs[0].name, [])
        if not columns and node.inputs and not any(dim in prunable for dim, _ in outputs):
            outputs = by_tensor.get(node.inputs[0].name, [])  # e.g. a reduction over the channel axis
        axes = [i for _, i in outputs] + columns
        if axes:
            term += [len(base)] * len(axes)
            axis += axes
            base.append(float(value))
    return np.array(base, dtype=np.float64), np.array(term, dtype=np.int64), np.array(axis, dtype=np.int64)


def _constant_terms(channel_graph: ChannelGraph, by_tensor: dict[str, list[tuple[Dim, int]]]):
    tensors = channel_graph.graph.tensors()
    names = list(dict.fromkeys(name for group in channel_graph.groups for name, _ in group.constants))
    base: list[float] = []
    term: list[int] = []
    axis: list[int] = []
    for name in names:
        value = constant_value(tensors[name]) if name in tensors else None
        if value is None or not np.issubdtype(np.asarray(value).dtype, np.floating):
            continue
        axes = [i for _, i in by_tensor[name]]
        term += [len(base)] * len(axes)
        axis += axes
        base.append(float(np.asarray(value).size))
    return np.array(base, dtype=np.float64), np.array(term, dtype=np.int64), np.array(axis, dtype=np.int64)
