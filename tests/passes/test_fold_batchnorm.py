"""fold_batchnorm: BatchNormalization folded into the linear op after or before it, or left alone with a reason."""

from __future__ import annotations

import io
import warnings
from functools import partial

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxprune.passes.fold_batchnorm import NO_NEIGHBOUR
from tests.util import (
    assert_equivalent,
    assert_unchanged,
    make_model,
    op_counts,
    run_pass,
    tensor,
)

NAME = "fold_batchnorm"


def conv(inits, name, data, out, c_in, c_out, dims=2, groups=1, bias=True, pads=0, stride=1, op="Conv", seed=0):
    """A Conv or ConvTranspose node with random 3-wide kernels; its parameters go into ``inits``."""
    rng = np.random.default_rng(seed)
    shape = (c_in, c_out // groups) if op == "ConvTranspose" else (c_out, c_in // groups)
    inits[f"{name}.w"] = rng.standard_normal(shape + (3,) * dims).astype(np.float32) * 0.3
    inputs = [data, f"{name}.w"]
    if bias:
        inits[f"{name}.b"] = rng.standard_normal(c_out).astype(np.float32)
        inputs.append(f"{name}.b")
    attrs = dict(group=groups, pads=[pads] * 2 * dims, strides=[stride] * dims, kernel_shape=[3] * dims)
    return helper.make_node(op, inputs, [out], name=name, **attrs)


def batchnorm(inits, name, data, out, channels, seed=1, dtype=np.float32, **attrs):
    """A BatchNormalization node with random statistics and affine parameters, so folding is non-trivial."""
    rng = np.random.default_rng(seed)
    inits[f"{name}.scale"] = (rng.uniform(0.5, 2.0, channels) * rng.choice([-1, 1], channels)).astype(dtype)
    inits[f"{name}.bias"] = rng.standard_normal(channels).astype(dtype)
    inits[f"{name}.mean"] = rng.standard_normal(channels).astype(dtype)
    inits[f"{name}.var"] = rng.uniform(0.2, 3.0, channels).astype(dtype)
    inputs = [data] + [f"{name}.{key}" for key in ("scale", "bias", "mean", "var")]
    return helper.make_node("BatchNormalization", inputs, [out], name=name, epsilon=1e-3, **attrs)


def conv_bn_model(dims=2, groups=1, bias=True, op="Conv", stride=1, opset=13, **bn_attrs):
    c_in, c_out = (4, 4) if groups == 4 else (4, 6)
    inits: dict = {}
    nodes = [
        conv(inits, "conv", "x", "c", c_in, c_out, dims, groups, bias, stride=stride, op=op),
        batchnorm(inits, "bn", "c", "y", c_out, **bn_attrs),
    ]
    return make_model(nodes, [tensor("x", [1, c_in] + [5] * dims)], [tensor("y", [None] * (dims + 2))], inits, opset)


def folded(model, rewrites=1, rel=1e-5):
    """Run the pass, check that ``rewrites`` BNs were folded and none is left, and return the report."""
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == rewrites, report.skipped
    assert "BatchNormalization" not in op_counts(result)
    assert_equivalent(model, result, rel=rel)
    return result, report


assert_kept = partial(assert_unchanged, pass_name=NAME)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 4], ids=["dense", "grouped", "depthwise"])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_then_bn(dims, groups, bias):
    result, _ = folded(conv_bn_model(dims, groups, bias))
    assert op_counts(result) == {"Conv": 1}


CONV_TRANSPOSE_GROUPS = {"dense": (1, 6), "grouped": (2, 6), "grouped-narrow": (2, 4), "depthwise": (4, 4),
                         "depthwise-x2": (4, 8)}  # groups, output channels (4 inputs)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("groups", "c_out"), CONV_TRANSPOSE_GROUPS.values(), ids=CONV_TRANSPOSE_GROUPS)
def test_conv_transpose_then_bn(groups, c_out, bias):
    """Weight [in, out / groups, k]: output o = g * out / groups + j is scaled through W[rows of group g, j]."""
    inits: dict = {}
    nodes = [
        conv(inits, "conv", "x", "c", 4, c_out, groups=groups, bias=bias, stride=2, op="ConvTranspose"),
        batchnorm(inits, "bn", "c", "y", c_out),
    ]
    result, _ = folded(make_model(nodes, [tensor("x", [1, 4, 5, 5])], [tensor("y", [None] * 4)], inits))
    assert op_counts(result) == {"ConvTranspose": 1}


