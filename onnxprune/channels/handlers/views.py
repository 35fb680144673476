"""Ops that re-view axes: Transpose, Squeeze, Unsqueeze, Flatten, Reshape.

Transpose, Squeeze and Unsqueeze renumber axes; Flatten and Reshape re-view them (one channel of
[N, C, H, W] is the block of features c*H*W .. (c+1)*H*W - 1 of [N, C*H*W]). Within a block of
axes a reshape joins or splits, exactly one axis is linked: linking more would tie every channel
to every other through the elements they share.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.handlers import Handler, Removed, register
from onnxprune.channels.handlers.util import (
    _block,
    _gone,
    _has,
    _ints,
    _static,
)
from onnxprune.channels.relations import Dim, Relations
from onnxprune.core.graph import constant_value, set_constant


@register("Transpose")
class TransposeHandler(Handler):
    def relate(self, rel: Relations, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        if x.shape is None:
            rel.block_all(y, f"Transpose '{node.name}': input rank unknown")
            return
        perm = node.attrs.get("perm", list(reversed(range(len(x.shape)))))
        for out_axis, in_axis in enumerate(perm):
            rel.same(node, x, int(in_axis), y, out_axis)


@register("Squeeze", "Unsqueeze")
class SqueezeHandler(Handler):
    """Axes other than the removed (Squeeze) or inserted (Unsqueeze) size-1 axes keep their order."""

    def relate(self, rel: Relations, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        if x.shape is None or y.shape is None:
            rel.block_all(y, f"{node.op} '{node.name}': ranks unknown")
            return
        axes = _ints(node, "axes", 1)
        if axes is None and (node.op == "Unsqueeze" or _has(node, 1)):
            rel.block_all(y, f"{node.op} '{node.name}': axes are not constant")
            return
        if node.op == "Squeeze":
            if axes is None:
                axes = [axis for axis, size in enumerate(x.shape) if size == 1]
            kept = [axis for axis in range(len(x.shape)) if axis not in {a % len(x.shape) for a in axes}]
            pairs = zip(kept, range(len(y.shape)))
        else:
            assert axes is not None  # an Unsqueeze without constant axes returned above
            kept = [axis for axis in range(len(y.shape)) if axis not in {a % len(y.shape) for a in axes}]
            pairs = zip(range(len(x.shape)), kept)
        for in_axis, out_axis in pairs:
            rel.same(node, x, in_axis, y, out_axis)


# --- re-viewing: Flatten and Reshape ------------------------------------------------------------------


def factor_blocks(src: list, dst: list) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of consecutive axes of two shapes whose products agree (size-1 axes left out).

    This is how a row-major reshape maps axes: within a block the flat index is the same on both
    sides, across blocks axes are independent. A leading pair of non-static axes (a dynamic batch)
    pairs with itself when the remaining static products agree. None when the shapes cannot match.
    """
    head = []
    if src and dst and _static(src[:1]) is None and _static(dst[:1]) is None:
        head, src, dst = [([0], [0])], [1, *src[1:]], [1, *dst[1:]]
    if _static(src) is None or _static(dst) is None or 0 in src or 0 in dst or np.prod(src) != np.prod(dst):
        return None
    first = [axis for axis, size in enumerate(src) if size != 1]
    second = [axis for axis, size in enumerate(dst) if size != 1]
    blocks, i, j = head, 0, 0
    while i < len(first) and j < len(second):
        ins, outs = [first[i]], [second[j]]
        left, right = src[first[i]], dst[second[j]]
        i, j = i + 1, j + 1
        while left != right:
            if left < right:
                ins.append(first[i])
                left *= src[first[i]]
                i += 1
            else:
                outs.append(second[j])
                right *= dst[second[j]]
                j += 1
        blocks.append((ins, outs))
    return blocks


