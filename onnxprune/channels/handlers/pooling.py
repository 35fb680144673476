"""Pooling and reductions: batch and channel axes pass through; reduced axes may shrink.

A reduction over the channel axis itself (the ReduceMean of a decomposed LayerNorm) lets channels
go, but the result changes for the others unless the reduction is a sum.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxprune.channels.handlers import Handler, register
from onnxprune.channels.relations import Relations
from onnxprune.core.graph import constant_value

POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
REDUCTIONS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSumExp", "ReduceSumSquare")
EXACT_WHEN_ZEROED = ("ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare")


@register(*POOLS)
class PoolHandler(Handler):
    def relate(self, rel: Relations, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        rel.same(node, x, 0, y, 0)
        rel.same(node, x, 1, y, 1)


@register(*REDUCTIONS)
class ReduceHandler(Handler):
    def relate(self, rel: Relations, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        if x.shape is None:
            rel.block_all(y, f"{node.op} '{node.name}': input shape unknown")
            return
        rank = len(x.shape)
        axes = _axes(node, rank)
        if axes is None:
            rel.block_all(y, f"{node.op} '{node.name}': axes are not constant")
            return
        keepdims = bool(node.attrs.get("keepdims", 1))
        out_axis = 0
        for axis in range(rank):
            if axis in axes:
                rel.accept(node, x, axis)
                if node.op not in EXACT_WHEN_ZEROED:
                    rel.lossy(node, x, axis, "reduces over this axis")
                out_axis += keepdims
                continue
            rel.same(node, x, axis, y, out_axis)
            out_axis += 1


def _axes(node: gs.Node, rank: int) -> set[int] | None:
    if "axes" in node.attrs:
        values = node.attrs["axes"]
    elif len(node.inputs) > 1 and not node.inputs[1].is_empty():
        value = constant_value(node.inputs[1])
        if value is None:
            return None
        values = value.reshape(-1).tolist()
    else:
        return set() if node.attrs.get("noop_with_empty_axes", 0) else set(range(rank))
    return {int(axis) % rank for axis in values}
