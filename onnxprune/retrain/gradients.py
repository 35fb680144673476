"""Per-output-channel importance from gradients, for the channel pruner's ``taylor``/``gradient``.

- ``taylor`` (filter elasticity, Li, Zhu & Liu 2024): I_j = Σ_batches |∂L/∂α_j · α_j|, where α is the
  BatchNormalization scale γ that directly follows the layer (the layer's output has no other
  reader), or else a virtual unit scale multiplied onto the layer's output channel (α = 1, so the
  score is |Σ_{n,h,w} ∂L/∂y · y| per channel: the first-order loss change of removing it).
- ``gradient`` (GDP, Wang et al. 2020): I_j = Σ_batches Σ_{filter j} |∂L/∂W|, or with ``times_weight``
  the Taylor form Σ |∂L/∂W · W|.

L is the cross-entropy on labelled data, run in eval mode (BN uses its running statistics, so
scoring changes nothing). Scores are keyed by the producing layer's weight initializer name
(Conv, ConvTranspose, Gemm, or MatMul with an initializer as second operand), one per output
channel: the same key the pruner's magnitude criteria use.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from onnxprune.core.errors import InputError
from onnxprune.retrain.evaluate import LabelledData
from onnxprune.retrain.interpreter import Node, OnnxModule
from onnxprune.retrain.train import resolve_device

log = logging.getLogger(__name__)

CRITERIA = ("taylor", "gradient")
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Layer:
    """A channel-producing node: its weight, its output tensor, and the BN scale following it."""

    node: Node
    weight: str
    output: str
    scale: str | None

    def out_channels(self, weight: Tensor) -> int:
        return self.filter_view(weight).shape[0]

    def filter_view(self, values: Tensor) -> Tensor:
        """``values`` (shaped like the weight) as [out_channels, everything else]."""
        op = self.node.op_type
        if op == "Conv" or op == "Gemm" and self.node.attr("transB", 0):
            return values.reshape(values.shape[0], -1)
        if op == "ConvTranspose":
            group = self.node.attr("group", 1)
            grouped = values.reshape(group, values.shape[0] // group, values.shape[1], -1)
            return grouped.permute(0, 2, 1, 3).reshape(group * values.shape[1], -1)
        return values.t()  # Gemm without transB, MatMul: [in, out]

    def channel_shape(self, output: Tensor) -> tuple[int, ...]:
        """Shape of a per-channel factor broadcast onto the layer's output."""
        channels = output.shape[1] if self.node.op_type in ("Conv", "ConvTranspose", "Gemm") else output.shape[-1]
        if self.node.op_type == "MatMul":
            return (1,) * (output.dim() - 1) + (channels,)
        return (1, channels) + (1,) * (output.dim() - 2)


def find_layers(module: OnnxModule) -> list[Layer]:
    """Every node of LAYER_OPS whose weight is a trainable initializer, with its following BN."""
    parameters = module.onnx_parameters()
    readers: dict[str, list[Node]] = {}
    for node in module.nodes:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)
    outputs = set(module.output_names)
    layers = []
    for node in module.nodes:
        if node.op_type not in LAYER_OPS or len(node.inputs) < 2 or node.inputs[1] not in parameters:
            continue
        if node.op_type == "MatMul" and parameters[node.inputs[1]].dim() != 2:
            continue
        following = readers.get(node.outputs[0], [])
        scale = None
        if len(following) == 1 and node.outputs[0] not in outputs and following[0].op_type == "BatchNormalization":
            bn = following[0]
            if bn.inputs[0] == node.outputs[0] and bn.inputs[1] in parameters and len(readers[bn.inputs[1]]) == 1:
                scale = bn.inputs[1]
        layers.append(Layer(node, node.inputs[1], node.outputs[0], scale))
    return layers


def _scale_output(layer: Layer, scales: dict[str, nn.Parameter], output: Tensor) -> Tensor:
    """Tensor hook: multiply ``output`` by the layer's virtual unit scale (made on first use)."""
    if layer.output not in scales:
        ones = torch.ones(layer.channel_shape(output), dtype=output.dtype, device=output.device)
        scales[layer.output] = nn.Parameter(ones)
    return output * scales[layer.output]


