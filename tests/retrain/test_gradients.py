"""Gradient criteria: one score per output channel, keyed by weight name; a channel whose
outgoing weights are all zero (it cannot affect the loss) ranks lowest."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnxprune.core.errors import InputError
from onnxprune.retrain.gradients import channel_scores, gradient_scores, taylor_scores
from tests.retrain import conv_net, stripes_data
from tests.util import make_model, tensor

USELESS = 3


def with_useless_channel(batchnorm: bool):
    """conv1's channel USELESS feeds nothing: conv2's weights reading it are zero."""
    model = conv_net(width=8, batchnorm=batchnorm)
    for init in model.graph.initializer:
        if init.name == "conv2.weight":
            weight = numpy_helper.to_array(init).copy()
            weight[:, USELESS] = 0.0
            init.CopyFrom(numpy_helper.from_array(weight, init.name))
    return model


@pytest.mark.parametrize("batchnorm", [True, False], ids=["bn-gamma", "virtual-scale"])
@pytest.mark.parametrize("criterion", ["taylor", "gradient"])
def test_useless_channel_ranks_lowest(criterion, batchnorm):
    scores = channel_scores(with_useless_channel(batchnorm), stripes_data(48), criterion, batch_size=16)
    assert {name: s.shape for name, s in scores.items()} == {
        "conv1.weight": (8,), "conv2.weight": (8,), "fc.weight": (3,)}
    conv1 = scores["conv1.weight"]
    assert int(np.argmin(conv1)) == USELESS
    assert conv1[USELESS] == 0.0 and np.all(np.delete(conv1, USELESS) > 0)


def test_taylor_form_of_gdp_and_aliases():
    model, data = with_useless_channel(True), stripes_data(24)
    plain = gradient_scores(model, data, batch_size=8)
    weighted = gradient_scores(model, data, batch_size=8, times_weight=True)
    assert weighted["conv1.weight"][USELESS] == 0 and not np.allclose(weighted["conv2.weight"], plain["conv2.weight"])
    np.testing.assert_array_equal(taylor_scores(model, data, batch_size=8)["conv2.weight"],
                                  channel_scores(model, data, "taylor", batch_size=8)["conv2.weight"])


def test_out_channel_axes_of_gemm_matmul_and_grouped_conv_transpose():
    rng = np.random.default_rng(0)
    inits = {
        "up": rng.standard_normal((4, 3, 2, 2)).astype(np.float32),  # ConvTranspose, group 2: 6 outputs
        "gemm": rng.standard_normal((6 * 16, 5)).astype(np.float32),  # transB=0: [in, out]
        "mm": rng.standard_normal((5, 3)).astype(np.float32),
    }
    nodes = [
        helper.make_node("ConvTranspose", ["x", "up"], ["u"], strides=[2, 2], group=2),
        helper.make_node("Flatten", ["u"], ["f"]),
        helper.make_node("Gemm", ["f", "gemm"], ["g"]),
        helper.make_node("Relu", ["g"], ["r"]),
        helper.make_node("MatMul", ["r", "mm"], ["logits"]),
    ]
    model = make_model(nodes, [tensor("x", ["N", 4, 2, 2])], [tensor("logits", ["N", 3])], inits)
    data = stripes_data(6)
    data.images = rng.standard_normal((6, 4, 2, 2)).astype(np.float32)
    for criterion in ("taylor", "gradient"):
        shapes = {name: s.shape for name, s in channel_scores(model, data, criterion).items()}
        assert shapes == {"up": (6,), "gemm": (5,), "mm": (3,)}


def test_unknown_criterion_is_refused():
    with pytest.raises(InputError, match="unknown gradient criterion 'hessian'"):
        channel_scores(conv_net(), stripes_data(3), "hessian")
