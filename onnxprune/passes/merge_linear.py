"""Merge two consecutive linear layers, with nothing non-linear between them, into one.

Before:  x -> A(W1, b1) -> y -> B(W2, b2) -> z        (y read by B alone, not a graph output)
After:   x -> M(W, b) -> z

Maths, with ``W[o, i, taps]`` the canonical ``LinearOp`` weight:

* Conv (any k, stride, pads, dilation) -> pointwise Conv (1x1, stride 1, no padding):
  ``W[o, c, t] = sum_m W2[o, m] W1[m, c, t]`` and ``b = W2 b1 + b2``; M keeps A's geometry.
* pointwise Conv -> Conv (any k, stride, pads, dilation):
  ``W[o, c, t] = sum_m W2[o, m, t] W1[m, c]`` and ``b = b2 + sum_{m,t} W2[o, m, t] b1[m]``;
  M keeps B's geometry. B pads y with 0, while M pads x and so sees ``W1 0 + b1 = b1`` there:
  exact only when B does not pad or b1 is zero.
* Gemm/MatMul -> Gemm/MatMul (constant 2-D weights, any MatMul input rank):
  ``W = W2 W1`` and ``b = W2 b1 + b2``; a non-zero bias turns a kept MatMul into a Gemm (rank 2).

Preconditions: parameters constant and floating (same dtype), groups 1 on both, A is not a
ConvTranspose, y private. The merge is taken only when it adds no multiply-accumulates: per
position ``O*C*K <= M*C*K1 + O*M*K2`` (C in, M between, O out, K taps), and for a pointwise conv
feeding a k x k one, weighted by the pixel counts of y and z (static spatial sizes needed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core.graph import NotCandidate, Skip, is_private, producer, rank
from onnxprune.core.linear import LINEAR_OPS, LinearOp, as_linear
from onnxprune.passes.base import PassReport, rewrite_nodes

log = logging.getLogger(__name__)

NAME = "merge_linear"
OP_TYPES = ("Conv", "Gemm", "MatMul")


@dataclass
class Merge:
    first: gs.Node
    second: gs.Node
    merged: LinearOp  # parameters of the merged layer, on the node that survives


def run(graph: gs.Graph) -> PassReport:
    return rewrite_nodes(graph, NAME, OP_TYPES, match, apply)


def match(graph: gs.Graph, second: gs.Node) -> Merge:
    first = _first_layer(graph, second)
    one, two = as_linear(first), as_linear(second)
    if one.dtype != two.dtype:
        raise Skip(f"weights differ in dtype ({one.dtype} vs {two.dtype})")
    if one.groups != 1 or two.groups != 1:
        raise Skip(f"grouped convolution (groups {one.groups} -> {two.groups}) is not merged")
    merge = _merge_convs(one, two) if second.op == "Conv" else _merge_dense(one, two)
    merge.merged.check_finite()
    return merge


def apply(graph: gs.Graph, merge: Merge) -> str:
    source, result, keep = merge.first.inputs[0], merge.second.outputs[0], merge.merged.node
    dropped = merge.second if keep is merge.first else merge.first
    dropped.inputs.clear()
    dropped.outputs.clear()
    keep.inputs[0] = source
    keep.outputs[0] = result
    merge.merged.commit(graph)
    return (
        f"{merge.first.op} '{merge.first.name}' + {merge.second.op} '{merge.second.name}' "
        f"-> {keep.op} '{keep.name}' {list(merge.merged.weight.shape)}"
    )


def _first_layer(graph: gs.Graph, second: gs.Node) -> gs.Node:
    data = second.inputs[0]
    first = producer(data)
    if first is None or first.op not in LINEAR_OPS:
        raise NotCandidate(f"input comes from {first.op if first else 'no node'}, not a linear layer")
    if first.op == "ConvTranspose":
        raise Skip(f"first layer '{first.name}' is a ConvTranspose")
    if (first.op == "Conv") != (second.op == "Conv"):
        raise Skip(f"{first.op} '{first.name}' and {second.op} use different channel axes")
    if not is_private(graph, data):
        raise Skip(f"intermediate '{data.name}' has other consumers or is a graph output")
    return first


def _merge_convs(one: LinearOp, two: LinearOp) -> Merge:
    mid, inner = two.weight.shape[1], one.weight.shape[1]
    if _is_pointwise(two):
        weight = np.einsum("om,mc...->oc...", two.weight.reshape(two.out_channels, mid), one.weight)
        bias = two.weight.reshape(two.out_channels, mid) @ one.bias + two.bias
        taps = _taps(one)
        separate, merged = mid * inner * taps + two.out_channels * mid, two.out_channels * inner * taps
        _check_cost(separate, merged, "the pointwise conv widens")
        return Merge(one.node, two.node, LinearOp(one.node, weight, bias, 1, one.dtype))
    if not _is_pointwise(one):
        raise Skip("neither conv is 1x1 with stride 1 and no padding")
    if np.any(one.bias) and not two.input_shift_is_exact():
        raise Skip(f"conv '{two.node.name}' pads its input: the border would see 0 instead of the bias b1")
    weight = np.einsum("om...,mc->oc...", two.weight, one.weight.reshape(one.out_channels, inner))
    bias = two.bias + two.weight.reshape(two.out_channels, mid, -1).sum(axis=2) @ one.bias
    pixels_in, pixels_out = _pixels(one.node.outputs[0]), _pixels(two.node.outputs[0])
    if pixels_in is None or pixels_out is None:
        raise Skip("spatial sizes are unknown, so the cost of the merge cannot be compared")
    taps = _taps(two)
    separate = pixels_in * mid * inner + pixels_out * two.out_channels * mid * taps
    _check_cost(separate, pixels_out * two.out_channels * inner * taps, "the pointwise conv narrows")
    return Merge(one.node, two.node, LinearOp(two.node, weight, bias, 1, two.dtype))


def _merge_dense(one: LinearOp, two: LinearOp) -> Merge:
    weight = two.weight @ one.weight
    bias = two.weight @ one.bias + two.bias
    source_rank = rank(one.node.inputs[0])
    if two.kind == "MatMul" and np.any(bias) and source_rank != 2:
        raise Skip(f"merged bias cannot go on a MatMul with a rank-{source_rank} input")
    mid = two.weight.shape[1]
    separate, merged = one.in_channels * mid + mid * two.out_channels, one.in_channels * two.out_channels
    _check_cost(separate, merged, "the product matrix is larger than its factors")
    return Merge(one.node, two.node, LinearOp(two.node, weight, bias, 1, two.dtype))


def _is_pointwise(op: LinearOp) -> bool:
    """A 1x1 kernel with stride 1 and no padding: a per-pixel channel map (auto_pad SAME pads 0 here)."""
    if _taps(op) != 1 or any(int(s) != 1 for s in op.node.attrs.get("strides", [])):
        return False
    auto_pad = op.node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return auto_pad != "NOTSET" or not any(op.node.attrs.get("pads", []))


def _taps(op: LinearOp) -> int:
    return int(np.prod(op.weight.shape[2:], dtype=np.int64))


def _pixels(tensor: gs.Tensor) -> int | None:
    shape = tensor.shape
    if shape is None or any(not isinstance(dim, (int, np.integer)) for dim in shape[2:]):
        return None
    return int(np.prod(shape[2:], dtype=np.int64))


def _check_cost(separate: int, merged: int, why: str) -> None:
    if merged > separate:
        raise Skip(f"merged layer needs {merged} multiply-accumulates against {separate} ({why})")
