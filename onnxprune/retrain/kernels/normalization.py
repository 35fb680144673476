"""Ops that follow ``module.training``: the normalisations and Dropout.

BatchNormalization in train mode normalises with batch statistics and updates its running-statistics
buffers (ONNX momentum m means torch momentum 1 - m); in eval mode it uses them. Dropout is active
in train mode whatever its ``training_mode`` input says: the exported model was trained with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from onnxprune.retrain.kernels import Inputs, Result, register

if TYPE_CHECKING:
    from onnxprune.retrain.interpreter import Node


def _check_batch_norm(node: Node) -> str | None:
    if node.opset < 9 and node.attr("spatial", 1) != 1:
        return "spatial=0"
    return None


@register("BatchNormalization", learnable=(1, 2), check=_check_batch_norm)
def _batch_norm(node: Node, inputs: Inputs, training: bool) -> Result:
    x, scale, bias, mean, var = (inputs[i] for i in range(5))
    momentum = 1.0 - node.attr("momentum", 0.9)
    y = F.batch_norm(x, mean, var, scale, bias, training=training, momentum=momentum, eps=node.attr("epsilon", 1e-5))
    return (y, mean, var)[: len(node.outputs)]


def _single_output(node: Node) -> str | None:
    return "optional outputs" if sum(1 for name in node.outputs if name) > 1 else None


@register("LayerNormalization", learnable=(1, 2), check=_single_output)
def _layer_norm(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x, scale, bias = inputs[0], inputs[1], inputs.optional(2)
    axis = node.attr("axis", -1) % x.dim()
    shape = tuple(x.shape[axis:])
    bias = None if bias is None else bias.expand(shape)
    return F.layer_norm(x, shape, scale.expand(shape), bias, node.attr("epsilon", 1e-5))


@register("InstanceNormalization", learnable=(1, 2))
def _instance_norm(node: Node, inputs: Inputs, training: bool) -> Tensor:
    return F.instance_norm(inputs[0], weight=inputs[1], bias=inputs[2], eps=node.attr("epsilon", 1e-5))


@register("Dropout")
def _dropout(node: Node, inputs: Inputs, training: bool) -> Result:
    x, ratio_input = inputs[0], inputs.optional(1)
    ratio = node.attr("ratio", 0.5) if node.opset < 12 else 0.5 if ratio_input is None else float(ratio_input.item())
    y = F.dropout(x, ratio, training=training) if ratio > 0 else x
    if len(node.outputs) < 2 or not node.outputs[1]:
        return y
    return y, (y != 0) if training else torch.ones_like(x, dtype=torch.bool)
