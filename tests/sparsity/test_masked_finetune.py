"""Fine-tuning a sparse model keeps its zeros at zero (masked gradients and updates), whatever the optimizer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune.retrain.train import TrainConfig, finetune
from onnxprune.sparsity.thresholds import Threshold, keep_masks
from tests.retrain import conv_net, stripes_data


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if len(t.dims) >= 2}


@pytest.fixture(scope="module")
def sparse() -> onnx.ModelProto:
    """``conv_net`` without BN, 70 % of each weight tensor zeroed (the smallest)."""
    model = conv_net(batchnorm=False)
    kept = keep_masks(weights(model), Threshold(sparsity=0.7))
    for tensor in model.graph.initializer:
        if tensor.name in kept:
            values = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array(np.where(kept[tensor.name], values, 0), tensor.name))
    return model


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_zeros_stay_zero_and_the_rest_trains(sparse, optimizer):
    config = TrainConfig(epochs=1, lr=0.05, batch_size=16, optimizer=optimizer, weight_decay=1e-2, momentum=0.9)
    tuned = weights(finetune(sparse, stripes_data(48), config).model)
    for name, before in weights(sparse).items():
        zero = before == 0
        assert 0.69 < zero.mean() < 0.71
        assert np.count_nonzero(tuned[name][zero]) == 0, name
        assert np.abs(tuned[name][~zero] - before[~zero]).max() > 1e-3, name


def test_without_masks_training_revives_pruned_weights(sparse):
    config = TrainConfig(epochs=1, lr=0.05, batch_size=32, keep_sparsity=False)
    tuned = weights(finetune(sparse, stripes_data(48), config).model)
    revived = sum(np.count_nonzero(tuned[name][before == 0]) for name, before in weights(sparse).items())
    assert revived > 0.5 * sum(int((before == 0).sum()) for before in weights(sparse).values())
