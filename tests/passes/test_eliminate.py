"""eliminate: no-op nodes removed (their readers read the input), or kept with a reason."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.util import (
    assert_equivalent,
    assert_unchanged,
    make_model,
    op_counts,
    run_pass,
    tensor,
)

NAME = "eliminate"
X = ["N", 3, 4, 5]  # dynamic batch
I64 = np.iinfo(np.int64).max


def nop_model(op, inputs=(), attrs=None, opset=13, x_shape=X, outputs=1, inits=None):
    """x -> Relu -> op(r, *inputs) -> Sigmoid -> y; ``inputs`` map names to constant arrays."""
    inits = dict(inits or {}, **dict(inputs))
    outs = ["o", "mask"][:outputs]
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node(op, ["r", *dict(inputs)], outs, name="nop", **(attrs or {})),
        helper.make_node("Sigmoid", ["o"], ["y"], name="sigmoid"),
    ]
    out_shape = list(x_shape) if x_shape is not None else None
    return make_model(nodes, [tensor("x", x_shape)], [tensor("y", out_shape)], inits, opset)



def assert_removed(model, op):
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == 1, report.skipped
    assert op not in op_counts(result)
    assert op_counts(result) == {"Relu": 1, "Sigmoid": 1}
    assert result.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert_equivalent(model, result, rel=1e-6)


assert_kept = partial(assert_unchanged, pass_name=NAME)


def const(values, dtype=np.float32):
    return np.asarray(values, dtype)


POSITIVE = {
    "identity": ("Identity", {}, {}, 13),
    "dropout-7": ("Dropout", {}, {"ratio": 0.5}, 7),
    "dropout-10-mask-unused": ("Dropout", {}, {"ratio": 0.3}, 10),
    "dropout-12": ("Dropout", {}, {}, 12),
    "dropout-13-training-false": ("Dropout", {"ratio": const(0.5), "t": np.array(False)}, {}, 13),
    "reshape-copy-dims": ("Reshape", {"s": const([0, 3, -1, 5], np.int64)}, {}, 13),
    "reshape-allowzero": ("Reshape", {"s": const([-1, 3, 4, 5], np.int64)}, {"allowzero": 1}, 14),
    "transpose": ("Transpose", {}, {"perm": [0, 1, 2, 3]}, 13),
    "cast": ("Cast", {}, {"to": TensorProto.FLOAT}, 13),
    "pad-attr": ("Pad", {}, {"pads": [0] * 8, "mode": "reflect"}, 9),
    "pad-input": ("Pad", {"p": const([0] * 8, np.int64), "v": const(3.0)}, {}, 13),
    "pad-axes": ("Pad", {"p": const([0, 0], np.int64), "v": const(0.0), "a": const([2], np.int64)}, {}, 18),
    "slice-attr": ("Slice", {}, {"starts": [0, -9], "ends": [3, 100], "axes": [1, -1]}, 9),
    "slice-int64-max": ("Slice", {"b": const([0, 0], np.int64), "e": const([I64, 4], np.int64)}, {}, 13),
    "slice-axes-steps": (
        "Slice",
        {"b": const([0], np.int64), "e": const([I64], np.int64), "a": const([0], np.int64), "s": const([1], np.int64)},
        {},
        13,
    ),
    "expand": ("Expand", {"s": const([1, 4, 1], np.int64)}, {}, 13),
    "mul-one": ("Mul", {"k": const(1.0)}, {}, 13),
    "mul-one-channel": ("Mul", {"k": np.ones((3, 1, 1), np.float32)}, {}, 13),
    "add-zero-rank4": ("Add", {"k": np.zeros((1, 1, 1, 5), np.float32)}, {}, 13),
    "sub-zero": ("Sub", {"k": const([0.0])}, {}, 13),
    "div-one": ("Div", {"k": np.ones((4, 5), np.float32)}, {}, 7),
}


@pytest.mark.parametrize("case", POSITIVE)
def test_no_op_is_removed(case):
    op, inputs, attrs, opset = POSITIVE[case]
    outputs = 2 if case.endswith("mask-unused") else 1
    assert_removed(nop_model(op, inputs, attrs, opset, outputs=outputs), op)


@pytest.mark.parametrize("op, neutral", [("Mul", 1.0), ("Add", 0.0)])
def test_constant_first_is_removed(op, neutral):
    inits = {"k": np.full((1, 5), neutral, np.float32)}
    nodes_ = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node(op, ["k", "r"], ["o"]),
        helper.make_node("Sigmoid", ["o"], ["y"]),
    ]
    model = make_model(nodes_, [tensor("x", X)], [tensor("y", X)], inits)
    assert_removed(model, op)


def test_identity_before_graph_output_is_removed():
    nodes_ = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])]
    model = make_model(nodes_, [tensor("x", X)], [tensor("y", X)])
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == 1
    assert op_counts(result) == {"Relu": 1}
    assert [o.name for o in result.graph.output] == ["y"]
    assert_equivalent(model, result)


def test_identity_between_graph_input_and_output_is_kept():
    model = make_model([helper.make_node("Identity", ["x"], ["y"])], [tensor("x", X)], [tensor("y", X)])
    assert_kept(model, "graph output")


NEGATIVE = {
    "mul-broadcast-grows": ("Mul", {"k": np.ones((2, 1, 1, 1, 1), np.float32)}, {}, 13, "may enlarge"),
    "add-to-dynamic-batch": ("Add", {"k": np.zeros((2, 1, 1, 1), np.float32)}, {}, 13, "may enlarge"),
    "mul-two": ("Mul", {"k": const(2.0)}, {}, 13, None),
    "div-zero": ("Div", {"k": const(0.0)}, {}, 13, None),
    "dropout-training": ("Dropout", {"ratio": const(0.5), "t": np.array(True)}, {}, 13, "training_mode"),
    "reshape-other": ("Reshape", {"s": const([0, 3, 5, 4], np.int64)}, {}, 13, "not proven"),
    "transpose-swap": ("Transpose", {}, {"perm": [0, 1, 3, 2]}, 13, "not the identity"),
    "transpose-reverse": ("Transpose", {}, {}, 13, "reverses"),
    "cast-other": ("Cast", {}, {"to": TensorProto.DOUBLE}, 13, "another type"),
    "pad-nonzero": ("Pad", {"p": const([0, 0, 0, 1, 0, 0, 0, 0], np.int64)}, {}, 13, "not all zero"),
    "slice-part": ("Slice", {"b": const([1], np.int64), "e": const([I64], np.int64)}, {}, 13, "axis 0"),
    "slice-dynamic-end": ("Slice", {"b": const([0], np.int64), "e": const([1000], np.int64)}, {}, 13, "axis 0"),
    "slice-step": ("Slice", {}, {"starts": [-1], "ends": [-9], "axes": [1]}, 9, "axis 1"),
    "expand-grows": ("Expand", {"s": const([2, 1, 1, 1, 1], np.int64)}, {}, 13, "enlarges"),
}


@pytest.mark.parametrize("case", NEGATIVE)
def test_not_a_no_op_is_kept(case):
    op, inputs, attrs, opset, reason = NEGATIVE[case]
    assert_kept(nop_model(op, inputs, attrs, opset), reason)


def test_sub_from_zero_is_kept():
    nodes_ = [helper.make_node("Sub", ["k", "x"], ["y"])]
    model = make_model(nodes_, [tensor("x", X)], [tensor("y", X)], {"k": const(0.0)})
    assert_kept(model, None)


def test_dropout_with_used_mask_is_kept():
    nodes_ = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Dropout", ["r"], ["o", "mask"]),
        helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["o", "m"], ["y"]),
    ]
    model = make_model(nodes_, [tensor("x", X)], [tensor("y", X)], opset=13)
    assert_kept(model, "mask output is used")


def test_mul_by_one_broadcasting_a_unit_axis_is_kept():
    model = nop_model("Mul", {"k": np.ones((3, 1, 1), np.float32)}, x_shape=["N", 1, 4, 5])
    assert_kept(model, "may enlarge")


def test_unknown_rank_blocks_broadcast_check():
    nodes_ = [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Mul", ["r", "k"], ["y"])]
    inputs = [tensor("x", X), tensor("s", [None], TensorProto.INT64)]
    model = make_model(nodes_, inputs, [tensor("y", [None] * 4)], {"k": np.ones((1, 1), np.float32)})
    assert_kept(model, "may enlarge")


def test_repeated_relu_is_removed():
    nodes_ = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Relu", ["r"], ["y"])]
    model = make_model(nodes_, [tensor("x", X)], [tensor("y", X)])
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == 1 and op_counts(result) == {"Relu": 1}
    assert_equivalent(model, result)


def test_single_relu_is_not_a_candidate():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", X)], [tensor("y", X)])
    assert_kept(model, None)
