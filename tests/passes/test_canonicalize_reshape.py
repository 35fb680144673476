"""canonicalize_reshape: a run-time Reshape target that copies the input's own batch becomes constant."""

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

NAME = "canonicalize_reshape"
assert_kept = partial(assert_unchanged, pass_name=NAME)


def view_model(source: str = "x", index: int = 0, slice_form: bool = False, allowzero: int = 0, opset: int = 13):
    """y = Reshape(x, Concat(dim `index` of Shape(source), 2, 4, 9)) for x [N, 8, 3, 3]."""
    inits = {"i": np.array(index, np.int64), "rest": np.array([2, 4, 9], np.int64), "ax": np.array([0], np.int64),
             "s0": np.array([index], np.int64), "s1": np.array([index + 1], np.int64)}
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Shape", [source], ["shape"])]
    if slice_form:
        nodes.append(helper.make_node("Slice", ["shape", "s0", "s1"], ["n"]))
    else:
        nodes += [
            helper.make_node("Gather", ["shape", "i"], ["g"], axis=0),
            helper.make_node("Unsqueeze", ["g", "ax"], ["n"]),
        ]
    nodes += [helper.make_node("Concat", ["n", "rest"], ["target"], axis=0),
              helper.make_node("Reshape", ["r", "target"], ["y"], **({"allowzero": allowzero} if opset >= 14 else {}))]
    inputs = [tensor("x", ["N", 8, 3, 3]), tensor("z", ["M", 8, 3, 3])]
    return make_model(nodes, inputs, [tensor("y", ["N", 2, 4, 9])], inits, opset)


@pytest.mark.parametrize("slice_form", [False, True], ids=["gather", "slice"])
@pytest.mark.parametrize("source", ["x", "r"])
def test_batch_copy_becomes_constant(slice_form, source):
    model = view_model(source, slice_form=slice_form)
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == 1 and "[0, 2, 4, 9]" in report.rewrites[0]
    assert op_counts(result) == {"Relu": 1, "Reshape": 1}
    assert_equivalent(model, result)
    assert result.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_another_tensors_dimension_is_kept():
    assert_kept(view_model(source="z"), "not provably dim 0")


def test_allowzero_is_kept():
    assert_kept(view_model(allowzero=1, opset=14), "allowzero")


def test_a_different_position_is_kept():
    assert_kept(view_model(index=1), "reads dim 1")


def test_constant_target_is_not_a_candidate():
    nodes = [helper.make_node("Reshape", ["x", "t"], ["y"])]
    model = make_model(nodes, [tensor("x", ["N", 8])], [tensor("y", ["N", 2, 4])], {"t": np.array([0, 2, 4], np.int64)})
    assert_kept(model, None)