@contextlib.contextmanager
def unit_scales(module: OnnxModule, layers: list[Layer]) -> Iterator[dict[str, nn.Parameter]]:
    """Virtual α = 1 per output channel of the layers without a BN scale, keyed by output tensor."""
    scales: dict[str, nn.Parameter] = {}
    virtual = [layer for layer in layers if layer.scale is None]
    for layer in virtual:
        module.tensor_hooks[layer.output] = functools.partial(_scale_output, layer, scales)
    try:
        yield scales
    finally:
        for layer in virtual:
            module.tensor_hooks.pop(layer.output, None)


def _grad(tensor: Tensor, layer: Layer) -> Tensor:
    """``tensor.grad`` after backward; None means the layer's output never reaches the loss."""
    if tensor.grad is None:
        raise InputError(f"{layer.node.op_type} weight '{layer.weight}' gets no gradient from the loss "
                         "(its output does not reach the model's output)")
    return tensor.grad


def _accumulate(criterion: str, times_weight: bool, module: OnnxModule, layers: list[Layer],
                units: dict[str, nn.Parameter], totals: dict[str, Tensor]) -> None:
    """Add this batch's per-channel scores to ``totals`` (after backward)."""
    for layer in layers:
        if criterion == "gradient":
            weight = module.initializer(layer.weight)
            grad = _grad(weight, layer) * weight if times_weight else _grad(weight, layer)
            batch = layer.filter_view(grad.abs()).sum(1)
        elif layer.scale is not None:
            gamma = module.initializer(layer.scale)
            batch = (_grad(gamma, layer) * gamma).abs().reshape(-1)
        else:
            batch = _grad(units[layer.output], layer).abs().reshape(-1)
        totals[layer.weight] = totals.get(layer.weight, 0) + batch.detach().double()


def channel_scores(model: onnx.ModelProto, labelled: LabelledData, criterion: str = "taylor",
                   batch_size: int = 64, device: str = "cpu", times_weight: bool = False,
                   progress: bool = False) -> dict[str, np.ndarray]:
    """Per-output-channel scores of every Conv/ConvTranspose/Gemm/MatMul weight, over ``labelled``.

    Returns ``{weight initializer name: float64 array [out_channels]}``; higher is more important.
    """
    if criterion not in CRITERIA:
        raise InputError(f"unknown gradient criterion '{criterion}'; choose one of {', '.join(CRITERIA)}")
    target = resolve_device(device)
    module = OnnxModule(model).to(target).eval()
    layers = find_layers(module)
    if not layers:
        raise InputError("the model has no Conv/ConvTranspose/Gemm/MatMul layer with a weight initializer to score")
    totals: dict[str, Tensor] = {}
    with unit_scales(module, layers) as units:
        for x, y in tqdm(labelled.batches(batch_size), desc=criterion, disable=None if progress else True, leave=False,
                         total=-(-len(labelled) // batch_size)):
            module.zero_grad(set_to_none=True)
            for scale in units.values():
                scale.grad = None
            logits = module(torch.from_numpy(x).to(target))
            F.cross_entropy(logits, torch.from_numpy(y).to(target)).backward()
            _accumulate(criterion, times_weight, module, layers, units, totals)
    return {name: score.cpu().numpy() for name, score in totals.items()}


def taylor_scores(model: onnx.ModelProto, labelled: LabelledData, **options) -> dict[str, np.ndarray]:
    """Li, Zhu & Liu's filter elasticity |∂L/∂α · α| per output channel (see :func:`channel_scores`)."""
    return channel_scores(model, labelled, "taylor", **options)


def gradient_scores(model: onnx.ModelProto, labelled: LabelledData, **options) -> dict[str, np.ndarray]:
    """Wang et al.'s GDP: accumulated |∂L/∂W| (or |∂L/∂W · W|) per filter (see :func:`channel_scores`)."""
    return channel_scores(model, labelled, "gradient", **options)
