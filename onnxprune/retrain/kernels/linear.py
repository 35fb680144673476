"""Matrix products: Gemm, MatMul, Einsum. Gemm with transB and plain alpha/beta is ``F.linear``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from onnxprune.retrain.kernels import Inputs, register

if TYPE_CHECKING:
    from onnxprune.retrain.interpreter import Node


@register("Gemm", learnable=(1, 2))
def _gemm(node: Node, inputs: Inputs, training: bool) -> Tensor:
    a, b, c = inputs[0], inputs[1], inputs.optional(2)
    a = a.t() if node.attr("transA", 0) else a
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if node.attr("transB", 0) and c is not None and c.dim() <= 1 and alpha == 1.0 and beta == 1.0:
        return F.linear(a, b, c.reshape(-1).expand(b.shape[0]))
    y = a @ (b.t() if node.attr("transB", 0) else b)
    y = y * alpha if alpha != 1.0 else y
    if c is None:
        return y
    return y + (c * beta if beta != 1.0 else c)


@register("MatMul", learnable=(0, 1))
def _matmul(node: Node, inputs: Inputs, training: bool) -> Tensor:
    return torch.matmul(inputs[0], inputs[1])


@register("Einsum")
def _einsum(node: Node, inputs: Inputs, training: bool) -> Tensor:
    return torch.einsum(node.attr("equation"), *inputs)
