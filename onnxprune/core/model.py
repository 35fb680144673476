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

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.external_data_helper as external
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError, Message
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from onnxprune.core.errors import InputError, UnsupportedModelError
from onnxprune.core.graph import declare_interface
from onnxprune.core.validate import check_external_data, check_graph, check_path, declared_bytes, first_line

log = logging.getLogger(__name__)

MIN_OPSET = 7
MAX_OPSET = onnx.defs.onnx_opset_version()
PROTOBUF_LIMIT = 2**31 - 1
MIN_IR_VERSION = 4  # below it initializers must also be listed as graph inputs, which gs does not do
EXTERNAL_THRESHOLD = 1024  # bytes: tensors at least this big go to the external file
ALIGN_THRESHOLD = 2**20  # bytes: external tensors at least this big start on a PAGE boundary
PAGE = 4096
ZIP_MAGIC = b"PK\x03\x04"


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
    check_external_data(model, path)
    try:
        external.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise InputError(f"{path}: cannot read external data: {first_line(exc)}") from None
    check_file(path)
    return model


def _parse(path: Path) -> onnx.ModelProto:
    with path.open("rb") as file:
        if file.read(4) == ZIP_MAGIC:
            raise InputError(f"{path}: is a zip archive (a PyTorch checkpoint?), not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise InputError(
            f"{path}: not a readable ONNX model (truncated or corrupt?): {first_line(exc)}"
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


def check(model: onnx.ModelProto, path: str | os.PathLike = "model", size: int | None = None) -> None:
    """Run onnx's checker on ``model`` in memory; above the protobuf limit, on the file ``path``.

    In memory, onnx serializes the model whole, which a model over 2 GB cannot be: then ``path``
    must be a file that already holds ``model`` (loaded from, or staged by :func:`staged`), and the
    checker reads only its graph from there. Below the limit ``path`` only names the model in the
    message. ``size`` bounds the serialized size when the caller knows it; else it is estimated
    from the tensors (:func:`serialized_size`), without serializing.
    """
    if (serialized_size(model) if size is None else size) >= PROTOBUF_LIMIT:
        check_file(path)
        return
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise InputError(f"{path}: fails onnx's checker: {first_line(exc)}") from None


def check_file(path: str | os.PathLike, name: str | os.PathLike | None = None) -> None:
    """Run onnx's checker on a saved model, reading the file rather than a copy of it in memory.

    The checker then reads the graph only, not external data (whose files it checks exist), so
    this is the cheap check of a large model and the only one of a model over 2 GB. ``name``
    is what the message calls the model (a staged file's final name), ``path`` by default.
    """
    try:
        onnx.checker.check_model(os.fspath(path))
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise InputError(f"{name or path}: fails onnx's checker: {first_line(exc)}") from None


def serialized_size(model: onnx.ModelProto) -> int:
    """``model.ByteSize()``, without serializing the model whole.

    ``ByteSize()`` encodes the whole model to measure it (2 GB of work and memory for a 2 GB
    model). Here the model's skeleton (:func:`skeleton`) is measured, and each initializer
    holding raw data by its header and the bytes its dims declare: exact whenever the raw data
    matches the dims, as it does in every model loaded or built by onnxprune.
    """
    bare = skeleton(model)
    body = bare.graph.ByteSize()
    base = bare.ByteSize() - (_field(body) if bare.HasField("graph") else 0)
    body += sum(_field(_tensor_size(tensor)) for tensor in model.graph.initializer)
    return base + (_field(body) if model.HasField("graph") else 0)


def _tensor_size(tensor: onnx.TensorProto) -> int:
    """A tensor's serialized size; a raw one's from its header and its declared bytes."""
    declared = declared_bytes(tensor) if tensor.HasField("raw_data") else None
    if declared is None:
        return tensor.ByteSize()
    header = onnx.TensorProto()
    _copy_fields(tensor, header, skip="raw_data")
    return header.ByteSize() + _field(declared)


def _field(size: int) -> int:
    """The bytes a length-delimited field of ``size`` bytes takes, with a one-byte tag (field numbers < 16)."""
    return 1 + max(1, -(-size.bit_length() // 7)) + size


def save(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None) -> Path:
    """Write ``model`` to ``path`` atomically; external data when asked or when it must.

    With external data the tensors go to ``<file name>.data`` beside the model. Both files are
    written under temporary names in the destination folder, then renamed, data file first.
    """
    with staged(model, path, external_data):
        pass
    return Path(path)


@contextlib.contextmanager
def staged(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None) -> Iterator[Path]:
    """Write ``model`` under a temporary name in ``path``'s folder, yield that file, then rename it to ``path``.

    What the caller does inside the ``with`` checks the written file before the output exists
    (onnx's checker, onnxruntime: a model over 2 GB can only be checked from a file); if it
    raises, nothing is renamed and the staged files are removed. ``external_data`` None means
    external data exactly when the model is too large for one protobuf.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = serialized_size(model) >= PROTOBUF_LIMIT
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        file = Path(tmp) / path.name
        if external_data:
            _save_external(model, file)
        else:
            onnx.save_model(model, str(file))
        del model  # the caller may free it while the file is checked
        yield file
        data = Path(tmp) / _data_name(path)
        if data.exists():
            os.replace(data, path.parent / _data_name(path))
        os.replace(file, path)
    log.info("wrote %s", path)


def _save_external(model: onnx.ModelProto, staged: Path) -> None:
    """Save ``model`` with its raw tensors in ``<name>.data``, one tensor at a time, leaving ``model`` as it is.

    onnx's own writer converts the model it is given in place, so it needs a whole copy of the
    model (2 GB for a 2 GB model); here a skeleton of the model (everything but the
    initializers) gets one small external-data reference per initializer while each tensor's
    bytes go straight to the data file. Tensors of ALIGN_THRESHOLD bytes and more start on a
    page boundary, so onnxruntime may map them instead of copying them.
    """
    location = _data_name(staged)
    bare = skeleton(model)
    with (staged.parent / location).open("wb") as data:
        for tensor in model.graph.initializer:
            size = declared_bytes(tensor) if tensor.HasField("raw_data") else None
            if size is None or size < EXTERNAL_THRESHOLD or external.uses_external_data(tensor):
                bare.graph.initializer.append(tensor)
                continue
            if size >= ALIGN_THRESHOLD:
                data.write(b"\0" * (-data.tell() % PAGE))
            offset = data.tell()
            data.write(tensor.raw_data)
            reference = bare.graph.initializer.add()
            _copy_fields(tensor, reference, skip="raw_data")
            reference.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", offset), ("length", data.tell() - offset)):
                reference.external_data.add(key=key, value=str(value))
    onnx.save_model(bare, str(staged))


def skeleton(model: onnx.ModelProto, keep: Callable[[onnx.TensorProto], bool] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` without the initializers of its main graph, but those ``keep`` accepts.

    What needs the graph but not the weights (shape inference, counting, writing the weights
    elsewhere) works on it without the cost of copying ``model`` whole (``CopyFrom``).
    """
    bare = onnx.ModelProto()
    _copy_fields(model, bare, skip="graph")
    _copy_fields(model.graph, bare.graph, skip="initializer")
    if keep is not None:
        bare.graph.initializer.extend(tensor for tensor in model.graph.initializer if keep(tensor))
    return bare


def _copy_fields(source: Message, target: Message, skip: str) -> None:
    """Copy every set field of ``source`` but ``skip`` into ``target``.

    Fields are read one by one (``ListFields`` would read ``skip`` too: a copy of a tensor's
    raw data just to leave it out).
    """
    for field in source.DESCRIPTOR.fields:
        if field.name == skip:
            continue
        value = getattr(source, field.name)
        if field.is_repeated:
            if len(value):
                getattr(target, field.name).extend(value)
        elif not source.HasField(field.name):
            continue
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def stored_externally(model: onnx.ModelProto, path: str | os.PathLike) -> bool:
    """Whether ``model``, as loaded from ``path``, had tensors in external data.

    Loading reads them in and forgets where they were, but it leaves the model larger than its
    file: a model stored in one file serializes back to (at most) that file's size.
    """
    return serialized_size(model) > Path(path).stat().st_size


def _data_name(path: Path) -> str:
    return f"{path.name}.data"


def ensure_distinct(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Never overwrite the input model (or its external data file) with an output."""
    src, dst = Path(source).resolve(), Path(destination).resolve()
    if dst in (src, src.parent / _data_name(src)) or dst.parent / _data_name(dst) == src:
        raise InputError(f"output {destination} would overwrite the input {source}; choose another path")


def export_graph(graph: gs.Graph, hollow_above: int | None = None, rebind: bool = False) -> onnx.ModelProto:
    """``gs.export_onnx(graph, do_type_check=False)`` without its extra copies of the weights.

    graphsurgeon builds every initializer as a TensorProto, copies them into a GraphProto and
    that into the ModelProto: three copies of the weights at once. Here the graph is exported
    with data-less stand-ins for its constants, and each initializer's data is then written into
    the model, one tensor at a time: the model's own copy is the only one.
    With ``hollow_above``, constants of more elements keep no data at all (dims and type only):
    a model for counting and shape inference (:mod:`onnxprune.measure.stats`), never for running.
    With ``rebind``, each numpy constant, once written, reads its values lazily from the model
    (as after an import) and its array is freed: the graph stays usable and holds no second copy.
    """
    saved: dict[str, np.ndarray | LazyValues] = {}
    locations: dict[str, int] = {}
    constants: dict[str, gs.Constant] = {}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and _stands_in(tensor):
            saved[tensor.name] = tensor._values
            constants[tensor.name] = tensor
            if tensor.data_location is not None:
                locations[tensor.name] = tensor.data_location
    try:
        for tensor in graph.tensors().values():
            if tensor.name in saved:
                values = saved[tensor.name]
                tensor._values = LazyValues(onnx.TensorProto(
                    name=tensor.name, dims=values.shape, data_type=_data_type(values),
                ))
        model = gs.export_onnx(graph, do_type_check=False)
    finally:
        for tensor in graph.tensors().values():
            if tensor.name in saved:
                tensor._values = saved[tensor.name]
    for init in model.graph.initializer:
        values = saved.pop(init.name, None)
        if values is None or (hollow_above is not None and math.prod(init.dims) > hollow_above):
            continue
        if isinstance(values, LazyValues):
            name = init.name
            init.CopyFrom(values.tensor)
            init.name = name
            continue
        init.raw_data = np.ascontiguousarray(values).tobytes()
        if init.name in locations:
            init.data_location = locations[init.name]
        if rebind:
            del values  # the array is freed as the graph lets go of it, not one tensor later
            constants[init.name]._values = LazyValues(init)
    return model


def _stands_in(tensor: gs.Constant) -> bool:
    """Whether a constant can be exported through a data-less stand-in: plain numpy or untouched ONNX data."""
    values = tensor._values
    if isinstance(values, SparseValues):
        return False
    if isinstance(values, LazyValues):
        return True
    return (isinstance(values, np.ndarray) and tensor.data_location != onnx.TensorProto.EXTERNAL
            and tensor._export_dtype in (None, values.dtype) and values.dtype.kind in "biufc")


def _data_type(values: np.ndarray | LazyValues) -> int:
    if isinstance(values, LazyValues):
        return int(values.tensor.data_type)
    return onnx.helper.np_dtype_to_tensor_dtype(values.dtype)


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import ``model``; its inputs and outputs keep the types it declares (see declare_interface)."""
    return declare_interface(gs.import_onnx(model), model.graph)


def to_model(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` (one copy of its weights: :func:`export_graph`), keeping the metadata of the
    model it came from (IR version, producer). The graph's numpy constants then read their values
    from the returned model (``rebind``)."""
    model = export_graph(graph, rebind=True)
    model.ir_version = max(template.ir_version, MIN_IR_VERSION)
    model.producer_name = template.producer_name or "onnxprune"
    model.producer_version = template.producer_version
    model.domain = template.domain
    model.model_version = template.model_version
    model.doc_string = template.doc_string
    del model.metadata_props[:]
    model.metadata_props.extend(template.metadata_props)
    return model