def relate_view(rel: Relations, node: gs.Node, x: gs.Tensor, y: gs.Tensor) -> None:
    """Link a re-view of ``x`` as ``y``: one input axis to one output axis per factor block.

    - one axis to one axis: the same elements;
    - a merge of axes (C, H, W) -> F, or (D/g, g) -> D: the outer axis, element c is the block
      c*R .. (c+1)*R - 1 (Flatten; channel-shuffle step 3);
    - a split of one axis: into (g, D/g) with g < D/g (channel-shuffle step 1, heads) the inner
      axis, element b is every a*(D/g) + b; otherwise the outer axis (the inverse of Flatten).

    Linking more than one axis per block would tie every channel of the block to every other; the
    choice of axis never makes a removal wrong, it only decides which removals the graph admits.
    Blocks of several axes on both sides are an unresolvable reshape and block all their axes.
    """
    blocks = None if x.shape is None or y.shape is None else factor_blocks(list(x.shape), list(y.shape))
    if blocks is None:
        for tensor in (x, y):
            rel.block_all(tensor, f"{node.op} '{node.name}': unresolvable reshape (shapes not static)")
        return
    for ins, outs in blocks:
        if len(ins) == 1 and len(outs) == 1:
            rel.same(node, x, ins[0], y, outs[0])
        elif len(outs) == 1:
            _link_merge(rel, node, x, ins, y, outs[0])
        elif len(ins) == 1:
            _link_split(rel, node, x, ins[0], y, outs)
        else:
            dims = [(x, axis) for axis in ins] + [(y, axis) for axis in outs]
            _block(rel, node, dims, f"unresolvable reshape of axes {ins} into {outs}")


def _block_dim(rel: Relations, tensor: gs.Tensor, axis: int) -> Dim:
    """The dim of an axis in a merge or split block: ``factor_blocks`` only puts static sizes > 1 there."""
    key = rel.dim(tensor, axis)
    assert key is not None, f"axis {axis} of '{tensor.name}' has no static size"
    return key


def _link_merge(rel: Relations, node: gs.Node, x: gs.Tensor, ins: list[int], y: gs.Tensor, out: int) -> None:
    source, target = _block_dim(rel, x, ins[0]), _block_dim(rel, y, out)
    inner = int(np.prod([int(x.shape[axis]) for axis in ins[1:]]))
    rel.link(node, source, np.repeat(np.arange(rel.sizes[source]), inner), target, np.arange(rel.sizes[target]))


def _link_split(rel: Relations, node: gs.Node, x: gs.Tensor, axis: int, y: gs.Tensor, outs: list[int]) -> None:
    sizes = [int(y.shape[out]) for out in outs]
    chosen = 1 if len(outs) == 2 and sizes[0] < sizes[1] else 0
    source, target = _block_dim(rel, x, axis), _block_dim(rel, y, outs[chosen])
    flat = np.arange(rel.sizes[source])
    rel.link(node, source, flat, target, np.unravel_index(flat, sizes)[chosen])


@register("Flatten")
class FlattenHandler(Handler):
    """[d0 .. d(k-1), dk .. ] -> [d0*..*d(k-1), dk*..]: channel c of [N, C, H, W] is features c*H*W .. .

    Only the channel axis is linked: linking the others too would tie every channel to every
    other through the features they share.
    """

    def relate(self, rel: Relations, node: gs.Node) -> None:
        relate_view(rel, node, node.inputs[0], node.outputs[0])


@register("Reshape")
class ReshapeHandler(Handler):
    """A Reshape by a constant target is a re-view (see ``relate_view``); ``update`` rewrites the target.

    Changed axes get their explicit new size; 0 (copy) and -1 (infer) stay where still valid, so a
    dynamic batch stays dynamic.
    """

    def relate(self, rel: Relations, node: gs.Node) -> None:
        if constant_value(node.inputs[1]) is None:
            for tensor in (node.inputs[0], node.outputs[0]):
                rel.block_all(tensor, f"Reshape '{node.name}': unresolvable reshape (target not constant)")
            return
        relate_view(rel, node, node.inputs[0], node.outputs[0])

    def update(self, graph: gs.Graph, node: gs.Node, removed: Removed) -> None:
        x, y = node.inputs[0], node.outputs[0]
        target = constant_value(node.inputs[1])
        assert target is not None  # relate let no axis of a Reshape by a computed target shrink
        allowzero = bool(node.attrs.get("allowzero", 0))
        new = [int(v) for v in target]
        for axis, value in enumerate(new):
            size = y.shape[axis]
            if not isinstance(size, (int, np.integer)):
                continue  # a dynamic axis: kept as 0 or -1, never pruned
            size = int(size) - len(_gone(removed, y, axis))
            copied = value == 0 and not allowzero
            if copied and isinstance(x.shape[axis], (int, np.integer)):
                copied = int(x.shape[axis]) - len(_gone(removed, x, axis)) == size
            if value != -1 and not copied:
                new[axis] = size
        if new != [int(v) for v in target]:
            set_constant(graph, node, 1, np.asarray(new, dtype=target.dtype), f"{node.name}_shape")


# --- ops that leave some axes alone -----------------------------------------------------------------
