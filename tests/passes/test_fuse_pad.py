"""fuse_pad: a zero constant Pad folded into the pads of the Conv/AveragePool it feeds, or kept with a reason."""

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

NAME = "fuse_pad"
RNG = np.random.default_rng(0)
SPATIAL = [0, 0, 1, 2, 0, 0, 3, 1]  # N, C, H, W begins then ends: pads H and W only


def pad_node(inits, opset, pads, mode=None, value=None, axes=None, out="p"):
    """A Pad of ``x`` in the form ``opset`` uses: attributes before 11, inputs from 11 (axes from 18)."""
    attrs = {} if mode is None else {"mode": mode}
    if opset < 11:
        attrs["pads"] = pads
        if value is not None:
            attrs["value"] = value
        return helper.make_node("Pad", ["x"], [out], name="pad", **attrs)
    inits["pads"] = np.asarray(pads, np.int64)
    inputs = ["x", "pads"]
    if value is not None or axes is not None:
        inits["value"] = np.asarray(0.0 if value is None else value, np.float32)
        inputs.append("value")
    if axes is not None:
        inits["axes"] = np.asarray(axes, np.int64)
        inputs.append("axes")
    return helper.make_node("Pad", inputs, [out], name="pad", **attrs)


def consumer(inits, op, **attrs):
    if op == "Conv":
        inits["w"] = (RNG.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
        inits["b"] = RNG.standard_normal(4).astype(np.float32)
        return helper.make_node("Conv", ["p", "w", "b"], ["y"], name="conv", kernel_shape=[3, 3], **attrs)
    return helper.make_node(op, ["p"], ["y"], name="pool", kernel_shape=[3, 3], **attrs)


def model(opset=13, pads=SPATIAL, op="Conv", attrs=None, extra=(), extra_outputs=(), **pad):
    """x[N, 3, 8, 8] -> Pad -> op -> y, with optional extra nodes reading the padded tensor."""
    inits: dict = {}
    nodes = [pad_node(inits, opset, pads, **pad), consumer(inits, op, **(attrs or {})), *extra]
    outputs = [tensor("y", ["N", None, None, None]), *extra_outputs]
    return make_model(nodes, [tensor("x", ["N", 3, 8, 8])], outputs, inits, opset)



def assert_fused(model, pads):
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == 1, report.skipped
    assert "Pad" not in op_counts(result)
    fused = next(n for n in result.graph.node if n.op_type in ("Conv", "AveragePool"))
    assert helper.get_attribute_value(next(a for a in fused.attribute if a.name == "pads")) == pads
    assert result.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert_equivalent(model, result, rel=1e-5)


assert_kept = partial(assert_unchanged, pass_name=NAME)


@pytest.mark.parametrize("opset", [9, 11, 13, 18])
@pytest.mark.parametrize("conv_pads", [None, [1, 0, 0, 1]])
def test_pad_into_conv(opset, conv_pads):
    attrs = {} if conv_pads is None else {"pads": conv_pads}
    base = conv_pads or [0, 0, 0, 0]
    expected = [base[0] + 1, base[1] + 2, base[2] + 3, base[3] + 1]
    assert_fused(model(opset, attrs=attrs, mode="constant", value=0.0), expected)


@pytest.mark.parametrize("opset", [11, 13])
def test_pad_without_mode_or_value(opset):
    assert_fused(model(opset), [1, 2, 3, 1])


@pytest.mark.parametrize("axes", [[2, 3], [-1, -2]])
def test_pad_with_axes_opset18(axes):
    pads = [1, 2, 3, 1] if axes == [2, 3] else [2, 1, 1, 3]
    assert_fused(model(18, pads=pads, axes=axes), [1, 2, 3, 1])


@pytest.mark.parametrize("opset", [9, 13])
@pytest.mark.parametrize("pool_pads", [None, [1, 0, 0, 1]])
def test_pad_into_average_pool_counting_pads(opset, pool_pads):
    attrs = {"count_include_pad": 1, "strides": [2, 2], **({} if pool_pads is None else {"pads": pool_pads})}
    expected = [1, 1, 1, 1] if pool_pads is None else [2, 1, 1, 2]
    assert_fused(model(opset, pads=[0, 0, 1, 1, 0, 0, 1, 1], op="AveragePool", attrs=attrs), expected)


def test_average_pool_pads_reaching_the_kernel_are_kept():
    assert_kept(model(13, op="AveragePool", attrs={"count_include_pad": 1}), "kernel size")


@pytest.mark.parametrize("opset", [9, 13])
def test_nonzero_value_is_kept(opset):
    assert_kept(model(opset, value=1.5), "pads with 1.5")


@pytest.mark.parametrize("opset", [9, 13])
def test_reflect_mode_is_kept(opset):
    assert_kept(model(opset, mode="reflect"), "mode is reflect")


def test_channel_axis_pad_is_kept():
    model_ = model(13, pads=[0, 1, 1, 1, 0, 0, 1, 1], op="AveragePool", attrs={"count_include_pad": 1})
    assert_kept(model_, "batch or channel axis")


def test_negative_pads_are_kept():
    assert_kept(model(13, pads=[0, 0, -1, 0, 0, 0, 0, 0]), "negative pads")


def test_pad_feeding_two_consumers_is_kept():
    relu = helper.make_node("Relu", ["p"], ["r"], name="relu")
    assert_kept(model(13, extra=[relu], extra_outputs=[tensor("r", [None] * 4)]), "feeds several nodes")


def test_pad_as_graph_output_is_kept():
    assert_kept(model(13, extra_outputs=[tensor("p", [None] * 4)]), "graph output")


@pytest.mark.parametrize(
    "op, attrs, reason",
    [
        ("MaxPool", {}, "MaxPool"),
        ("AveragePool", {}, "count_include_pad=1"),
        ("AveragePool", {"count_include_pad": 1, "ceil_mode": 1}, "ceil_mode=0"),
        ("Conv", {"auto_pad": "SAME_UPPER"}, "auto_pad"),
    ],
)
def test_consumer_that_cannot_absorb_pads(op, attrs, reason):
    assert_kept(model(13, op=op, attrs=attrs), reason)


def test_pads_from_graph_input_are_kept():
    inits = {"w": (RNG.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)}
    nodes_ = [
        helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
        helper.make_node("Conv", ["p", "w"], ["y"], name="conv", kernel_shape=[3, 3]),
    ]
    inputs = [tensor("x", [1, 3, 8, 8]), tensor("pads", [8], 7)]
    assert_kept(make_model(nodes_, inputs, [tensor("y", [None] * 4)], inits), "not a known constant")
