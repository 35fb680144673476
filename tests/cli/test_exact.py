"""The CLI: exit codes, written files, and one clear line for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxprune.cli import main
from tests.util import make_model, tensor


def conv_bn_model(dynamic_spatial: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = {
        "w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "gamma": rng.uniform(0.5, 1.5, 8).astype(np.float32),
        "beta": rng.standard_normal(8).astype(np.float32),
        "mean": rng.standard_normal(8).astype(np.float32) * 0.1,
        "var": rng.uniform(0.5, 1.5, 8).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"]),
        helper.make_node("Relu", ["b"], ["y"]),
    ]
    spatial = ["H", "W"] if dynamic_spatial else [8, 8]
    return make_model(nodes, [tensor("x", ["N", 3, *spatial])], [tensor("y", ["N", 8, *spatial])], inits)


@pytest.fixture()
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(conv_bn_model(), path)
    return path


def test_optimize_writes_verified_model_and_report(model_path, tmp_path, capsys):
    before = model_path.read_bytes()
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    assert main(["optimize", str(model_path), str(out), "--runs", "3", "--report", str(report)]) == 0
    assert model_path.read_bytes() == before, "input modified"
    ops = [node.op_type for node in onnx.load(out).graph.node]
    assert ops == ["Conv", "Relu"]
    payload = json.loads(report.read_text())
    assert payload["equivalence"]["passed"] is True
    assert payload["before"]["stats"]["op_histogram"]["BatchNormalization"] == 1
    assert "BatchNormalization" not in payload["after"]["stats"]["op_histogram"]
    text = capsys.readouterr().out
    assert "fold_batchnorm" in text and "outputs match" in text


def test_optimize_quiet_prints_nothing(model_path, tmp_path, capsys):
    assert main(["optimize", str(model_path), str(tmp_path / "o.onnx"), "--runs", "0", "--quiet"]) == 0
    assert capsys.readouterr().out == ""


def test_optimize_selected_passes(model_path, tmp_path):
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(model_path), str(out), "--passes", "eliminate", "--runs", "0", "-q"]) == 0
    assert [n.op_type for n in onnx.load(out).graph.node] == ["Conv", "BatchNormalization", "Relu"]


def bad_file(tmp_path, content: bytes):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda p, t: ["optimize", str(t / "absent.onnx"), str(t / "o.onnx")], "no such file"),
        (lambda p, t: ["optimize", str(bad_file(t, b"garbage")), str(t / "o.onnx")], "not"),
        (lambda p, t: ["optimize", str(p), str(t / "o.onnx"), "--passes", "fold_everything"], "unknown pass"),
        (lambda p, t: ["optimize", str(p), str(t / "o.onnx"), "--input-shape", "x:1,3"], "x"),
        (lambda p, t: ["optimize", str(p), str(t / "o.onnx"), "--input-shape", "nope:1,3,8,8"], "nope"),
        (lambda p, t: ["optimize", str(p), str(p)], "overwrite the input"),
    ],
)
def test_bad_input_exits_2_without_output(model_path, tmp_path, capsys, make_args, message):
    assert main(make_args(model_path, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("onnxprune: error:") and message in err and "Traceback" not in err
    assert err.count("\n") == 1
    assert not (tmp_path / "o.onnx").exists()


def test_dynamic_spatial_dims_need_input_shape(tmp_path, capsys):
    path = tmp_path / "dyn.onnx"
    onnx.save(conv_bn_model(dynamic_spatial=True), path)
    assert main(["inspect", str(path)]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main(["inspect", str(path), "--input-shape", "x:1,3,16,16"]) == 0
    assert "Conv" in capsys.readouterr().out


def test_optimized_output_keeps_dynamic_batch(model_path, tmp_path):
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(model_path), str(out), "--runs", "0", "-q"]) == 0
    assert onnx.load(out).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_check_detects_a_changed_model(model_path, tmp_path, capsys):
    changed = conv_bn_model()
    weights = np.frombuffer(changed.graph.initializer[0].raw_data, np.float32)
    changed.graph.initializer[0].raw_data = (weights * 1.01).tobytes()
    other = tmp_path / "changed.onnx"
    onnx.save(changed, other)
    assert main(["check", str(model_path), str(model_path)]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["check", str(model_path), str(other)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_check_with_user_data(model_path, tmp_path):
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32))
    assert main(["check", str(model_path), str(model_path), "--data", str(data), "-q"]) == 0


def test_bench_two_models(model_path, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    main(["optimize", str(model_path), str(out), "--runs", "0", "-q"])
    assert main(["bench", str(model_path), str(out), "--runs", "3", "--warmup", "1"]) == 0
    assert "ratio" in capsys.readouterr().out


def test_entry_point_reports_bad_input_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "onnxprune", "inspect", str(tmp_path / "missing.onnx")],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"onnxprune: error: {tmp_path / 'missing.onnx'}: no such file"
