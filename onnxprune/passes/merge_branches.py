"""Re-parameterise parallel conv branches that read one tensor and are summed into one Conv.

Before (RepVGG, ACNet/DBB):          After:
    x -> Conv 3x3 --\\                   x -> Conv 3x3 (W, b) -> y
    x -> Conv 1x1 ---+-> Add/Sum -> y
    x -> [BN] -------/    (identity branch, optionally a BatchNormalization)

Maths: convolution is linear in its kernel, so ``sum_i conv(x, W_i) + b_i = conv(x, sum_i W_i', sum_i b_i)``
where ``W_i'`` is ``W_i`` zero-padded into the merged kernel ``K = max_i k_i`` (per axis) at offset
``off_i``. The merged conv takes its pads ``P`` from a branch with the full kernel on that axis;
branch i then reads the same pixels iff ``P_begin - p_begin = off_i * d`` with ``0 <= off_i <= K - k_i``,
and the summands share their spatial size for every input size iff the extent
``p_begin + p_end - d (k - 1)`` is the same for all (same stride), so the Add never broadcasts.
The identity is a kernel with ``W[o, o mod (C/g), tap] = 1`` at ``tap = P_begin / d``, legal when
C == O, stride 1 and extent 0 (same size as x); a BatchNormalization(x) branch is the same with
``a = scale / sqrt(var + eps)`` in place of 1 and ``B - mean a`` added to the bias.

Preconditions: every summand is x itself, a private BatchNormalization(x) in inference mode, or
the private output of a Conv reading x, with at least one Conv; all Convs have constant weights of
one dtype and share strides, dilations, group and channel counts; explicit pads (auto_pad NOTSET
or VALID); the merged kernel costs no more multiply-accumulates than the convs it replaces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core.graph import NotCandidate, Skip, is_private, producer
from onnxprune.core.linear import LinearOp, as_linear, batchnorm_affine
from onnxprune.passes.base import PassReport, rewrite_nodes

log = logging.getLogger(__name__)

NAME = "merge_branches"
OP_TYPES = ("Add", "Sum")


@dataclass
class Geometry:
    kernel: tuple[int, ...]
    begin: tuple[int, ...]
    end: tuple[int, ...]


@dataclass
class Plan:
    summation: gs.Node
    merged: LinearOp  # the merged parameters, on the conv node that survives
    removed: list[gs.Node]
    geometry: Geometry
    dilations: tuple[int, ...]


def run(graph: gs.Graph) -> PassReport:
    return rewrite_nodes(graph, NAME, OP_TYPES, match, apply)


def match(graph: gs.Graph, summation: gs.Node) -> Plan:
    if len(summation.inputs) < 2:
        raise Skip("fewer than two summands")
    branches = [_branch(graph, tensor) for tensor in summation.inputs]
    _check_common_source(summation.inputs, branches)
    convs = [as_linear(node) for node in branches if node is not None and node.op == "Conv"]
    if not convs:
        raise Skip("no summand is a Conv reading the shared input")
    strides, dilations = _check_shared(convs)
    geometries = [_geometry(op) for op in convs]
    target = _target(geometries)
    offsets = [_offsets(op, geometry, target, dilations) for op, geometry in zip(convs, geometries)]
    _check_cost(convs, target)
    weight, bias = _embed(convs, offsets, target)
    identities = [node for node in branches if node is None or node.op != "Conv"]
    if identities:
        _add_identities(convs[0], identities, _identity_tap(convs[0], strides, dilations, target), weight, bias)
    keep = max(convs, key=lambda op: op.weight[0, 0].size)
    merged = LinearOp(keep.node, weight, bias, keep.groups, keep.dtype)
    merged.check_finite()
    removed = [op.node for op in convs if op is not keep] + [node for node in identities if node is not None]
    return Plan(summation, merged, removed + [summation], target, dilations)


def apply(graph: gs.Graph, plan: Plan) -> str:
    summation, node = plan.summation, plan.merged.node
    line = f"{summation.op} '{summation.name}' of {len(summation.inputs)} branches -> Conv '{node.name}'"
    result = summation.outputs[0]
    for removed in plan.removed:
        removed.inputs.clear()
        removed.outputs.clear()
    node.attrs["kernel_shape"] = list(plan.geometry.kernel)
    node.attrs["pads"] = list(plan.geometry.begin + plan.geometry.end)
    node.attrs["dilations"] = list(plan.dilations)
    node.attrs.pop("auto_pad", None)
    node.outputs[0] = result
    plan.merged.commit(graph)
    return f"{line} {list(plan.merged.weight.shape)}"


def _branch(graph: gs.Graph, tensor: gs.Tensor) -> gs.Node | None:
    """The private Conv or BatchNormalization producing ``tensor``, else None (an identity candidate)."""
    node = producer(tensor)
    if node is not None and node.op in ("Conv", "BatchNormalization") and is_private(graph, tensor):
        return node
    return None


def _check_common_source(summands: list[gs.Tensor], branches: list[gs.Node | None]) -> None:
    sources = {id(node.inputs[0]): node.inputs[0] for node in branches if node is not None}
    if not sources:
        raise NotCandidate("no summand is the private output of a Conv")
    if len(sources) != 1:
        raise Skip(f"summands read {len(sources)} different tensors, not one shared input")
    (source,) = sources.values()
    for tensor, node in zip(summands, branches):
        if node is None and tensor is not source:
            raise NotCandidate(f"summand '{tensor.name}' is neither the shared input nor a private Conv of it")


def _check_shared(convs: list[LinearOp]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The common strides and dilations; a dilation only matters on axes where the kernel is wider than 1."""
    first, spatial = convs[0], convs[0].weight.ndim - 2
    strides = tuple(first.node.attrs.get("strides", [1] * spatial))
    for op in convs[1:]:
        if tuple(op.node.attrs.get("strides", [1] * spatial)) != strides:
            raise Skip(f"convs '{first.node.name}' and '{op.node.name}' differ in strides")
        if (op.groups, op.out_channels, op.weight.shape[1]) != (
            first.groups,
            first.out_channels,
            first.weight.shape[1],
        ):
            raise Skip(f"convs '{first.node.name}' and '{op.node.name}' differ in group or channel counts")
        if op.dtype != first.dtype or op.weight.ndim != first.weight.ndim:
            raise Skip(f"convs '{first.node.name}' and '{op.node.name}' differ in dtype or rank")
    dilations = []
    for axis in range(spatial):
        wide = [op for op in convs if op.weight.shape[2 + axis] > 1]
        used = {int(op.node.attrs.get("dilations", [1] * spatial)[axis]) for op in wide}
        if len(used) > 1:
            raise Skip(f"convs differ in dilations {sorted(used)} on axis {axis}")
        dilations.append(used.pop() if used else 1)
    return strides, tuple(dilations)


