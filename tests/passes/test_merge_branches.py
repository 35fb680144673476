"""merge_branches: summed parallel conv branches re-parameterised into one Conv, or left alone with a reason."""

from __future__ import annotations

import io
import warnings
from functools import partial

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from tests.util import (
    assert_equivalent,
    assert_rewritten,
    assert_unchanged,
    make_model,
    op_counts,
    run_pass,
    tensor,
)

NAME = "merge_branches"


def conv(inits, name, c_in, c_out, kernel=(3, 3), pads=None, stride=1, groups=1, bias=True, dilation=1):
    """A 2-D Conv reading x into ``name``; pads default to "same" for stride 1 (centre-aligned)."""
    rng = np.random.default_rng(len(inits))
    inits[f"{name}.w"] = (rng.standard_normal((c_out, c_in // groups, *kernel)) * 0.3).astype(np.float32)
    inputs = ["x", f"{name}.w"]
    if bias:
        inits[f"{name}.b"] = rng.standard_normal(c_out).astype(np.float32)
        inputs.append(f"{name}.b")
    if pads is None:
        pads = [dilation * (k - 1) // 2 for k in kernel] * 2
    attrs = {"pads": list(pads), "strides": [stride] * 2, "group": groups, "dilations": [dilation] * 2}
    return helper.make_node("Conv", inputs, [name], name=name, kernel_shape=list(kernel), **attrs)


def batchnorm(inits, name, channels):
    rng = np.random.default_rng(7)
    for key, values in {
        "scale": rng.uniform(0.5, 2, channels),
        "bias": rng.standard_normal(channels),
        "mean": rng.standard_normal(channels),
        "var": rng.uniform(0.2, 3, channels),
    }.items():
        inits[f"{name}.{key}"] = values.astype(np.float32)
    inputs = ["x"] + [f"{name}.{key}" for key in ("scale", "bias", "mean", "var")]
    return helper.make_node("BatchNormalization", inputs, [name], name=name, epsilon=1e-3)


def summed(branches, inits, channels=4, size=6, opset=13, extra=(), outputs=("y",)):
    """Branch nodes (and summand names such as "x") added by one Sum (opset < 8) or a chain of Adds."""
    names = [b.output[0] if isinstance(b, onnx.NodeProto) else b for b in branches]
    nodes = [b for b in branches if isinstance(b, onnx.NodeProto)] + list(extra)
    if opset < 8:
        nodes.append(helper.make_node("Sum", names, ["y"], name="sum"))
    else:
        total = names[0]
        for index, name in enumerate(names[1:]):
            out = "y" if index == len(names) - 2 else f"s{index}"
            nodes.append(helper.make_node("Add", [total, name], [out], name=f"add{index}"))
            total = out
    inputs = [tensor("x", [1, channels, size, size])]
    return make_model(nodes, inputs, [tensor(name, [None] * 4) for name in outputs], inits, opset)


merged = partial(assert_rewritten, pass_name=NAME, ops={"Conv": 1})


assert_kept = partial(assert_unchanged, pass_name=NAME)


@pytest.mark.parametrize("opset", [7, 13])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_repvgg_block(opset, groups, stride, bias):
    inits: dict = {}
    branches = [
        conv(inits, "c3", 4, 4, stride=stride, groups=groups, bias=bias),
        conv(inits, "c1", 4, 4, kernel=(1, 1), stride=stride, groups=groups, bias=bias),
    ] + ["x"] * (stride == 1)
    sums = 1 if opset < 8 else len(branches) - 1
    merged(summed(branches, inits, opset=opset), rewrites=sums)


def test_asymmetric_kernels_acnet():
    inits: dict = {}
    branches = [
        conv(inits, "c33", 4, 6),
        conv(inits, "c13", 4, 6, kernel=(1, 3), pads=(0, 1, 0, 1)),
        conv(inits, "c31", 4, 6, kernel=(3, 1), pads=(1, 0, 1, 0)),
    ]
    merged(summed(branches, inits, opset=7))


def test_batchnorm_identity_and_dilation():
    inits: dict = {}
    branches = [conv(inits, "c3", 4, 4, dilation=2), conv(inits, "c1", 4, 4, kernel=(1, 1)), batchnorm(inits, "bn", 4)]
    merged(summed(branches, inits, opset=7))


def test_single_conv_with_identity():
    inits: dict = {}
    merged(summed([conv(inits, "c3", 4, 4, groups=4), "x"], inits))


class RepVGGBlock(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.dense = torch.nn.Sequential(
            torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False), torch.nn.BatchNorm2d(channels)
        )
        self.pointwise = torch.nn.Sequential(
            torch.nn.Conv2d(channels, channels, 1, bias=False), torch.nn.BatchNorm2d(channels)
        )
        self.identity = torch.nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(self.dense(x) + self.pointwise(x) + self.identity(x))


@pytest.mark.parametrize("opset", [9, 13])
def test_torch_repvgg_block_with_batchnorm(opset):
    torch.manual_seed(0)
    block = RepVGGBlock(8)
    for bn in (m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        torch.nn.init.uniform_(bn.weight, 0.5, 2)
        torch.nn.init.normal_(bn.bias)
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            block.eval(),
            torch.randn(1, 8, 7, 7),
            buffer,
            dynamo=False,
            opset_version=opset,
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    model = onnx.load_from_string(buffer.getvalue())
    folded, _ = run_pass(model, "fold_batchnorm")
    result, report = run_pass(folded, NAME)
    assert len(report.rewrites) == 2, report.skipped
    assert op_counts(result) == {"Conv": 1, "Relu": 1}
    assert_equivalent(model, result)


def test_different_strides_are_skipped():
    inits: dict = {}
    branches = [conv(inits, "c3", 4, 4, stride=2), conv(inits, "c1", 4, 4, kernel=(1, 1))]
    assert_kept(summed(branches, inits, size=2), "differ in strides")


def test_different_dilations_are_skipped():
    inits: dict = {}
    branches = [conv(inits, "a", 4, 4), conv(inits, "b", 4, 4, dilation=2)]
    assert_kept(summed(branches, inits), "differ in dilations")


def test_misaligned_padding_is_skipped():
    inits: dict = {}
    branches = [conv(inits, "a", 4, 4), conv(inits, "b", 4, 4, pads=(0, 0, 2, 2))]
    assert_kept(summed(branches, inits), "is not aligned")


def test_identity_with_stride_two_is_skipped():
    inits: dict = {}
    branches = [conv(inits, "c3", 4, 4, stride=2), "x"]
    assert_kept(summed(branches, inits, size=2), "identity branch next to convs with strides")


def test_merged_kernel_that_costs_more_is_skipped():
    inits: dict = {}
    branches = [conv(inits, "c13", 4, 4, kernel=(1, 3)), conv(inits, "c31", 4, 4, kernel=(3, 1))]
    assert_kept(summed(branches, inits), "taps against")


def test_non_conv_summand_is_skipped():
    inits: dict = {}
    relu = helper.make_node("Relu", ["x"], ["r"], name="relu")
    assert_kept(summed([conv(inits, "c3", 4, 4), "r"], inits, extra=[relu]), None)


def test_branch_with_second_reader_is_skipped():
    inits: dict = {}
    branches = [conv(inits, "c3", 4, 4), conv(inits, "c1", 4, 4, kernel=(1, 1))]
    assert_kept(summed(branches, inits, outputs=("y", "c1")), None)
