"""The noise-aware rule on a ResNet-50-sized model: a correct fold passes, broken folds fail."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from models.architectures import bottleneck, conv_bn, export
from onnxprune.core.data import random_feeds
from onnxprune.measure import noise
from onnxprune.measure.verify import OutputDiff, compare_scaled, equivalent, session
from onnxprune.passes.pipeline import optimize

SHAPE = (1, 3, 64, 64)

#: 3x3 conv of the 4th stage-3 bottleneck, conv 36 of 53: deep, and square for the wrong-axis fold. Deeper
#: still, a 1 % error on one channel can be as small as the float32 noise itself (see noise.py).
TARGET = "12.0.branches.0.1.0.weight"


def resnet50() -> nn.Sequential:
    """ResNet-50: stem, bottlenecks 3-4-6-3 (1x1-3x3-1x1, expansion 4), 1000 classes; 53 convs, 25.6 M weights."""
    layers: list[nn.Module] = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for stage, (blocks, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for block in range(blocks):
            layers.append(bottleneck(cin, planes, planes * 4, 2 if block == 0 and stage else 1))
            cin = planes * 4
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000))


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affines and BN statistics of random data: activations stay normalised through
    all 53 convs, as in a trained net, so the float32 noise is that of a real ResNet-50."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data = torch.rand(module.num_features, generator=generator) + 0.5
            module.bias.data = torch.randn(module.num_features, generator=generator) * 0.1
            module.momentum = None  # running stats = plain average over the calibration batches
    with torch.no_grad():
        model.train()(torch.randn(4, *SHAPE[1:], generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def resnet() -> tuple[onnx.ModelProto, onnx.ModelProto, list]:
    """(reference with BN kept, its pipeline output, two random feeds)."""
    torch.manual_seed(0)
    reference = export(trained_looking(resnet50()), SHAPE, opset=17)
    return reference, optimize(reference).model, random_feeds(reference, {"input": SHAPE}, count=2)


def describe(diff: OutputDiff) -> str:
    floor = f"{diff.noise_floor:.3g}"
    return f"deviation {diff.max_abs:.3g}, bound {diff.atol:.3g} (floor {floor}), margin {diff.margin:.2g}"


def test_optimized_resnet50_passes_where_the_fixed_tolerance_is_marginal(resnet):
    reference, optimized, feeds = resnet
    candidate = session(optimized)
    (new,) = equivalent(reference, candidate, feeds).outputs
    (old,) = compare_scaled(reference, candidate, feeds, rel=1e-5).outputs
    print(f"noise rule: {describe(new)}; rtol 1e-5 of the peak: bound {old.atol:.3g}, margin {old.margin:.2g}")
    assert new.passed and new.margin > 2
    assert new.atol == noise.NOISE_MULTIPLE * new.noise_floor  # the floor, not the scale, sets the bound
    assert old.margin < 2  # the previous default rejects this correct fold, or nearly


def bn_scale(reference: onnx.ModelProto, weight: str) -> np.ndarray:
    """s = g / sqrt(var + eps) of the BatchNormalization reading the conv whose weight is ``weight``."""
    conv = next(n for n in reference.graph.node if n.op_type == "Conv" and n.input[1] == weight)
    bn = next(n for n in reference.graph.node if n.op_type == "BatchNormalization" and n.input[0] == conv.output[0])
    arrays = {i.name: i for i in reference.graph.initializer}
    gamma, _, _, var = (numpy_helper.to_array(arrays[name]).astype(np.float64) for name in bn.input[1:])
    eps = next(a.f for a in bn.attribute if a.name == "epsilon")
    return gamma / np.sqrt(var + eps)


def drop_channel_bias(w: np.ndarray, b: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b[0] = 0.0
    return w, b


def scale_on_input_axis(w: np.ndarray, b: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W' = W s[o] undone and redone as W s[i]: the BN folded over the wrong channel axis."""
    return w / s[:, None, None, None] * s[None, :, None, None], b


def swap_output_channels(w: np.ndarray, b: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return w[[1, 0, *range(2, len(w))]], b[[1, 0, *range(2, len(b))]]


def scale_one_channel(w: np.ndarray, b: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w[0] *= 1.01
    b[0] *= 1.01
    return w, b


Breaker = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def broken(optimized: onnx.ModelProto, scale: np.ndarray, breaker: Breaker) -> onnx.ModelProto:
    """A copy of ``optimized`` whose TARGET conv's folded weight and bias went through ``breaker``."""
    model = onnx.ModelProto()
    model.CopyFrom(optimized)
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[1] == TARGET)
    inits = {i.name: i for i in model.graph.initializer}
    w, b = (numpy_helper.to_array(inits[name]).astype(np.float64) for name in conv.input[1:3])
    for name, value in zip(conv.input[1:3], breaker(w, b, scale)):
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return model


BREAKERS = [drop_channel_bias, scale_on_input_axis, swap_output_channels, scale_one_channel]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__)
def test_broken_fold_fails(resnet, breaker):
    reference, optimized, feeds = resnet
    (diff,) = equivalent(reference, broken(optimized, bn_scale(reference, TARGET), breaker), feeds).outputs
    print(f"{breaker.__name__}: {describe(diff)}, {diff.max_abs / diff.atol:.3g}x over the bound")
    assert not diff.passed and diff.max_abs > diff.atol


def test_floor_ignores_non_finite_and_takes_the_worst_element():
    optimized = [np.array([1.0, np.nan, np.inf, 2.0], np.float32), np.array([5.0, 0.0, 0.0, 0.0], np.float32)]
    unoptimized = [np.array([1.5, 3.0, 0.0, 2.0], np.float32), np.array([5.25, 0.0, 0.0, 0.0], np.float32)]
    assert noise.floor(optimized, unoptimized) == 0.5
    assert noise.floor([np.array(["a"])], [np.array(["b"])]) == 0.0


def test_bound_is_k_floors_or_the_scale_floor():
    assert noise.bound(1e-3, 1.0) == noise.NOISE_MULTIPLE * 1e-3
    assert noise.bound(0.0, 10.0) == noise.SCALE_FLOOR * 10.0
