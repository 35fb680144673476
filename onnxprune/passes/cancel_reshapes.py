"""Remove a Reshape and the Reshape that undoes it when only elementwise ops lie between them.

Before::

    y  = Reshape(x, s1)                  x: [256, 64]  ->  y: [1, 16, 16, 64]
    z  = f(y)                            elementwise ops: GELU, ReLU, Mul by a scalar, ...
    z2 = Reshape(z, s2)                  z2: [256, 64], the shape of x

After::

    z2 = f(x)

(with no op between them, ``Reshape(Reshape(x, s1), s2)`` becomes ``x``).

Two Linear layers on a channels-last tensor become ``Reshape -> Gemm -> Reshape -> GELU ->
Reshape -> Gemm -> Reshape`` after ``matmul_to_gemm`` (and after onnxruntime's own MatMul + Add
fusion); the inner pair does nothing but cost two kernel launches. Maths: an elementwise op
computes each output element from the elements at the same position of its operands, and a
Reshape keeps the row-major order of the elements, so ``f(reshape(x)) = reshape(f(x))``
whenever every constant operand of ``f`` broadcasts the same way in both shapes: a single
element anywhere, or a vector along the last axis when both shapes end in that axis.
``reshape(reshape(x, s1), shape(x)) = x`` then removes both Reshapes.

Preconditions: the walk from ``z`` up through elementwise ops reaches one Reshape output ``y``
and nothing else but constants; every tensor of the region (``y`` included) is read only inside
the region or, for ``z``, by the outer Reshape alone, and none is a graph output; every constant
has rank at most that of ``x`` and of ``y`` and is one element or per last axis, with ``x`` and
``y`` sharing that last dimension; ``shape(z2) == shape(x)`` is proven from inferred shapes:
same rank, dimensions equal where known, and at most one unknown position, with every known
dimension positive (the element counts are equal, so that one matches too).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core.graph import Skip
from onnxprune.passes.base import PassReport, rewrite_nodes
from onnxprune.passes.region import Region, bypass, check_reshape_broadcast, walk

log = logging.getLogger(__name__)

NAME = "cancel_reshapes"


def run(graph: gs.Graph) -> PassReport:
    return rewrite_nodes(graph, NAME, ("Reshape",), _match, _apply)


def _match(graph: gs.Graph, closer: gs.Node) -> Region:
    region = walk(graph, closer)
    _check_same_shape(region.source.shape, closer.outputs[0].shape)
    for _, _, value in region.constants:
        check_reshape_broadcast(value, region.source.shape, region.opened.shape)
    return region


def _apply(graph: gs.Graph, region: Region) -> str:
    bypass(graph, region)
    return region.describe()


def _check_same_shape(before: list | None, after: list | None) -> None:
    """``after`` is ``before``: same rank, known dims equal and positive, at most one position unknown."""
    if before is None or after is None or len(before) != len(after):
        raise Skip(f"cannot prove the outer Reshape restores the shape ({before} -> {after})")
    unknown = 0
    for old, new in zip(before, after):
        if _static(old) and _static(new):
            if old != new or old <= 0:
                raise Skip(f"the outer Reshape gives {after}, not the inner input's {before}")
        elif not (isinstance(old, str) and old == new):
            unknown += 1
    if unknown > 1:
        raise Skip(f"{unknown} dimensions of {before} -> {after} are not static")


def _static(dim: object) -> bool:
    return isinstance(dim, (int, np.integer))
