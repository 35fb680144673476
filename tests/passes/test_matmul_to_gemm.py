"""matmul_to_gemm: MatMul by a constant matrix + bias Add on an N-D input becomes Reshape, Gemm, Reshape."""

from __future__ import annotations

from functools import partial

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.util import (
    assert_equivalent,
    assert_unchanged,
    make_model,
    op_counts,
    run_pass,
    tensor,
)

NAME = "matmul_to_gemm"
assert_kept = partial(assert_unchanged, pass_name=NAME)


def linear(shape, outer=6, bias_shape=None, bias_first=False, product_output=False, constant_node=False):
    """x[shape] -> MatMul(W[K, outer]) -> y -> Add(b) -> z (a torch Linear on the last axis)."""
    rng = np.random.default_rng(0)
    inner = shape[-1]
    inits = {"b": rng.standard_normal(bias_shape or (outer,)).astype(np.float32)}
    weight = rng.standard_normal((inner, outer)).astype(np.float32)
    nodes = []
    if constant_node:
        nodes.append(helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(weight, "W")))
    else:
        inits["W"] = weight
    add_inputs = ["b", "y"] if bias_first else ["y", "b"]
    nodes += [helper.make_node("MatMul", ["x", "W"], ["y"], name="fc"), helper.make_node("Add", add_inputs, ["z"])]
    outputs = [tensor("z", [None] * len(shape))] + ([tensor("y", [None] * len(shape))] if product_output else [])
    return make_model(nodes, [tensor("x", list(shape))], outputs, inits)


def restore_shape(model: onnx.ModelProto) -> list[int]:
    restore = next(node for node in model.graph.node if node.op_type == "Reshape" and node.input[0] != "x")
    init = next(init for init in model.graph.initializer if init.name == restore.input[1])
    return numpy_helper.to_array(init).tolist()


@pytest.mark.parametrize(
    ("shape", "restored"),
    [
        ((1, 4, 4, 8), [1, 4, 4, 6]),
        (("N", 4, 4, 8), [-1, 4, 4, 6]),
        ((2, 5, 8), [2, 5, 6]),
        ((3, "T", 8), [3, -1, 6]),
    ],
)
def test_linear_on_nd_input_becomes_gemm(shape, restored):
    model = linear(shape)
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == 1
    assert op_counts(result) == {"Reshape": 2, "Gemm": 1}
    assert restore_shape(result) == restored
    assert_equivalent(model, result)
    assert result.graph.input[0].type.tensor_type.shape.dim[0].dim_param == (shape[0] if shape[0] == "N" else "")


@pytest.mark.parametrize("bias_shape", [(6,), (1, 6), (1, 1, 1, 6), (1,), ()])
@pytest.mark.parametrize("bias_first", [False, True])
def test_bias_shapes_and_order(bias_shape, bias_first):
    model = linear((1, 3, 3, 8), bias_shape=bias_shape, bias_first=bias_first)
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == 1
    assert_equivalent(model, result)


def test_weight_from_constant_node():
    model = linear(("N", 4, 8), constant_node=True)
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == 1
    assert op_counts(result)["Gemm"] == 1
    assert_equivalent(model, result)


def test_float16_is_skipped():
    model = linear((1, 4, 4, 8))
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    assert_kept(model, "is not a 2-D float32/64 matrix")


def test_two_unknown_dims_are_skipped():
    assert_kept(linear(("N", "H", 4, 8)), "a Reshape can restore one")


def test_bias_along_another_axis_is_skipped():
    assert_kept(linear((1, 4, 4, 8), bias_shape=(4, 1, 6)), "is not per last axis")


def test_bias_of_higher_rank_is_skipped():
    assert_kept(linear((2, 5, 8), bias_shape=(1, 1, 1, 6)), "would broadcast the rank-3 product up")


def test_product_that_is_a_graph_output_is_skipped():
    assert_kept(linear((1, 4, 4, 8), product_output=True), "is a graph output")


@pytest.mark.parametrize("case", ["rank2", "no_add", "two_readers", "variable_weight", "variable_add"])
def test_non_candidates_are_not_reported(case):
    model = linear((3, 8) if case == "rank2" else (1, 4, 4, 8))
    graph = model.graph
    if case == "no_add":
        graph.node[1].op_type = "Relu"
        del graph.node[1].input[1]
    elif case == "two_readers":
        graph.node.append(helper.make_node("Relu", ["y"], ["r"]))
        graph.output.append(tensor("r", [None] * 4))
    elif case == "variable_weight":
        graph.initializer.remove(next(init for init in graph.initializer if init.name == "W"))
        graph.input.append(tensor("W", [8, 6]))
    elif case == "variable_add":
        graph.initializer.remove(next(init for init in graph.initializer if init.name == "b"))
        graph.input.append(tensor("b", [6]))
    onnx.checker.check_model(model)
    assert_kept(model, None)
