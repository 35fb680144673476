"""Loading refuses bad files with one clear line; saving is atomic and never touches the input."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxprune.core import model as model_io
from onnxprune.core import validate
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


def external_model(folder, **entries):
    """conv_model(64) saved with its weight in model.onnx.data, external_data entries overridden (None: removed)."""
    path = model_io.save(conv_model(channels=64), folder / "model.onnx", external_data=True)
    model = onnx.load(path, load_external_data=False)
    tensor = model.graph.initializer[0]
    values = {entry.key: entry.value for entry in tensor.external_data} | entries
    del tensor.external_data[:]
    for key, value in values.items():
        if value is not None:
            tensor.external_data.add(key=key, value=str(value))
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("entries, message", [
    ({"length": 4 * 64 * 27 - 4}, "declares 6912 bytes .* holds 6908"),
    ({"offset": -1}, "must be non-negative"),
    ({"location": "absent.bin"}, "missing or not a regular file"),
])
def test_external_extent_must_match_the_declared_size(tmp_path, entries, message):
    with pytest.raises(InputError, match=message):
        model_io.load(external_model(tmp_path, **entries))


def test_external_data_is_measured_before_it_is_read(tmp_path, monkeypatch):
    """A declared 2^31-element tensor over a small file never reaches onnx's reader."""
    path = external_model(tmp_path)
    model = onnx.load(path, load_external_data=False)
    model.graph.initializer[0].dims[:] = [2**31]
    path.write_bytes(model.SerializeToString())
    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_model", pytest.fail)
    with pytest.raises(InputError, match="holds 6912"):
        model_io.load(path)


def test_data_without_length_is_the_rest_of_its_file(tmp_path):
    path = external_model(tmp_path, length=None)
    with open(tmp_path / "model.onnx.data", "ab") as data:
        data.write(b"\0" * 4)
    with pytest.raises(InputError, match="holds 6916"):
        model_io.load(path)


def test_links_inside_the_folder_are_followed_but_onnx_refuses_linked_data(tmp_path):
    model_io.save(conv_model(), tmp_path / "real.onnx")
    (tmp_path / "link.onnx").symlink_to("real.onnx")
    assert model_io.load(tmp_path / "link.onnx").graph.node[0].op_type == "Conv"
    external_model(tmp_path / "data")
    (tmp_path / "data" / "model.onnx.data").rename(tmp_path / "data" / "real.data")
    (tmp_path / "data" / "model.onnx.data").symlink_to("real.data")
    with pytest.raises(InputError, match="cannot read external data: .*symbolic link"):
        model_io.load(tmp_path / "data" / "model.onnx")


def test_unsorted_acyclic_graph_is_named_as_such(tmp_path):
    model = conv_model()
    model.graph.node.insert(0, helper.make_node("Relu", ["y0"], ["y1"], "late"))
    model.graph.node[1].output[0] = "y0"
    model.graph.output[0].name = "y1"
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InputError, match="not in topological order: node 'late' .* reads 'y0' before"):
        model_io.load(path)


def test_legal_oddities_are_accepted(tmp_path):
    """An initializer also listed as an input (IR 3 style), an empty 1-D constant, a local function's domain."""
    model = conv_model()
    model.graph.input.append(tensor("w", [8, 3, 3, 3]))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(0, np.float32), "roi"))
    body = [helper.make_node("Relu", ["a"], ["b"])]
    model.functions.append(helper.make_function("local", "MyRelu", ["a"], ["b"], body, [helper.make_opsetid("", 13)]))
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.graph.node.append(helper.make_node("MyRelu", ["y"], ["z"], domain="local"))
    model.graph.output[0].name = "z"
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    assert len(model_io.load(path).graph.node) == 2


@pytest.mark.parametrize("data_type, dims, expected", [
    (onnx.TensorProto.FLOAT, [2, 3], 24), (onnx.TensorProto.INT4, [3], 2), (onnx.TensorProto.BOOL, [], 1),
    (onnx.TensorProto.STRING, [2], None),
])
def test_declared_bytes(data_type, dims, expected):
    assert validate.declared_bytes(onnx.TensorProto(data_type=data_type, dims=dims)) == expected
