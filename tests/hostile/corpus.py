"""A corpus of malformed models: one builder per way a file can be hostile.

Each builder writes its case into ``folder`` (the model usually in ``folder/model/``, anything it
points at outside that in ``folder/elsewhere/``) and returns the path to hand to a command. All
files are tiny; the "huge" cases only *declare* 2^31 elements. Run as a script to write every case
for manual runs: ``python -m tests.hostile.corpus OUTDIR``.
"""

from __future__ import annotations

import os
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HUGE = 2**31  # elements: 8 GiB of float32 if anyone tried to allocate it
EXTERNAL = "stem.weight"  # the tensor the external-data cases move out of the protobuf


def valid_model() -> onnx.ModelProto:
    """A stem conv and one residual unit, then a classifier: every command accepts it."""
    rng = np.random.default_rng(0)

    def weight(*shape: int) -> np.ndarray:
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)

    inits = {EXTERNAL: weight(8, 3, 3, 3), "conv1.weight": weight(8, 8, 3, 3), "conv2.weight": weight(8, 8, 3, 3),
             "fc.weight": weight(10, 8), "fc.bias": weight(10)}
    nodes = []
    for prefix, source, relu in (("stem", "x", "h0"), ("conv1", "h0", "r1"), ("conv2", "r1", None)):
        inits.update({f"{prefix}.bn.{k}": v for k, v in _batchnorm(rng).items()})
        nodes += _conv_bn(prefix, source)
        if relu:
            nodes.append(helper.make_node("Relu", [f"{prefix}.b"], [relu], f"{prefix}.relu"))
    nodes += [
        helper.make_node("Add", ["conv2.b", "h0"], ["sum"], "add"),
        helper.make_node("Relu", ["sum"], ["h1"], "relu"),
        helper.make_node("GlobalAveragePool", ["h1"], ["pooled"], "pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], "flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["y"], "fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "hostile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _conv_bn(prefix: str, source: str) -> list[onnx.NodeProto]:
    bn_inputs = [f"{prefix}.c", *(f"{prefix}.bn.{k}" for k in ("scale", "bias", "mean", "var"))]
    return [helper.make_node("Conv", [source, f"{prefix}.weight"], [f"{prefix}.c"], f"{prefix}.conv", pads=[1] * 4),
            helper.make_node("BatchNormalization", bn_inputs, [f"{prefix}.b"], f"{prefix}.bn")]


def _batchnorm(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"scale": rng.uniform(0.5, 1.5, 8).astype(np.float32), "bias": rng.uniform(-0.1, 0.1, 8).astype(np.float32),
            "mean": rng.uniform(-0.1, 0.1, 8).astype(np.float32), "var": rng.uniform(0.5, 1.5, 8).astype(np.float32)}


def valid_data(path: Path) -> Path:
    """A labelled .npz the valid model accepts (evaluate, finetune, sparse-train)."""
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((8, 3, 8, 8), dtype=np.float32), y_train=rng.integers(0, 10, 8),
             x_test=rng.random((4, 3, 8, 8), dtype=np.float32), y_test=rng.integers(0, 10, 4))
    return path


def _save(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    """Serialize without onnx's checks: the point is to write what a checker would refuse."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def _write(folder: Path, data: bytes) -> Path:
    path = folder / "model" / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


def _initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _external(folder: Path, location: str, data_file: Path | None = None, **entries: int) -> Path:
    """The valid model with EXTERNAL's bytes in ``data_file`` (default: the location in the model folder)."""
    model = valid_model()
    tensor = _initializer(model, EXTERNAL)
    data_file = data_file or folder / "model" / location
    data_file.parent.mkdir(parents=True, exist_ok=True)
    data_file.write_bytes(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, **entries}.items():
        tensor.external_data.add(key=key, value=str(value))
    return _save(model, folder / "model")


# --- not an ONNX file at all -------------------------------------------------------------------

def truncated(folder: Path) -> Path:
    path = _save(valid_model(), folder / "model")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def random_bytes(folder: Path) -> Path:
    return _write(folder, np.random.default_rng(1).bytes(4096))


def zip_file(folder: Path) -> Path:
    """A zip (a PyTorch .pt checkpoint is one) named like a model."""
    inner = _save(valid_model(), folder / "elsewhere")
    path = folder / "model" / "model.onnx"
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(inner, "model.onnx")
    return path


def directory(folder: Path) -> Path:
    path = folder / "model" / "model.onnx"
    _save(valid_model(), path)
    return path


def empty_file(folder: Path) -> Path:
    return _write(folder, b"")


# --- external data pointing where it must not, or past its file's end ---------------------------

def external_parent(folder: Path) -> Path:
    return _external(folder, "../elsewhere/weights.bin", folder / "elsewhere" / "weights.bin")


def external_absolute(folder: Path) -> Path:
    target = (folder / "elsewhere" / "weights.bin").resolve()
    return _external(folder, str(target), target)


def external_symlink(folder: Path) -> Path:
    """The data file sits in the model's folder but is a link to a file outside it."""
    target = folder / "elsewhere" / "weights.bin"
    path = _external(folder, "weights.bin", target)
    (folder / "model" / "weights.bin").symlink_to(Path("..") / "elsewhere" / "weights.bin")
    return path


def model_symlink(folder: Path) -> Path:
    """The model in the folder is a link to a model (with its external data) outside it."""
    real = _external(folder / "elsewhere", "weights.bin")
    link = folder / "model" / "model.onnx"
    link.parent.mkdir(parents=True)
    link.symlink_to(real.resolve())
    return link


def external_offset_past_end(folder: Path) -> Path:
    return _external(folder, "weights.bin", offset=1 << 20)


def external_length_past_end(folder: Path) -> Path:
    return _external(folder, "weights.bin", offset=0, length=1 << 20)


def external_huge(folder: Path) -> Path:
    """An external tensor declaring 2^31 float32 elements (and that length) over a 864-byte file."""
    path = _external(folder, "weights.bin", offset=0, length=4 * HUGE)
    model = onnx.load(str(path), load_external_data=False)
    tensor = _initializer(model, EXTERNAL)
    tensor.dims[:] = [HUGE // 64, 8, 2, 4]
    return _save(model, path.parent)


# --- graph structure --------------------------------------------------------------------------

def duplicate_initializer(folder: Path) -> Path:
    model = valid_model()
    twin = model.graph.initializer.add()
    twin.CopyFrom(_initializer(model, "fc.bias"))
    twin.raw_data = np.zeros(10, np.float32).tobytes()
    return _save(model, folder / "model")


def output_shadows_initializer(folder: Path) -> Path:
    model = valid_model()
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    model.graph.node.append(helper.make_node("Identity", [relu.output[0]], ["fc.bias"], "shadow"))
    return _save(model, folder / "model")


def undefined_input(folder: Path) -> Path:
    model = valid_model()
    next(n for n in model.graph.node if n.op_type == "Add").input[1] = "ghost"
    return _save(model, folder / "model")


def cycle(folder: Path) -> Path:
    """conv1 reads the output of the residual Add that (through conv2) depends on conv1."""
    model = valid_model()
    next(n for n in model.graph.node if n.output[0] == "conv1.c").input[0] = "h1"
    return _save(model, folder / "model")


def opset_too_new(folder: Path) -> Path:
    model = valid_model()
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 1
    return _save(model, folder / "model")


def unknown_domain(folder: Path) -> Path:
    model = valid_model()
    model.opset_import.append(helper.make_opsetid("com.example.hostile", 1))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "Mystery", "com.example.hostile"
    return _save(model, folder / "model")


# --- dimensions ---------------------------------------------------------------------------------

def _input_dim(folder: Path, value: int) -> Path:
    model = valid_model()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = value
    return _save(model, folder / "model")


def input_zero_dim(folder: Path) -> Path:
    return _input_dim(folder, 0)


def input_negative_dim(folder: Path) -> Path:
    return _input_dim(folder, -3)


def initializer_zero_dim(folder: Path) -> Path:
    model = valid_model()
    tensor = _initializer(model, "conv1.weight")
    tensor.dims[0] = 0
    tensor.raw_data = b""
    return _save(model, folder / "model")


def initializer_negative_dim(folder: Path) -> Path:
    model = valid_model()
    _initializer(model, "conv1.weight").dims[0] = -8
    return _save(model, folder / "model")


def initializer_huge(folder: Path) -> Path:
    """conv1's weight declares 2^31 elements and holds 4 bytes."""
    model = valid_model()
    tensor = _initializer(model, "conv1.weight")
    tensor.dims[:] = [HUGE // 64, 8, 2, 4]
    tensor.raw_data = b"\0" * 4
    return _save(model, folder / "model")


# --- found by flipping bytes of the valid model's structure (not its weights) --------------------

def fifo(folder: Path) -> Path:
    """A named pipe: opening it to read would wait for a writer forever."""
    path = folder / "model" / "model.onnx"
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    return path


def invalid_utf8_name(folder: Path) -> Path:
    data = valid_model().SerializeToString()
    at = data.index(b"stem.conv")
    return _write(folder, data[:at] + b"\x94" + data[at + 1:])


def unknown_element_type(folder: Path) -> Path:
    model = valid_model()
    _initializer(model, "fc.bias").data_type = 69
    return _save(model, folder / "model")


def raw_data_surplus(folder: Path) -> Path:
    """More bytes than the dims need: onnx's checker only refuses too few."""
    model = valid_model()
    _initializer(model, "fc.bias").raw_data += b"\0" * 4
    return _save(model, folder / "model")


CASES: dict[str, Callable[[Path], Path]] = {
    builder.__name__: builder
    for builder in (
        truncated, random_bytes, zip_file, directory, empty_file,
        external_parent, external_absolute, external_symlink, model_symlink,
        external_offset_past_end, external_length_past_end, external_huge,
        duplicate_initializer, output_shadows_initializer, undefined_input, cycle, opset_too_new, unknown_domain,
        input_zero_dim, input_negative_dim, initializer_zero_dim, initializer_negative_dim, initializer_huge,
        fifo, invalid_utf8_name, unknown_element_type, raw_data_surplus,
    )
}


def write_corpus(root: Path) -> dict[str, Path]:
    """Every case in its own folder under ``root``; returns the path to hand to a command for each."""
    return {name: build(root / name) for name, build in CASES.items()}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.hostile.corpus OUTDIR")
    for case, model_path in write_corpus(Path(sys.argv[1])).items():
        print(f"{case}\t{model_path}")
