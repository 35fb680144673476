"""Remove a Transpose and the Transpose that undoes it when only elementwise ops and reductions lie between.

Before::

    y  = Transpose(x, perm=P)            NCHW -> NHWC, P = [0, 2, 3, 1]
    z  = f(y)                            e.g. a channels-last LayerNorm: ReduceMean(axes=[-1]), Sub,
                                         Pow, Add(eps), Sqrt, Div, Mul(gamma[C]), Add(beta[C])
    z2 = Transpose(z, perm=Q)            Q = P^-1 = [0, 3, 1, 2]

After::

    z2 = f'(x)                           ReduceMean(axes=[1]), ..., Mul(gamma[1, C, 1, 1]), ...

ConvNeXt's ``LayerNorm2d`` (and any channels-last op sandwiched between convolutions) is
exported this way; onnxruntime's basic-level transpose optimizer performs the same rewrite, which
saves two full copies of the activation when graph optimizations are off.

Maths: ``y[i] = x[P(i)]`` index-wise, so for an elementwise op ``transpose(f(y, c), Q) =
f(x, c')`` with ``c'`` the constant right-aligned to the full rank and transposed by ``Q``
(a one-element constant is left as it is), and for a reduction with ``keepdims=1`` over axes
``A`` of ``y``, ``transpose(reduce(y, A), Q) = reduce(x, {P[a] : a in A})``. Both keep the rank,
so every tensor of the region is the transposition of its rewritten counterpart and operands
that meet in an op broadcast alike. Nothing is recomputed differently: exact.

Preconditions: both perms known constants (an absent perm reverses the axes) and ``Q`` undoes
``P``; the walk from ``z`` up through the admitted ops reaches one Transpose output ``y`` and
nothing else but constants; every tensor of the region is read only inside it (``z`` by the
closing Transpose alone) and none is a graph output; every constant has rank at most that of
``x``; every reduction keeps its dimensions and takes its axes from an attribute or a constant
input.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core.graph import Skip, constant_value, new_constant, rank
from onnxprune.passes.base import PassReport, rewrite_nodes
from onnxprune.passes.region import Region, bypass, walk

log = logging.getLogger(__name__)

NAME = "cancel_transposes"
REDUCTIONS = frozenset(
    {
        "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
    }
)


def run(graph: gs.Graph) -> PassReport:
    return rewrite_nodes(graph, NAME, ("Transpose",), _match, _apply)


def _match(graph: gs.Graph, closer: gs.Node) -> tuple[Region, list[int]]:
    """The region and the opener's perm ``P``."""
    region = walk(graph, closer, REDUCTIONS)
    data_rank = rank(region.source)
    if data_rank is None:
        raise Skip("the rank of the Transpose input is unknown")
    perm, inverse = _perm(region.opener, data_rank), _perm(closer, data_rank)
    if [perm[axis] for axis in inverse] != list(range(data_rank)):
        raise Skip(f"perm {inverse} does not undo perm {perm}")
    for node, _, value in region.constants:
        if value.ndim > data_rank:
            raise Skip(f"a rank-{value.ndim} constant of {node.op} '{node.name}' broadcasts the tensor up")
    for node in region.nodes:
        if node.op in REDUCTIONS:
            _axes(node, data_rank)  # raises Skip when they cannot be remapped
    return region, perm


def _apply(graph: gs.Graph, found: tuple[Region, list[int]]) -> str:
    region, perm = found
    data_rank = len(perm)
    inverse = list(np.argsort(perm))
    for node, index, value in region.constants:
        if value.size > 1:
            full = value.reshape((1,) * (data_rank - value.ndim) + value.shape)
            node.inputs[index] = new_constant(graph, f"{node.name}.transposed", full.transpose(inverse))
    for node in region.nodes:
        if node.op in REDUCTIONS:
            _set_axes(graph, node, sorted(perm[axis] for axis in _axes(node, data_rank)))
    bypass(graph, region)
    return region.describe()


def _perm(node: gs.Node, data_rank: int) -> list[int]:
    perm = node.attrs.get("perm")
    return list(range(data_rank))[::-1] if perm is None else [int(axis) for axis in perm]


def _axes(node: gs.Node, data_rank: int) -> list[int]:
    """The reduction's axes, made non-negative; Skip when they are not known or dims are dropped."""
    if not int(node.attrs.get("keepdims", 1)):
        raise Skip(f"{node.op} '{node.name}' drops the reduced axes (keepdims=0)")
    if "axes" in node.attrs:
        axes = list(node.attrs["axes"])
    elif len(node.inputs) > 1 and not node.inputs[1].is_empty():
        value = constant_value(node.inputs[1])
        if value is None:
            raise Skip(f"{node.op} '{node.name}' takes its axes from a tensor that is not a constant")
        axes = value.reshape(-1).tolist()
    else:
        axes = []
    if not axes and int(node.attrs.get("noop_with_empty_axes", 0)):
        return []
    return [int(axis) % data_rank for axis in axes] if axes else list(range(data_rank))


def _set_axes(graph: gs.Graph, node: gs.Node, axes: list[int]) -> None:
    if "axes" in node.attrs:
        node.attrs["axes"] = axes
    elif len(node.inputs) > 1 and not node.inputs[1].is_empty():
        node.inputs[1] = new_constant(graph, f"{node.name}.axes", np.asarray(axes, dtype=np.int64))
