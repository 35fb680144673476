"""merge_linear: two consecutive linear layers merged into one, or left alone with a reason."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.util import (
    assert_equivalent,
    assert_rewritten,
    assert_unchanged,
    make_model,
    op_counts,
    run_pass,
    tensor,
)

NAME = "merge_linear"


def conv(inits, name, data, out, c_in, c_out, kernel=3, bias=True, pads=0, stride=1, groups=1, seed=0, **attrs):
    """A 2-D Conv with random weights and a random (True), zero ("zero") or no bias, into ``inits``."""
    rng = np.random.default_rng(seed)
    inits[f"{name}.w"] = (rng.standard_normal((c_out, c_in // groups, kernel, kernel)) * 0.3).astype(np.float32)
    inputs = [data, f"{name}.w"]
    if bias:
        inits[f"{name}.b"] = rng.standard_normal(c_out).astype(np.float32) * (bias is True)
        inputs.append(f"{name}.b")
    geometry = {"pads": [pads] * 4, "strides": [stride] * 2, "kernel_shape": [kernel] * 2, "group": groups}
    return helper.make_node("Conv", inputs, [out], name=name, **{**geometry, **attrs})


def conv_chain(first, second, c_in=8, shape=(9, 9), between=None, outputs=("z",)):
    """x -> Conv(first) -> y [-> between -> r] -> Conv(second) -> z; ``first``/``second`` are conv() kwargs."""
    inits: dict = {}
    nodes = [conv(inits, "a", "x", "y", c_in, seed=1, **first)]
    if between:
        nodes.append(helper.make_node(between, ["y"], ["r"], name="between"))
    nodes.append(conv(inits, "b", "r" if between else "y", "z", seed=2, **second))
    return make_model(nodes, [tensor("x", [1, c_in, *shape])], [tensor(name, [None] * 4) for name in outputs], inits)


merged = partial(assert_rewritten, pass_name=NAME, ops={"Conv": 1})


assert_kept = partial(assert_unchanged, pass_name=NAME)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("pads", [0, 1])
def test_conv_then_pointwise(bias, stride, pads):
    first = {"c_out": 8, "bias": bias, "stride": stride, "pads": pads, "dilations": [2, 2] if pads else [1, 1]}
    merged(conv_chain(first, {"c_in": 8, "c_out": 4, "kernel": 1, "bias": bias}))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_then_conv(bias, stride):
    first = {"c_out": 16, "kernel": 1, "bias": bias}
    merged(conv_chain(first, {"c_in": 16, "c_out": 8, "bias": bias, "stride": stride}, c_in=4))


@pytest.mark.parametrize("first_bias", [False, "zero"])
def test_pointwise_then_padded_conv_without_first_bias(first_bias):
    merged(conv_chain({"c_out": 16, "kernel": 1, "bias": first_bias}, {"c_in": 16, "c_out": 8, "pads": 1}, c_in=4))


def test_pointwise_then_padded_conv_with_first_bias_is_skipped():
    model = conv_chain({"c_out": 16, "kernel": 1}, {"c_in": 16, "c_out": 8, "pads": 1}, c_in=4)
    assert_kept(model, "pads its input")


def test_chain_of_three_convs_merges_in_one_run():
    inits: dict = {}
    nodes = [
        conv(inits, "a", "x", "y", 4, 8, seed=1),
        conv(inits, "b", "y", "u", 8, 6, kernel=1, seed=2),
        conv(inits, "c", "u", "z", 6, 3, kernel=1, seed=3),
    ]
    model = make_model(nodes, [tensor("x", [1, 4, 7, 7])], [tensor("z", [None] * 4)], inits)
    merged(model, rewrites=2)


def gemm_chain(sizes, trans_b=(0, 1), alpha=(1.0, 1.0), ops=("Gemm", "Gemm"), data_shape=None):
    """x -> op0 -> y -> op1 -> z with constant weights; Gemm takes transB/alpha/beta and a bias."""
    rng = np.random.default_rng(0)
    inits: dict = {}
    nodes, names = [], ["x", "y", "z"]
    for index, (op, c_in, c_out) in enumerate(zip(ops, sizes, sizes[1:])):
        shape = (c_out, c_in) if op == "Gemm" and trans_b[index] else (c_in, c_out)
        inits[f"w{index}"] = (rng.standard_normal(shape) * 0.3).astype(np.float32)
        inputs = [names[index], f"w{index}"]
        attrs = {}
        if op == "Gemm":
            inits[f"b{index}"] = rng.standard_normal((1, c_out)).astype(np.float32)
            inputs.append(f"b{index}")
            attrs = {"transB": trans_b[index], "alpha": alpha[index], "beta": 0.5 + index}
        nodes.append(helper.make_node(op, inputs, [names[index + 1]], name=f"op{index}", **attrs))
    data_shape = list(data_shape or (3, sizes[0]))
    return make_model(nodes, [tensor("x", data_shape)], [tensor("z", [None] * len(data_shape))], inits)


@pytest.mark.parametrize("trans_b", [(0, 0), (1, 1), (0, 1)])
@pytest.mark.parametrize("alpha", [(1.0, 1.0), (0.5, 2.0)])
def test_gemm_then_gemm(trans_b, alpha):
    merged(gemm_chain((16, 12, 6), trans_b, alpha), ops={"Gemm": 1})


def test_matmul_then_matmul_on_rank3_input():
    model = gemm_chain((16, 12, 6), ops=("MatMul", "MatMul"), data_shape=(2, 5, 16))
    merged(model, ops={"MatMul": 1})


def test_gemm_then_matmul_becomes_gemm():
    merged(gemm_chain((16, 12, 6), ops=("Gemm", "MatMul")), ops={"Gemm": 1})


def test_matmul_that_would_grow_is_skipped():
    assert_kept(gemm_chain((16, 4, 16), ops=("MatMul", "MatMul")), "product matrix is larger")


def test_relu_between_convs_is_skipped():
    model = conv_chain({"c_out": 8}, {"c_in": 8, "c_out": 4, "kernel": 1}, between="Relu")
    assert_kept(model, None)


def test_intermediate_with_two_consumers_is_skipped():
    model = conv_chain({"c_out": 8}, {"c_in": 8, "c_out": 4, "kernel": 1}, outputs=("z", "y"))
    assert_kept(model, "other consumers")


def test_widening_pointwise_is_skipped():
    assert_kept(conv_chain({"c_out": 4}, {"c_in": 4, "c_out": 32, "kernel": 1}), "widens")


def test_narrowing_pointwise_before_conv_is_skipped():
    model = conv_chain({"c_out": 4, "kernel": 1}, {"c_in": 4, "c_out": 16}, c_in=16)
    assert_kept(model, "narrows")


def test_grouped_conv_is_skipped():
    assert_kept(conv_chain({"c_out": 8, "groups": 2}, {"c_in": 8, "c_out": 4, "kernel": 1}), "grouped")


def test_conv_transpose_first_is_skipped():
    inits: dict = {}
    first = conv(inits, "a", "x", "y", 8, 8, seed=1)
    first.op_type = "ConvTranspose"
    nodes = [first, conv(inits, "b", "y", "z", 8, 4, kernel=1, seed=2)]
    model = make_model(nodes, [tensor("x", [1, 8, 5, 5])], [tensor("z", [None] * 4)], inits)
    assert_kept(model, "ConvTranspose")


def test_neither_pointwise_is_skipped():
    assert_kept(conv_chain({"c_out": 8}, {"c_in": 8, "c_out": 4}), "neither conv is 1x1")


def test_weights_shared_between_chains_are_not_corrupted():
    inits: dict = {}
    nodes = [
        conv(inits, "a", "x", "y", 4, 8, seed=1),
        conv(inits, "b", "y", "z", 8, 4, kernel=1, seed=2),
        conv(inits, "a2", "x", "y2", 4, 8, seed=3),
        helper.make_node("Conv", ["y2", "b.w", "b.b"], ["z2"], name="b2", kernel_shape=[1, 1]),
    ]
    outputs = [tensor("z", [None] * 4), tensor("z2", [None] * 4)]
    model = make_model(nodes, [tensor("x", [1, 4, 7, 7])], outputs, inits)
    merged(model, rewrites=2, ops={"Conv": 2})


def test_float16_gemm_chain():
    model = gemm_chain((16, 12, 6))
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == 1 and op_counts(result) == {"Gemm": 1}
    assert_equivalent(model, result, rel=5e-3)
