"""Activations with attributes (slopes, thresholds, bounds) and the softmaxes.

The attribute-free ones (Relu, Sigmoid, Tanh, ...) are one torch function each, in
:mod:`.elementwise`'s table.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from onnxprune.retrain.kernels import Inputs, register

if TYPE_CHECKING:
    from onnxprune.retrain.interpreter import Node


@register("LeakyRelu")
def _leaky_relu(node: Node, inputs: Inputs, training: bool) -> Tensor:
    return F.leaky_relu(inputs[0], node.attr("alpha", 0.01))


@register("PRelu", learnable=(1,))
def _prelu(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x, slope = inputs
    return torch.where(x < 0, x * slope, x)


@register("Elu")
def _elu(node: Node, inputs: Inputs, training: bool) -> Tensor:
    return F.elu(inputs[0], node.attr("alpha", 1.0))


@register("Celu")
def _celu(node: Node, inputs: Inputs, training: bool) -> Tensor:
    return F.celu(inputs[0], node.attr("alpha", 1.0))


@register("Selu")
def _selu(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    alpha, gamma = node.attr("alpha", 1.67326319217681884765625), node.attr("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@register("ThresholdedRelu")
def _thresholded_relu(node: Node, inputs: Inputs, training: bool) -> Tensor:
    return F.threshold(inputs[0], node.attr("alpha", 1.0), 0.0)


@register("Shrink")
def _shrink(node: Node, inputs: Inputs, training: bool) -> Tensor:
    """x - bias above lambd, x + bias below -lambd, 0 in between; an integer input stays integer."""
    x = inputs[0]
    bias, lambd = node.attr("bias", 0.0), node.attr("lambd", 0.5)
    y = torch.where(x > lambd, x - bias, torch.where(x < -lambd, x + bias, torch.zeros_like(x)))
    return y.to(x.dtype)


@register("HardSigmoid")
def _hard_sigmoid(node: Node, inputs: Inputs, training: bool) -> Tensor:
    return torch.clamp(inputs[0] * node.attr("alpha", 0.2) + node.attr("beta", 0.5), 0.0, 1.0)


@register("HardSwish")
def _hard_swish(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    return x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)


@register("Gelu")
def _gelu(node: Node, inputs: Inputs, training: bool) -> Tensor:
    return F.gelu(inputs[0], approximate=node.attr("approximate", "none"))


@register("Clip")
def _clip(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    if node.opset < 11:
        return torch.clamp(x, node.attr("min", -math.inf), node.attr("max", math.inf))
    low, high = inputs.optional(1), inputs.optional(2)
    if low is None and high is None:
        return x
    return torch.clamp(x, low, high)


def _softmax_like(fn: Callable[..., Tensor], node: Node, inputs: Inputs, training: bool) -> Tensor:
    """Opset 13+: along ``axis`` (default -1); before: over the flattened axes from ``axis`` on."""
    x = inputs[0]
    if node.opset >= 13:
        return fn(x, dim=node.attr("axis", -1))
    axis = node.attr("axis", 1) % max(x.dim(), 1)
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    return fn(flat, dim=1).reshape(x.shape)


register("Softmax")(functools.partial(_softmax_like, torch.softmax))
register("LogSoftmax")(functools.partial(_softmax_like, torch.log_softmax))
