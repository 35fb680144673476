"""Loading refuses bad files with one clear line; saving is atomic and never touches the input."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxprune.core import model as model_io
from onnxprune.core.errors import InputError, UnsupportedModelError
from tests.util import make_model, tensor


def conv_model(opset: int = 13, channels: int = 8) -> onnx.ModelProto:
    weight = np.random.default_rng(0).standard_normal((channels, 3, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    return make_model([node], [tensor("x", ["N", 3, 8, 8])], [tensor("y", ["N", channels, 8, 8])], {"w": weight}, opset)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        model_io.load(tmp_path / "absent.onnx")


@pytest.mark.parametrize("content", [b"", b"this is not a model\n", b"\x08\x07\x12\xff\xff"])
def test_not_onnx(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(InputError):
        model_io.load(path)


def test_truncated(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(conv_model(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated or corrupt|checker|not an ONNX"):
        model_io.load(path)


def test_checker_failure(tmp_path):
    broken = conv_model()
    broken.graph.node[0].input[1] = "undefined_weight"
    path = tmp_path / "broken.onnx"
    onnx.save(broken, path)
    with pytest.raises(InputError, match="checker"):
        model_io.load(path)


@pytest.mark.parametrize("version", [6, model_io.MAX_OPSET + 1])
def test_unsupported_opset(tmp_path, version):
    model = conv_model()
    model.opset_import[0].version = version
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedModelError, match=f"opset {version}"):
        model_io.load(path)


def test_external_data_round_trip(tmp_path):
    model = conv_model(channels=64)
    path = model_io.save(model, tmp_path / "out" / "model.onnx", external_data=True)
    assert (tmp_path / "out" / "model.onnx.data").stat().st_size >= 64 * 27 * 4
    assert path.stat().st_size < 64 * 27 * 4
    loaded = model_io.load(path)
    np.testing.assert_array_equal(
        onnx.numpy_helper.to_array(loaded.graph.initializer[0]), onnx.numpy_helper.to_array(model.graph.initializer[0])
    )
    assert sorted(os.listdir(tmp_path / "out")) == ["model.onnx", "model.onnx.data"]
    assert not onnx.external_data_helper.uses_external_data(model.graph.initializer[0]), "caller's model modified"


def test_large_models_switch_to_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 1000)
    model_io.save(conv_model(channels=64), tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").exists()


@pytest.mark.parametrize("location", ["../escape.bin", "/etc/passwd", "sub/../../escape.bin"])
def test_external_data_outside_folder_is_refused(tmp_path, location):
    folder = tmp_path / "models"
    model_io.save(conv_model(channels=64), folder / "model.onnx", external_data=True)
    model = onnx.load(folder / "model.onnx", load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(model, folder / "model.onnx")
    with pytest.raises(UnsupportedModelError, match="leaves the model's folder"):
        model_io.load(folder / "model.onnx")


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", explode)
    with pytest.raises(OSError):
        model_io.save(conv_model(), target)
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["model.onnx"]


@pytest.mark.parametrize("output", ["model.onnx", "model.onnx.data"])
def test_output_may_not_overwrite_input(tmp_path, output):
    with pytest.raises(InputError, match="overwrite the input"):
        model_io.ensure_distinct(tmp_path / "model.onnx", tmp_path / output)


def test_graph_round_trip_keeps_metadata_and_dynamic_dims():
    model = conv_model()
    model.producer_name = "exporter"
    model.metadata_props.add(key="author", value="me")
    back = model_io.to_model(model_io.to_graph(model), model)
    assert back.producer_name == "exporter" and back.metadata_props[0].value == "me"
    assert back.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
