"""The paths of models over protobuf's 2 GB limit, on small models with the limit monkeypatched down.

What a >2 GB model needs (external data, the checker and onnxruntime reading files, no whole-model
copies) is decided by comparing sizes with ``PROTOBUF_LIMIT``; lowering it sends a model of a few
hundred kilobytes down the same code. ``benchmarks/large.py`` runs the real thing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from onnxprune import api
from onnxprune.channels.importance import magnitude
from onnxprune.cli import main
from onnxprune.core import linear
from onnxprune.core import model as model_io
from onnxprune.core.errors import InputError, VerificationError
from onnxprune.measure import stats
from tests.core.test_model import conv_model

ROOT = Path(__file__).resolve().parents[2]
SIZE = 2_000_000  # bytes of weights in the generated test model


def _large_benchmark():
    spec = importlib.util.spec_from_file_location("large_benchmark", ROOT / "benchmarks" / "large.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vgg(tmp_path_factory) -> Path:
    """benchmarks/large.py's model (conv-BN stages, a Gemm classifier), 2 MB, external data."""
    return _large_benchmark().build_model(tmp_path_factory.mktemp("vgg"), SIZE)


@pytest.fixture()
def small_limit(monkeypatch):
    """Every model of this file counts as over the limit."""
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 5000)


def mixed_model() -> onnx.ModelProto:
    """Raw, typed (float_data) and integer initializers, metadata: what serialized_size must count."""
    model = conv_model(channels=64)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.arange(300, dtype=np.int64), "ids"))
    model.graph.initializer.append(onnx.helper.make_tensor("typed", onnx.TensorProto.FLOAT, [3], [1.0, 2.0, 3.0]))
    model.metadata_props.add(key="author", value="me")
    model.doc_string = "a model"
    return model


def test_serialized_size_is_byte_size_without_serializing():
    for model in (mixed_model(), conv_model(channels=1), onnx.ModelProto()):
        assert model_io.serialized_size(model) == model.ByteSize()


def test_external_save_writes_tensors_one_by_one_and_leaves_the_model_alone(tmp_path):
    model = mixed_model()
    before = model.SerializeToString()
    path = model_io.save(model, tmp_path / "m.onnx", external_data=True)
    assert model.SerializeToString() == before, "caller's model modified"
    stored = onnx.load(path, load_external_data=False)
    external = {t.name for t in stored.graph.initializer if onnx.external_data_helper.uses_external_data(t)}
    assert external == {"w", "ids"}  # the 12-byte float_data tensor stays inline, like onnx's writer
    loaded = model_io.load(path)
    for got, want in zip(loaded.graph.initializer, model.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(got), onnx.numpy_helper.to_array(want))
    assert loaded.metadata_props[0].value == "me" and loaded.doc_string == "a model"


def test_large_tensors_start_on_a_page(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "ALIGN_THRESHOLD", 1024)
    model = conv_model(channels=64)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(3000, np.float32), "extra"))
    stored = onnx.load(model_io.save(model, tmp_path / "m.onnx", external_data=True), load_external_data=False)
    offsets = [int(e.value) for t in stored.graph.initializer for e in t.external_data if e.key == "offset"]
    assert len(offsets) == 2 and all(offset % model_io.PAGE == 0 for offset in offsets)


def test_staged_output_appears_only_when_the_check_inside_passes(tmp_path):
    target = tmp_path / "out" / "m.onnx"
    with pytest.raises(InputError), model_io.staged(conv_model(channels=64), target, external_data=True) as staged:
        assert staged.exists() and staged.with_name("m.onnx.data").exists() and not target.exists()
        raise InputError("check failed")
    assert os.listdir(tmp_path / "out") == []
    with model_io.staged(conv_model(channels=64), target, external_data=True) as staged:
        model_io.check_file(staged, target)
    assert sorted(os.listdir(tmp_path / "out")) == ["m.onnx", "m.onnx.data"]


def test_check_of_a_large_model_reads_its_file(tmp_path, small_limit, monkeypatch):
    model = conv_model(channels=64)
    monkeypatch.setattr(onnx.checker, "check_model", _refuse_in_memory(onnx.checker.check_model))
    model_io.check(model, model_io.save(model, tmp_path / "m.onnx"))
    with pytest.raises(InputError, match="absent.onnx: fails onnx's checker"):
        model_io.check(model, tmp_path / "absent.onnx")


def _refuse_in_memory(check_model):
    def check(model, *args, **kwargs):
        assert not isinstance(model, onnx.ModelProto), "a large model was handed to the checker in memory"
        return check_model(model, *args, **kwargs)
    return check


