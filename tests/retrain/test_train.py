"""Training loops: loss goes down, sparse training shapes γ as its regulariser says, runs are
seeded and resumable, distillation pulls the student to the teacher."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from onnxprune.core.errors import InputError
from onnxprune.retrain.interpreter import OnnxModule
from onnxprune.retrain.train import (
    Sparsity,
    TrainConfig,
    Trainer,
    augment,
    batchnorm_scale_values,
    finetune,
    iterative_pruning,
    resolve_device,
    sparse_train,
)
from onnxprune.retrain.writeback import changed_initializers
from tests.retrain import conv_net, stripes_data

FAST = TrainConfig(epochs=5, lr=0.05, batch_size=32)


def loss_on(model, data) -> float:
    module = OnnxModule(model).eval()
    with torch.no_grad():
        logits = module(torch.from_numpy(data.inputs()))
    return float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(data.labels)))


def test_a_few_steps_reduce_the_loss():
    model, data = conv_net(), stripes_data(96)
    result = finetune(model, data, TrainConfig(epochs=2, lr=0.05, batch_size=32))
    assert loss_on(result.model, data) < 0.5 * loss_on(model, data)
    assert [h.epoch for h in result.history] == [1, 2]
    assert result.model.graph.node == model.graph.node  # training never touches the graph


def polarity(gammas: np.ndarray) -> tuple[float, float]:
    """Share of γ below 0.05, and the widest gap between neighbouring sorted γ (two clusters: wide)."""
    return float(np.mean(gammas < 0.05)), float(np.diff(np.sort(gammas)).max())


def test_polarization_splits_bn_scales_into_two_clusters():
    model = conv_net(16, gamma=(0.4, 0.6))  # 32 scales, one cluster around 0.5
    result = sparse_train(model, stripes_data(192), Sparsity("polarization", lam=0.1, t=1.2, a=1.0), FAST)
    before, after = batchnorm_scale_values(model), batchnorm_scale_values(result.model)
    (zeros_before, gap_before), (zeros_after, gap_after) = polarity(before), polarity(after)
    assert zeros_before == 0 and gap_before < 0.05
    assert zeros_after >= 0.25  # one cluster at 0 ...
    assert gap_after > 0.2      # ... far from the other
    assert after[after >= 0.05].min() > 0.2
    assert after.min() >= 0 and after.max() <= 1.0  # clamped to [0, a]
    assert result.history[-1].accuracy == 1.0  # and the task is still solved


def test_l1_shrinks_bn_scales_without_splitting_them():
    data = stripes_data(192)
    model = conv_net(16, gamma=(0.4, 0.6))
    plain = batchnorm_scale_values(finetune(model, data, FAST).model)
    l1 = batchnorm_scale_values(sparse_train(model, data, Sparsity("l1", lam=0.1), FAST).model)
    assert np.abs(l1).mean() < 0.5 * np.abs(plain).mean()
    assert polarity(l1)[1] < 0.2


def test_sparse_training_needs_batchnorm():
    with pytest.raises(InputError, match="needs BatchNormalization scales"):
        sparse_train(conv_net(batchnorm=False), stripes_data(12), Sparsity("l1"), TrainConfig(batch_size=4))


def test_same_seed_same_model():
    model, data = conv_net(), stripes_data(48)
    config = TrainConfig(epochs=1, lr=0.05, batch_size=16, augment=("crop", "flip"))
    assert changed_initializers(finetune(model, data, config).model, finetune(model, data, config).model) == []


def test_resume_after_a_crash_continues_exactly(tmp_path, monkeypatch):
    model, data = conv_net(), stripes_data(48)
    config = TrainConfig(epochs=2, lr=0.01, batch_size=16, augment=("crop", "flip"), optimizer="adamw",
                         checkpoint=str(tmp_path / "ckpt"))
    straight = finetune(model, data, replace(config, checkpoint=None)).model
    run_epoch = Trainer._epoch

    def crash_in_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return run_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        finetune(model, data, config)
    ran = []

    def record(self, epoch):
        ran.append(epoch)
        return run_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "_epoch", record)
    resumed = finetune(model, data, replace(config, resume=True))
    assert ran == [1]  # epoch 0 came from the checkpoint
    assert [h.epoch for h in resumed.history] == [1, 2]
    assert changed_initializers(straight, resumed.model) == []


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    data = stripes_data(16)
    config = TrainConfig(epochs=1, batch_size=8, checkpoint=str(tmp_path))
    finetune(conv_net(width=4), data, config)
    with pytest.raises(InputError, match="different model"):
        finetune(conv_net(width=6), data, replace(config, resume=True))


def test_distillation_pulls_the_student_towards_the_teacher():
    data = stripes_data(96)
    teacher = finetune(conv_net(seed=1), data, FAST).model
    student = conv_net(seed=2)

    def distance(model) -> float:
        with torch.no_grad():
            x = torch.from_numpy(data.inputs())
            s, t = OnnxModule(model).eval()(x), OnnxModule(teacher).eval()(x)
        return float(torch.nn.functional.kl_div(s.log_softmax(1), t.log_softmax(1), log_target=True,
                                                reduction="batchmean"))

    config = TrainConfig(epochs=3, lr=0.05, batch_size=32, distill_alpha=1.0, temperature=2.0)
    assert distance(finetune(student, data, config, teacher=teacher).model) < 0.5 * distance(student)


def test_iterative_pruning_alternates_prune_and_finetune():
    data = stripes_data(24)
    calls = []

    def prune_step(model, round_index):
        calls.append(round_index)
        return None if round_index == 2 else model

    _, histories = iterative_pruning(conv_net(), prune_step, data, TrainConfig(batch_size=8), rounds=5)
    assert calls == [0, 1, 2] and len(histories) == 2


def test_augment_keeps_shape_and_is_seeded():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    a = augment(x, ("crop", "flip"), torch.Generator().manual_seed(0))
    b = augment(x, ("crop", "flip"), torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert set(a.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def test_bad_options_are_input_errors():
    with pytest.raises(InputError, match="unknown optimizer"):
        TrainConfig(optimizer="lion")
    with pytest.raises(InputError, match="unknown augmentation"):
        TrainConfig(augment=("rotate",))
    with pytest.raises(InputError, match="resume needs checkpoint"):
        TrainConfig(resume=True)
    with pytest.raises(InputError, match="unknown regulariser"):
        Sparsity("l2")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")


def deduplicated(model):
    """``model`` as torch's exporter writes an untrained one: equal initializers kept once, the
    duplicates handed out by Identity nodes (every BN scale and running variance one all-ones tensor)."""
    from onnx import helper, numpy_helper

    first: dict[bytes, str] = {}
    copies, kept = [], []
    for tensor in model.graph.initializer:
        key = numpy_helper.to_array(tensor).tobytes() + bytes(tensor.dims)
        if key in first:
            copies.append(helper.make_node("Identity", [first[key]], [tensor.name]))
        else:
            first[key] = tensor.name
            kept.append(tensor)
    shared = onnx.ModelProto()
    shared.CopyFrom(model)
    del shared.graph.initializer[:], shared.graph.node[:]
    shared.graph.initializer.extend(kept)
    shared.graph.node.extend(copies + list(model.graph.node))
    return shared


def test_exporter_deduplicated_initializers_train_as_the_separate_tensors_they_stand_for():
    from onnxprune.measure.verify import run

    model = conv_net(gamma=(1.0, 1.0))  # untrained-looking BN: scales and variances all ones, the rest zeros
    for tensor in model.graph.initializer:
        if tensor.name.endswith(".bias") and tensor.name.startswith("bn"):
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.zeros(tensor.dims, np.float32), tensor.name))
    shared = deduplicated(model)
    assert sum(node.op_type == "Identity" for node in shared.graph.node) == 6
    data, config = stripes_data(96), TrainConfig(epochs=2, lr=0.05, batch_size=32)
    plain, separated = finetune(model, data, config).model, finetune(shared, data, config).model
    assert not [node for node in separated.graph.node if node.op_type == "Identity"]
    feed = {"x": data.inputs()[:16]}
    np.testing.assert_allclose(run(separated, [feed])[0]["logits"], run(plain, [feed])[0]["logits"], rtol=1e-4,
                               atol=1e-4)
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in separated.graph.initializer}
    assert not np.array_equal(arrays["bn1.weight"], arrays["bn2.weight"])  # each scale trained on its own
    assert not np.array_equal(arrays["bn2.running_var"], arrays["bn1.weight"])
