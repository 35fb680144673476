"""The blocks, bypass and joint commands: what they print, write and refuse."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxprune import cli
from onnxprune.cli import blocks as blocks_commands
from onnxprune.cli import main
from onnxprune.measure.stats import model_stats
from tests.layers.test_units import MODELS

RESNET20 = str(MODELS / "resnet20_cifar10.onnx")


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The command group, registered as cli.COMMAND_GROUPS will list it."""
    if blocks_commands not in cli.COMMAND_GROUPS:
        monkeypatch.setattr(cli, "COMMAND_GROUPS", (*cli.COMMAND_GROUPS, blocks_commands))


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "calib.npz"
    np.savez(path, x_test=np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8))
    return path


def test_blocks_lists_every_unit_with_cost_and_score(tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["blocks", RESNET20, "--report", str(report)]) == 0
    text = capsys.readouterr().out
    assert "/layer2/layer2.0  projection" in text and "9 units (7 identity, 2 projection)" in text
    payload = json.loads(report.read_text())
    assert len(payload["units"]) == 9 and all(unit["score"] > 0 for unit in payload["units"])
    assert payload["flops"] == model_stats(onnx.load(RESNET20), {"input": (1, 3, 32, 32)}).flops


@pytest.mark.parametrize("score", ["sparsity", "data", "data-e2e"])
def test_blocks_scores(score, data_path, capsys):
    assert main(["blocks", RESNET20, "--score", score, "--data", str(data_path), "--mean", "0.5", "--std", "0.25"]) == 0
    assert f"score ({score})" in capsys.readouterr().out


def test_bypass_count_writes_a_smaller_model_and_a_report(tmp_path, capsys):
    out, report = tmp_path / "b.onnx", tmp_path / "r.json"
    assert main(["bypass", RESNET20, str(out), "--blocks", "3", "--runs", "2", "--report", str(report)]) == 0
    text = capsys.readouterr().out
    assert "bypassed 3 of 9 units by bn score" in text and "FLOPs" in text and "top-1 agreement" in text
    payload = json.loads(report.read_text())
    assert len(payload["bypassed"]) == 3 and sum(unit["bypassed"] for unit in payload["units"]) == 3
    assert payload["after"]["stats"]["flops"] < 0.75 * payload["before"]["stats"]["flops"]
    assert payload["after"]["latency"]["median_ms"] > 0
    onnx.checker.check_model(onnx.load(out), full_check=True)


def test_bypass_by_names_and_by_flops_target(tmp_path, data_path):
    out = tmp_path / "b.onnx"
    assert main(["bypass", RESNET20, str(out), "--names", "/layer1/layer1.0,/layer3/layer3.2", "--runs", "0",
                 "-q", "--report", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["bypassed"] == ["/layer1/layer1.0", "/layer3/layer3.2"]
    assert main(["bypass", RESNET20, str(out), "--flops-target", "0.7", "--score", "data", "--data", str(data_path),
                 "--runs", "0", "-q"]) == 0
    ratio = model_stats(onnx.load(out), {"input": (1, 3, 32, 32)}).flops / model_stats(
        onnx.load(RESNET20), {"input": (1, 3, 32, 32)}).flops
    assert ratio <= 0.7


@pytest.mark.parametrize("extra, message", [
    (["--blocks", "40"], "--blocks 40: the model has 9 layer-pruning units"),
    (["--names", "/layer9"], "no layer-pruning unit named /layer9"),
    (["--flops-target", "0.001"], "unreachable"),
    (["--blocks", "1", "--score", "magic"], None),
])
def test_impossible_requests_exit_2(tmp_path, capsys, extra, message):
    out = tmp_path / "b.onnx"
    if message is None:
        with pytest.raises(SystemExit) as exit_:
            main(["bypass", RESNET20, str(out), *extra])
        assert exit_.value.code == 2
    else:
        assert main(["bypass", RESNET20, str(out), "--runs", "0", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("onnxprune: error:") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_missing_input_and_missing_selection(tmp_path, capsys):
    assert main(["blocks", str(tmp_path / "none.onnx")]) == 2
    with pytest.raises(SystemExit) as exit_:
        main(["bypass", RESNET20, str(tmp_path / "b.onnx")])
    assert exit_.value.code == 2


def test_joint_reports_each_step(tmp_path, capsys):
    out, report = tmp_path / "j.onnx", tmp_path / "r.json"
    assert main(["joint", RESNET20, str(out), "--layers", "2", "--runs", "0", "--report", str(report)]) == 0
    text = capsys.readouterr().out
    for step in ("1. adaptive thresholds", "2. ranked 9 units", "3. bypassed 2 units", "4. removed", "5. fine-tuning"):
        assert step in text
    payload = json.loads(report.read_text())
    assert len(payload["bypassed"]) == 2 and payload["after"]["stats"]["flops"] < payload["before"]["stats"]["flops"]
    assert "BatchNormalization" not in model_stats(onnx.load(out)).op_histogram