def test_export_graph_matches_graphsurgeon_and_hollow_keeps_only_shapes(vgg):
    model = model_io.load(vgg)
    graph = model_io.to_graph(model)
    weight = graph.tensors()["conv0.weight"]
    weight.values = weight.values * 2  # one numpy constant among lazy ones
    expected = gs.export_onnx(graph, do_type_check=False)
    assert model_io.export_graph(graph).SerializeToString() == expected.SerializeToString()
    assert isinstance(graph.tensors()["fc0.weight"]._values, gs.ir.tensor.LazyValues), "export read the weights"
    hollow = model_io.export_graph(graph, hollow_above=stats.SHAPE_VALUE_LIMIT)
    assert hollow.ByteSize() < 100_000
    full, counted = stats.model_stats(expected), stats.model_stats(hollow)
    assert (counted.params, counted.macs) == (full.params, full.macs)


def test_stats_count_a_large_model_without_copying_its_weights(vgg, small_limit):
    model = model_io.load(vgg)
    shape_model = stats._shape_model(model)
    assert shape_model.ByteSize() < 100_000
    assert stats.model_stats(model).params == sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def test_optimize_of_a_large_model_verifies_files_and_keeps_external_data(vgg, tmp_path, small_limit, monkeypatch):
    seen = []
    check_equivalence = api.optimize.check_equivalence

    def spy(reference, candidate, *args, **kwargs):
        seen.append((reference, candidate))
        assert isinstance(candidate, Path) and candidate.exists() and not (tmp_path / "out.onnx").exists()
        return check_equivalence(reference, candidate, *args, **kwargs)

    monkeypatch.setattr(api.optimize, "check_equivalence", spy)
    monkeypatch.setattr(onnx.checker, "check_model", _refuse_in_memory(onnx.checker.check_model))
    outcome = api.optimize_file(vgg, tmp_path / "out.onnx", runs=1)
    assert seen == [(Path(vgg), seen[0][1])], "onnxruntime must open large models from their files"
    assert outcome.equivalence.passed and outcome.cost.after.latency is not None
    assert sorted(os.listdir(tmp_path)) == ["out.onnx", "out.onnx.data"]
    loaded = model_io.load(tmp_path / "out.onnx")
    assert not any(node.op_type == "BatchNormalization" for node in loaded.graph.node)
    assert outcome.result.model == loaded, "the result's model is read back from the output"


@pytest.mark.parametrize("values, fits", [
    ([1.0, -65504.0], True), ([1.0, 65520.0], False), ([np.nan], False), ([-np.inf], False), ([], True),
])
def test_range_check_of_folded_parameters_agrees_with_the_cast(values, fits):
    assert linear._fits(np.asarray(values, dtype=np.float64), np.dtype(np.float16)) is fits


def test_a_failed_check_of_a_large_output_leaves_nothing(vgg, tmp_path, small_limit, monkeypatch):
    def fail(*args, **kwargs):
        raise VerificationError("outputs differ")

    monkeypatch.setattr(api.optimize, "check_equivalence", fail)
    with pytest.raises(VerificationError):
        api.optimize_file(vgg, tmp_path / "out.onnx", runs=0)
    assert os.listdir(tmp_path) == []


def test_an_output_failing_the_checker_is_never_written(tmp_path):
    """The checker reads the staged file: a small output is checked before it exists too."""
    source = model_io.save(conv_model(channels=8), tmp_path / "in.onnx")

    def rewrite(model, inputs):
        broken = onnx.ModelProto()
        broken.CopyFrom(model)
        broken.graph.node[0].input[1] = "undefined"
        return api.optimize.pipeline.PipelineResult(broken)

    with pytest.raises(InputError, match="out.onnx: fails onnx's checker"):
        api.rewrite_file(source, tmp_path / "out.onnx", rewrite, lambda *args: None, runs=0)
    assert os.listdir(tmp_path) == ["in.onnx"]


def test_an_input_with_external_data_gives_an_output_with_external_data(tmp_path):
    source = model_io.save(conv_model(channels=64), tmp_path / "in.onnx", external_data=True)
    assert model_io.stored_externally(model_io.load(source), source)
    assert main(["optimize", str(source), str(tmp_path / "out.onnx"), "--runs", "0", "-q"]) == 0
    assert (tmp_path / "out.onnx.data").exists()
    embedded = model_io.save(conv_model(channels=64), tmp_path / "plain.onnx")
    assert not model_io.stored_externally(model_io.load(embedded), embedded)


def test_prune_of_a_large_model(vgg, tmp_path, small_limit):
    assert main(["prune", str(vgg), str(tmp_path / "out.onnx"), "--ratio", "0.5", "--runs", "0", "-q"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["out.onnx", "out.onnx.data"]
    pruned = model_io.load(tmp_path / "out.onnx")
    assert model_io.serialized_size(pruned) < 0.4 * SIZE


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_filter_norms_in_blocks_equal_the_whole_norm(p, monkeypatch):
    monkeypatch.setattr(magnitude, "NORM_BLOCK", 1000)  # blocks of 3 rows of 300
    full = np.random.default_rng(0).standard_normal((50, 300))
    entry = magnitude.Slices(("w", 0), full, np.random.default_rng(1).permutation(50)[:31], np.arange(31))
    assert np.array_equal(magnitude.row_norms(entry, p), np.linalg.norm(entry.rows, ord=p, axis=1))
