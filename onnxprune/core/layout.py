"""Where the output and input channels of a linear op's weight live, and how groups split them.

The one place that knows the weight layouts (every other module asks a ``WeightLayout``):

    Conv           [out, in / g, *k]   filter of output o: W[o]; input c: W[rows of its group, c mod in/g]
    ConvTranspose  [in, out / g, *k]   filter of output o: W[rows of its group, o mod out/g]; input c: W[c]
    Gemm           [out, in] with transB=1, else [in, out]
    MatMul         [..., in, out]

Axis 0 of a Conv or ConvTranspose weight lists every channel of its side, split into ``g`` equal
blocks (one per group); axis 1 holds the channels of the other side *within* a group. Output
channel o belongs to group ``o // (out / g)``, input channel c to group ``c // (in / g)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core.graph import constant_shape

Index = tuple[int | slice, ...]


@dataclass(frozen=True)
class WeightLayout:
    """The channel axes of one weight: ``out_axis`` and ``in_axis``, and ``groups`` along axis 0."""

    shape: tuple[int, ...]
    out_axis: int
    in_axis: int
    groups: int = 1

    @property
    def out_channels(self) -> int:
        return self._channels(self.out_axis)

    @property
    def in_channels(self) -> int:
        return self._channels(self.in_axis)

    @property
    def out_per_group(self) -> int:
        return self._per_group(self.out_axis)

    @property
    def in_per_group(self) -> int:
        return self._per_group(self.in_axis)

    @property
    def is_depthwise(self) -> bool:
        """One input channel per group: removing an input channel removes its group."""
        return self.groups > 1 and self.in_per_group == 1

    def lists_every_channel(self, axis: int) -> bool:
        """Whether ``axis`` has one position per channel (else one per channel within a group)."""
        return axis == 0 or self.groups == 1

    def output_slice(self, channel: int) -> Index:
        """Index of the weights output channel ``channel`` is computed with (its filter)."""
        return self._slice(self.out_axis, self.in_axis, channel)

    def input_slice(self, channel: int) -> Index:
        """Index of the weights that read input channel ``channel``."""
        return self._slice(self.in_axis, self.out_axis, channel)

    @property
    def filter_size(self) -> int:
        """Elements of one output channel's filter (in / g * prod(kernel) for a conv)."""
        return int(np.prod(self.shape)) // self.out_channels

    @property
    def column_size(self) -> int:
        """Elements that read one input channel (out / g * prod(kernel) for a conv)."""
        return int(np.prod(self.shape)) // self.in_channels

    def output_positions(self, axis: int) -> np.ndarray | None:
        """Per output channel, the one position along ``axis`` its filter lies at; None if it spans several.

        :meth:`output_slice` for every channel at once: the output axis holds channel o (or its
        index within its group); axis 0, when it is the input axis of a grouped weight, holds one
        block per group; any other axis is spanned whole.
        """
        channels = np.arange(self.out_channels, dtype=np.int64)
        if axis == self.out_axis:
            return channels if self.lists_every_channel(axis) else channels % self.out_per_group
        if axis == 0 == self.in_axis and self.groups > 1:
            return channels // self.out_per_group if self._per_group(0) == 1 else None
        return np.zeros(self.out_channels, dtype=np.int64) if self.shape[axis] == 1 else None

    def filter_inputs(self) -> np.ndarray:
        """``[out, in / g]``: the input channel that column j of output channel o's filter reads."""
        group = np.arange(self.out_channels) // self.out_per_group
        return group[:, None] * self.in_per_group + np.arange(self.in_per_group)[None, :]

    def filters(self, weight: np.ndarray) -> np.ndarray:
        """``weight`` as ``[out, in / g, *rest]``: row o is output channel o's filter (the canonical layout)."""
        split = weight.reshape(self.groups, self.shape[0] // self.groups, *self.shape[1:])
        grouped = np.moveaxis(split, (self.out_axis + 1, self.in_axis + 1), (1, 2))
        return grouped.reshape(self.out_channels, *grouped.shape[2:])

    def filter_rows(self, weight: np.ndarray) -> np.ndarray:
        """``[out, filter_size]``: output channel o's filter, flattened, at row o."""
        return self.filters(weight).reshape(self.out_channels, -1)

    def from_filters(self, filters: np.ndarray) -> np.ndarray:
        """The inverse of ``filters``: canonical ``[out, in / g, *rest]`` back in this weight's layout."""
        grouped = filters.reshape(self.groups, self.out_per_group, *filters.shape[1:])
        split = np.moveaxis(grouped, (1, 2), (self.out_axis + 1, self.in_axis + 1))
        return split.reshape(self.shape)

    def _channels(self, axis: int) -> int:
        return self.shape[axis] if self.lists_every_channel(axis) else self.shape[axis] * self.groups

    def _per_group(self, axis: int) -> int:
        return self.shape[axis] // self.groups if self.lists_every_channel(axis) else self.shape[axis]

    def _slice(self, axis: int, other: int, channel: int) -> Index:
        group, within = divmod(channel, self._per_group(axis))
        index: list[int | slice] = [slice(None)] * len(self.shape)
        index[axis] = channel if self.lists_every_channel(axis) else within
        if other == 0 and self.groups > 1:
            size = self._per_group(0)
            index[0] = slice(group * size, (group + 1) * size)
        return tuple(index)


def layout_of(op: str, shape: Sequence[int], group: int = 1, trans_b: bool = False) -> WeightLayout | None:
    """The layout of ``op``'s weight of ``shape``; None for another op or a shape that op cannot have."""
    shape = tuple(int(size) for size in shape)
    axes = _axes(op, len(shape), trans_b)
    if axes is None or group < 1 or (op in ("Conv", "ConvTranspose") and shape[0] % group):
        return None
    return WeightLayout(shape, *axes, groups=group if op in ("Conv", "ConvTranspose") else 1)


def layout_of_filters(op: str, filters_shape: Sequence[int], group: int = 1,
                      trans_b: bool = False) -> WeightLayout | None:
    """The layout of the weight whose ``filters`` are ``[out, in / g, *rest]``: what writing them back needs."""
    axes = _axes(op, len(filters_shape), trans_b)
    if axes is None:
        return None
    out, in_per_group, *rest = (int(size) for size in filters_shape)
    sizes = {axes[0]: out, axes[1]: in_per_group * group}
    others = iter(rest)
    shape = [sizes[axis] // (1 if axis == 0 else group) if axis in sizes else next(others)
             for axis in range(len(filters_shape))]
    return layout_of(op, shape, group, trans_b)


def weight_layout(node: gs.Node) -> WeightLayout | None:
    """The layout of ``node``'s constant weight (input 1); None without one or for another op."""
    shape = constant_shape(node.inputs[1]) if len(node.inputs) > 1 else None
    if shape is None:
        return None
    group, trans_b = int(node.attrs.get("group", 1)), bool(node.attrs.get("transB", 0))
    return layout_of(node.op, shape, group, trans_b)


def _axes(op: str, ndim: int, trans_b: bool) -> tuple[int, int] | None:
    """(output-channel axis, input-channel axis) of ``op``'s weight of rank ``ndim``."""
    if op in ("Conv", "ConvTranspose") and ndim >= 2:
        return (0, 1) if op == "Conv" else (1, 0)
    if op == "Gemm" and ndim == 2:
        return (0, 1) if trans_b else (1, 0)
    if op == "MatMul" and ndim >= 2:
        return ndim - 1, ndim - 2
    return None
