"""merge_affine: constant per-channel Mul/Add/Sub/Div merged into the linear op beside it, or kept with a reason."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.passes.pipeline import optimize
from tests.util import (
    assert_equivalent,
    assert_unchanged,
    make_model,
    op_counts,
    run_pass,
    tensor,
)

NAME = "merge_affine"
RNG = np.random.default_rng(0)


def conv(inits, name, data, out, c_in, c_out, groups=1, pads=0, stride=1, op="Conv", dtype=np.float32):
    """A 2-D Conv or ConvTranspose with random 3x3 kernels and bias; its parameters go into ``inits``."""
    shape = (c_in, c_out // groups) if op == "ConvTranspose" else (c_out, c_in // groups)
    inits[f"{name}.w"] = (RNG.standard_normal(shape + (3, 3)) * 0.3).astype(dtype)
    inits[f"{name}.b"] = RNG.standard_normal(c_out).astype(dtype)
    attrs = dict(group=groups, pads=[pads] * 4, strides=[stride] * 2, kernel_shape=[3, 3])
    return helper.make_node(op, [data, f"{name}.w", f"{name}.b"], [out], name=name, **attrs)


def constant(inits, name, shape, dtype=np.float32):
    """Random constant kept away from 0, so Div is well conditioned."""
    values = RNG.uniform(0.5, 2.0, shape) * RNG.choice([-1, 1], shape)
    inits[name] = np.asarray(values, dtype=dtype)
    return name


def affine(op, variable, const, out, constant_first=False):
    inputs = [const, variable] if constant_first else [variable, const]
    return helper.make_node(op, inputs, [out], name=f"{op.lower()}_{out}")


def conv_then(op, shape, constant_first=False, opset=13, x_shape=(1, 4, 6, 6)):
    """x -> Conv -> op(., c) -> y."""
    inits: dict = {}
    nodes = [conv(inits, "conv", "x", "c", 4, 6), affine(op, "c", constant(inits, "k", shape), "y", constant_first)]
    return make_model(nodes, [tensor("x", list(x_shape))], [tensor("y", [None] * 4)], inits, opset)


def then_conv(op, shape, pads=0, constant_first=False, conv_op="Conv", groups=1):
    """x -> op(., c) -> Conv -> y."""
    inits: dict = {}
    k = constant(inits, "k", shape)
    nodes = [affine(op, "x", k, "a", constant_first), conv(inits, "conv", "a", "y", 4, 6, groups, pads, op=conv_op)]
    return make_model(nodes, [tensor("x", [1, 4, 6, 6])], [tensor("y", [None] * 4)], inits)


def merged(model, rewrites=1, rel=1e-5, **run):
    """Run the pass (or the pipeline when ``run`` names passes), check the count, return the merged model."""
    if run:
        result = optimize(model, **run)
        report = next(report for report in result.reports if report.name == NAME)
        result = result.model
    else:
        result, report = run_pass(model, NAME)
    assert len(report.rewrites) == rewrites, report.skipped
    assert_equivalent(model, result, rel=rel)
    return result, report


assert_kept = partial(assert_unchanged, pass_name=NAME)


@pytest.mark.parametrize("op", ["Mul", "Add", "Sub", "Div"])
@pytest.mark.parametrize("shape", [(1, 6, 1, 1), (6, 1, 1), (), (1,)], ids=["1C11", "C11", "scalar", "1"])
@pytest.mark.parametrize("constant_first", [False, True], ids=["x-op-c", "c-op-x"])
def test_after_conv(op, shape, constant_first):
    model = conv_then(op, shape, constant_first)
    if op == "Div" and constant_first:
        assert_kept(model, "c / x is not affine")
        return
    result, _ = merged(model)
    assert op_counts(result) == {"Conv": 1}


@pytest.mark.parametrize("opset", [7, 9, 21])
def test_opsets(opset):
    merged(conv_then("Mul", (6, 1, 1), opset=opset))


@pytest.mark.parametrize("groups", [1, 2])
def test_after_conv_transpose(groups):
    inits: dict = {}
    nodes = [
        conv(inits, "deconv", "x", "d", 4, 6, groups, stride=2, op="ConvTranspose"),
        affine("Mul", "d", constant(inits, "s", (6, 1, 1)), "m"),
        affine("Add", "m", constant(inits, "t", (1, 6, 1, 1)), "y"),
    ]
    model = make_model(nodes, [tensor("x", [1, 4, 5, 5])], [tensor("y", [None] * 4)], inits)
    result, _ = merged(model, rewrites=2)
    assert op_counts(result) == {"ConvTranspose": 1}


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("op, shape", [("Mul", (5,)), ("Add", (1, 5)), ("Div", ()), ("Sub", (5,))])
def test_after_gemm(trans_b, op, shape):
    inits = {"w": RNG.standard_normal((5, 8) if trans_b else (8, 5)).astype(np.float32)}
    inits["b"] = RNG.standard_normal(5).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="gemm", transB=trans_b, alpha=0.5, beta=2.0),
        affine(op, "g", constant(inits, "k", shape), "y"),
    ]
    model = make_model(nodes, [tensor("x", [3, 8])], [tensor("y", [None] * 2)], inits)
    result, _ = merged(model)
    assert op_counts(result) == {"Gemm": 1}


def matmul_then(op, input_shape):
    inits = {"w": RNG.standard_normal((input_shape[-1], 5)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), affine(op, "m", constant(inits, "k", (5,)), "y")]
    return make_model(nodes, [tensor("x", input_shape)], [tensor("y", [None] * len(input_shape))], inits)


@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_after_matmul_rank2(op):
    result, _ = merged(matmul_then(op, [3, 8]))
    assert op_counts(result) == {"Gemm" if op == "Add" else "MatMul": 1}


def test_layer_scale_after_matmul_rank3():
    result, _ = merged(matmul_then("Mul", [2, 3, 8]))
    assert op_counts(result) == {"MatMul": 1}


def test_bias_after_matmul_rank3_is_kept():
    assert_kept(matmul_then("Add", [2, 3, 8]), "cannot take a bias")


@pytest.mark.parametrize("op", ["Mul", "Add", "Sub", "Div"])
@pytest.mark.parametrize("constant_first", [False, True], ids=["x-op-c", "c-op-x"])
def test_before_conv(op, constant_first):
    model = then_conv(op, (4, 1, 1), constant_first=constant_first)
    if op == "Div" and constant_first:
        assert_kept(model, "c / x is not affine")
        return
    result, report = merged(model)
    assert op_counts(result) == {"Conv": 1}
    assert "(before it)" in report.rewrites[0]


@pytest.mark.parametrize("op, merges", [("Mul", True), ("Div", True), ("Add", False), ("Sub", False)])
def test_before_padded_conv(op, merges):
    model = then_conv(op, (1, 4, 1, 1), pads=1)
    if merges:
        merged(model)
    else:
        assert_kept(model, "pads its input")


def test_before_gemm():
    inits = {"w": RNG.standard_normal((8, 5)).astype(np.float32)}
    nodes = [
        affine("Sub", "x", constant(inits, "mean", (8,)), "s"),
        affine("Div", "s", constant(inits, "std", (1, 8)), "d"),
        helper.make_node("Gemm", ["d", "w"], ["y"], name="gemm"),
    ]
    model = make_model(nodes, [tensor("x", [3, 8])], [tensor("y", [None] * 2)], inits)
    result, _ = merged(model, rewrites=2, passes=[NAME])
    assert op_counts(result) == {"Gemm": 1}


def normalised_input(pads):
    """(x - mean) / std in front of the first conv."""
    inits: dict = {}
    nodes = [
        affine("Sub", "x", constant(inits, "mean", (1, 4, 1, 1)), "centred"),
        affine("Div", "centred", constant(inits, "std", (4, 1, 1)), "n"),
        conv(inits, "conv", "n", "y", 4, 6, pads=pads),
    ]
    return make_model(nodes, [tensor("x", [1, 4, 6, 6])], [tensor("y", [None] * 4)], inits)


def test_input_normalisation_without_padding():
    result, _ = merged(normalised_input(pads=0), rewrites=2, passes=[NAME])
    assert op_counts(result) == {"Conv": 1}


def test_input_normalisation_with_padding():
    result, report = merged(normalised_input(pads=1), passes=[NAME])
    assert op_counts(result) == {"Sub": 1, "Conv": 1}
    assert report.rewrites[0].startswith("merged Div")
    assert any("pads its input" in line for line in report.skipped)


def test_caffe_batchnorm_scale():
    """Caffe BatchNorm (no affine) + Scale exported as BN -> Mul -> Add after a conv: one Conv left."""
    inits: dict = {}
    for key, values in {"bn.g": np.ones(6), "bn.b": np.zeros(6), "bn.m": RNG.standard_normal(6)}.items():
        inits[key] = values.astype(np.float32)
    inits["bn.v"] = RNG.uniform(0.2, 3.0, 6).astype(np.float32)
    nodes = [
        conv(inits, "conv", "x", "c", 4, 6),
        helper.make_node("BatchNormalization", ["c", "bn.g", "bn.b", "bn.m", "bn.v"], ["n"], name="bn"),
        affine("Mul", "n", constant(inits, "gamma", (1, 6, 1, 1)), "s"),
        affine("Add", "s", constant(inits, "beta", (6, 1, 1)), "y"),
    ]
    model = make_model(nodes, [tensor("x", [1, 4, 6, 6])], [tensor("y", [None] * 4)], inits)
    result, _ = merged(model, rewrites=2, passes=["fold_batchnorm", NAME])
    assert op_counts(result) == {"Conv": 1}


def test_float16():
    inits: dict = {}
    nodes = [
        conv(inits, "conv", "x", "c", 4, 6, dtype=np.float16),
        affine("Mul", "c", constant(inits, "s", (6, 1, 1), np.float16), "m"),
        affine("Sub", "m", constant(inits, "t", (6, 1, 1), np.float16), "y"),
    ]
    x, y = tensor("x", [1, 4, 6, 6], TensorProto.FLOAT16), tensor("y", [None] * 4, TensorProto.FLOAT16)
    model = make_model(nodes, [x], [y], inits)
    result, _ = merged(model, rewrites=2, rel=1e-2)
    assert op_counts(result) == {"Conv": 1}
    assert {init.data_type for init in result.graph.initializer} == {TensorProto.FLOAT16}


def test_vector_on_nchw_broadcasts_along_width():
    # [C] right-aligns with W (here W == C, so the shapes alone would look per-channel).
    assert_kept(conv_then("Mul", (6,), x_shape=(1, 4, 8, 8)), "not per channel on axis 1")


def test_rank5_constant_is_kept():
    assert_kept(conv_then("Mul", (1, 1, 6, 1, 1)), "rank-5 constant would broadcast the rank-4 tensor up")


def test_constant_broadcasting_the_batch_is_kept():
    assert_kept(conv_then("Add", (2, 6, 1, 1)), "not per channel on axis 1")


def test_division_by_zero_is_kept():
    model = conv_then("Div", (6, 1, 1))
    values = np.ones((6, 1, 1), np.float32)
    values[3] = 0.0
    divisor = next(init for init in model.graph.initializer if init.name == "k")
    divisor.CopyFrom(numpy_helper.from_array(values, "k"))
    assert_kept(model, "contains 0")


def test_non_constant_operand_is_kept():
    inits: dict = {}
    nodes = [conv(inits, "conv", "x", "c", 4, 6), helper.make_node("Mul", ["c", "z"], ["y"], name="mul")]
    inputs = [tensor("x", [1, 4, 6, 6]), tensor("z", [1, 6, 1, 1])]
    model = make_model(nodes, inputs, [tensor("y", [None] * 4)], inits)
    assert_kept(model, None)


def test_shared_conv_output_is_kept():
    inits: dict = {}
    nodes = [
        conv(inits, "conv", "x", "c", 4, 6),
        affine("Mul", "c", constant(inits, "k", (6, 1, 1)), "y"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
    ]
    outputs = [tensor("y", [None] * 4), tensor("r", [None] * 4)]
    assert_kept(make_model(nodes, [tensor("x", [1, 4, 6, 6])], outputs, inits), "has other readers")


def test_no_linear_neighbour_is_kept():
    inits: dict = {}
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), affine("Mul", "r", constant(inits, "k", ()), "y")]
    model = make_model(nodes, [tensor("x", [1, 4, 6, 6])], [tensor("y", [None] * 4)], inits)
    assert_kept(model, "no adjacent linear op")


def test_constant_broadcasting_the_input_up_is_kept():
    # x has one channel; x * c has four, so the conv cannot read x directly.
    inits: dict = {}
    nodes = [affine("Mul", "x", constant(inits, "k", (1, 4, 1, 1)), "a"), conv(inits, "conv", "a", "y", 4, 6)]
    model = make_model(nodes, [tensor("x", [1, 1, 6, 6])], [tensor("y", [None] * 4)], inits)
    assert_kept(model, "not the 4 channels")


def test_gelu_half_is_not_folded_into_the_next_gemm():
    """onnxruntime fuses x * (1 + erf(x / sqrt 2)) * 0.5 into one Gelu: folding the 0.5 breaks that."""
    rng = np.random.default_rng(0)
    inits = {
        "sqrt2": np.array(np.sqrt(2.0), np.float32), "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32), "W": rng.standard_normal((8, 4)).astype(np.float32),
        "b": rng.standard_normal(4).astype(np.float32),
    }
    nodes = [
        helper.make_node("Div", ["x", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["x", "a"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["g"]),
        helper.make_node("Gemm", ["g", "W", "b"], ["y"]),
    ]
    model = make_model(nodes, [tensor("x", [3, 8])], [tensor("y", [3, 4])], inits)
    assert_kept(model, "completes a GELU")
