"""merge_slices: consecutive Slices on distinct axes become one Slice."""

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

NAME = "merge_slices"
assert_kept = partial(assert_unchanged, pass_name=NAME)


def two_slices(first_axes, second_axes, opset=13, extra_output=False, steps=(2, 2)):
    """x[1,8,9,9] -> Slice(axis a, step) -> Slice(axis b, step) -> y."""
    inits, nodes = {}, []
    for index, (axes, step, source, target) in enumerate(
        zip((first_axes, second_axes), steps, ("x", "s"), ("s", "y"))
    ):
        names = [f"{key}{index}" for key in ("starts", "ends", "axes", "steps")]
        values = ([0] * len(axes), [np.iinfo(np.int64).max] * len(axes), list(axes), [step] * len(axes))
        inits.update({name: np.array(value, dtype=np.int64) for name, value in zip(names, values)})
        nodes.append(helper.make_node("Slice", [source, *names], [target], name=f"slice{index}"))
    outputs = [tensor("y", [None] * 4)] + ([tensor("s", [None] * 4)] if extra_output else [])
    return make_model(nodes, [tensor("x", ["N", 8, 9, 9])], outputs, inits, opset)


@pytest.mark.parametrize("axes", [((2,), (3,)), ((-2,), (3,)), ((1,), (2, 3)), ((-1,), (0,))])
def test_slices_on_distinct_axes_merge(axes):
    model = two_slices(*axes)
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == 1
    assert op_counts(result) == {"Slice": 1}
    assert_equivalent(model, result)
    assert result.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_same_axis_is_kept():
    assert_kept(two_slices((2,), (-2,)), "both Slices cut axes [2]")


def test_shared_intermediate_is_kept():
    assert_kept(two_slices((2,), (3,), extra_output=True), "other readers or is a graph output")


def test_single_slice_is_not_a_candidate():
    model = two_slices((2,), (3,))
    model.graph.node[1].input[0] = "x"
    model.graph.node.remove(model.graph.node[0])
    assert_kept(model, None)
