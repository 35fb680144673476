"""Tiny models and data shared by the retraining tests (fast on 2 CPU cores)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxprune.retrain.evaluate import LabelledData
from tests.util import make_model, tensor

CLASSES = 3


def stripes(count: int, seed: int = 0, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """1-channel images: horizontal stripes (class 0), vertical (1) or a checkerboard (2), noisy."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % CLASSES
    rows, cols = np.indices((size, size))
    patterns = np.stack([rows % 2, cols % 2, (rows + cols) % 2]).astype(np.float32)
    images = patterns[labels][:, None] + 0.6 * rng.standard_normal((count, 1, size, size)).astype(np.float32)
    return images.astype(np.float32), labels.astype(np.int64)


def stripes_data(count: int = 96, seed: int = 0) -> LabelledData:
    images, labels = stripes(count, seed)
    return LabelledData(images, labels, source="stripes")


def conv_net(width: int = 8, batchnorm: bool = True, seed: int = 0,
             gamma: tuple[float, float] = (0.5, 1.5)) -> onnx.ModelProto:
    """Conv-BN-Relu-MaxPool-Conv-BN-Relu-Flatten-Gemm for [N, 1, 8, 8] inputs and 3 classes."""
    rng = np.random.default_rng(seed)
    inits: dict[str, np.ndarray] = {
        "conv1.weight": (rng.standard_normal((width, 1, 3, 3)) * 0.5).astype(np.float32),
        "conv2.weight": (rng.standard_normal((width, width, 3, 3)) / np.sqrt(9 * width)).astype(np.float32),
        "fc.weight": (rng.standard_normal((CLASSES, width * 16)) / np.sqrt(width * 16)).astype(np.float32),
        "fc.bias": np.zeros(CLASSES, np.float32),
    }
    nodes = [helper.make_node("Conv", ["x", "conv1.weight"], ["c1"], pads=[1, 1, 1, 1])]
    last = "c1"
    if batchnorm:
        last = _add_bn(nodes, inits, "bn1", "c1", width, rng, gamma)
    nodes += [helper.make_node("Relu", [last], ["r1"]),
              helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("Conv", ["p1", "conv2.weight"], ["c2"], pads=[1, 1, 1, 1])]
    last = _add_bn(nodes, inits, "bn2", "c2", width, rng, gamma) if batchnorm else "c2"
    nodes += [helper.make_node("Relu", [last], ["r2"]), helper.make_node("Flatten", ["r2"], ["f"]),
              helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], transB=1)]
    return make_model(nodes, [tensor("x", ["N", 1, 8, 8])], [tensor("logits", ["N", CLASSES])], inits)


def _add_bn(nodes, inits, name, source, width, rng, gamma) -> str:
    inits.update({
        f"{name}.weight": rng.uniform(*gamma, width).astype(np.float32),
        f"{name}.bias": (rng.standard_normal(width) * 0.1).astype(np.float32),
        f"{name}.running_mean": np.zeros(width, np.float32),
        f"{name}.running_var": np.ones(width, np.float32),
    })
    inputs = [source] + [f"{name}.{key}" for key in ("weight", "bias", "running_mean", "running_var")]
    nodes.append(helper.make_node("BatchNormalization", inputs, [f"{name}.out"]))
    return f"{name}.out"
