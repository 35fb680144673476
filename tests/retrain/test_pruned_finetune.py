"""Fine-tuning a pruned, BN-folded option-A ResNet recovers accuracy instead of diverging.

Regression: ``prune`` folds every BatchNormalization, and SGD at the default lr 0.01 on the bare
folded convs diverged to NaN within a few steps (the loss is ~50x sharper without BN). The trainer
now puts a BatchNorm back after each folded Conv for training and folds it again on write-back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune import api
from onnxprune.channels.policy import PolicyConfig
from onnxprune.core.errors import OnnxPruneError
from onnxprune.retrain.evaluate import evaluate, load_labelled
from onnxprune.retrain.train import TrainConfig, TrainingDiverged, finetune

MODELS = Path(__file__).resolve().parents[2] / "models"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def split_data(tmp_path_factory) -> Path:
    """The 1000 shipped test images split 600 / 400 into a training and a held-out part."""
    subset = np.load(MODELS / "data" / "cifar10_test1000.npz")
    x, y = subset["x_test"], subset["y_test"]
    path = tmp_path_factory.mktemp("cifar") / "split.npz"
    np.savez(path, x_train=x[:600], y_train=y[:600], x_test=x[600:], y_test=y[600:])
    return path


@pytest.fixture(scope="module")
def pruned() -> onnx.ModelProto:
    model = onnx.load(MODELS / "resnet20_cifar10.onnx")
    result = api.prune_model(model, "l1", PolicyConfig(ratio=0.3))
    assert not any(node.op_type == "BatchNormalization" for node in result.model.graph.node)
    return result.model


def test_finetuning_a_pruned_folded_resnet_stays_finite_and_recovers(pruned, split_data):
    train = load_labelled(split_data, pruned, "train", MEAN, STD)
    held_out = load_labelled(split_data, pruned, "test", MEAN, STD)
    before = evaluate(pruned, held_out).top1
    result = finetune(pruned, train, TrainConfig(epochs=1, batch_size=64))
    assert all(np.isfinite(epoch.loss) for epoch in result.history)
    after = evaluate(result.model, held_out).top1
    assert after > before + 0.05, (before, after)
    names = [tensor.name for tensor in result.model.graph.initializer]
    assert names == [tensor.name for tensor in pruned.graph.initializer]  # the same graph, new weights


def test_a_diverging_run_fails_instead_of_writing_nan(pruned, split_data):
    train = load_labelled(split_data, pruned, "train", MEAN, STD, limit=128)
    config = TrainConfig(epochs=1, batch_size=64, lr=1e6, unfold_batchnorm=False)
    with pytest.raises(TrainingDiverged) as error:
        finetune(pruned, train, config)
    assert isinstance(error.value, OnnxPruneError) and error.value.exit_code == 1
    assert "training diverged" in str(error.value)
