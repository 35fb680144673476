"""Ops that move channels without computing on them: Concat, Transpose, Flatten.

Concat places each input's channels at an offset of the output's axis; Transpose moves axes;
Flatten turns channel c of [N, C, H, W] into the block of features c*H*W .. (c+1)*H*W - 1.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.handlers import Handler, register
from onnxprune.channels.relations import Relations


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


@register("Flatten")
class FlattenHandler(Handler):
    """Channel c of [N, C, *rest] becomes the block of features c*R .. (c+1)*R - 1, R = prod(rest).

    Only the channel axis is linked: linking the others too would tie every channel to every
    other through the features they share.
    """

    def relate(self, rel: Relations, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        shape = x.shape
        if shape is None or len(shape) < 2 or any(not isinstance(d, (int, np.integer)) for d in shape[1:]):
            rel.block_all(y, f"Flatten '{node.name}': input shape not static")
            return
        if int(node.attrs.get("axis", 1)) % len(shape) != 1:
            rel.block_all(y, f"Flatten '{node.name}': only axis 1 is supported")
            return
        rel.same(node, x, 0, y, 0)
        source, target = rel.dim(x, 1), rel.dim(y, 1)
        if source is None or target is None:
            return
        block = int(np.prod([int(d) for d in shape[2:]]))
        rel.link(node, source, np.repeat(np.arange(rel.sizes[source]), block), target, np.arange(rel.sizes[target]))
