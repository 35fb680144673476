"""Fold a zero, constant-mode Pad into the explicit pads of the Conv or AveragePool it feeds.

Before:  x -> Pad(mode=constant, value=0, pads=P) -> Conv(pads=C) -> y
After:   x -> Conv(pads=C + P_spatial) -> y

Maths: Conv (and AveragePool with ``count_include_pad=1``) over ``x`` padded with zeros by
``P_spatial`` and then by ``C`` reads the same window values as over ``x`` padded by their sum,
and the output size ``floor((n + begin + end - effective kernel) / stride) + 1`` depends only on
the sum. Layouts: ONNX Pad ``pads`` is ``[x1_begin .. xr_begin, x1_end .. xr_end]`` over all ``r``
axes (or over ``axes`` when that input is given, opset >= 18); Conv/pool ``pads`` is the same
layout over the ``r - 2`` spatial axes only, so ``P_spatial = P[2:r] + P[r+2:]``.

Preconditions (otherwise ``Skip`` with the reason, graph untouched):

* the Pad's mode is ``constant`` (absent means constant) and its value 0 (absent means 0);
  pads, value and axes are known constants (attributes < opset 11, inputs >= 11);
* pads are non-negative (negative pads crop) and zero on the batch and channel axes;
* the Pad's output feeds only the data input of that node and is not a graph output;
* the consumer is Conv, or AveragePool with ``count_include_pad=1``, ``ceil_mode=0`` and fused
  pads below the kernel size (onnxruntime refuses larger ones; MaxPool pads with -inf, not 0),
  and its ``auto_pad`` is NOTSET.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core.graph import Skip, constant_value, is_private, rank
from onnxprune.passes.base import PassReport, rewrite_nodes

log = logging.getLogger(__name__)

NAME = "fuse_pad"


@dataclass
class Fusion:
    pad: gs.Node
    consumer: gs.Node
    pads: list[int]


def run(graph: gs.Graph) -> PassReport:
    return rewrite_nodes(graph, NAME, ("Pad",), _match, _apply)


def _match(graph: gs.Graph, pad: gs.Node) -> Fusion:
    padded = pad.outputs[0]
    if not is_private(graph, padded):
        raise Skip("its output feeds several nodes or is a graph output")
    consumer = padded.outputs[0]
    _check_consumer(consumer, padded)
    if pad.attrs.get("mode", "constant") != "constant":
        raise Skip(f"mode is {pad.attrs['mode']}, not constant")
    value = _pad_value(graph, pad)
    if value != 0:
        raise Skip(f"pads with {value}, not 0")
    full = _full_pads(graph, pad)
    axes = len(full) // 2
    if any(amount < 0 for amount in full):
        raise Skip("negative pads crop the input")
    if axes < 3 or any(full[index] for index in (0, 1, axes, axes + 1)):
        raise Skip("pads the batch or channel axis, or has no spatial axis")
    spatial = full[2:axes] + full[axes + 2 :]
    existing = list(consumer.attrs.get("pads", [0] * len(spatial)))
    if len(existing) != len(spatial):
        raise Skip(f"{consumer.op} has {len(existing) // 2} spatial axes, the Pad {len(spatial) // 2}")
    fused = [int(a + b) for a, b in zip(existing, spatial)]
    if consumer.op == "AveragePool" and any(p >= k for p, k in zip(fused, 2 * list(consumer.attrs["kernel_shape"]))):
        raise Skip(f"pads {fused} would reach the kernel size (onnxruntime refuses such pools)")
    return Fusion(pad, consumer, fused)


def _apply(graph: gs.Graph, fusion: Fusion) -> str:
    fusion.consumer.attrs["pads"] = fusion.pads
    fusion.consumer.inputs[0] = fusion.pad.inputs[0]
    return f"fused Pad '{fusion.pad.name}' into {fusion.consumer.op} '{fusion.consumer.name}' (pads {fusion.pads})"


def _check_consumer(consumer: gs.Node, padded: gs.Tensor) -> None:
    if consumer.op == "MaxPool":
        raise Skip("feeds MaxPool, which pads with -inf, not 0")
    if consumer.op not in ("Conv", "AveragePool"):
        raise Skip(f"feeds {consumer.op}, not Conv or AveragePool")
    if consumer.inputs[0] is not padded or sum(tensor is padded for tensor in consumer.inputs) != 1:
        raise Skip(f"feeds an input of {consumer.op} '{consumer.name}' other than its data")
    if consumer.attrs.get("auto_pad", "NOTSET") != "NOTSET":
        raise Skip(f"{consumer.op} '{consumer.name}' has auto_pad {consumer.attrs['auto_pad']}")
    if consumer.op == "AveragePool" and (
        consumer.attrs.get("count_include_pad", 0) != 1 or consumer.attrs.get("ceil_mode", 0) != 0
    ):
        raise Skip(f"AveragePool '{consumer.name}' needs count_include_pad=1 and ceil_mode=0")


def _pad_value(graph: gs.Graph, pad: gs.Node) -> float:
    """The padding value: attribute ``value`` before opset 11, optional input 2 from 11."""
    if graph.opset < 11:
        return float(pad.attrs.get("value", 0.0))
    if len(pad.inputs) < 3 or pad.inputs[2].is_empty():
        return 0.0
    value = constant_value(pad.inputs[2])
    if value is None or value.size != 1:
        raise Skip("constant_value is not a known scalar")
    return float(value.reshape(-1)[0])


def _full_pads(graph: gs.Graph, pad: gs.Node) -> list[int]:
    """Pads over all axes, ``[begins..., ends...]``, whatever form the model's opset uses."""
    pads = pad.attrs.get("pads") if graph.opset < 11 else constant_value(pad.inputs[1])
    if pads is None:
        raise Skip("pads are not a known constant")
    pads = [int(amount) for amount in np.asarray(pads).reshape(-1)]
    if len(pad.inputs) < 4 or pad.inputs[3].is_empty():
        return pads
    given, axes_rank = constant_value(pad.inputs[3]), rank(pad.inputs[0])
    if given is None or axes_rank is None:
        raise Skip("axes are not a known constant or the input rank is unknown")
    if np.any(given < -axes_rank) or np.any(given >= axes_rank):
        raise Skip("axes out of range")
    axes = [int(axis) % axes_rank for axis in given.reshape(-1)]
    if len(pads) != 2 * len(axes) or len(set(axes)) != len(axes):
        raise Skip("pads do not match axes")
    full = [0] * (2 * axes_rank)
    for index, axis in enumerate(axes):
        full[axis], full[axes_rank + axis] = pads[index], pads[len(axes) + index]
    return full
