"""Thin helpers over onnx-graphsurgeon: constants, producers/consumers, rewiring, shapes.

Passes only trust shapes that ``infer_shapes`` computed: declared value_info in files from other
exporters can be wrong, so it is discarded and recomputed with onnx's shape inference.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

log = logging.getLogger(__name__)

INLINE_LIMIT = 64  # constants with more elements are given to shape inference as typed inputs
INFERENCE_IR_VERSION = 4  # below it onnx's shape inference ignores initializers that are not graph inputs


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a tensor that is an initializer or the output of a Constant node.

    A lazy initializer (one not yet read from its model) is read but stays lazy: caching it on the
    graph would keep a second copy of the weights beside the model's. Its value is then read-only.
    """
    constant = _constant_of(tensor)
    return None if constant is None else _read(constant)


def constant_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The shape of :func:`constant_value`'s value, without reading it (a lazy weight stays unread)."""
    constant = _constant_of(tensor)
    return None if constant is None else tuple(constant.shape)


def _constant_of(tensor: gs.Tensor) -> gs.Constant | None:
    """The constant holding ``tensor``'s value: itself, or the value of the Constant node writing it."""
    if isinstance(tensor, gs.Constant):
        return tensor
    node = producer(tensor)
    if node is not None and node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
        return node.attrs["value"]
    return None


def _read(constant: gs.Constant) -> np.ndarray:
    if isinstance(constant._values, LazyValues):
        return onnx.numpy_helper.to_array(constant._values.tensor)
    return np.asarray(constant.values)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(out is tensor for out in graph.outputs)


def is_private(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """True when ``tensor`` feeds exactly one node and is not a graph output: safe to rewrite."""
    return len(tensor.outputs) == 1 and not is_graph_output(graph, tensor)


def unique_name(graph: gs.Graph, base: str) -> str:
    taken = _tensor_names(graph) | {node.name for node in graph.nodes}
    if base not in taken:
        return base
    for index in itertools.count(1):
        candidate = f"{base}_{index}"
        if candidate not in taken:
            return candidate
    raise AssertionError("unreachable")


def _tensor_names(graph: gs.Graph) -> set[str]:
    """The names ``graph.tensors()`` lists, without building its map: passes name a new constant per rewrite."""
    names = {tensor.name for tensor in [*graph.inputs, *graph.outputs]}
    for node in graph.nodes:
        names.update(tensor.name for tensor in node.inputs)
        names.update(tensor.name for tensor in node.outputs)
    names.discard("")  # omitted optional inputs, which tensors() leaves out
    return names


def new_constant(graph: gs.Graph, base: str, values: np.ndarray) -> gs.Constant:
    return gs.Constant(unique_name(graph, base), np.ascontiguousarray(values))


def remove_node(graph: gs.Graph, node: gs.Node, keep_input: int = 0) -> bool:
    """Remove a single-output node whose output equals its input ``keep_input`` (``y := x``).

    Consumers of the output are rewired to the input. When the output is a graph output, the
    producer of the input is made to write the graph output instead, which is only legal when
    nothing else reads the input. Returns False (graph untouched) when neither is possible.
    """
    source, result = node.inputs[keep_input], node.outputs[0]
    if is_graph_output(graph, result):
        upstream = producer(source)
        if upstream is None or not is_private(graph, source) or source in graph.inputs:
            return False
        upstream.outputs[upstream.outputs.index(source)] = result
    else:
        for consumer in consumers(result):
            for index, tensor in enumerate(consumer.inputs):
                if tensor is result:
                    consumer.inputs[index] = source
    node.inputs.clear()
    node.outputs.clear()
    return True


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The shape of ``tensor`` when every dimension is a known integer."""
    shape = tensor.shape
    if shape is None or any(not isinstance(dim, (int, np.integer)) or dim < 0 for dim in shape):
        return None
    return tuple(int(dim) for dim in shape)


def rank(tensor: gs.Tensor) -> int | None:
    return None if tensor.shape is None else len(tensor.shape)


def infer_shapes(graph: gs.Graph) -> gs.Graph:
    """Recompute the shape and dtype of every intermediate tensor with onnx's shape inference.

    Large constants are handed to inference as typed graph inputs instead of data, so models
    over 2 GB are inferred without serializing their weights. Small ones stay initializers, which
    inference reads only from IR version 4 on, so an older model's probe is given version 4.
    """
    declared = {tensor.name: tensor.shape for tensor in graph.outputs}
    probe = _inference_model(graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as exc:
        log.debug("shape inference failed: %s", exc)
        inferred = probe
    known = {info.name: info for info in inferred.graph.value_info}
    known.update({info.name: info for info in inferred.graph.output})
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor not in graph.inputs:
            _assign(tensor, known.get(tensor.name))
            if declared.get(tensor.name) is not None:
                tensor.shape = _keep_declared(tensor.shape, declared[tensor.name])
    return graph


def _keep_declared(inferred: Sequence | None, declared: Sequence) -> list:
    """The model's declared output shape wherever inference knows less (None, or a dim it could not name)."""
    if inferred is None or len(inferred) != len(declared):
        return list(declared) if inferred is None else list(inferred)
    return [dim if isinstance(dim, int) or not isinstance(given, int | str) else given
            for dim, given in zip(inferred, declared)]


def declare_interface(graph: gs.Graph, declared: onnx.GraphProto) -> gs.Graph:
    """Give the graph's inputs and outputs the shape and dtype ``declared`` states for them.

    onnx-graphsurgeon imports ``value_info`` before the graph's inputs and outputs and keeps the
    first entry it meets for a name, so a value_info entry for an input or output that has a dtype
    but no shape (some exporters list the interface there too) hides the declared shape. Exported
    like that, the input or output has no shape and fails onnx's checker, which requires one on
    every input and output of the main graph.
    """
    tensors = graph.tensors()
    for info in [*declared.input, *declared.output]:
        tensor = tensors.get(info.name)
        if isinstance(tensor, gs.Variable) and info.type.tensor_type.HasField("shape"):
            _assign(tensor, info)
    return graph


def _inference_model(graph: gs.Graph) -> onnx.ModelProto:
    big = [t for t in graph.tensors().values() if isinstance(t, gs.Constant) and _size(t) > INLINE_LIMIT]
    saved = {t.name: t._values for t in big}  # as stored: reading .values would load every lazy weight
    outputs = [(t, t.shape) for t in graph.outputs if isinstance(t, gs.Variable)]
    try:
        for tensor in big:
            tensor.values = np.zeros(0, dtype=tensor.dtype)
        for tensor, _ in outputs:
            tensor.shape = None
        model = gs.export_onnx(graph, do_type_check=False)
    finally:
        for tensor in big:
            tensor.values = saved[tensor.name]
        for tensor, shape in outputs:
            tensor.shape = shape
    kept = [init for init in model.graph.initializer if init.name not in saved]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    del model.graph.value_info[:]
    model.ir_version = max(model.ir_version, INFERENCE_IR_VERSION)  # gs keeps an IR-3 file's version
    for tensor in big:
        model.graph.input.append(
            onnx.helper.make_tensor_value_info(tensor.name, _onnx_dtype(saved[tensor.name]), list(tensor.shape))
        )
    return model


def _size(tensor: gs.Constant) -> int:
    return int(np.prod(tensor.shape)) if tensor.shape is not None else 0


def _onnx_dtype(values: np.ndarray | LazyValues) -> int:
    if isinstance(values, LazyValues):  # an initializer not read yet: its proto knows its type
        return int(values.tensor.data_type)
    return onnx.helper.np_dtype_to_tensor_dtype(np.asarray(values).dtype)


def _assign(tensor: gs.Variable, info: onnx.ValueInfoProto | None) -> None:
    if info is None or not info.type.HasField("tensor_type"):
        tensor.shape = None
        tensor.dtype = None
        return
    tensor_type = info.type.tensor_type
    if tensor_type.elem_type:
        tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
    if not tensor_type.HasField("shape"):
        tensor.shape = None
        return
    tensor.shape = [
        dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None) for dim in tensor_type.shape.dim
    ]


