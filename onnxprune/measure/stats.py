"""Model counts: nodes, parameters, multiply-accumulates (MACs) per node, size on disk.

These are the numbers a user compares before and after optimizing. MACs need concrete
tensor shapes, so they are counted on a copy of the model whose inputs are fixed to
concrete shapes, whose constant subgraphs are folded and whose shapes are re-inferred;
the caller's model is never changed.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx import TensorProto
from onnx_graphsurgeon.logger import G_LOGGER

from onnxprune.core import model as model_io
from onnxprune.core.data import resolve_input_shapes
from onnxprune.core.errors import InputError
from onnxprune.core.graph import INFERENCE_IR_VERSION
from onnxprune.core.layout import WeightLayout, layout_of
from onnxprune.passes.fold_constants import may_fold

logger = logging.getLogger(__name__)

FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
)

Shapes = Mapping[str, tuple[int, ...]]

#: Initializers with more elements are only shapes to MAC counting: their values stay out of its copy.
SHAPE_VALUE_LIMIT = 1024


@dataclass
class NodeCost:
    """One node's MACs, the float weight elements among its initializer inputs, its output shape."""

    name: str
    op_type: str
    macs: int
    params: int
    output_shape: tuple[int, ...] | None


@dataclass
class ModelStats:
    """Whole-model counts; ``params`` counts float weight elements, not bytes."""

    nodes: int
    op_histogram: dict[str, int]
    params: int
    macs: int
    flops: int
    size_bytes: int | None
    per_node: list[NodeCost]

    def to_dict(self) -> dict:
        return asdict(self)


class _UnknownShape(Exception):
    """A tensor a formula needs has no fully known shape."""


def _shape(shapes: Shapes, name: str) -> tuple[int, ...]:
    if name not in shapes:
        raise _UnknownShape(name)
    return shapes[name]


def _out(node: onnx.NodeProto, shapes: Shapes) -> int:
    return math.prod(_shape(shapes, node.output[0]))


def _in(node: onnx.NodeProto, shapes: Shapes) -> int:
    return math.prod(_shape(shapes, node.input[0]))


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _layout(node: onnx.NodeProto, shapes: Shapes) -> WeightLayout:
    layout = layout_of(node.op_type, _shape(shapes, node.input[1]), _attr(node, "group", 1))
    if layout is None:
        raise _UnknownShape(node.input[1])
    return layout


def _conv(node: onnx.NodeProto, shapes: Shapes) -> int:
    """Each output element costs its filter: Cin/group * prod(k) multiply-adds."""
    return _out(node, shapes) * _layout(node, shapes).filter_size


def _conv_transpose(node: onnx.NodeProto, shapes: Shapes) -> int:
    """Each input element scatters through the weights that read it: Cout/group * prod(k)."""
    return _in(node, shapes) * _layout(node, shapes).column_size


def _gemm(node: onnx.NodeProto, shapes: Shapes) -> int:
    a = _shape(shapes, node.input[0])
    k = a[0] if _attr(node, "transA", 0) else a[1]
    return _out(node, shapes) * k


def _matmul(node: onnx.NodeProto, shapes: Shapes) -> int:
    return _out(node, shapes) * _shape(shapes, node.input[0])[-1]


def _pool(node: onnx.NodeProto, shapes: Shapes) -> int:
    return _out(node, shapes) * math.prod(_attr(node, "kernel_shape", []))


_ELEMENTWISE = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Neg", "Abs", "Sqrt", "Exp",
    "Log", "Erf", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Tanh", "Softplus", "Softsign", "Gelu", "Mish", "Clip", "Softmax",
)

#: MACs per op type. Normalizations count one multiply-add (scale, shift) per output element,
#: i.e. 2 FLOPs per element; element-wise ops count one per output element.
MAC_FORMULAS: dict[str, Callable[[onnx.NodeProto, Shapes], int]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _out,
    "InstanceNormalization": _out,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "LpPool": _pool,
    "GlobalAveragePool": _in,
    "GlobalMaxPool": _in,
    "ReduceMean": _in,
    **dict.fromkeys(_ELEMENTWISE, _out),
}


def _graph_tensors(model: onnx.ModelProto) -> dict[str, TensorProto]:
    """Initializers and Constant-node tensors of the main graph, by the name that carries them."""
    tensors = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        value = _attr(node, "value") if node.op_type == "Constant" else None
        if isinstance(value, TensorProto):
            tensors[node.output[0]] = value
    return tensors


def _float_params(model: onnx.ModelProto) -> dict[str, int]:
    tensors = _graph_tensors(model)
    params = {n: math.prod(t.dims) for n, t in tensors.items() if t.data_type in FLOAT_TYPES}
    params.update(_filled_params(model, tensors))
    return params


def _filled_params(model: onnx.ModelProto, tensors: Mapping[str, TensorProto]) -> dict[str, int]:
    """Float tensors a ConstantOfShape fills from a constant shape: onnx's "light" models store
    every weight so, and counting none of them would make a pruned, folded copy look larger."""
    filled = {}
    for node in model.graph.node:
        shape = tensors.get(node.input[0]) if node.op_type == "ConstantOfShape" and node.input else None
        value = _attr(node, "value")
        if shape is not None and (value is None or value.data_type in FLOAT_TYPES):
            filled[node.output[0]] = math.prod(onnx.numpy_helper.to_array(shape).tolist())
    return filled


