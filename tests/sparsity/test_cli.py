"""``onnxprune sparsify``: what it writes and reports, what it refuses (one stderr line, exit 2, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxprune.cli import main
from onnxprune.sparsity import storage
from tests.util import make_model, outputs, random_inputs, tensor


@pytest.fixture()
def model_path(tmp_path):
    rng = np.random.default_rng(0)
    model = make_model(
        [onnx.helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), onnx.helper.make_node("Relu", ["h"], ["r"]),
         onnx.helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)],
        [tensor("x", ["N", 64])], [tensor("y", ["N", 10])],
        {"w1": rng.standard_normal((256, 64)).astype(np.float32), "b1": np.full(256, 0.1, np.float32),
         "w2": rng.standard_normal((10, 256)).astype(np.float32), "b2": np.zeros(10, np.float32)})
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    return path


def test_sparsify_writes_a_packed_model_and_reports_the_counts(model_path, tmp_path, capsys):
    out, report = tmp_path / "sparse.onnx", tmp_path / "r.json"
    before = model_path.read_bytes()
    assert main(["sparsify", str(model_path), str(out), "--sparsity", "0.9", "--runs", "2",
                 "--report", str(report)]) == 0
    assert model_path.read_bytes() == before
    payload = json.loads(report.read_text())
    assert payload["storage"] == "packed"
    assert payload["zeroed"] == {"w1": round(0.9 * 64 * 256), "w2": 2304}
    assert payload["params"]["after"]["nonzero"] <= 1639 + 256 + 256 and payload["params"]["before"]["total"] == 19210
    assert out.stat().st_size < 0.2 * model_path.stat().st_size
    written = onnx.load(out)
    onnx.checker.check_model(written, full_check=True)
    dense = storage.decode(written)
    feeds = random_inputs(dense)
    np.testing.assert_allclose(outputs(written, feeds)[0], outputs(dense, feeds)[0], rtol=1e-5, atol=1e-5)
    assert "stored packed" in capsys.readouterr().out


@pytest.mark.parametrize(("flags", "message"), [
    (["--sparsity", "1.5"], "--sparsity 1.5 must be in [0, 1)"),
    (["--std-k", "-2"], "--std-k -2 must be >= 0"),
])
def test_bad_values_exit_2_and_write_nothing(model_path, tmp_path, capsys, flags, message):
    out = tmp_path / "never.onnx"
    assert main(["sparsify", str(model_path), str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--sparsity", "0.5", "--std-k", "1"], "argument --std-k: not allowed with argument --sparsity"),
    (["--storage", "zip"], "argument --storage: invalid choice: 'zip'"),
])
def test_conflicting_or_unknown_flags_exit_2(model_path, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["sparsify", str(model_path), str(tmp_path / "never.onnx"), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