@pytest.mark.parametrize(("groups", "c_out"), CONV_TRANSPOSE_GROUPS.values(), ids=CONV_TRANSPOSE_GROUPS)
def test_pure_scale_bn_before_conv_transpose(groups, c_out):
    """Input c scales every weight that reads it: row c of a ConvTranspose weight, whatever the groups."""
    inits: dict = {}
    nodes = [
        batchnorm(inits, "bn", "x", "n", 4),
        conv(inits, "conv", "n", "y", 4, c_out, groups=groups, stride=2, op="ConvTranspose"),
    ]
    inits["bn.bias"] = np.zeros(4, np.float32)
    inits["bn.mean"] = np.zeros(4, np.float32)
    _, report = folded(make_model(nodes, [tensor("x", [1, 4, 5, 5])], [tensor("y", [None] * 4)], inits))
    assert "(before it)" in report.rewrites[0]


@pytest.mark.parametrize("opset, attrs", [(7, {"spatial": 1}), (9, {}), (13, {}), (15, {"training_mode": 0}), (21, {})])
def test_opsets(opset, attrs):
    folded(conv_bn_model(opset=opset, **attrs))


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha, beta", [(1.0, 1.0), (0.5, 2.0)])
@pytest.mark.parametrize("bias", [True, False])
def test_gemm_then_bn(trans_b, alpha, beta, bias):
    rng = np.random.default_rng(2)
    inits = {"w": rng.standard_normal((5, 8) if trans_b else (8, 5)).astype(np.float32)}
    inputs = ["x", "w"]
    if bias:
        inits["b"] = rng.standard_normal(5).astype(np.float32)
        inputs.append("b")
    gemm = helper.make_node("Gemm", inputs, ["g"], name="gemm", transB=trans_b, alpha=alpha, beta=beta)
    nodes = [gemm, batchnorm(inits, "bn", "g", "y", 5)]
    model = make_model(nodes, [tensor("x", [3, 8])], [tensor("y", [None, None])], inits)
    result, _ = folded(model)
    assert op_counts(result) == {"Gemm": 1}


def matmul_bn_model(input_shape, channels):
    inits = {"w": np.random.default_rng(3).standard_normal((input_shape[-1], 5)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), batchnorm(inits, "bn", "m", "y", channels)]
    return make_model(nodes, [tensor("x", input_shape)], [tensor("y", [None] * len(input_shape))], inits)


def test_matmul_rank2_then_bn_becomes_gemm():
    result, _ = folded(matmul_bn_model([3, 8], 5))
    assert op_counts(result) == {"Gemm": 1}


def test_matmul_rank3_then_bn_is_skipped():
    # BN normalises axis 1 (the 4 rows), MatMul's channels are the last axis: not a per-channel fold.
    assert_kept(matmul_bn_model([2, 4, 8], 4), "the last axis of a rank-3 tensor")


def bn_conv_model(pads, zero_shift=False):
    inits: dict = {}
    nodes = [batchnorm(inits, "bn", "x", "n", 4), conv(inits, "conv", "n", "y", 4, 6, pads=pads)]
    if zero_shift:
        inits["bn.bias"] = np.zeros(4, np.float32)
        inits["bn.mean"] = np.zeros(4, np.float32)
    return make_model(nodes, [tensor("x", [1, 4, 6, 6])], [tensor("y", [None] * 4)], inits)


def test_bn_before_conv_without_padding():
    result, report = folded(bn_conv_model(pads=0))
    assert "(before it)" in report.rewrites[0]


def test_bn_before_padded_conv_is_skipped():
    assert_kept(bn_conv_model(pads=1), "pads its input")


def test_pure_scale_bn_before_padded_conv():
    folded(bn_conv_model(pads=1, zero_shift=True))


def export(module, example, opset):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), example, buffer, dynamo=False, training=torch.onnx.TrainingMode.PRESERVE, opset_version=opset
        )
    return onnx.load_from_string(buffer.getvalue())


