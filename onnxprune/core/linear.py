"""A uniform view of the linear operators that folds and merges rewrite.

Conv, ConvTranspose, Gemm and MatMul-with-constant-weight are all ``y = W x + b`` along a channel
axis. ``LinearOp`` exposes their weight in one canonical layout, ``[out, in / groups, *kernel]``,
in float64, so per-channel algebra is written once:

    scale_output(s):  W'[o] = s[o] W[o],            b' = s b
    shift_output(t):  b' = b + t
    scale_input(s):   W'[o, j] = W[o, j] s[c(o, j)]
    shift_input(t):   b'[o] = b[o] + sum_{j,k} W[o, j, k] t[c(o, j)]   (exact only without padding)

where ``c(o, j)`` is the input channel that weight column ``j`` of output ``o`` reads (groups).
``commit`` writes the result back in the node's own layout and dtype; ``onnxprune.core.layout``
converts between the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core.graph import Skip, constant_value, rank, set_constant
from onnxprune.core.layout import WeightLayout, layout_of, layout_of_filters

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class LinearOp:
    node: gs.Node
    weight: np.ndarray
    bias: np.ndarray
    groups: int
    dtype: np.dtype

    @property
    def kind(self) -> str:
        return self.node.op

    @property
    def layout(self) -> WeightLayout:
        """The layout of ``weight``: the canonical one, whatever the node's own."""
        return WeightLayout(tuple(self.weight.shape), out_axis=0, in_axis=1, groups=self.groups)

    @property
    def out_channels(self) -> int:
        return self.layout.out_channels

    @property
    def in_channels(self) -> int:
        return self.layout.in_channels

    @property
    def channel_axis(self) -> int:
        """Axis of the input and output tensors that holds channels (-1: the last one)."""
        return 1 if self.kind in ("Conv", "ConvTranspose") else -1

    def scale_output(self, scale: np.ndarray) -> None:
        factor = _per_out(scale, self.weight.ndim)
        if self.weight.flags.writeable and np.result_type(self.weight, factor) == self.weight.dtype:
            self.weight *= factor  # the op owns its float64 copy (as_linear makes one): no second one of that size
        else:
            self.weight = self.weight * factor
        self.bias = self.bias * scale

    def shift_output(self, shift: np.ndarray) -> None:
        self.bias = self.bias + shift

    def scale_input(self, scale: np.ndarray) -> None:
        factors = np.asarray(scale, dtype=np.float64)[self.layout.filter_inputs()]
        self.weight = self.weight * factors.reshape(factors.shape + (1,) * (self.weight.ndim - 2))

    def shift_input(self, shift: np.ndarray) -> None:
        if not self.input_shift_is_exact():
            raise Skip(f"{self.kind} '{self.node.name}' pads its input, so an input shift would change the border")
        values = np.asarray(shift, dtype=np.float64)[self.layout.filter_inputs()]
        summed = self.weight.reshape(self.weight.shape[0], self.weight.shape[1], -1).sum(axis=2)
        self.bias = self.bias + (summed * values).sum(axis=1)

    def input_shift_is_exact(self) -> bool:
        """A constant added to the input reaches every output position unchanged only without padding."""
        if self.kind in ("Gemm", "MatMul"):
            return True
        if self.kind == "ConvTranspose":
            return False
        auto_pad = _text(self.node.attrs.get("auto_pad", "NOTSET"))
        return auto_pad in ("NOTSET", "VALID") and not any(self.node.attrs.get("pads", []))

    def check_finite(self) -> None:
        """Refuse a fold whose parameters overflow the op's dtype (e.g. float16)."""
        if not all(_fits(values, self.dtype) for values in (self.weight, self.bias)):
            raise Skip(f"folded parameters overflow {self.dtype}")

    def commit(self, graph: gs.Graph) -> None:
        """Write weight and bias back into the node, in its own layout and dtype."""
        writer = _WRITERS[self.kind]
        writer(graph, self)


def _fits(values: np.ndarray, dtype: np.dtype) -> bool:
    """Whether ``values`` stay finite cast to ``dtype``; a cast copy only when the range check cannot tell.

    The weights of a large model are hundreds of megabytes: their min and max decide almost always.
    """
    try:
        limit = float(np.finfo(dtype).max)
    except ValueError:
        limit = 0.0  # a dtype numpy has no finfo for: always the exact check
    if values.size == 0 or (-limit <= values.min() and values.max() <= limit):  # NaN compares False
        return True
    with np.errstate(over="ignore"):
        return bool(np.isfinite(values.astype(dtype)).all())


def as_linear(node: gs.Node) -> LinearOp:
    """The linear view of ``node``; raises Skip when it is not a linear op with constant parameters."""
    reader = _READERS.get(node.op)
    if reader is None:
        raise Skip(f"{node.op} '{node.name}' is not a linear operator")
    if len(node.inputs) < 2:
        raise Skip(f"{node.op} '{node.name}' has no weight input")
    weight = constant_value(node.inputs[1])
    if weight is None:
        raise Skip(f"{node.op} '{node.name}' has a non-constant weight")
    if not np.issubdtype(weight.dtype, np.floating):
        raise Skip(f"{node.op} '{node.name}' has a non-float weight ({weight.dtype})")
    return reader(node, weight)