class Skip(Exception):
    """A rewrite cannot be proven legal here; the message says why and the graph is untouched."""


class NotCandidate(Skip):
    """The node is not what the rewrite looks for at all (e.g. an Add of two activations): not reported."""


def set_constant(graph: gs.Graph, node: gs.Node, index: int, values: np.ndarray, base: str) -> None:
    """Give ``node`` input ``index`` the constant ``values``: in place when no other node reads it."""
    current = node.inputs[index] if index < len(node.inputs) else None
    if isinstance(current, gs.Constant) and len(current.outputs) == 1 and not is_graph_output(graph, current):
        current.values = np.ascontiguousarray(values)
        return
    replacement = new_constant(graph, base, values)
    while len(node.inputs) <= index:
        node.inputs.append(gs.Variable.empty())
    node.inputs[index] = replacement


def unshare_constants(graph: gs.Graph) -> int:
    """Give every reader of a shared float constant its own copy; returns how many copies were made.

    Exporters deduplicate equal tensors (torch shares one all-ones tensor between every BN of a
    width); pruning one reader's channels must not tie it to, or cut, the others.
    """
    copies = 0
    for tensor in [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]:
        readers = list(tensor.outputs)
        if len(readers) < 2 or not np.issubdtype(np.asarray(tensor.values).dtype, np.floating):
            continue
        for node in readers[1:]:
            index = next(i for i, t in enumerate(node.inputs) if t is tensor)
            node.inputs[index] = new_constant(graph, f"{tensor.name}_{node.name}", np.array(tensor.values))
            copies += 1
    return copies
