"""Ops that place, cut or pick elements of an axis: Concat, Split, Slice, Pad, Gather.

Concat places each input's channels at an offset of the output's axis and Split cuts them apart;
Slice takes every step-th element of a range; Pad adds constant elements around; Gather with
constant indices picks elements. ``update`` rewrites the sizes, bounds, amounts and indices.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.handlers import Handler, Removed, register
from onnxprune.channels.handlers.util import (
    INT64_MIN,
    _block,
    _gone,
    _has,
    _ints,
    _renumber,
    _shape_of,
    _static,
    _write_ints,
)
from onnxprune.channels.relations import Relations
from onnxprune.core.graph import constant_value, set_constant


@register("Concat")
class ConcatHandler(Handler):
    def relate(self, rel: Relations, node: gs.Node) -> None:
        y = node.outputs[0]
        if y.shape is None:
            rel.block_all(y, f"Concat '{node.name}': output shape unknown")
            return
        rank = len(y.shape)
        axis = int(node.attrs["axis"]) % rank
        target = rel.dim(y, axis)
        offset = 0
        for tensor in node.inputs:
            for other in range(rank):
                if other != axis:
                    rel.same(node, tensor, other, y, other)
            source = rel.dim(tensor, axis)
            if source is None or target is None:
                rel.block_all(y, f"Concat '{node.name}': sizes along axis {axis} unknown")
                return
            indices = np.arange(rel.sizes[source])
            rel.link(node, source, indices, target, offset + indices)
            offset += rel.sizes[source]


@register("Split")
class SplitHandler(Handler):
    """Output j is the segment offset_j .. offset_j + size_j - 1 of the input axis; update rewrites the sizes.

    The sizes come from the ``split`` attribute (opset < 13), the ``split`` input (>= 13), or an
    equal split (``num_outputs`` from opset 18); an equal split becomes explicit when it changes.
    """

    def relate(self, rel: Relations, node: gs.Node) -> None:
        x = node.inputs[0]
        if x.shape is None:
            for y in node.outputs:
                rel.block_all(y, f"Split '{node.name}': input rank unknown")
            return
        rank = len(x.shape)
        axis = int(node.attrs.get("axis", 0)) % rank
        sizes = _split_sizes(node, axis)
        source = rel.dim(x, axis)
        if sizes is None or source is None or sum(sizes) != rel.sizes[source]:
            for y in node.outputs:
                rel.block_all(y, f"Split '{node.name}': segment sizes unknown")
            return
        offset = 0
        for y, size in zip(node.outputs, sizes):
            for other in range(rank):
                if other != axis:
                    rel.same(node, x, other, y, other)
            target = rel.dim(y, axis)
            if target is not None and rel.sizes[target] == size:
                rel.link(node, source, offset + np.arange(size), target, np.arange(size))
            offset += size

    def update(self, graph: gs.Graph, node: gs.Node, removed: Removed) -> None:
        x = node.inputs[0]
        axis = int(node.attrs.get("axis", 0)) % len(x.shape)
        sizes = _split_sizes(node, axis)
        assert sizes is not None  # relate let no axis of a Split with unknown sizes shrink
        new = [size - len(_gone(removed, y, axis)) for y, size in zip(node.outputs, sizes)]
        if new == sizes:
            return
        if "split" in node.attrs or (graph.opset < 13 and not _has(node, 1)):
            node.attrs["split"] = new
            return
        node.attrs.pop("num_outputs", None)  # opset 18: either num_outputs or the split input, not both
        set_constant(graph, node, 1, np.asarray(new, dtype=np.int64), f"{node.name}_split")


def _split_sizes(node: gs.Node, axis: int) -> list[int] | None:
    """Segment sizes: the attribute, the constant input, else (equal split) the outputs' static sizes."""
    if "split" in node.attrs or _has(node, 1):
        return _ints(node, "split", 1)  # None for a computed input: its values could change at run time
    shapes = [_static(y.shape) for y in node.outputs]
    static = [shape for shape in shapes if shape is not None]
    if len(static) != len(shapes):
        return None
    return [shape[axis] for shape in static]


# --- Slice, Pad, Gather ----------------------------------------------------------------------------


