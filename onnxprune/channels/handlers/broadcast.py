"""Ops that scale or repeat axes, or read their sizes: Resize, Upsample, Expand, Tile, Shape.

They leave the axes they do not scale alone (identity); Shape reads sizes at run time, so the
axes it reads are blocked.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.handlers import Handler, Removed, register
from onnxprune.channels.handlers.util import (
    _gone,
    _has,
    _shape_of,
    _static,
)
from onnxprune.channels.relations import Relations
from onnxprune.core.graph import constant_value, set_constant

CROP_AND_RESIZE = ("tf_crop_and_resize", b"tf_crop_and_resize")  # scales depend on the ROI input


@register("Resize", "Upsample")
class ResizeHandler(Handler):
    """Axes with scale 1 (batch, channels) pass through; scaled axes cannot shrink. ``update`` rewrites ``sizes``."""

    def relate(self, rel: Relations, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        scales = _resize_scales(node, x, rel.graph.opset)
        if scales is None:
            rel.block_all(y, f"{node.op} '{node.name}': scales/sizes are not constant or shapes unknown")
            return
        for axis, scale in enumerate(scales):
            if scale == 1.0:
                rel.same(node, x, axis, y, axis)

    def update(self, graph: gs.Graph, node: gs.Node, removed: Removed) -> None:
        if node.op != "Resize" or not _has(node, 3):
            return
        y = node.outputs[0]
        value = constant_value(node.inputs[3])
        assert value is not None  # relate let no axis of a Resize by computed sizes shrink
        sizes = [int(v) for v in value]
        axes = _resize_axes(node, len(y.shape))
        new = [size - len(_gone(removed, y, axis)) for size, axis in zip(sizes, axes)]
        if new != sizes:
            set_constant(graph, node, 3, np.asarray(new, dtype=np.int64), f"{node.name}_sizes")


def _resize_axes(node: gs.Node, rank: int) -> list[int]:
    axes = node.attrs.get("axes")
    return list(range(rank)) if axes is None else [int(a) % rank for a in axes]


def _resize_scales(node: gs.Node, x: gs.Tensor, opset: int) -> list[float] | None:
    """The scale of every axis (1.0 where the op leaves it alone); None when unknown or ROI-dependent."""
    shape = _static(x.shape)
    if shape is None or node.attrs.get("coordinate_transformation_mode") in CROP_AND_RESIZE:
        return None
    if node.op == "Upsample" and "scales" in node.attrs:
        given = [float(s) for s in node.attrs["scales"]]
    elif _has(node, 3):
        sizes = constant_value(node.inputs[3])
        policy = node.attrs.get("keep_aspect_ratio_policy", "stretch")
        if sizes is None or policy not in ("stretch", b"stretch"):
            return None
        axes = _resize_axes(node, len(shape))
        given = [int(size) / shape[axis] for size, axis in zip(sizes, axes)]
    else:
        index = 1 if node.op == "Upsample" or opset < 11 else 2
        value = constant_value(node.inputs[index]) if _has(node, index) else None
        if value is None:
            return None
        given = [float(s) for s in value]
    scales = [1.0] * len(shape)
    for axis, scale in zip(_resize_axes(node, len(shape)), given):
        scales[axis] = scale
    return scales


@register("Expand", "Tile")
class BroadcastHandler(Handler):
    """Axes that Expand does not broadcast or Tile repeats once pass through; the others cannot shrink.

    ``update`` rewrites Expand's target shape where it spells out a pruned axis.
    """

    def relate(self, rel: Relations, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        shape, out = _shape_of(x), y.shape
        if shape is None or out is None or constant_value(node.inputs[1]) is None:
            rel.block_all(y, f"{node.op} '{node.name}': shape or repeats not constant")
            return
        offset = len(out) - len(shape)
        for axis, size in enumerate(shape):
            if isinstance(size, (int, np.integer)) and size == out[axis + offset]:
                rel.same(node, x, axis, y, axis + offset)

    def update(self, graph: gs.Graph, node: gs.Node, removed: Removed) -> None:
        if node.op != "Expand":
            return
        y = node.outputs[0]
        target = constant_value(node.inputs[1])
        assert target is not None  # relate let no axis of an Expand to a computed shape shrink
        new = [int(v) for v in target]
        offset = len(y.shape) - len(new)
        for position, value in enumerate(new):
            gone = _gone(removed, y, position + offset)
            if len(gone) and value != 1:
                new[position] = value - len(gone)
        if new != [int(v) for v in target]:
            set_constant(graph, node, 1, np.asarray(new, dtype=target.dtype), f"{node.name}_shape")


@register("Shape")
class ShapeHandler(Handler):
    """Shape reads the sizes of axes start .. end - 1 at run time: those axes cannot shrink."""

    def relate(self, rel: Relations, node: gs.Node) -> None:
        x = node.inputs[0]
        if x.shape is None:
            return
        rank = len(x.shape)
        start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
        read = range(rank)[slice(start, None if end is None else int(end))]
        for axis in range(rank):
            if axis in read:
                rel.block(x, axis, f"Shape '{node.name}' reads the size of axis {axis} at run time")
            else:
                rel.accept(node, x, axis)
