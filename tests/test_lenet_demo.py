"""Smoke test of benchmarks/lenet_demo.py on the shipped 1000-image MNIST subset (seconds, not minutes):
prune LeNet-5 to a parameter target, fine-tune briefly, and check the pieces of the demo's table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("torch", reason="the LeNet-5 demo fine-tunes through torch (pip install 'onnxprune[train]')")

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT / "models" / "data" / "mnist_test1000.npz"


def _load_demo():
    spec = importlib.util.spec_from_file_location("lenet_demo", ROOT / "benchmarks" / "lenet_demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """As the demo does: LeNet-5 steps are tiny, and a second thread only adds contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def original() -> onnx.ModelProto:
    return onnx.load(demo.MODEL)


@pytest.fixture(scope="module")
def test_set(original):
    return demo.load_labelled(SUBSET, original, "test", demo.MEAN, demo.STD)


@pytest.fixture(scope="module")
def train_set(original):
    return demo.load_labelled(SUBSET, original, "test", demo.MEAN, demo.STD, limit=384)


FAST = demo.Settings(epochs=1, batch_size=64)


def test_pipeline_gives_a_smaller_valid_model_and_fine_tuning_helps(original, train_set, test_set, tmp_path):
    base = demo.make_row("original", original, tmp_path / "lenet5_mnist.onnx", test_set)
    assert base.params == 61706 and base.layers == "6-16-120-84-10"
    assert base.top1 == pytest.approx(0.993)  # models/README.md: 99.30 % on the first 1000

    before, after = demo.run_target(original, 0.2, train_set, test_set, FAST, tmp_path, resume=True)

    for row in (before, after):
        assert row.path.is_file()
        onnx.checker.check_model(onnx.load(row.path), full_check=True)
        assert row.params <= 0.2 * base.params
        assert row.size_bytes < 0.25 * base.size_bytes
        assert 0 < row.flops < base.flops
        assert 0.0 <= row.top1 <= 1.0
        assert row.layers.startswith("6-")  # conv1 is excluded by default
    assert before.layers == after.layers and before.params == after.params  # training never reshapes
    assert after.top1 > before.top1 + 0.05  # 6 steps on 384 images win back a lot of the pruning loss
    assert after.train_seconds is not None


def test_rerun_resumes_from_the_checkpoint_without_training(original, train_set, test_set, tmp_path):
    _, first = demo.run_target(original, 0.2, train_set, test_set, FAST, tmp_path, resume=True)
    checkpoints = list((tmp_path / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and checkpoints[0].name.startswith("p0.2-")
    _, again = demo.run_target(original, 0.2, train_set, test_set, FAST, tmp_path, resume=True)

    def weights(row):
        return [numpy_helper.to_array(t) for t in row.model.graph.initializer]

    assert all(np.array_equal(a, b) for a, b in zip(weights(first), weights(again)))
    assert again.top1 == first.top1


def test_table_has_every_row_with_latency_and_ratios(original, test_set, tmp_path):
    pruned = demo.prune(original, 0.1, FAST)
    rows = [demo.make_row("original", original, tmp_path / "a.onnx", test_set),
            demo.make_row("pruned 0.1, fine-tuned", pruned, tmp_path / "b.onnx", test_set)]
    demo.time_rows(rows, test_set, (1, 64), runs=5)
    assert all(set(row.latency_ms) == {1, 64} and min(row.latency_ms.values()) > 0 for row in rows)
    table = demo.markdown(rows)
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| model |") and "speed-up b64" in lines[0]
    assert "| original |" in lines[2] and "1.0×" in lines[2]
    assert f"{rows[0].params / rows[1].params:.1f}×" in lines[3]
    verdict = demo.verdicts(rows)
    assert len(verdict) == 1 and "NOT within 0.3 pp" in verdict[0]  # pruned, never fine-tuned


def test_main_end_to_end_on_a_tiny_data_file(tmp_path, capsys):
    with np.load(SUBSET) as subset:
        x, y = subset["x_test"], subset["y_test"]
    tiny = tmp_path / "tiny.npz"
    np.savez(tiny, x_train=x[:256], y_train=y[:256], x_test=x[:500], y_test=y[:500])
    code = demo.main(["--data", str(tiny), "--targets", "0.2", "--epochs", "1", "--runs", "5",
                      "--out", str(tmp_path / "out"), "--json", str(tmp_path / "demo.json")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| pruned 0.2, fine-tuned |" in printed and "500 test images, 256 training images" in printed
    report = json.loads((tmp_path / "demo.json").read_text())
    assert [row["name"] for row in report["rows"]] == [
        "original", "pruned 0.2, before fine-tuning", "pruned 0.2, fine-tuned"]
    assert {"lenet5_mnist.onnx", "lenet5_p0.2.onnx", "lenet5_p0.2_ft.onnx"} <= {
        p.name for p in (tmp_path / "out").iterdir()}
