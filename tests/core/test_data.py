"""Input specs, shape resolution, random feeds and user data loading (feeds and labelled data alike)."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxprune.core.data import (
    DataSource,
    InputSpec,
    input_specs,
    load_feeds,
    parse_input_shapes,
    random_feeds,
    resolve_input_shapes,
)
from onnxprune.core.errors import InputError, OptionError
from onnxprune.retrain.evaluate import evaluate, load_labelled


def identity_model(inputs: dict[str, tuple[int, list | None]]) -> onnx.ModelProto:
    """One Identity per input, so any input signature can be described."""
    values = [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()]
    outputs = [helper.make_tensor_value_info(f"{n}_out", t, None) for n, (t, _) in inputs.items()]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n in inputs]
    graph = helper.make_graph(nodes, "g", values, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def image_model(shape: list) -> onnx.ModelProto:
    return identity_model({"x": (TensorProto.FLOAT, shape)})


def test_input_specs_dims_and_initializer_inputs():
    model = identity_model(
        {"x": (TensorProto.FLOAT, ["N", 3, None, 4]), "w": (TensorProto.FLOAT, [2])}
    )
    model.graph.initializer.append(helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0]))
    assert input_specs(model) == [InputSpec("x", np.dtype(np.float32), ("N", 3, None, 4))]


def test_input_specs_no_shape():
    spec = input_specs(identity_model({"ids": (TensorProto.INT64, None)}))[0]
    assert spec.shape is None and spec.dtype == np.int64


def test_parse_input_shapes_splits_on_last_colon():
    assert parse_input_shapes(["a:b:1,3,8,8", "y:2"]) == {"a:b": (1, 3, 8, 8), "y": (2,)}


@pytest.mark.parametrize("bad", ["x", "x:", ":1,2", "x:1,a", "x:1,,2", "x:0,3", "x:-1"])
def test_parse_input_shapes_rejects_malformed(bad):
    with pytest.raises(InputError, match="NAME:D1,D2"):
        parse_input_shapes([bad])


def test_parse_input_shapes_rejects_duplicates():
    with pytest.raises(InputError, match="twice"):
        parse_input_shapes(["x:1", "x:2"])


def test_resolve_defaults_dynamic_batch_to_one(caplog):
    with caplog.at_level(logging.INFO, logger="onnxprune.core.data"):
        assert resolve_input_shapes(image_model(["N", 3, 8, 8])) == {"x": (1, 3, 8, 8)}
    assert "batch" in caplog.text


def test_resolve_raises_on_dynamic_spatial_dims():
    with pytest.raises(InputError, match=r"'x' has shape \[N, 3, H, \?\].*give input_shape x:1,3,"):
        resolve_input_shapes(image_model(["N", 3, "H", None]))


def test_resolve_override_wins_and_fixes_dynamic_dims():
    model = image_model(["N", 3, "H", "W"])
    assert resolve_input_shapes(model, {"x": (2, 3, 16, 16)}) == {"x": (2, 3, 16, 16)}


def test_resolve_rejects_unknown_name_and_wrong_rank():
    model = image_model([1, 3, 8, 8])
    with pytest.raises(InputError, match="inputs are: x"):
        resolve_input_shapes(model, {"y": (1,)})
    with pytest.raises(InputError, match="rank 2"):
        resolve_input_shapes(model, {"x": (1, 3)})


def test_resolve_input_without_shape_needs_override():
    model = identity_model({"x": (TensorProto.FLOAT, None)})
    with pytest.raises(InputError, match="no declared shape"):
        resolve_input_shapes(model)
    assert resolve_input_shapes(model, {"x": (4,)}) == {"x": (4,)}


def test_random_feeds_dtypes_seed_and_count():
    model = identity_model({
        "x": (TensorProto.FLOAT, [2, 3]),
        "ids": (TensorProto.INT64, [5]),
        "mask": (TensorProto.BOOL, [4]),
    })
    shapes = {"x": (2, 3), "ids": (5,), "mask": (4,)}
    feeds = random_feeds(model, shapes, seed=3, count=2)
    assert len(feeds) == 2
    assert feeds[0]["x"].dtype == np.float32 and feeds[0]["x"].shape == (2, 3)
    ids = feeds[0]["ids"]
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 10
    assert feeds[0]["mask"].dtype == np.bool_
    assert not np.array_equal(feeds[0]["x"], feeds[1]["x"])
    again = random_feeds(model, shapes, seed=3, count=2)
    assert all(np.array_equal(again[1][k], feeds[1][k]) for k in shapes)


@pytest.mark.parametrize("elem_type, dtype", [
    (TensorProto.FLOAT16, np.float16), (TensorProto.DOUBLE, np.float64), (TensorProto.UINT8, np.uint8),
    (TensorProto.INT32, np.int32),
])
def test_random_feeds_are_made_in_the_input_dtype(elem_type, dtype):
    feeds = random_feeds(identity_model({"x": (elem_type, [64])}), {"x": (64,)})
    assert feeds[0]["x"].dtype == dtype and np.isfinite(feeds[0]["x"].astype(np.float64)).all()


def test_huge_random_input_is_refused_before_allocation(monkeypatch):
    """A declared [1,3,32768,32768] input asks for 12 GiB of float32 per sample: an option error, not a MemoryError."""
    import onnxprune.core.data as data_module

    monkeypatch.setattr(data_module, "_random_array", pytest.fail)
    model = image_model([1, 3, 32768, 32768])
    message = r"need 48\.0 GiB .*input 'x' is \[1,3,32768,32768\].*give input_shape x:D0,D1"
    with pytest.raises(OptionError, match=message):
        random_feeds(model, resolve_input_shapes(model), count=4)
    monkeypatch.setattr(data_module, "RANDOM_FEED_LIMIT", 4 * 3 * 8 * 8 * 4)
    with pytest.raises(OptionError):
        random_feeds(image_model([1, 3, 8, 8]), {"x": (1, 3, 8, 8)}, count=5)


def test_huge_random_input_exits_2_naming_the_input_shape_option(tmp_path, capsys):
    from onnxprune.cli import main

    shape = [1, 3, 32768, 32768]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "huge",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    path = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    assert main(["optimize", str(path), str(tmp_path / "out.onnx"), "--runs", "0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("onnxprune: error: ") and "--input-shape x:D0,D1,..." in error, error
    assert not (tmp_path / "out.onnx").exists()


def test_random_feeds_needs_every_shape():
    with pytest.raises(InputError, match="no shape for input"):
        random_feeds(image_model([1, 3, 8, 8]), {})


def test_load_npz_by_name_casts_and_splits_dynamic_batch(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((70, 3, 4, 4), np.float64), y_test=np.zeros(70))
    feeds = load_feeds(path, image_model(["N", 3, 4, 4]))
    assert [f["x"].shape[0] for f in feeds] == [32, 32, 6]
    assert feeds[0]["x"].dtype == np.float32


def test_load_uses_resolved_batch_and_drops_partial_static_batch(tmp_path):
    path = tmp_path / "d.npy"
    np.save(path, np.zeros((10, 3, 4, 4), np.float32))
    assert len(load_feeds(path, image_model(["N", 3, 4, 4]), {"x": (5, 3, 4, 4)})) == 2
    assert [f["x"].shape[0] for f in load_feeds(path, image_model([4, 3, 4, 4]))] == [4, 4]


def test_load_single_input_prefers_x_test(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_test=np.ones((2, 3, 4, 4), np.float32), other=np.zeros((2, 3, 4, 4)))
    assert load_feeds(path, image_model([1, 3, 4, 4]))[0]["x"].max() == 1.0


def test_load_single_sample_gets_batch_axis(tmp_path):
    path = tmp_path / "d.npy"
    np.save(path, np.ones((3, 4, 4), np.float32))
    (feed,) = load_feeds(path, image_model([1, 3, 4, 4]))
    assert feed["x"].shape == (1, 3, 4, 4)


def test_load_uint8_nhwc_is_transposed_and_scaled(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_test=images)
    (feed,) = load_feeds(path, image_model(["N", 3, 4, 5]))
    assert feed["x"].shape == (2, 3, 4, 5) and feed["x"].dtype == np.float32
    np.testing.assert_allclose(feed["x"], images.transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)


def test_load_uint8_grayscale_nhw_gets_channel_axis(tmp_path):
    path = tmp_path / "d.npy"
    np.save(path, np.full((3, 4, 4), 255, np.uint8))
    (feed,) = load_feeds(path, image_model(["N", 1, 4, 4]))
    assert feed["x"].shape == (3, 1, 4, 4) and feed["x"].max() == 1.0


def test_load_errors(tmp_path):
    model = image_model([1, 3, 4, 4])
    with pytest.raises(InputError, match="not found"):
        load_feeds(tmp_path / "missing.npz", model)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read"):
        load_feeds(tmp_path / "bad.npz", model)
    np.savez(tmp_path / "two.npz", a=np.ones((1, 3, 4, 4)), b=np.ones((1, 3, 4, 4)))
    with pytest.raises(InputError, match="'x_test'"):
        load_feeds(tmp_path / "two.npz", model)
    np.save(tmp_path / "shape.npy", np.ones((1, 3, 5, 5), np.float32))
    with pytest.raises(InputError, match=r"shape \[1, 3, 5, 5\], expected \[1, 3, 4, 4\]"):
        load_feeds(tmp_path / "shape.npy", model)


def test_load_multi_input_needs_named_arrays(tmp_path):
    model = identity_model({"a": (TensorProto.FLOAT, ["N", 2]), "b": (TensorProto.INT64, ["N"])})
    np.savez(tmp_path / "ok.npz", a=np.ones((3, 2)), b=np.arange(3))
    (feed,) = load_feeds(tmp_path / "ok.npz", model)
    assert feed["b"].dtype == np.int64 and feed["a"].shape == (3, 2)
    np.savez(tmp_path / "partial.npz", a=np.ones((3, 2)))
    with pytest.raises(InputError, match="no array for input"):
        load_feeds(tmp_path / "partial.npz", model)
    np.save(tmp_path / "one.npy", np.ones((3, 2)))
    with pytest.raises(InputError, match="use .npz"):
        load_feeds(tmp_path / "one.npy", model)


def test_load_errors_are_one_line(tmp_path):
    model = image_model([1, 3, 4, 4])
    np.savez(tmp_path / "whole.npz", x=np.ones((1, 3, 4, 4)))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:100])
    np.save(tmp_path / "objects.npy", np.array([{}], dtype=object), allow_pickle=True)
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    for name in ("cut.npz", "objects.npy", "junk.npy"):
        with pytest.raises(InputError, match=f"cannot read data file .*{name}") as raised:
            load_feeds(tmp_path / name, model)
        assert "\n" not in str(raised.value)


def test_load_single_input_falls_back_to_x_train(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.ones((2, 3, 4, 4)), y_train=np.zeros(2))
    (feed,) = load_feeds(tmp_path / "d.npz", image_model(["N", 3, 4, 4]))
    assert feed["x"].shape == (2, 3, 4, 4)


def test_uint8_and_mean_std_apply_to_any_float_input(tmp_path):
    np.save(tmp_path / "d.npy", np.full((2, 6), 255, np.uint8))
    (feed,) = load_feeds(tmp_path / "d.npy", image_model(["N", 6]), mean=[0.5], std=[0.25])
    np.testing.assert_array_equal(feed["x"], np.full((2, 6), 2.0, np.float32))


def test_the_models_declared_normalisation_is_the_default_and_bare_pixels_warn(tmp_path, caplog):
    from onnxprune.core.datasets import declare_normalisation, declared_normalisation

    path = tmp_path / "d.npz"
    np.savez(path, x_test=np.full((2, 3, 2, 2), 255, np.uint8), y_test=np.zeros(2))
    model = image_model(["N", 3, 2, 2])
    with caplog.at_level(logging.WARNING):
        (plain,) = load_feeds(path, model)
    assert "uint8 pixels are only scaled to [0, 1]" in caplog.text and plain["x"].max() == 1.0
    declare_normalisation(model, [0.5, 0.5, 0.5], [0.25, 0.5, 0.25])
    assert declared_normalisation(onnx.load_from_string(model.SerializeToString())) == {
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 0.25]}
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        (declared,) = load_feeds(path, model)
        labelled = load_labelled(path, model)
    assert not caplog.text
    np.testing.assert_array_equal(declared["x"][0, :, 0, 0], [2.0, 1.0, 2.0])
    np.testing.assert_array_equal(labelled.inputs(), declared["x"])
    (given,) = load_feeds(path, model, mean=[0.0], std=[1.0])  # given options win over the metadata
    assert given["x"].max() == 1.0


def test_shipped_models_declare_their_normalisation():
    from pathlib import Path

    from onnxprune.core.datasets import declared_normalisation

    models = Path(__file__).resolve().parents[2] / "models"
    assert declared_normalisation(onnx.load(models / "resnet20_cifar10.onnx")) == {
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert declared_normalisation(onnx.load(models / "lenet5_mnist.onnx")) == {"mean": [0.1307], "std": [0.3081]}


NCHW = np.random.default_rng(1).integers(0, 256, (70, 3, 4, 5), dtype=np.uint8)
LAYOUTS = {
    "uint8_nhwc": NCHW.transpose(0, 2, 3, 1),
    "float32_nhwc": NCHW.transpose(0, 2, 3, 1).astype(np.float32) / 255,
    "float32_nchw": NCHW.astype(np.float32) / 255,
}
NORMALISATIONS = {"plain": (None, None), "mean_std": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])}


@pytest.mark.parametrize("normalisation", sorted(NORMALISATIONS))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_feeds_and_labelled_data_build_identical_tensors(layout, normalisation, tmp_path):
    """prune --data and evaluate/finetune --data read one file the same way."""
    mean, std = NORMALISATIONS[normalisation]
    path = tmp_path / "d.npz"
    np.savez(path, x_test=LAYOUTS[layout], y_test=np.arange(70) % 3)
    model = image_model(["N", 3, 4, 5])
    feeds = np.concatenate([f["x"] for f in DataSource(path, mean, std).feeds(model)])
    labelled = load_labelled(path, model, mean=mean, std=std)
    assert feeds.dtype == np.float32 and feeds.shape == (70, 3, 4, 5)
    np.testing.assert_array_equal(feeds, labelled.inputs())
    np.testing.assert_array_equal(feeds, np.concatenate([x for x, _ in labelled.batches(32)]))
    expected = NCHW / 255.0
    if mean is not None:
        expected = (expected - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))
    np.testing.assert_allclose(feeds, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", ["N", 4])
def test_evaluation_counts_every_image(batch, tmp_path):
    """10 images in batches of 4: the last 2 are run (padded for a static batch), not dropped."""
    labels = np.arange(10) % 3
    path = tmp_path / "d.npz"
    np.savez(path, x_test=np.eye(3, dtype=np.float32)[labels], y_test=labels)
    model = identity_model({"x": (TensorProto.FLOAT, [batch, 3])})
    accuracy = evaluate(model, load_labelled(path, model), batch_size=4)
    assert (accuracy.count, accuracy.top1) == (10, 1.0)