@register("Slice")
class SliceHandler(Handler):
    """Element k of a sliced axis is element start + k*step of the input; other axes are the same.

    Input elements the slice does not take are left free: deleting them only shifts the bounds.
    Deleting elements from a slice with |step| > 1 would leave unequal gaps between the kept ones
    (no Slice can express that), so such an axis is blocked unless it takes a single element; with
    step +-1 the kept elements stay contiguous after any deletion, and ``update`` recomputes
    starts/ends.
    """

    def relate(self, rel: Relations, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        bounds = _slice_bounds(node, x)
        if bounds is None:
            for tensor in (x, y):
                rel.block_all(tensor, f"Slice '{node.name}': bounds are not constant or the input rank is unknown")
            return
        for axis in range(len(x.shape)):
            if axis not in bounds:
                rel.same(node, x, axis, y, axis)
                continue
            source, target = rel.dim(x, axis), rel.dim(y, axis)
            if source is None or target is None:
                _block(rel, node, [(x, axis), (y, axis)], f"sliced axis {axis} has no static size")
                continue
            start, end, step = bounds[axis]
            taken = np.arange(*slice(start, end, step).indices(rel.sizes[source]))
            if len(taken) != rel.sizes[target]:
                _block(rel, node, [(x, axis), (y, axis)], f"output size of axis {axis} disagrees with the bounds")
            elif len(taken) > 1 and abs(step) != 1:
                reason = f"step {step} on axis {axis}: deleting elements breaks the stride"
                _block(rel, node, [(x, axis), (y, axis)], reason)
            else:
                rel.link(node, source, taken, target, np.arange(len(taken)))

    def update(self, graph: gs.Graph, node: gs.Node, removed: Removed) -> None:
        x = node.inputs[0]
        bounds = _slice_bounds(node, x)
        assert bounds is not None  # relate let no axis of a Slice with computed bounds shrink
        changed = {}
        for axis, (start, end, step) in bounds.items():
            gone = _gone(removed, x, axis)
            if len(gone):
                taken = np.arange(*slice(start, end, step).indices(int(x.shape[axis])))
                kept = _renumber(taken[~np.isin(taken, gone)], gone)
                changed[axis] = _progression(kept, step, node)
        if not changed:
            return
        axes = _slice_axes(node, len(x.shape))
        for attr, index, part in (("starts", 1, 0), ("ends", 2, 1), ("steps", 4, 2)):
            values = _ints(node, attr, index)
            if values is None:
                continue  # steps absent: all 1, and _progression keeps every step
            for position, axis in enumerate(axes):
                if axis in changed:
                    values[position] = changed[axis][part]
            _write_ints(graph, node, attr, index, values)


def _slice_axes(node: gs.Node, rank: int) -> list[int]:
    starts = _ints(node, "starts", 1) or []
    axes = _ints(node, "axes", 3)
    return [a % rank for a in (axes if axes is not None else range(len(starts)))]


def _slice_bounds(node: gs.Node, x: gs.Tensor) -> dict[int, tuple[int, int, int]] | None:
    """axis -> (start, end, step) from the attributes (opset < 10) or constant inputs; None if not constant."""
    if x.shape is None:
        return None
    starts, ends = _ints(node, "starts", 1), _ints(node, "ends", 2)
    if starts is None or ends is None or (_has(node, 3) and _ints(node, "axes", 3) is None):
        return None
    steps = _ints(node, "steps", 4) if _has(node, 4) else [1] * len(starts)
    if steps is None or 0 in steps:
        return None
    axes = _slice_axes(node, len(x.shape))
    return {axis: (start, end, step) for axis, start, end, step in zip(axes, starts, ends, steps)}


def _progression(kept: np.ndarray, step: int, node: gs.Node) -> tuple[int, int, int]:
    """(start, end, step) of a Slice taking exactly ``kept`` (new indices, in output order)."""
    if len(kept) == 0:
        return 0, 0, 1 if step > 0 else step
    if len(kept) > 1:
        diffs = np.diff(kept)
        if not (diffs == diffs[0]).all():
            raise ValueError(f"Slice '{node.name}': kept elements {kept.tolist()} are not evenly spaced")
        step = int(diffs[0])
    end = int(kept[-1]) + (1 if step > 0 else -1)
    return int(kept[0]), (INT64_MIN if end < 0 else end), step


@register("Pad")
class PadHandler(Handler):
    """Input element i of a padded axis is output element before + i (constant mode only).

    The padded output elements are linked by nothing here: they belong to whatever groups their
    consumers put them in (the residual partner of a ResNet option-A shortcut). Deleting some of
    them lowers the pad amount of their region. Negative amounts crop, and deleting cropped input
    elements lowers the crop. Reflect/edge/wrap padding copies data across the padded axis, so
    such an axis cannot lose elements. Exact for any axis; only channel axes ever get that far.
    """

    def relate(self, rel: Relations, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        amounts = _pad_amounts(node, x)
        if amounts is None:
            for tensor in (x, y):
                rel.block_all(tensor, f"Pad '{node.name}': pads are not constant or the input rank is unknown")
            return
        mode = node.attrs.get("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        for axis, (before, after) in enumerate(amounts):
            if before == 0 and after == 0:
                rel.same(node, x, axis, y, axis)
                continue
            source, target = rel.dim(x, axis), rel.dim(y, axis)
            if mode != "constant" or source is None or target is None:
                _block(rel, node, [(x, axis), (y, axis)], f"{mode} padding of axis {axis}")
                continue
            inputs = np.arange(rel.sizes[source])
            inside = (before + inputs >= 0) & (before + inputs < rel.sizes[target])
            rel.link(node, source, inputs[inside], target, before + inputs[inside])

    def update(self, graph: gs.Graph, node: gs.Node, removed: Removed) -> None:
        x, y = node.inputs[0], node.outputs[0]
        amounts = _pad_amounts(node, x)
        assert amounts is not None  # relate let no axis of a Pad with computed pads shrink
        new = list(amounts)
        for axis, (before, after) in enumerate(amounts):
            gone_in, gone_out = _gone(removed, x, axis), _gone(removed, y, axis)
            if len(gone_in) or len(gone_out):
                new[axis] = _new_amounts(before, after, int(x.shape[axis]), gone_in, gone_out)
        if new == amounts:
            return
        axes = _pad_axes(node, len(x.shape))
        pads = [new[axis][0] for axis in axes] + [new[axis][1] for axis in axes]
        _write_ints(graph, node, "pads", 1, pads)


def _pad_axes(node: gs.Node, rank: int) -> list[int]:
    axes = _ints(node, "axes", 3) if _has(node, 3) else None
    return list(range(rank)) if axes is None else [a % rank for a in axes]


def _pad_amounts(node: gs.Node, x: gs.Tensor) -> list[tuple[int, int]] | None:
    """(before, after) per input axis, from the attribute (opset < 11) or the constant inputs."""
    if x.shape is None:
        return None
    pads = _ints(node, "pads", 1)
    if pads is None or (_has(node, 3) and _ints(node, "axes", 3) is None):
        return None
    axes = _pad_axes(node, len(x.shape))
    if len(pads) != 2 * len(axes):
        return None
    amounts = [(0, 0)] * len(x.shape)
    for position, axis in enumerate(axes):
        amounts[axis] = (pads[position], pads[position + len(axes)])
    return amounts


def _new_amounts(before: int, after: int, size: int, gone_in: np.ndarray, gone_out: np.ndarray) -> tuple[int, int]:
    """Pad amounts once ``gone_in`` input and ``gone_out`` output positions are deleted."""
    if before >= 0:
        before_new = before - int((gone_out < before).sum())
    else:
        before_new = before + int((gone_in < -before).sum())
    if after >= 0:
        after_new = after - int((gone_out >= before + size).sum())
    else:
        after_new = after + int((gone_in >= size + after).sum())
    return before_new, after_new


@register("Gather")
class GatherHandler(Handler):
    """Gather of a tensor along ``axis`` by constant 1-D indices: output j is input element indices[j].

    The other data axes pass through; ``update`` renumbers the indices. Any other Gather (scalar or
    computed indices, an embedding lookup's table axis) lets nothing shrink on the gathered axis.
    """

    def relate(self, rel: Relations, node: gs.Node) -> None:
        data, indices, y = node.inputs[0], node.inputs[1], node.outputs[0]
        shape, index_shape = _shape_of(data), _shape_of(indices)
        if shape is None or index_shape is None:
            rel.block_all(y, f"Gather '{node.name}': input ranks unknown")
            return
        axis = int(node.attrs.get("axis", 0)) % len(shape)
        for other in range(len(shape)):
            if other != axis:
                rel.same(node, data, other, y, other if other < axis else other + len(index_shape) - 1)
        value = constant_value(indices)
        source, target = rel.dim(data, axis), rel.dim(y, axis)
        if value is None or value.ndim != 1 or source is None or target is None:
            return
        rel.link(node, source, value.astype(np.int64) % rel.sizes[source], target, np.arange(len(value)))

    def update(self, graph: gs.Graph, node: gs.Node, removed: Removed) -> None:
        data, y = node.inputs[0], node.outputs[0]
        value = constant_value(node.inputs[1])
        shape = _shape_of(data)
        assert shape is not None  # relate let no axis of a Gather with unknown ranks shrink
        axis = int(node.attrs.get("axis", 0)) % len(shape)
        gone_in, gone_out = _gone(removed, data, axis), _gone(removed, y, axis)
        if value is None or value.ndim != 1 or not (len(gone_in) or len(gone_out)):
            return
        picked = value.astype(np.int64) % int(data.shape[axis])
        kept = np.delete(picked, gone_out)
        set_constant(graph, node, 1, _renumber(kept, gone_in).astype(value.dtype), f"{node.name}_indices")
