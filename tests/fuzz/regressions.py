"""The shrunk graphs of bugs the fuzzer found, rebuilt in code, with the property each one breaks.

test_fuzz runs each as an xfail(strict) case while its bug is open, so the mark flips to a
failure the day the bug is fixed and the case becomes an ordinary regression test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from tests.fuzz.builder import Feature, GraphBuilder, Vector
from tests.fuzz.properties import check_pass


@dataclass(frozen=True)
class Regression:
    name: str
    bug: str | None  # while open, the xfail reason; None once fixed
    build: Callable[[], onnx.ModelProto]
    check: Callable[[onnx.ModelProto], None]


def computed_flatten_into_gemm() -> onnx.ModelProto:
    """x.view(x.size(0), -1) as exported (Shape, Gather, Unsqueeze, Concat -> Reshape), then a Gemm; batch 1."""
    b = GraphBuilder(13, np.random.default_rng(0))
    x = Feature("x", 2, 3, 3)
    size = b.op("Gather", [b.op("Shape", [x.name]), b.ints(0)], axis=0)
    target = b.op("Concat", [b.op("Unsqueeze", [size, b.ints([0])]), b.ints([-1])], axis=0)
    flat = b.op("Reshape", [x.name, target])
    return b.model(x, [Vector(b.op("Gemm", [flat, b.normal((18, 1))]), 1)])


REGRESSIONS = (
    Regression(
        "static_output_dim_lost",
        None,  # fixed: infer_shapes keeps a declared output dim wherever inference has none
        computed_flatten_into_gemm, lambda model: check_pass(model, "eliminate")),
)
