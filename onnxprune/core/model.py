"""Load and save ONNX models safely: validated input, untouched originals, atomic outputs.

Loading refuses what cannot be trusted (corrupt files, unsupported opsets or domains, external
data that points outside the model's folder or past its file's end, links out of the folder,
tensors defined twice or never, cycles, impossible dimensions) with one clear line naming the
file and the problem, before it reads or allocates anything a hostile file only declares.

Saving writes to a temporary file in the destination folder and renames it, so a crash never
leaves a half-written model behind, and switches to external data when the model is too large
for a single protobuf.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx.external_data_helper as external
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError, Message

from onnxprune.core.errors import InputError, UnsupportedModelError

log = logging.getLogger(__name__)

MIN_OPSET = 7
MAX_OPSET = onnx.defs.onnx_opset_version()
PROTOBUF_LIMIT = 2**31 - 1
MIN_IR_VERSION = 4  # below it initializers must also be listed as graph inputs, which gs does not do
EXTERNAL_THRESHOLD = 1024  # bytes: tensors at least this big go to the external file
SIZE_MARGIN = 2**20  # bytes a loaded model may outgrow its files by (the headers of the tensors' data)
ZIP_MAGIC = b"PK\x03\x04"
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


def load(path: str | os.PathLike) -> onnx.ModelProto:
    """Read, validate and return a model with its external data loaded.

    The file and the graph's structure are checked before any external data is read, and each
    tensor's declared size against the bytes that back it (an external one's against its file's
    extent), so nothing is allocated for a size that is only declared.
    Raises InputError for a missing, truncated, corrupt or inconsistent file (one that fails
    onnx's checker included); UnsupportedModelError for an opset outside [MIN_OPSET, MAX_OPSET],
    an unknown operator domain, or a path that leaves the model's folder.
    """
    path = Path(path)
    check_path(path)
    model = _parse(path)
    check_opset(model, path)
    check_graph(model, path)
    external_bytes = check_external_data(model, path)
    try:
        external.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise InputError(f"{path}: cannot read external data: {_first_line(exc)}") from None
    check(model, path, path.stat().st_size + external_bytes + SIZE_MARGIN)
    return model


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


def _parse(path: Path) -> onnx.ModelProto:
    with path.open("rb") as file:
        if file.read(4) == ZIP_MAGIC:
            raise InputError(f"{path}: is a zip archive (a PyTorch checkpoint?), not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise InputError(
            f"{path}: not a readable ONNX model (truncated or corrupt?): {_first_line(exc)}"
        ) from None
    if not model.graph.node and not model.graph.output:
        raise InputError(f"{path}: not an ONNX model (no graph found; truncated or not ONNX?)")
    return model


def opset(model: onnx.ModelProto) -> int:
    """The default-domain opset version of a model."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise UnsupportedModelError("model imports no default-domain (ai.onnx) opset")


def check_opset(model: onnx.ModelProto, path: str | os.PathLike = "model") -> None:
    try:
        version = opset(model)
    except UnsupportedModelError as error:
        raise UnsupportedModelError(f"{path}: {error}") from None
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise UnsupportedModelError(
            f"{path}: opset {version} is not supported (onnxprune handles {MIN_OPSET}..{MAX_OPSET})"
        )


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
            raise InputError(f"{where}: {_first_line(exc)}") from None
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


def check(model: onnx.ModelProto, path: str | os.PathLike = "model", size: int | None = None) -> None:
    """Run onnx's checker; large models are checked without serializing them whole.

    ``size`` bounds the serialized size when the caller knows it: measuring it is a serialization.
    """
    try:
        if (model.ByteSize() if size is None else size) < PROTOBUF_LIMIT:
            onnx.checker.check_model(model)
        else:
            onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise InputError(f"{path}: fails onnx's checker: {_first_line(exc)}") from None


def save(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None) -> Path:
    """Write ``model`` to ``path`` atomically; external data when asked or when it must.

    With external data the tensors go to ``<file name>.data`` beside the model. Both files are
    written under temporary names in the destination folder, then renamed, data file first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = model.ByteSize() >= PROTOBUF_LIMIT
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        staged = Path(tmp) / path.name
        if external_data:
            _save_external(model, staged)
            os.replace(Path(tmp) / _data_name(path), path.parent / _data_name(path))
        else:
            onnx.save_model(model, str(staged))
        os.replace(staged, path)
    log.info("wrote %s", path)
    return path


def _save_external(model: onnx.ModelProto, staged: Path) -> None:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(
        copy,
        str(staged),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=_data_name(staged),
        size_threshold=EXTERNAL_THRESHOLD,
    )


def _data_name(path: Path) -> str:
    return f"{path.name}.data"


def ensure_distinct(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Never overwrite the input model (or its external data file) with an output."""
    src, dst = Path(source).resolve(), Path(destination).resolve()
    if dst in (src, src.parent / _data_name(src)) or dst.parent / _data_name(dst) == src:
        raise InputError(f"output {destination} would overwrite the input {source}; choose another path")


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(model)


def to_model(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph``, keeping the metadata of the model it came from (IR version, producer)."""
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = max(template.ir_version, MIN_IR_VERSION)
    model.producer_name = template.producer_name or "onnxprune"
    model.producer_version = template.producer_version
    model.domain = template.domain
    model.model_version = template.model_version
    model.doc_string = template.doc_string
    del model.metadata_props[:]
    model.metadata_props.extend(template.metadata_props)
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
