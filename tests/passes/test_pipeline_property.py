"""Property: the full exact pipeline preserves the outputs of random conv/BN/affine/branch graphs."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from onnxprune.passes.pipeline import optimize
from tests.util import assert_equivalent, make_model, op_counts, tensor

BLOCKS = ("conv", "bn", "affine", "relu", "branches", "pad_conv")


class Builder:
    """Appends layers to a chain, tracking the channel count and spatial size."""

    def __init__(self, rng: np.random.Generator, channels: int = 4, size: int = 8):
        self.rng, self.channels, self.size = rng, channels, size
        self.nodes, self.initializers, self.last = [], {}, "x"

    def name(self, base: str) -> str:
        return f"{base}{len(self.nodes)}_{len(self.initializers)}"

    def const(self, base: str, values: np.ndarray, dtype=np.float32) -> str:
        key = self.name(base)
        self.initializers[key] = np.asarray(values).astype(dtype)
        return key

    def emit(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, source: str, out: int, kernel: int, stride: int, pad: int, group: int, bias: bool) -> str:
        weight = self.const("w", self.rng.standard_normal((out, self.channels // group, kernel, kernel)) * 0.3)
        inputs = [source, weight] + ([self.const("b", self.rng.standard_normal(out))] if bias else [])
        return self.emit(
            "Conv", inputs, kernel_shape=[kernel, kernel], strides=[stride] * 2, pads=[pad] * 4, group=group
        )

    def bn(self, source: str) -> str:
        c, rng = self.channels, self.rng
        gamma, beta, mean = rng.uniform(0.5, 1.5, c), rng.standard_normal(c) * 0.1, rng.standard_normal(c) * 0.1
        params = [gamma, beta, mean, rng.uniform(0.5, 1.5, c)]  # drawn in this order
        names = [self.const(n, v) for n, v in zip(("gamma", "beta", "mean", "var"), params)]
        return self.emit("BatchNormalization", [source, *names], epsilon=1e-5)


def add_block(b: Builder, kind: str, draw) -> None:
    if kind == "conv":
        out = draw(st.sampled_from([4, 8]))
        kernel = draw(st.sampled_from([1, 3]))
        stride = draw(st.sampled_from([1, 2])) if b.size >= 4 else 1
        pad = draw(st.sampled_from([0, kernel // 2])) if b.size >= kernel else kernel // 2
        group = draw(st.sampled_from([1, b.channels])) if out == b.channels else 1
        b.last = b.conv(b.last, out, kernel, stride, pad, group, draw(st.booleans()))
        b.size = (b.size + 2 * pad - kernel) // stride + 1
        b.channels = out
    elif kind == "bn":
        b.last = b.bn(b.last)
    elif kind == "affine":
        shape = draw(st.sampled_from([(b.channels, 1, 1), (1, b.channels, 1, 1), (1,)]))
        op = draw(st.sampled_from(["Mul", "Add", "Sub", "Div"]))
        values = b.rng.uniform(0.5, 1.5, shape)
        b.last = b.emit(op, [b.last, b.const("c", values)])
    elif kind == "relu":
        b.last = b.emit("Relu", [b.last])
    elif kind == "branches":
        source, summands = b.last, []
        for kernel in (3, 1):
            summands.append(b.bn(b.conv(source, b.channels, kernel, 1, kernel // 2, 1, draw(st.booleans()))))
        if draw(st.booleans()):
            summands.append(b.bn(source))
        b.last = b.emit("Sum", summands) if draw(st.booleans()) else _add_chain(b, summands)
    else:
        pads = b.const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1]), np.int64)
        padded = b.emit("Pad", [b.last, pads], mode="constant")
        b.last = b.conv(padded, b.channels, 3, 1, 0, 1, True)


def _add_chain(b: Builder, summands: list[str]) -> str:
    total = summands[0]
    for other in summands[1:]:
        total = b.emit("Add", [total, other])
    return total


@st.composite
def random_model(draw):
    b = Builder(np.random.default_rng(draw(st.integers(0, 2**16))))
    for kind in draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=6)):
        add_block(b, kind, draw)
    b.last = b.emit("Identity", [b.last])
    b.nodes[-1].output[0] = "y"
    y = tensor("y", ["N", b.channels, b.size, b.size])
    return make_model(b.nodes, [tensor("x", ["N", 4, 8, 8])], [y], b.initializers)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_model())
def test_exact_pipeline_preserves_outputs(model):
    result = optimize(model)
    assert_equivalent(model, result.model, rel=1e-5)
    assert sum(op_counts(result.model).values()) <= sum(op_counts(model).values())
