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
import os
import tempfile
from pathlib import Path

import onnx
import onnx.external_data_helper as external
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from onnxprune.core.errors import InputError, UnsupportedModelError
from onnxprune.core.validate import check_external_data, check_graph, check_path, first_line

log = logging.getLogger(__name__)

MIN_OPSET = 7
MAX_OPSET = onnx.defs.onnx_opset_version()
PROTOBUF_LIMIT = 2**31 - 1
MIN_IR_VERSION = 4  # below it initializers must also be listed as graph inputs, which gs does not do
EXTERNAL_THRESHOLD = 1024  # bytes: tensors at least this big go to the external file
SIZE_MARGIN = 2**20  # bytes a loaded model may outgrow its files by (the headers of the tensors' data)
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
    external_bytes = check_external_data(model, path)
    try:
        external.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise InputError(f"{path}: cannot read external data: {first_line(exc)}") from None
    check(model, path, path.stat().st_size + external_bytes + SIZE_MARGIN)
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
    """Run onnx's checker; large models are checked without serializing them whole.

    ``size`` bounds the serialized size when the caller knows it: measuring it is a serialization.
    """
    try:
        if (model.ByteSize() if size is None else size) < PROTOBUF_LIMIT:
            onnx.checker.check_model(model)
        else:
            onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise InputError(f"{path}: fails onnx's checker: {first_line(exc)}") from None


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
