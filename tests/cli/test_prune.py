"""The prune and groups commands: what they write, print and refuse."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from models.architectures import export_onnx
from onnxprune.cli import main
from onnxprune.measure.stats import model_stats


@functools.cache
def _resnet() -> onnx.ModelProto:
    return export_onnx("resnet_basic")


@pytest.fixture()
def model_path(tmp_path):
    path = tmp_path / "resnet.onnx"
    onnx.save(_resnet(), path)
    return path


def test_prune_ratio_writes_smaller_model_and_report(model_path, tmp_path, capsys):
    out, report = tmp_path / "pruned.onnx", tmp_path / "r.json"
    assert main(["prune", str(model_path), str(out), "--ratio", "0.5", "--round-to", "1", "--runs", "3",
                 "--report", str(report)]) == 0
    before, after = model_stats(onnx.load(model_path)), model_stats(onnx.load(out))
    assert after.params < 0.4 * before.params
    assert after.flops < 0.4 * before.flops
    assert "BatchNormalization" not in after.op_histogram
    payload = json.loads(report.read_text())
    assert sum(group["removed"] for group in payload["groups"]) == 128
    assert 0 <= payload["fidelity"]["top1_agreement"] <= 1
    text = capsys.readouterr().out
    assert "removed 128 channels in 7 groups" in text and "cosine" in text


def test_keep_bn_leaves_batchnorm_for_finetuning_and_optimize_folds_it_exactly(model_path, tmp_path):
    kept, folded, again = tmp_path / "kept.onnx", tmp_path / "folded.onnx", tmp_path / "again.onnx"
    bns = model_stats(onnx.load(model_path)).op_histogram["BatchNormalization"]
    assert main(["prune", str(model_path), str(kept), "--ratio", "0.5", "--runs", "0", "--keep-bn", "-q"]) == 0
    assert main(["prune", str(model_path), str(folded), "--ratio", "0.5", "--runs", "0", "-q"]) == 0
    assert model_stats(onnx.load(kept)).op_histogram["BatchNormalization"] == bns
    assert main(["optimize", str(kept), str(again), "--runs", "0", "-q"]) == 0
    assert main(["check", str(folded), str(again), "-q"]) == 0
    assert model_stats(onnx.load(again)).op_histogram == model_stats(onnx.load(folded)).op_histogram


@pytest.mark.parametrize("criterion", ["l2", "bn", "entropy", "random"])
def test_every_criterion_prunes(model_path, tmp_path, criterion):
    out = tmp_path / "pruned.onnx"
    args = ["prune", str(model_path), str(out), "--criterion", criterion, "--ratio", "0.25", "--runs", "0", "-q"]
    assert main(args) == 0
    assert model_stats(onnx.load(out)).params < model_stats(onnx.load(model_path)).params


def test_flops_target_is_met(model_path, tmp_path):
    out = tmp_path / "pruned.onnx"
    assert main(["prune", str(model_path), str(out), "--flops-target", "0.5", "--global", "--runs", "0", "-q"]) == 0
    ratio = model_stats(onnx.load(out)).flops / model_stats(onnx.load(model_path)).flops
    assert 0.4 < ratio <= 0.5


def test_round_to_keeps_multiples_and_exclude_keeps_layers(model_path, tmp_path):
    out, report = tmp_path / "pruned.onnx", tmp_path / "r.json"
    args = ["prune", str(model_path), str(out), "--ratio", "0.3", "--round-to", "8", "--exclude", "/1/",
            "--fuse", "--runs", "0", "-q", "--report", str(report)]
    assert main(args) == 0
    for group in json.loads(report.read_text())["groups"]:
        assert (group["channels"] - group["removed"]) % 8 == 0
    weights = {init.name: init for init in onnx.load(out).graph.initializer}
    assert all(dim % 8 == 0 for init in weights.values() if len(init.dims) == 4 for dim in init.dims[:1])


def test_latency_target_reports_the_table_the_check_and_the_measurement(model_path, tmp_path, capsys, monkeypatch):
    from onnxprune.channels import policy
    from tests.channels.test_policy import FakeTable

    # a fake layer table: timed on a busy machine, this tiny model's floor can sit above the target
    monkeypatch.setattr(policy, "LatencyTable", lambda threads: FakeTable())
    out, report = tmp_path / "pruned.onnx", tmp_path / "r.json"
    assert main(["prune", str(model_path), str(out), "--latency-target", "0.5", "--latency-trials", "1",
                 "--runs", "3", "--report", str(report)]) == 0
    payload = json.loads(report.read_text())
    assert payload["predicted_latency"] <= 0.5 and payload["checked_latency"] > 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("latency:"))
    assert "by the layer table" in line and "when the pruning was checked" in line and "measured" in line


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ratio", "1.5"], "ratio"),
        (["--flops-target", "0.0001", "--global"], "unreachable"),
        (["--min-channels", "-1", "--ratio", "0.5"], "--min-channels -1 must be at least 0"),
        (["--latency-target", "0.5", "--latency-trials", "-1"], "--latency-trials -1 must be at least 0"),
    ],
)
def test_impossible_requests_exit_2(model_path, tmp_path, capsys, extra, message):
    out = tmp_path / "pruned.onnx"
    assert main(["prune", str(model_path), str(out), "--runs", "0", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("onnxprune: error:") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_unknown_criterion_is_a_usage_error(model_path, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", str(model_path), str(tmp_path / "o.onnx"), "--criterion", "nope"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_groups_lists_prunable_and_blocked(model_path, capsys, tmp_path):
    report = tmp_path / "g.json"
    assert main(["groups", str(model_path), "--report", str(report)]) == 0
    text = capsys.readouterr().out
    assert "7 prunable groups" in text and "graph output 'logits'" in text
    groups = json.loads(report.read_text())["groups"]
    assert sum(group["prunable_channels"] for group in groups) == 256


def test_layers_bypasses_units_before_channel_pruning(model_path, tmp_path, capsys):
    out, report = tmp_path / "pruned.onnx", tmp_path / "r.json"
    args = ["prune", str(model_path), str(out), "--layers", "1", "--threshold", "adaptive", "--criterion", "bn",
            "--runs", "0", "--report", str(report)]
    assert main(args) == 0
    adds = [node for node in onnx.load(out).graph.node if node.op_type == "Add"]
    assert len(adds) == 3  # resnet_basic has 4 residual units; one was bypassed
    payload = json.loads(report.read_text())
    assert payload["command"] == "joint" and len(payload["bypassed"]) == 1
    assert "bypassed 1 units" in capsys.readouterr().out


RESNET20 = Path(__file__).resolve().parents[2] / "models" / "resnet20_cifar10.onnx"
CIFAR = Path(__file__).resolve().parents[2] / "models" / "data" / "cifar10_test1000.npz"
NORMALISE = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]


def test_recover_bn_lsq_raises_fidelity_measured_on_held_out_images(tmp_path, capsys):
    images = np.load(CIFAR)["x_test"]
    held_out, calibration = tmp_path / "eval.npz", tmp_path / "calib.npz"
    np.savez(held_out, x=images[:32])
    np.savez(calibration, x=images[500:548])
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    assert main(["prune", str(RESNET20), str(out), "--ratio", "0.3", "--recover", "bn,lsq", "--data", str(held_out),
                 "--calibration", str(calibration), *NORMALISE, "--runs", "0", "--report", str(report)]) == 0
    payload = json.loads(report.read_text())
    recovered, plain = payload["fidelity"]["cosine"], payload["fidelity_without_recovery"]["cosine"]
    assert recovered > plain + 0.1, (plain, recovered)
    assert [p["name"] for p in payload["passes"] if p["name"] in ("recalibrate_bn", "reconstruct")] == [
        "recalibrate_bn", "reconstruct"]
    assert "recovery (recalibrate_bn, reconstruct): cosine" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "message"), [
    (["--recover", "magic"], "--recover magic is unknown; known: fuse, bn, lsq"),
    (["--recover", "lsq"], "--recover bn and lsq need calibration data (--data)"),
])
def test_impossible_recovery_requests_exit_2(model_path, tmp_path, capsys, extra, message):
    assert main(["prune", str(model_path), str(tmp_path / "p.onnx"), "--ratio", "0.3", "--runs", "0", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.onnx").exists()