def _size_on_disk(path: str | os.PathLike) -> int:
    """File size plus the external data files its tensors point to (read from the file itself,
    since a model loaded with its external data no longer records where the data came from)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file '{path}' not found")
    try:
        on_disk = onnx.load(path, load_external_data=False)
    except (OSError, DecodeError) as exc:
        raise InputError(f"cannot read model file '{path}': {exc}") from exc
    locations = {
        entry.value
        for t in _graph_tensors(on_disk).values()
        if t.data_location == TensorProto.EXTERNAL
        for entry in t.external_data
        if entry.key == "location"
    }
    size = path.stat().st_size
    for location in sorted(locations):
        data_file = path.parent / location
        if data_file.is_file():
            size += data_file.stat().st_size
        else:
            logger.warning("external data file '%s' not found; not counted in the size", data_file)
    return size


def _fix_inputs(graph: onnx.GraphProto, shapes: Shapes) -> None:
    for value in graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[value.name]:
                dims.add().dim_value = d


def _fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constant subgraphs: exporters compute e.g. Pad amounts from Constant, Reshape and
    Transpose nodes, which ``data_prop`` cannot see through, and every later shape is lost."""
    severity = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.ERROR
    try:
        graph = gs.import_onnx(model)
        if may_fold(graph):  # else gs would copy and export the graph only to find nothing to fold
            graph.fold_constants(error_ok=True)
        return gs.export_onnx(graph.cleanup())
    except Exception as exc:  # best effort: plain inference below still gives most shapes
        logger.warning("constant folding for shape inference failed: %s", exc)
        return model
    finally:
        G_LOGGER.severity = severity


def _shape_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with initializers over SHAPE_VALUE_LIMIT elements turned into typed graph inputs."""
    small = {t.name for t in model.graph.initializer if math.prod(t.dims) <= SHAPE_VALUE_LIMIT}
    work = model_io.skeleton(model, lambda tensor: tensor.name in small)
    declared = {value.name for value in work.graph.input}
    for tensor in model.graph.initializer:
        if tensor.name not in small and tensor.name not in declared:
            work.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return work


def _known_shapes(
    model: onnx.ModelProto, input_shapes: Shapes | None
) -> dict[str, tuple[int, ...]]:
    """Fully known tensor shapes, by name, inferred on a folded copy with fixed input shapes.

    The copy holds only small initializers (the ones folding and ``data_prop`` may read: shapes,
    axes); the others become typed graph inputs, so a large model is neither copied whole nor
    handed to onnx's inference over the 2 GB it cannot serialize.
    """
    work = _shape_model(model)
    if input_shapes is not None:
        _fix_inputs(work.graph, resolve_input_shapes(model, input_shapes))
    work = _fold_constants(work)
    work.ir_version = max(work.ir_version, INFERENCE_IR_VERSION)  # or IR-3 initializers are not read
    del work.graph.value_info[:]
    for value in work.graph.output:
        if value.type.HasField("tensor_type"):
            value.type.tensor_type.ClearField("shape")
    try:
        work = onnx.shape_inference.infer_shapes(work, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        logger.warning("shape inference failed, MACs will be incomplete: %s", exc)
    shapes = {t.name: tuple(t.dims) for t in (*model.graph.initializer, *work.graph.initializer)}
    for value in (*work.graph.input, *work.graph.value_info, *work.graph.output):
        if value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes


def _node_cost(
    index: int, node: onnx.NodeProto, shapes: Shapes, params: Mapping[str, int]
) -> NodeCost:
    name = node.name or f"{node.op_type}_{index}"
    formula = MAC_FORMULAS.get(node.op_type)
    macs = 0
    if formula is not None:
        try:
            macs = formula(node, shapes)
        except _UnknownShape as exc:
            logger.debug("node '%s': shape of '%s' unknown, counting 0 MACs", name, exc)
    weights = sum(params.get(i, 0) for i in set(node.input) if i)
    output_shape = shapes.get(node.output[0]) if node.output else None
    return NodeCost(name, node.op_type, int(macs), weights, output_shape)


def model_stats(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    path: str | os.PathLike | None = None,
) -> ModelStats:
    """Counts for ``model``; ``size_bytes`` is the saved size when ``path`` is given.

    ``input_shapes`` fixes the inputs for MAC counting (validated as by
    :func:`onnxprune.core.data.resolve_input_shapes`, so a dynamic batch dim left out becomes 1);
    without it the declared shapes are used and nodes whose shapes stay unknown count 0 MACs.
    ``params`` counts elements of float initializers and Constant tensors (not bytes).
    Subgraphs (If/Loop bodies) are not counted.
    """
    params = _float_params(model)
    shapes = _known_shapes(model, input_shapes)
    per_node = [_node_cost(i, n, shapes, params) for i, n in enumerate(model.graph.node)]
    macs = sum(c.macs for c in per_node)
    return ModelStats(
        nodes=len(model.graph.node),
        op_histogram=dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
        params=sum(params.values()),
        macs=macs,
        flops=2 * macs,
        size_bytes=_size_on_disk(path) if path is not None else model_io.serialized_size(model),
        per_node=per_node,
    )
