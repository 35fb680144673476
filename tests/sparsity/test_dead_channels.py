"""Filters and neurons pruning left all-zero are cut, exactly: outputs equal, channel counts drop;
a zero filter behind a sigmoid (f(0) != 0) is kept."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.api.sparsify import sparsify_model
from tests.retrain import conv_net
from tests.util import outputs, random_inputs


def with_zeros(model: onnx.ModelProto, **slices) -> onnx.ModelProto:
    """A copy of ``model`` with ``initializer[index] = 0`` for each name (dots as underscores) and index."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        index = slices.get(tensor.name.replace(".", "_"))
        if index is not None:
            values = numpy_helper.to_array(tensor).copy()
            values[index] = 0
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    return copy


def shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    return {t.name: list(t.dims) for t in model.graph.initializer}


def assert_same_outputs(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> None:
    for seed in (0, 1):
        feeds = random_inputs(reference, seed, batch=3)
        for expected, actual in zip(outputs(reference, feeds), outputs(candidate, feeds), strict=True):
            np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6 * np.abs(expected).max())


def test_zero_filters_unread_channels_and_unread_neurons_are_removed_exactly():
    model = with_zeros(conv_net(batchnorm=False),
                       conv1_weight=2,                        # silent: conv1's filter 2 (no bias) -> Relu -> 0
                       conv2_weight=(slice(None), 5),         # unread: no conv2 filter reads conv1's channel 5
                       fc_weight=(slice(None), slice(48, 64)))  # unread: the Gemm ignores conv2's channel 3
    result = sparsify_model(model, storage_kind="dense", min_elements=1)
    got = shapes(result.dense)
    assert got["conv1.weight"] == [6, 1, 3, 3]
    assert got["conv2.weight"] == [7, 6, 3, 3]
    assert got["fc.weight"] == [3, 112]
    assert result.removed_channels == 2  # groups: conv1's output channels, conv2's
    assert_same_outputs(model, result.dense)


def test_a_zero_filter_before_a_sigmoid_is_kept_and_nothing_changes():
    model = with_zeros(conv_net(batchnorm=False), conv1_weight=2)
    next(node for node in model.graph.node if node.op_type == "Relu").op_type = "Sigmoid"
    result = sparsify_model(model, storage_kind="dense", min_elements=1)
    assert shapes(result.dense)["conv1.weight"] == [8, 1, 3, 3]
    assert result.removed_channels == 0
    assert_same_outputs(model, result.dense)


def test_a_dense_model_keeps_every_channel():
    model = conv_net(batchnorm=False)
    result = sparsify_model(model, storage_kind="dense", min_elements=1)
    assert shapes(result.dense) == shapes(model)
    assert result.counts.nonzero == result.counts.total - 3  # only the zero fc.bias
