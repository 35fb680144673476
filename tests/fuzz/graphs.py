"""The hypothesis strategy of valid random CNN graphs: a trunk of op-family builders, maybe a head.

``graphs()`` draws an opset in 11..21, an input of at most 8 channels and 16x16 pixels (batch 1,
or a symbolic batch), then up to ``max_layers`` builders, each chosen among those that fit the
current feature map and the opset. The model is checked (``full_check``) before it is returned,
so every example is a graph onnxruntime accepts; the output shapes are declared, which makes the
checker's shape inference confirm the builders' geometry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from hypothesis import strategies as st

from tests.fuzz import blocks, layers, layout
from tests.fuzz.builder import Feature, GraphBuilder, Vector
from tests.fuzz.geometry import MAX_SIZE
from tests.fuzz.heads import head

OPSETS = (11, 21)


@dataclass(frozen=True)
class Family:
    build: Callable[..., Feature]
    fits: Callable[[GraphBuilder, Feature], bool] | None = None


# Simplest first: hypothesis shrinks a choice towards the front of the list.
FAMILIES: dict[str, Family] = {
    "activation": Family(layers.activation),
    "conv": Family(layers.conv),
    "conv_pair": Family(layers.conv_pair),
    "batchnorm": Family(layers.batchnorm),
    "affine": Family(layers.affine),
    "pool": Family(layers.pool, layers.fits_pool),
    "pad": Family(layers.pad, layers.fits_pad),
    "resize": Family(layers.resize, layers.fits_resize),
    "slice": Family(layout.slice_),
    "shuffle": Family(layout.shuffle, layout.fits_shuffle),
    "reshape": Family(layout.reshape_roundtrip),
    "channels_last": Family(layout.channels_last),
    "swap_hw": Family(layout.swap_hw),
    "branches": Family(blocks.branches),
    "gate": Family(blocks.gate),
    "concat": Family(blocks.concat),
    "split": Family(blocks.split, blocks.fits_split),
}


def fitting(b: GraphBuilder, x: Feature) -> list[str]:
    return [name for name, family in FAMILIES.items() if family.fits is None or family.fits(b, x)]


@st.composite
def graphs(draw, max_layers: int = 6) -> onnx.ModelProto:
    """A valid random CNN: opset, input size, trunk of builders, optional head and extra output."""
    b = GraphBuilder(draw(st.integers(*OPSETS)), np.random.default_rng(draw(st.integers(0, 2**32 - 1))),
                     dynamic_batch=draw(st.booleans()), constant_nodes=draw(st.booleans()))
    source = Feature("x", draw(st.integers(1, 8)), draw(st.integers(4, 16)), draw(st.integers(4, 16)))
    trunk = [source]
    for _ in range(draw(st.integers(1, max_layers))):
        name = draw(st.sampled_from(fitting(b, trunk[-1])))
        trunk.append(FAMILIES[name].build(draw, b, trunk[-1]))
        assert max(trunk[-1].c, trunk[-1].h, trunk[-1].w) <= MAX_SIZE, f"{name} made {trunk[-1]}"
    with_head = draw(st.integers(0, 2)) > 0
    outputs: list[Feature | Vector] = [head(draw, b, trunk[-1]) if with_head else trunk[-1]]
    inner = [t for t in trunk[1:] if t.name not in {o.name for o in outputs}]
    if inner and draw(st.booleans()) and draw(st.booleans()):
        outputs.append(draw(st.sampled_from(inner)))
    return b.model(source, outputs)
