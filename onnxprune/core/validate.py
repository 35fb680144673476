"""Structural validation of an untrusted ONNX file, before anything it only declares is read.

What :func:`onnxprune.core.model.load` refuses, one clear line each: a path that is not a regular
file or links out of its folder, operator domains onnxruntime cannot run, text that is not UTF-8,
unknown element types, impossible dimensions, tensors whose declared size their bytes cannot
hold, tensors defined twice or never, cycles, and external data that leaves the folder or runs
past its file's end. Only sizes are compared, so a declared 2^31-element tensor costs nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx.external_data_helper as external
from google.protobuf.message import Message

from onnxprune.core.errors import InputError, UnsupportedModelError

#: Operator domains onnxruntime's CPU kernels cover (onnxprune verifies with them); a model's functions add theirs.
KNOWN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc"})
ELEMENT_TYPES = frozenset(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}
#: Bits per element of the types stored packed in raw data (several elements to a byte).
PACKED_BITS = {
    getattr(onnx.TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2),
                       ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6))
    if hasattr(onnx.TensorProto, name)
}


def check_path(path: Path) -> None:
    """A regular file; a link must stay in its folder (external data is looked up beside the link)."""
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an ONNX file")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: is not a regular file")
    if path.is_symlink() and not _inside(path.resolve(), path.parent.resolve()):
        raise UnsupportedModelError(
            f"{path}: is a symbolic link to {path.resolve()}, outside its folder; pass the real path"
        )
    if path.stat().st_size == 0:
        raise InputError(f"{path}: is empty, not an ONNX model")


def check_graph(model: onnx.ModelProto, path: str | os.PathLike = "model") -> None:
    """The structural checks, with a message naming the tensor or node (onnx's checker is vaguer)."""
    garbled = _undecodable_field(model)
    if garbled:
        raise InputError(f"{path}: text field {garbled} holds bytes that are not UTF-8 (corrupt file?)")
    unsupported = _domain_problem(model) or _sparse_problem(model.graph)
    if unsupported:
        raise UnsupportedModelError(f"{path}: {unsupported}")
    tensors = external._get_all_tensors(model)
    problem = (_value_problem(model.graph) or next(filter(None, map(_tensor_problem, tensors)), None)
               or _definition_problem(model.graph) or _order_problem(model.graph))
    if problem:
        raise InputError(f"{path}: {problem}")


def _undecodable_field(message: Message) -> str | None:
    """The first string field that is not UTF-8 (upb hands those back as bytes), walking every message.

    A tensor's data is never touched (reading raw_data would copy it): only its text fields are.
    """
    if isinstance(message, onnx.TensorProto):
        if isinstance(message.name, bytes) or isinstance(message.doc_string, bytes):
            return "onnx.TensorProto.name" if isinstance(message.name, bytes) else "onnx.TensorProto.doc_string"
        return next(filter(None, map(_undecodable_field, message.external_data)), None)
    for field, value in message.ListFields():
        values = [value] if isinstance(value, (str, bytes, Message)) else value  # else a repeated field
        if field.type == field.TYPE_STRING and any(isinstance(item, bytes) for item in values):
            return field.full_name
        if field.type == field.TYPE_MESSAGE:
            found = next(filter(None, map(_undecodable_field, values)), None)
            if found:
                return found
    return None


def _sparse_problem(graph: onnx.GraphProto) -> str | None:
    if graph.sparse_initializer:
        return f"sparse initializers ('{graph.sparse_initializer[0].values.name}', ...) are not supported"
    return None


def _domain_problem(model: onnx.ModelProto) -> str | None:
    known = KNOWN_DOMAINS | {function.domain for function in model.functions}
    for node in _all_nodes(model.graph):
        if node.domain not in known:
            known_names = ", ".join(sorted(d for d in KNOWN_DOMAINS if d))
            return (f"{_describe(node)} is in the unknown operator domain '{node.domain}' "
                    f"(known: {known_names} and the model's own functions)")
    return None


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _all_nodes(subgraph)


def _value_problem(graph: onnx.GraphProto) -> str | None:
    """An unknown element type or a negative dimension; a zero one in a graph input or output."""
    for kind, values in (("input", graph.input), ("output", graph.output), ("value_info", graph.value_info)):
        for value in values:
            tensor_type = value.type.tensor_type
            if tensor_type.elem_type and tensor_type.elem_type not in ELEMENT_TYPES:  # 0: left unset, legal here
                return f"{kind} '{value.name}' has the unknown element type {tensor_type.elem_type}"
            sized = [d.dim_value for d in tensor_type.shape.dim if d.HasField("dim_value")]
            if any(d < 0 for d in sized) or (kind != "value_info" and 0 in sized):
                which = "a negative" if any(d < 0 for d in sized) else "a zero"
                return f"{kind} '{value.name}' has {which} dimension (shape {_shape(tensor_type.shape)})"
    return None


def _shape(shape: onnx.TensorShapeProto) -> str:
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else d.dim_param or "?" for d in shape.dim) + "]"


def _tensor_problem(tensor: onnx.TensorProto) -> str | None:
    """An unknown element type, an impossible or empty (above 1-D) shape, or raw data not of that shape's size.

    onnx's checker misses a surplus of raw data (numpy then fails to reshape it) and passes empty weights.
    """
    if tensor.data_type not in ELEMENT_TYPES:
        return f"tensor '{tensor.name}' has the unknown element type {tensor.data_type}"
    if any(d < 0 for d in tensor.dims):
        return f"tensor '{tensor.name}' has a negative dimension (dims {list(tensor.dims)})"
    if len(tensor.dims) > 1 and 0 in tensor.dims:
        return f"tensor '{tensor.name}' has a zero dimension (dims {list(tensor.dims)}); only 1-D ones may be empty"
    declared = declared_bytes(tensor)
    if declared is None or not tensor.HasField("raw_data") or external.uses_external_data(tensor):
        return None
    held = len(tensor.raw_data)  # upb copies the field to measure it: one tensor at a time, then freed
    if held != declared:
        return f"tensor '{tensor.name}' declares {declared} bytes (dims {list(tensor.dims)}) but holds {held}"
    return None


