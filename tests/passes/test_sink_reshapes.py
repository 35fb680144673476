"""sink_reshapes: a Reshape after a Gemm moves below the constant affine op that reads it."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from onnx import helper

from tests.util import (
    assert_equivalent,
    assert_unchanged,
    make_model,
    op_counts,
    run_pass,
    tensor,
)

NAME = "sink_reshapes"
assert_kept = partial(assert_unchanged, pass_name=NAME)


def gemm_reshape_op(op="Mul", constant=(6,), constant_first=False, producer="Gemm", batch=16, shape=(-1, 4, 4, 6)):
    """x[batch, 8] -> Gemm -> u[batch, 6] -> Reshape(shape) -> v -> op(v, c) -> z."""
    rng = np.random.default_rng(0)
    inits = {
        "W": rng.standard_normal((8, 6)).astype(np.float32),
        "b": rng.standard_normal(6).astype(np.float32),
        "shape": np.array(shape, np.int64),
        "c": rng.uniform(0.5, 1.5, constant).astype(np.float32),
    }
    linear = (
        helper.make_node("Gemm", ["x", "W", "b"], ["u"], name="fc")
        if producer == "Gemm"
        else helper.make_node("Relu", ["x"], ["u"], name="fc")
    )
    operands = ["c", "v"] if constant_first else ["v", "c"]
    nodes = [
        linear,
        helper.make_node("Reshape", ["u", "shape"], ["v"], name="restore"),
        helper.make_node(op, operands, ["z"], name="affine"),
    ]
    return make_model(nodes, [tensor("x", [batch, 8])], [tensor("z", [None] * len(shape))], inits)


@pytest.mark.parametrize("op", ["Mul", "Add", "Sub", "Div"])
@pytest.mark.parametrize("constant_first", [False, True])
@pytest.mark.parametrize("constant", [(6,), (1, 6), ()])
def test_reshape_moves_below_the_affine_op(op, constant_first, constant):
    model = gemm_reshape_op(op, constant, constant_first)
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == 1, report.skipped
    assert [node.op_type for node in result.graph.node] == ["Gemm", op, "Reshape"]
    assert_equivalent(model, result)


def test_then_merge_affine_folds_the_scale_into_the_gemm():
    model = gemm_reshape_op("Mul", batch="N", shape=(-1, 2, 6))
    sunk, _ = run_pass(model, NAME)
    result, report = run_pass(sunk, "merge_affine")
    assert len(report.rewrites) == 1
    assert op_counts(result) == {"Gemm": 1, "Reshape": 1}
    assert_equivalent(model, result)


def test_constant_along_another_axis_is_skipped():
    assert_kept(gemm_reshape_op(constant=(4, 1)), "is not per last axis")


def test_constant_of_higher_rank_than_the_gemm_output_is_skipped():
    assert_kept(gemm_reshape_op(constant=(1, 1, 6)), "would broadcast a rank-2 tensor up")


def test_gemm_output_read_twice_is_skipped():
    model = gemm_reshape_op()
    model.graph.node.insert(1, helper.make_node("Relu", ["u"], ["r"]))
    model.graph.output.append(tensor("r", [None, None]))
    assert_kept(model, "has other readers or is a graph output")


def test_reshape_not_after_a_gemm_is_not_a_candidate():
    assert_kept(gemm_reshape_op(producer="Relu", constant=(6,)), None)