def batchnorm_affine(bn: gs.Node) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(s, t)`` with ``BN(y) = s y + t``, or Skip when BN is not in inference form."""
    if int(bn.attrs.get("spatial", 1)) != 1:
        raise Skip("spatial=0 normalises each activation, not each channel")
    if int(bn.attrs.get("training_mode", 0)):
        raise Skip("training_mode=1 normalises with batch statistics")
    if len(bn.outputs) != 1:
        raise Skip("it declares running-statistics outputs, so it normalises with batch statistics")
    params = [constant_value(tensor) for tensor in bn.inputs[1:5]]
    if len(params) != 4 or any(value is None for value in params):
        raise Skip("scale, bias, mean and variance are not all constant")
    gamma, beta, mean, var = (np.asarray(value, dtype=np.float64) for value in params)
    if gamma.ndim != 1 or any(value.shape != gamma.shape for value in (beta, mean, var)):
        raise Skip("parameters are not 1-D vectors of one length")
    denominator = var + float(bn.attrs.get("epsilon", 1e-5))
    if not np.all(denominator > 0):
        raise Skip("variance + epsilon is not positive")
    scale = gamma / np.sqrt(denominator)
    return scale, beta - mean * scale


def _read_conv(node: gs.Node, weight: np.ndarray) -> LinearOp:
    groups = int(node.attrs.get("group", 1))
    layout = layout_of(node.op, weight.shape, groups)
    if layout is None:
        raise Skip(f"{node.op} '{node.name}' weight of shape {weight.shape} does not split into {groups} groups")
    canonical = layout.filters(weight.astype(np.float64))
    bias = _bias(node, 2, canonical.shape[0])
    return LinearOp(node, canonical, bias, groups, weight.dtype)


def _read_gemm(node: gs.Node, weight: np.ndarray) -> LinearOp:
    if node.attrs.get("transA", 0):
        raise Skip(f"Gemm '{node.name}' transposes its input (transA=1)")
    layout = layout_of("Gemm", weight.shape, trans_b=bool(node.attrs.get("transB", 0)))
    if layout is None:
        raise Skip(f"Gemm '{node.name}' weight is not 2-D")
    canonical = layout.filters(weight.astype(np.float64) * float(node.attrs.get("alpha", 1.0)))
    bias = _bias(node, 2, canonical.shape[0]) * float(node.attrs.get("beta", 1.0))
    return LinearOp(node, canonical, bias, 1, weight.dtype)


def _read_matmul(node: gs.Node, weight: np.ndarray) -> LinearOp:
    layout = layout_of("MatMul", weight.shape)
    if layout is None or weight.ndim != 2:
        raise Skip(f"MatMul '{node.name}' weight is not a 2-D constant")
    data_rank = rank(node.inputs[0])
    if data_rank is None or data_rank < 2:
        raise Skip(f"MatMul '{node.name}' input rank is unknown or below 2")
    canonical = layout.filters(weight.astype(np.float64))
    return LinearOp(node, canonical, np.zeros(canonical.shape[0]), 1, weight.dtype)


def _bias(node: gs.Node, index: int, channels: int) -> np.ndarray:
    if len(node.inputs) <= index or node.inputs[index].name == "":
        return np.zeros(channels)
    value = constant_value(node.inputs[index])
    if value is None:
        raise Skip(f"{node.op} '{node.name}' has a non-constant bias")
    if value.size not in (1, channels) or (value.ndim == 2 and value.shape[0] != 1) or value.ndim > 2:
        raise Skip(f"{node.op} '{node.name}' bias of shape {value.shape} is not per output channel")
    return np.broadcast_to(value.astype(np.float64).reshape(-1), (channels,)).copy()


def _in_node_layout(op: LinearOp, trans_b: bool = False) -> np.ndarray:
    """``op.weight`` in the layout of a ``op.kind`` weight."""
    layout = layout_of_filters(op.kind, op.weight.shape, op.groups, trans_b)
    assert layout is not None, f"{op.kind} has no weight of canonical shape {op.weight.shape}"
    return layout.from_filters(op.weight)


def _write_conv(graph: gs.Graph, op: LinearOp) -> None:
    weight = _in_node_layout(op)
    set_constant(graph, op.node, 1, weight.astype(op.dtype), f"{op.node.name}.weight")
    set_constant(graph, op.node, 2, op.bias.astype(op.dtype), f"{op.node.name}.bias")


def _write_gemm(graph: gs.Graph, op: LinearOp) -> None:
    weight = _in_node_layout(op, trans_b=bool(op.node.attrs.get("transB", 0)))
    op.node.attrs["alpha"] = 1.0
    op.node.attrs["beta"] = 1.0
    set_constant(graph, op.node, 1, weight.astype(op.dtype), f"{op.node.name}.weight")
    set_constant(graph, op.node, 2, op.bias.astype(op.dtype), f"{op.node.name}.bias")


def _write_matmul(graph: gs.Graph, op: LinearOp) -> None:
    if np.any(op.bias):
        if rank(op.node.inputs[0]) != 2:
            raise Skip(f"MatMul '{op.node.name}' on a rank-{rank(op.node.inputs[0])} input cannot take a bias")
        op.node.op = "Gemm"
        op.node.attrs.update(transB=1)
        _write_gemm(graph, op)
        return
    set_constant(graph, op.node, 1, _in_node_layout(op).astype(op.dtype), f"{op.node.name}.weight")


def _per_out(values: np.ndarray, ndim: int) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape((-1,) + (1,) * (ndim - 1))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_READERS = {"Conv": _read_conv, "ConvTranspose": _read_conv, "Gemm": _read_gemm, "MatMul": _read_matmul}
_WRITERS = {"Conv": _write_conv, "ConvTranspose": _write_conv, "Gemm": _write_gemm, "MatMul": _write_matmul}
