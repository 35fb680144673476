"""Resize and Upsample through ``F.interpolate``, for the attribute forms it reproduces exactly.

Each supported (mode, coordinate_transformation_mode, nearest_mode) maps to one torch mode and
``align_corners``; anything else is refused by name before the model runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from onnxprune.core.errors import UnsupportedModelError
from onnxprune.retrain.kernels import Inputs, ints, register

if TYPE_CHECKING:
    from onnxprune.retrain.interpreter import Node

INTERPOLATE = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _resize_mode(node: Node) -> tuple[str, bool | None] | str:
    """torch's (mode, align_corners) for the node's attributes, or why none matches."""
    mode = node.attr("mode", "nearest")
    if node.op_type == "Upsample" or node.opset < 11:
        return ("nearest", None) if mode == "nearest" else f"{node.op_type}-{node.opset} mode={mode}"
    coord = node.attr("coordinate_transformation_mode", "half_pixel")
    if node.attr("axes") is not None or node.attr("antialias", 0) or node.attr("exclude_outside", 0):
        return "axes/antialias/exclude_outside"
    if mode == "nearest":
        nearest = node.attr("nearest_mode", "round_prefer_floor")
        if coord == "asymmetric" and nearest == "floor":
            return "nearest", None
        if coord in ("half_pixel", "pytorch_half_pixel") and nearest == "round_prefer_ceil":
            return "nearest-exact", None
        return f"mode=nearest coordinate_transformation_mode={coord} nearest_mode={nearest}"
    if mode == "linear" and coord in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        return "linear", coord == "align_corners"
    if mode == "cubic" and coord in ("half_pixel", "align_corners") and node.attr("cubic_coeff_a", -0.75) == -0.75:
        return "bicubic", coord == "align_corners"
    return f"mode={mode} coordinate_transformation_mode={coord}"


def _check_resize(node: Node) -> str | None:
    mode = _resize_mode(node)
    return mode if isinstance(mode, str) else None


def _scales_and_sizes(node: Node, inputs: Inputs) -> tuple[Tensor | None, Tensor | None]:
    """Upsample-7 has a ``scales`` attribute; Upsample-9 and Resize-10 a scales input; Resize-11+
    optional scales and sizes inputs after the roi."""
    if node.op_type == "Upsample" and node.opset < 9:
        return torch.tensor(node.attr("scales")), None
    if node.op_type == "Upsample" or node.opset < 11:
        return inputs[1], None
    return inputs.optional(2), inputs.optional(3)


@register("Resize", "Upsample", check=_check_resize)
def _resize(node: Node, inputs: Inputs, training: bool) -> Tensor:
    x = inputs[0]
    scales, sizes = _scales_and_sizes(node, inputs)
    resolved = _resize_mode(node)
    if isinstance(resolved, str):
        raise UnsupportedModelError(f"{node.op_type} '{node.name}': {resolved}")
    mode, align = resolved
    mode = INTERPOLATE[x.dim() - 2] if mode == "linear" else mode
    if sizes is not None and sizes.numel():
        return F.interpolate(x, size=ints(sizes)[2:], mode=mode, align_corners=align)
    if scales is None:
        raise ValueError(f"{node.op_type} '{node.name}': neither scales nor sizes given")
    factors = [float(s) for s in scales.reshape(-1).tolist()]
    if factors[:2] != [1.0, 1.0]:
        raise UnsupportedModelError(f"{node.op_type} '{node.name}' scales the batch or channel axis")
    return F.interpolate(x, scale_factor=factors[2:], mode=mode, align_corners=align, recompute_scale_factor=False)
