"""Conv, ConvTranspose, Gemm, MatMul: output channels are weight rows, input channels weight columns.

Grouped convolutions couple channels: a depthwise conv ties each input channel to its outputs
(pruning updates ``group``); a conv with 1 < group < channels keeps ``group`` and removes the same
in-group index from every group, so its channel counts stay divisible.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.handlers import Handler, Removed, register
from onnxprune.channels.relations import ROLE_IN, ROLE_OUT, Relations
from onnxprune.core.graph import constant_value


def _has(node: gs.Node, index: int) -> bool:
    return len(node.inputs) > index and not node.inputs[index].is_empty()


@register("Conv")
class ConvHandler(Handler):
    def relate(self, rel: Relations, node: gs.Node) -> None:
        x, weight, y = node.inputs[0], node.inputs[1], node.outputs[0]
        if constant_value(weight) is None:
            rel.block_all(y, f"Conv '{node.name}' has a non-constant weight")
            return
        groups = int(node.attrs.get("group", 1))
        out_channels, in_per_group = constant_value(weight).shape[:2]
        rel.same(node, weight, 0, y, 1)
        rel.role(node, weight, 0, ROLE_OUT)
        if _has(node, 2):
            rel.same(node, node.inputs[2], 0, y, 1)
            rel.role(node, node.inputs[2], 0, ROLE_OUT)
        if groups == 1:
            rel.same(node, x, 1, weight, 1)
            rel.role(node, weight, 1, ROLE_IN)
        elif in_per_group == 1:
            _link_depthwise(rel, node, x, y, out_channels // groups)
        else:
            _link_grouped(rel, node, x, weight, y, groups)

    def update(self, graph: gs.Graph, node: gs.Node, removed: Removed) -> None:
        """A depthwise conv has one group per input channel: drop one per removed channel."""
        groups = int(node.attrs.get("group", 1))
        if groups > 1 and constant_value(node.inputs[1]).shape[1] == 1:
            gone = removed.get((node.inputs[0].name, 1))
            if gone is not None:
                node.attrs["group"] = groups - len(gone)


def _link_depthwise(rel: Relations, node: gs.Node, x: gs.Tensor, y: gs.Tensor, multiplier: int) -> None:
    """Input channel c feeds outputs c*m .. c*m+m-1 (m = depth multiplier); all go together."""
    source, target = rel.dim(x, 1), rel.dim(y, 1)
    if source is None or target is None:
        rel.block_all(y, f"Conv '{node.name}': channel counts unknown")
        return
    channels = np.repeat(np.arange(rel.sizes[source]), multiplier)
    rel.link(node, source, channels, target, np.arange(rel.sizes[target]))


def _link_grouped(rel: Relations, node: gs.Node, x: gs.Tensor, weight: gs.Tensor, y: gs.Tensor, groups: int) -> None:
    """Index j inside every group moves together, on the input (weight column j) and the output side."""
    source, column, target = rel.dim(x, 1), rel.dim(weight, 1), rel.dim(y, 1)
    if source is None or column is None or target is None:
        rel.block_all(y, f"Conv '{node.name}': channel counts unknown")
        return
    in_per_group, out_per_group = rel.sizes[column], rel.sizes[target] // groups
    inputs = np.arange(groups * in_per_group)
    rel.link(node, source, inputs, column, inputs % in_per_group)
    rel.role(node, weight, 1, ROLE_IN)
    outputs = np.arange(groups * out_per_group)
    rel.link(node, target, outputs, target, outputs % out_per_group)


@register("ConvTranspose")
class ConvTransposeHandler(Handler):
    def relate(self, rel: Relations, node: gs.Node) -> None:
        x, weight, y = node.inputs[0], node.inputs[1], node.outputs[0]
        groups = int(node.attrs.get("group", 1))
        if constant_value(weight) is None or groups != 1:
            rel.block_all(y, f"ConvTranspose '{node.name}': weight not constant or grouped")
            return
        rel.same(node, x, 1, weight, 0)
        rel.role(node, weight, 0, ROLE_IN)
        rel.same(node, weight, 1, y, 1)
        rel.role(node, weight, 1, ROLE_OUT)
        if _has(node, 2):
            rel.same(node, node.inputs[2], 0, y, 1)
            rel.role(node, node.inputs[2], 0, ROLE_OUT)


@register("Gemm")
class GemmHandler(Handler):
    def relate(self, rel: Relations, node: gs.Node) -> None:
        a, weight, y = node.inputs[0], node.inputs[1], node.outputs[0]
        if node.attrs.get("transA", 0) or constant_value(weight) is None:
            rel.block_all(y, f"Gemm '{node.name}': transposed input or non-constant weight")
            return
        out_axis, in_axis = (0, 1) if node.attrs.get("transB", 0) else (1, 0)
        rel.same(node, a, 1, weight, in_axis)
        rel.role(node, weight, in_axis, ROLE_IN)
        rel.same(node, weight, out_axis, y, 1)
        rel.role(node, weight, out_axis, ROLE_OUT)
        if _has(node, 2):
            bias = constant_value(node.inputs[2])
            if bias is not None and bias.ndim >= 1 and bias.shape[-1] > 1:
                rel.same(node, node.inputs[2], bias.ndim - 1, y, 1)
                rel.role(node, node.inputs[2], bias.ndim - 1, ROLE_OUT)


@register("MatMul")
class MatMulHandler(Handler):
    def relate(self, rel: Relations, node: gs.Node) -> None:
        a, weight, y = node.inputs[0], node.inputs[1], node.outputs[0]
        value = constant_value(weight)
        if value is None or value.ndim != 2 or a.shape is None:
            rel.block_all(y, f"MatMul '{node.name}': weight is not a constant matrix")
            return
        rel.same(node, a, len(a.shape) - 1, weight, 0)
        rel.role(node, weight, 0, ROLE_IN)
        rel.same(node, weight, 1, y, len(a.shape) - 1)
        rel.role(node, weight, 1, ROLE_OUT)
