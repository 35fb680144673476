"""Conv, ConvTranspose, Gemm, MatMul: channels are weight positions, where ``onnxprune.core.layout`` puts them.

An axis that lists every channel of its side (a Conv's output axis, a ConvTranspose's input axis,
both axes of a Gemm or MatMul) is the same axis as the data's channels. With 1 < group < channels
the other axis holds the channels within one group: index j inside every group moves together, on
that axis and on the listing one, so ``group`` stays and the channel counts stay divisible. A
depthwise op (one input channel per group) ties each input channel to its outputs instead, and
pruning updates ``group``.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.handlers import Handler, Removed, register
from onnxprune.channels.relations import ROLE_IN, ROLE_OUT, Relations
from onnxprune.core.graph import constant_value
from onnxprune.core.layout import WeightLayout, weight_layout


def _has(node: gs.Node, index: int) -> bool:
    return len(node.inputs) > index and not node.inputs[index].is_empty()


@register("Conv", "ConvTranspose")
class ConvHandler(Handler):
    def relate(self, rel: Relations, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        layout = weight_layout(node)
        if layout is None:
            rel.block_all(y, f"{node.op} '{node.name}' has no constant weight that splits into its groups")
            return
        if layout.is_depthwise:
            linked = _link_depthwise(rel, node, layout)
        else:
            linked = (_link_side(rel, node, y, layout, layout.out_axis, layout.out_per_group, ROLE_OUT)
                      and _link_side(rel, node, x, layout, layout.in_axis, layout.in_per_group, ROLE_IN))
        if not linked:
            rel.block_all(y, f"{node.op} '{node.name}': channel counts unknown")
        if _has(node, 2):
            rel.same(node, node.inputs[2], 0, y, 1)
            rel.role(node, node.inputs[2], 0, ROLE_OUT)

    def update(self, graph: gs.Graph, node: gs.Node, removed: Removed) -> None:
        """A depthwise op has one group per input channel: drop one per removed channel."""
        layout = weight_layout(node)
        if layout is not None and layout.is_depthwise:
            gone = removed.get((node.inputs[0].name, 1))
            if gone is not None:
                node.attrs["group"] = layout.groups - len(gone)


def _link_side(rel: Relations, node: gs.Node, data: gs.Tensor, layout: WeightLayout, axis: int, per_group: int,
               role: str) -> bool:
    """Channel c of ``data`` is position c of the weight's ``axis``, or c mod ``per_group`` (the index in its group).

    With groups, channel c also moves with c mod ``per_group`` of every other group, so all groups keep one size.
    """
    weight = node.inputs[1]
    if layout.groups == 1:
        rel.same(node, data, 1, weight, axis)
        rel.role(node, weight, axis, role)
        return True
    channels, positions = rel.dim(data, 1), rel.dim(weight, axis)
    if channels is None or positions is None:
        return False
    index = np.arange(rel.sizes[channels])
    if layout.lists_every_channel(axis):
        rel.same(node, data, 1, weight, axis)
        rel.link(node, channels, index, channels, index % per_group)
    else:
        rel.link(node, channels, index, positions, index % per_group)
    rel.role(node, weight, axis, role)
    return True


def _link_depthwise(rel: Relations, node: gs.Node, layout: WeightLayout) -> bool:
    """Input channel c feeds outputs c*m .. c*m+m-1 (m = depth multiplier); all go together.

    Axis 0 of the weight lists the channels of one side (Conv: outputs, ConvTranspose: inputs);
    either way its positions hold the filters, so it has role "out".
    """
    x, weight, y = node.inputs[0], node.inputs[1], node.outputs[0]
    rel.same(node, weight, 0, y if layout.out_axis == 0 else x, 1)
    rel.role(node, weight, 0, ROLE_OUT)
    source, target = rel.dim(x, 1), rel.dim(y, 1)
    if source is None or target is None:
        return False
    channels = np.repeat(np.arange(rel.sizes[source]), layout.out_per_group)
    rel.link(node, source, channels, target, np.arange(rel.sizes[target]))
    return True


@register("Gemm")
class GemmHandler(Handler):
    def relate(self, rel: Relations, node: gs.Node) -> None:
        a, weight, y = node.inputs[0], node.inputs[1], node.outputs[0]
        layout = weight_layout(node)
        if node.attrs.get("transA", 0) or layout is None:
            rel.block_all(y, f"Gemm '{node.name}': transposed input or non-constant weight")
            return
        rel.same(node, a, 1, weight, layout.in_axis)
        rel.role(node, weight, layout.in_axis, ROLE_IN)
        rel.same(node, weight, layout.out_axis, y, 1)
        rel.role(node, weight, layout.out_axis, ROLE_OUT)
        if _has(node, 2):
            bias = constant_value(node.inputs[2])
            if bias is not None and bias.ndim >= 1 and bias.shape[-1] > 1:
                rel.same(node, node.inputs[2], bias.ndim - 1, y, 1)
                rel.role(node, node.inputs[2], bias.ndim - 1, ROLE_OUT)


@register("MatMul")
class MatMulHandler(Handler):
    def relate(self, rel: Relations, node: gs.Node) -> None:
        a, weight, y = node.inputs[0], node.inputs[1], node.outputs[0]
        layout = weight_layout(node)
        if layout is None or len(layout.shape) != 2 or a.shape is None:
            rel.block_all(y, f"MatMul '{node.name}': weight is not a constant matrix")
            return
        rel.same(node, a, len(a.shape) - 1, weight, layout.in_axis)
        rel.role(node, weight, layout.in_axis, ROLE_IN)
        rel.same(node, weight, layout.out_axis, y, len(a.shape) - 1)
        rel.role(node, weight, layout.out_axis, ROLE_OUT)
