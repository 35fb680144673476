"""Element-wise ops: every axis passes through; with broadcasting, an operand's axis of the output's
size is the output's axis, one of size 1 is broadcast and takes no part.

This covers activations, residual additions, squeeze-excite gates (a Mul by a [N, C, 1, 1]
tensor), per-channel constants and Where.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxprune.channels.handlers import Handler, register
from onnxprune.channels.relations import ROLE_PARAM, Relations
from onnxprune.core.graph import constant_value

UNARY = (
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Sqrt", "Exp", "Log", "Abs", "Neg", "Reciprocal",
    "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Dropout", "Cast", "Clip", "Not",
    "ThresholdedRelu", "Shrink", "IsNaN", "IsInf",
)
BROADCASTING = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Greater",
                "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod", "BitShift")


@register(*UNARY, *BROADCASTING)
class ElementwiseHandler(Handler):
    """Output axis ``a`` is axis ``a - (r - r_i)`` of input ``i`` wherever that axis is not broadcast.

    Size-1 axes stay out: nothing can be removed from them, and linking them would only tie
    broadcast constants to the batch axis.

    Scalar side inputs (Clip's min/max, PRelu's broadcast slope) have size-1 axes and stay out.
    """

    def relate(self, rel: Relations, node: gs.Node) -> None:
        y = node.outputs[0]
        if y.shape is None:
            rel.block_all(y, f"{node.op} '{node.name}': output shape unknown")
            return
        out_rank = len(y.shape)
        for tensor in _data_inputs(node):
            shape = _shape(tensor)
            if shape is None:
                continue
            for axis, size in enumerate(shape):
                out_axis = axis + out_rank - len(shape)
                if size == 1:
                    continue
                rel.same(node, tensor, axis, y, out_axis)
                if constant_value(tensor) is not None:
                    rel.role(node, tensor, axis, ROLE_PARAM)


def _data_inputs(node: gs.Node) -> list[gs.Tensor]:
    if node.op in ("Clip", "Dropout"):
        return node.inputs[:1]
    return [tensor for tensor in node.inputs if not tensor.is_empty()]


def _shape(tensor: gs.Tensor) -> tuple | None:
    value = constant_value(tensor)
    if value is not None:
        return value.shape
    return None if tensor.shape is None else tuple(tensor.shape)