def _definition_problem(graph: onnx.GraphProto) -> str | None:
    """Every tensor defined once (an initializer may also be listed as an input), every read defined."""
    defined: dict[str, str] = {}
    for value in graph.input:
        if value.name in defined:
            return f"tensor '{value.name}' is defined twice (two graph inputs)"
        defined[value.name] = "an input"
    for tensor in graph.initializer:
        if defined.get(tensor.name) == "an initializer":
            return f"tensor '{tensor.name}' is defined twice (two initializers)"
        defined[tensor.name] = "an initializer"
    for node in graph.node:
        for name in filter(None, node.output):
            if name in defined:
                return f"tensor '{name}' is defined twice ({defined[name]} and the output of {_describe(node)})"
            defined[name] = f"the output of {_describe(node)}"
    for node in graph.node:
        for name in filter(None, node.input):
            if name not in defined:
                return f"{_describe(node)} reads '{name}', which no input, initializer or node defines"
    for value in graph.output:
        if value.name not in defined:
            return f"graph output '{value.name}' is not defined by any input, initializer or node"
    return None


def _order_problem(graph: onnx.GraphProto) -> str | None:
    """A cycle, or (acyclic) nodes listed out of topological order; precondition: every read is defined."""
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output if name}
    needs = [{producer[name] for name in node.input if name in producer} for node in graph.node]
    looped = _cyclic_node(needs)
    if looped is not None:
        return f"the graph has a cycle through {_describe(graph.node[looped])}"
    for index, node in enumerate(graph.node):
        later = [name for name in node.input if producer.get(name, -1) >= index]
        if later:
            return f"nodes are not in topological order: {_describe(node)} reads '{later[0]}' before it is computed"
    return None


def _cyclic_node(needs: list[set[int]]) -> int | None:
    """A node on a cycle of the dependency lists ``needs`` (Kahn's algorithm), or None if acyclic."""
    users: list[list[int]] = [[] for _ in needs]
    for user, producers in enumerate(needs):
        for index in producers:
            users[index].append(user)
    waiting = [len(producers) for producers in needs]
    ready = [index for index, count in enumerate(waiting) if count == 0]
    while ready:
        for user in users[ready.pop()]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    stuck = {index for index, count in enumerate(waiting) if count}
    if not stuck:
        return None
    node, seen = min(stuck), set()
    while node not in seen:  # every stuck node waits on a stuck producer: walking back must loop
        seen.add(node)
        node = min(needs[node] & stuck)
    return node


def _describe(node: onnx.NodeProto) -> str:
    return f"node '{node.name}' ({node.op_type})" if node.name else f"an unnamed {node.op_type} node"


def check_external_data(model: onnx.ModelProto, path: Path) -> int:
    """Refuse external data that leaves ``path``'s folder or whose extent does not fit its file.

    Only the files' sizes are read: a tensor declaring 2^31 elements over a small file is refused
    here, before onnx would read (and allocate) it. Returns the bytes the external data holds.
    """
    root, total = path.parent.resolve(), 0
    for tensor in external._get_all_tensors(model):
        if not external.uses_external_data(tensor):
            continue
        where = f"{path}: tensor '{tensor.name}'"
        try:
            info = external.ExternalDataInfo(tensor)
        except ValueError as exc:
            raise InputError(f"{where}: {first_line(exc)}") from None
        location = info.location
        if os.path.isabs(location) or not _inside(Path(os.path.normpath(root / location)), root):
            raise UnsupportedModelError(f"{where}: external data location '{location}' leaves the model's folder")
        if not _inside((root / location).resolve(), root):
            raise UnsupportedModelError(
                f"{where}: external data file '{location}' is a symbolic link that leaves the model's folder"
            )
        if not (root / location).is_file():
            raise InputError(f"{where}: external data file '{location}' is missing or not a regular file")
        total += _check_extent(tensor, info, (root / location).stat().st_size, where)
    return total


def _check_extent(tensor: onnx.TensorProto, info: external.ExternalDataInfo, size: int, where: str) -> int:
    offset = info.offset or 0
    if offset > size:
        raise InputError(f"{where}: external data offset {offset} is past the end of '{info.location}' ({size} bytes)")
    length = info.length if info.length is not None else size - offset
    if offset + length > size:
        raise InputError(f"{where}: external data (offset {offset}, length {length}) runs past the end of "
                         f"'{info.location}' ({size} bytes)")
    declared = declared_bytes(tensor)
    if declared is not None and length != declared:
        raise InputError(f"{where}: declares {declared} bytes (dims {list(tensor.dims)}) but its external data "
                         f"holds {length}")
    return length


def declared_bytes(tensor: onnx.TensorProto) -> int | None:
    """The bytes ``tensor``'s dims and type need when stored raw; None for strings or an unknown type."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    try:
        bits = PACKED_BITS.get(tensor.data_type) or 8 * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except KeyError:
        return None
    return -(-math.prod(tensor.dims) * bits // 8)


def _inside(target: Path, root: Path) -> bool:
    return target == root or root in target.parents


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run over several)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