def _geometry(op: LinearOp) -> Geometry:
    kernel = tuple(op.weight.shape[2:])
    auto_pad = op.node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise Skip(f"conv '{op.node.name}' uses auto_pad {auto_pad}; explicit pads are needed")
    pads = (
        [0] * 2 * len(kernel)
        if auto_pad == "VALID"
        else [int(p) for p in op.node.attrs.get("pads", [0] * 2 * len(kernel))]
    )
    return Geometry(kernel, tuple(pads[: len(kernel)]), tuple(pads[len(kernel) :]))


def _target(geometries: list[Geometry]) -> Geometry:
    """The merged kernel (largest per axis) with the pads of a branch that has it on that axis."""
    kernel, begin, end = [], [], []
    for axis in range(len(geometries[0].kernel)):
        widest = max(geometries, key=lambda g: g.kernel[axis])
        kernel.append(widest.kernel[axis])
        begin.append(widest.begin[axis])
        end.append(widest.end[axis])
    return Geometry(tuple(kernel), tuple(begin), tuple(end))


def _offsets(op: LinearOp, own: Geometry, target: Geometry, dilations: tuple[int, ...]) -> tuple[int, ...]:
    """Where ``op``'s kernel sits in the merged one; Skip unless it reads the same pixels, same size."""
    offsets = []
    for axis, d in enumerate(dilations):
        offset, remainder = divmod(target.begin[axis] - own.begin[axis], d)
        extent = own.begin[axis] + own.end[axis] - d * (own.kernel[axis] - 1)
        merged = target.begin[axis] + target.end[axis] - d * (target.kernel[axis] - 1)
        if remainder or not 0 <= offset <= target.kernel[axis] - own.kernel[axis] or extent != merged:
            raise Skip(
                f"conv '{op.node.name}' (kernel {own.kernel}, pads {own.begin + own.end}) is not aligned "
                f"with the merged kernel {target.kernel} (pads {target.begin + target.end}) on axis {axis}"
            )
        offsets.append(offset)
    return tuple(offsets)


def _check_cost(convs: list[LinearOp], target: Geometry) -> None:
    merged = int(np.prod(target.kernel))
    separate = sum(op.weight[0, 0].size for op in convs)
    if merged > separate:
        raise Skip(f"merged kernel {target.kernel} has {merged} taps against {separate} in the branches")


def _identity_tap(op: LinearOp, strides, dilations, target: Geometry) -> tuple[int, ...]:
    if any(s != 1 for s in strides):
        raise Skip(f"identity branch next to convs with strides {strides}")
    if op.in_channels != op.out_channels:
        raise Skip(f"identity branch with {op.in_channels} input and {op.out_channels} output channels")
    tap = []
    for axis, d in enumerate(dilations):
        offset, remainder = divmod(target.begin[axis], d)
        if remainder or target.begin[axis] + target.end[axis] != d * (target.kernel[axis] - 1):
            raise Skip(f"convs change the spatial size on axis {axis}, so the identity branch cannot join")
        tap.append(offset)
    return tuple(tap)


def _embed(convs: list[LinearOp], offsets: list[tuple[int, ...]], target: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Sum of the branch kernels, each zero-padded into the merged kernel at its offset, and of the biases."""
    weight = np.zeros((convs[0].out_channels, convs[0].weight.shape[1], *target.kernel))
    for op, offset in zip(convs, offsets):
        window = tuple(slice(start, start + size) for start, size in zip(offset, op.weight.shape[2:]))
        weight[(slice(None), slice(None), *window)] += op.weight
    return weight, np.sum([op.bias for op in convs], axis=0)


def _add_identities(op: LinearOp, identities: list[gs.Node | None], tap, weight, bias) -> None:
    """Add each identity or BatchNormalization branch to ``weight`` and ``bias`` in place."""
    rows = np.arange(op.out_channels)
    for node in identities:
        scale, shift = _affine(node, op.out_channels)
        weight[(rows, rows % op.weight.shape[1], *tap)] += scale
        bias += shift


def _affine(node: gs.Node | None, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(a, c)`` of an identity (``node`` None) or inference BatchNormalization branch."""
    if node is None:
        return np.ones(channels), np.zeros(channels)
    scale, shift = batchnorm_affine(node)
    if scale.size != channels:
        raise Skip(f"BatchNormalization '{node.name}' has {scale.size} channels, not {channels}")
    return scale, shift
