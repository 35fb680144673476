"""cancel_reshapes: a Reshape and its inverse around elementwise ops both disappear."""

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

NAME = "cancel_reshapes"
assert_kept = partial(assert_unchanged, pass_name=NAME)


def gelu(source, target, inits):
    """Erf GELU as torch exports it: x * (1 + erf(x / sqrt 2)) * 0.5."""
    inits.update(sqrt2=np.array(np.sqrt(2.0), np.float32), one=np.array(1.0, np.float32))
    inits["half"] = np.array(0.5, np.float32)
    return [
        helper.make_node("Div", [source, "sqrt2"], ["g_div"]),
        helper.make_node("Erf", ["g_div"], ["g_erf"]),
        helper.make_node("Add", ["g_erf", "one"], ["g_add"]),
        helper.make_node("Mul", [source, "g_add"], ["g_mul"]),
        helper.make_node("Mul", ["g_mul", "half"], [target]),
    ]


def relu(source, target, inits):
    return [helper.make_node("Relu", [source], [target])]


def scale(values):
    def build(source, target, inits):
        inits["scale"] = np.asarray(values, np.float32)
        return [helper.make_node("Mul", [source, "scale"], [target])]

    return build


def nothing(source, target, inits):
    return [helper.make_node("Identity", [source], [target])]


REGIONS = {"gelu": gelu, "relu": relu, "scalar": scale(2.0), "vector": scale(np.arange(1, 9)), "none": None}


def sandwich(region, shape=(16, 8), opened=(1, 4, 4, 8), closed=(-1, 8), extra_output=None):
    """x -> Reshape(opened) -> region -> Reshape(closed) -> Relu -> z."""
    inits = {"s1": np.array(opened, np.int64), "s2": np.array(closed, np.int64)}
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["y"], name="open")]
    if region is None:
        source = "y"
    else:
        nodes += region("y", "f", inits)
        source = "f"
    nodes += [
        helper.make_node("Reshape", [source, "s2"], ["z2"], name="close"),
        helper.make_node("Relu", ["z2"], ["z"]),
    ]
    outputs = [tensor("z", [None] * len(shape))] + ([tensor(extra_output, [None] * 4)] if extra_output else [])
    return make_model(nodes, [tensor("x", list(shape))], outputs, inits)


@pytest.mark.parametrize("region", REGIONS)
def test_inverse_reshapes_around_elementwise_ops_cancel(region):
    model = sandwich(REGIONS[region])
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == 1, report.skipped
    assert "Reshape" not in op_counts(result)
    assert_equivalent(model, result)


@pytest.mark.parametrize("region", ["gelu", "vector"])
def test_dynamic_batch_stays_dynamic(region):
    model = sandwich(REGIONS[region], shape=("N", 4, 4, 8), opened=(-1, 8), closed=(-1, 4, 4, 8))
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == 1, report.skipped
    assert "Reshape" not in op_counts(result)
    assert_equivalent(model, result)
    assert result.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_constant_along_another_axis_is_skipped():
    assert_kept(sandwich(scale(np.ones((4, 1)))), "is not per last axis")


def test_constant_of_higher_rank_than_one_side_is_skipped():
    assert_kept(sandwich(scale(np.ones((4, 1, 1)))), "would broadcast a rank-2 tensor up")


def test_vector_on_a_changed_last_axis_is_skipped():
    model = sandwich(scale(np.ones(16)), shape=(16, 8), opened=(1, 8, 16), closed=(16, 8))
    assert_kept(model, "meets last axes 8 and 16")


def test_closer_that_does_not_restore_the_shape_is_skipped():
    assert_kept(sandwich(relu, closed=(8, 16)), "not the inner input's")


def test_tensor_read_outside_the_region_is_skipped():
    assert_kept(sandwich(gelu, extra_output="g_erf"), "is a graph output")


def test_non_elementwise_op_is_not_a_candidate():
    def softmax(source, target, inits):
        return [helper.make_node("Softmax", [source], [target], axis=-1)]

    assert_kept(sandwich(softmax), None)


def test_identity_counts_as_elementwise():
    model = sandwich(nothing)
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == 1
    assert_equivalent(model, result)
