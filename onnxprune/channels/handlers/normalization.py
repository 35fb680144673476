"""Normalisations: per-channel parameters follow the channel axis.

BatchNormalization and InstanceNormalization treat channels independently, so removing one leaves
the others exact. LayerNormalization over the channel axis (ConvNeXt's channels-last LN) mixes
them: removing channels is allowed but lossy, and the analysis says so.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxprune.channels.handlers import Handler, register
from onnxprune.channels.relations import ROLE_PARAM, ROLE_SCALE, Relations


@register("BatchNormalization", "InstanceNormalization")
class ChannelNormHandler(Handler):
    def relate(self, rel: Relations, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        rel.same(node, x, 1, y, 1)
        for index, tensor in enumerate(node.inputs[1:], start=1):
            rel.same(node, tensor, 0, y, 1)
            rel.role(node, tensor, 0, ROLE_SCALE if index == 1 else ROLE_PARAM)
        for extra in node.outputs[1:]:
            rel.block_all(extra, f"{node.op} '{node.name}' exports running statistics")


@register("LayerNormalization")
class LayerNormHandler(Handler):
    """Only a LayerNorm over the last axis alone can lose channels of that axis."""

    def relate(self, rel: Relations, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        if x.shape is None:
            rel.block_all(y, f"LayerNormalization '{node.name}': input shape unknown")
            return
        rank = len(x.shape)
        axis = int(node.attrs.get("axis", -1)) % rank
        for outer in range(axis):
            rel.same(node, x, outer, y, outer)
        if axis != rank - 1:
            return
        rel.same(node, x, axis, y, axis)
        rel.lossy(node, x, axis, "normalises over the channel axis")
        for index, tensor in enumerate(node.inputs[1:3], start=1):
            if not tensor.is_empty():
                rel.same(node, tensor, -1, y, axis)
                rel.role(node, tensor, -1, ROLE_SCALE if index == 1 else ROLE_PARAM)