def randomise(module):
    generator = torch.Generator().manual_seed(0)
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            channels = layer.num_features
            layer.running_mean.copy_(torch.randn(channels, generator=generator))
            layer.running_var.copy_(torch.rand(channels, generator=generator) + 0.2)
            layer.weight.data.copy_(torch.randn(channels, generator=generator))
            layer.bias.data.copy_(torch.randn(channels, generator=generator))
    return module


@pytest.mark.parametrize("opset", [9, 13, 15])
def test_torch_export(opset):
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
        torch.nn.BatchNorm2d(8),
        torch.nn.Flatten(),
        torch.nn.BatchNorm1d(8 * 4 * 4),
        torch.nn.Linear(8 * 4 * 4, 10),
        torch.nn.BatchNorm1d(10),
    )
    model = export(randomise(module), torch.randn(2, 3, 4, 4), opset)
    assert op_counts(model)["BatchNormalization"] == 4
    result, report = folded(model, rewrites=4)
    assert sum("(before it)" in line for line in report.rewrites) == 1


def test_float16():
    inits: dict = {}
    nodes = [conv(inits, "conv", "x", "c", 4, 6), batchnorm(inits, "bn", "c", "y", 6, dtype=np.float16)]
    inits = {key: value.astype(np.float16) for key, value in inits.items()}
    model = make_model(
        nodes, [tensor("x", [1, 4, 5, 5], TensorProto.FLOAT16)], [tensor("y", [None] * 4, TensorProto.FLOAT16)], inits
    )
    result, _ = folded(model, rel=1e-2)
    assert {init.data_type for init in result.graph.initializer} == {TensorProto.FLOAT16}


def test_conv_output_with_two_readers_is_kept():
    inits: dict = {}
    nodes = [
        conv(inits, "conv", "x", "c", 4, 6),
        batchnorm(inits, "bn", "c", "y", 6),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
    ]
    model = make_model(nodes, [tensor("x", [1, 4, 5, 5])], [tensor("y", [None] * 4), tensor("r", [None] * 4)], inits)
    assert_kept(model, "has other readers")


def test_densenet_preactivation_is_kept():
    inits: dict = {}
    nodes = [
        helper.make_node("Concat", ["x", "x"], ["cat"], name="concat", axis=1),
        batchnorm(inits, "bn", "cat", "n", 8),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        conv(inits, "conv", "r", "y", 8, 4),
    ]
    model = make_model(nodes, [tensor("x", [1, 4, 5, 5])], [tensor("y", [None] * 4)], inits)
    assert_kept(model, NO_NEIGHBOUR)


@pytest.mark.parametrize(
    "opset, attrs, reason",
    [(7, {"spatial": 0}, "spatial=0"), (15, {"training_mode": 1}, "training_mode=1")],
)
def test_not_inference_form_is_kept(opset, attrs, reason):
    if attrs.get("spatial") == 0:
        model = conv_bn_model(opset=opset)
        model.graph.node[1].attribute.append(helper.make_attribute("spatial", 0))
        for init in model.graph.initializer:
            if init.name.startswith("bn."):
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).reshape(6, 1, 1), init.name))
        onnx.checker.check_model(model)
    else:
        model = conv_bn_model(opset=opset, **attrs)
    assert_kept(model, reason)


def test_running_statistics_read_is_kept():
    model = conv_bn_model(opset=9)
    model.graph.node[1].output.append("running_mean")
    model.graph.output.append(tensor("running_mean", [None]))
    assert_kept(model, "declares running-statistics outputs")


def test_running_statistics_declared_but_unread_is_kept():
    """onnxruntime normalises with batch statistics when the extra outputs are declared."""
    model = conv_bn_model(opset=9)
    model.graph.node[1].output.extend(["running_mean", "running_var"])
    assert_kept(model, "declares running-statistics outputs")


def test_float16_overflow_is_kept():
    inits: dict = {}
    nodes = [conv(inits, "conv", "x", "c", 4, 6), batchnorm(inits, "bn", "c", "y", 6)]
    inits = {key: value.astype(np.float16) for key, value in inits.items()}
    inits["bn.scale"] = np.full(6, 60000, np.float16)
    model = make_model(
        nodes, [tensor("x", [1, 4, 5, 5], TensorProto.FLOAT16)], [tensor("y", [None] * 4, TensorProto.FLOAT16)], inits
    )
    assert_kept(model, "overflow float16")
