"""Latency model: how long the layers a channel group resizes take at a kept count, from the layer table.

A group's channels are output channels of its producers and input channels of its consumers (the
weight axes with role "out"/"in", as in :mod:`onnxprune.channels.costs`). Resizing the group to k
channels resizes each such weight axis in proportion; the layer is timed at that shape with the
axes of other groups whole (:mod:`onnxprune.measure.latency_table`). For the whole model the layers are
taken as separable: a layer keeps ``full * prod over the groups resizing it of (ms at k / full ms)``,
interpolated between the counts timed so far, as in NetAdapt's and HALP's lookup tables. Only
Conv (2-D), Gemm and 2-D MatMul are timed: the other ops are fused into them by onnxruntime or are
memory-bound and small.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.analysis import ChannelGraph, ChannelGroup
from onnxprune.channels.relations import ROLE_IN, ROLE_OUT
from onnxprune.core.layout import weight_layout
from onnxprune.measure.latency_table import LayerShape, LayerTimer

CONV_ATTRS = ("auto_pad", "dilations", "group", "pads", "strides")


@dataclass(frozen=True)
class _Side:
    """A weight axis of ``layer`` that a group resizes: ``positions`` whole, in steps of ``step``."""

    layer: int
    axis: int
    positions: int
    step: int = 1
    depthwise: bool = False  # the axis is a depthwise conv's channels: its input and ``group`` follow
    feeds: bool = False  # the axis is an input channel axis: the layer's data input follows

    def resized(self, shape: LayerShape, positions: int) -> LayerShape:
        weight, data = list(shape.weight), list(shape.input)
        attrs: dict[str, Any] = dict(shape.attrs)
        weight[self.axis] = positions
        if self.depthwise:
            attrs["group"] = data[1] = positions // self.step
        elif self.feeds:
            data[1] = positions * int(attrs.get("group", 1))
        return LayerShape(shape.op, tuple(data), tuple(weight), tuple(sorted(attrs.items())))

    def at(self, kept: int, size: int) -> int:
        """Positions this axis keeps when its group keeps ``kept`` of ``size`` channels."""
        positions = round(self.positions * kept / size / self.step) * self.step
        return int(min(max(positions, self.step), self.positions))


class LatencyModel:
    """Milliseconds of the timed layers as prunable groups keep fewer channels."""

    def __init__(self, channel_graph: ChannelGraph, groups: Iterable[ChannelGroup], timer: LayerTimer) -> None:
        self.timer = timer
        self.layers: list[LayerShape] = []
        self.sizes: dict[int, int] = {}
        self.sides: dict[int, list[_Side]] = {}
        self._index: dict[str, int] = {}
        nodes = {node.name: node for node in channel_graph.graph.nodes}
        for group in groups:
            self.sizes[group.id] = group.size
            self.sides[group.id] = [side for dim, (node, _, role) in group.roles.items() if node in nodes
                                    if (side := self._side(nodes[node], *dim, role, len(group.members[dim][0])))]
        self.layer_groups: list[list[int]] = [[] for _ in self.layers]
        for gid in self.sides:
            for layer in self.layers_of(gid):
                self.layer_groups[layer].append(gid)
        self.points: dict[tuple[int, int], dict[int, float]] = {}  # (group, layer) -> kept count -> ms
        self.full: list[float] = []

    def _side(self, node: gs.Node, name: str, axis: int, role: str, positions: int) -> _Side | None:
        layout = weight_layout(node)
        if layout is None or role not in (ROLE_OUT, ROLE_IN) or name != node.inputs[1].name:
            return None  # not a weight axis (a bias, a BN parameter ...)
        layer = self._layer(node)
        if layer is None:
            return None
        if layout.is_depthwise:
            return _Side(layer, axis, positions, step=layout.out_per_group, depthwise=True)
        step = layout.groups if axis == 0 and layout.groups > 1 else 1
        return _Side(layer, axis, positions, step=step, feeds=role == ROLE_IN)

    def _layer(self, node: gs.Node) -> int | None:
        if node.name not in self._index:
            shape = layer_shape(node)
            if shape is None:
                return None
            self._index[node.name] = len(self.layers)
            self.layers.append(shape)
        return self._index[node.name]

    def group_ms(self, requests: Mapping[int, Sequence[int]], context: Mapping[int, int] | None = None
                 ) -> dict[int, list[float | None]]:
        """Per group, the ms of its layers at each requested kept count (None where a layer could not be timed).

        The other groups' axes of those layers keep ``context`` channels (absent: whole): a grouped
        conv's speed depends on both its sides at once. Everything requested is timed in one batch
        (cached by the timer); without a context the times are kept as interpolation points.
        """
        wanted = [(gid, kept, layer) for gid, counts in requests.items() for kept in counts
                  for layer in self.layers_of(gid)]
        times = self.timer([self._resized(layer, {**(context or {}), gid: kept}) for gid, kept, layer in wanted])
        totals: dict[tuple[int, int], float | None] = {(gid, kept): 0.0 for gid, counts in requests.items()
                                                       for kept in counts}
        for (gid, kept, layer), ms in zip(wanted, times):
            if ms is not None and not context:
                self.points.setdefault((gid, layer), {})[kept] = ms
            total = totals[gid, kept]
            totals[gid, kept] = None if total is None or ms is None else total + ms
        return {gid: [totals[gid, kept] for kept in counts] for gid, counts in requests.items()}

    def _resized(self, layer: int, kept: Mapping[int, int]) -> LayerShape:
        shape = self.layers[layer]
        for gid in self.layer_groups[layer]:
            for side in self.sides[gid]:
                if side.layer == layer and gid in kept:
                    shape = side.resized(shape, side.at(kept[gid], self.sizes[gid]))
        return shape

    def time_whole(self) -> float:
        """Time every layer unpruned; the model's predicted ms (untimeable layers count 0)."""
        self.full = [ms or 0.0 for ms in self.timer(self.layers)]
        return float(sum(self.full))

    def layer_ms(self, layer: int, kept: Mapping[int, int]) -> float:
        """Predicted ms of ``layer`` with groups at ``kept`` channels (absent: whole); needs :meth:`time_whole`."""
        full = self.full[layer]
        ms = full
        for gid in self.layer_groups[layer]:
            points = self.points.get((gid, layer))
            count = kept.get(gid, self.sizes[gid])
            if points and full > 0 and count < self.sizes[gid]:
                at = sorted(points)
                ms *= float(np.interp(count, at, [points[k] for k in at])) / full
        return ms

    def layers_of(self, gid: int) -> list[int]:
        return sorted({side.layer for side in self.sides[gid]})

    def predicted_ms(self, kept: Mapping[int, int]) -> float:
        return float(sum(self.layer_ms(layer, kept) for layer in range(len(self.layers))))


def layer_shape(node: gs.Node) -> LayerShape | None:
    """The :class:`LayerShape` of a 2-D Conv, a Gemm or a MatMul of a matrix by a constant; None otherwise."""
    layout = weight_layout(node)
    data = node.inputs[0].shape if node.inputs else None
    if layout is None or data is None or node.op not in ("Conv", "Gemm", "MatMul"):
        return None
    dims = [1 if i == 0 and not isinstance(d, int) else d for i, d in enumerate(data)]
    if not all(isinstance(d, int) and d > 0 for d in dims) or len(dims) != (4 if node.op == "Conv" else 2):
        return None
    if node.op == "Conv":
        attrs = {name: _attr(value) for name, value in node.attrs.items() if name in CONV_ATTRS}
        return LayerShape("Conv", tuple(dims), tuple(layout.shape), tuple(sorted(attrs.items())))
    if node.attrs.get("transA", 0):
        return None
    return LayerShape("Gemm", tuple(dims), tuple(layout.shape), (("transB", int(node.attrs.get("transB", 0))),))


def _attr(value) -> tuple[int, ...] | int | str:
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return value if isinstance(value, str) else int(value)
