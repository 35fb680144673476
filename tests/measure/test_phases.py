"""The phase timer, and the per-phase seconds ``prune -v`` prints and its report holds."""

from __future__ import annotations

import json
import time

import onnx
import pytest

from models.architectures import export_onnx
from onnxprune.cli import main
from onnxprune.measure.phases import Phases

PRUNE_PHASES = ["load", "clean-up", "analysis", "scoring", "counting", "selection", "surgery", "folding", "export",
                "measurement", "verification", "save"]


def test_time_adds_up_repeated_phases_in_first_run_order():
    phases = Phases()
    with phases.time("b"):
        time.sleep(0.01)
    phases.add("a", 0.5)
    with phases.time("b"):
        time.sleep(0.01)
    assert list(phases.seconds) == ["b", "a"]
    assert 0.02 <= phases.seconds["b"] < 0.5
    assert phases.total == pytest.approx(0.5 + phases.seconds["b"])


def test_time_records_a_block_that_raises():
    phases = Phases()
    with pytest.raises(ValueError), phases.time("failing"):
        raise ValueError("boom")
    assert list(phases.seconds) == ["failing"]


def test_replace_puts_the_parts_in_place_of_the_phase():
    outer = Phases({"load": 1.0, "rewrite": 5.0, "save": 2.0})
    parts = Phases({"analysis": 3.0, "save": 0.5})
    replaced = outer.replace("rewrite", parts)
    assert replaced.seconds == {"load": 1.0, "analysis": 3.0, "save": 2.5}
    assert outer.seconds["rewrite"] == 5.0  # the original record is unchanged


def test_prune_verbose_prints_every_phase_and_the_report_holds_them(tmp_path, capsys):
    source, out, report = tmp_path / "resnet.onnx", tmp_path / "pruned.onnx", tmp_path / "r.json"
    onnx.save(export_onnx("resnet_basic"), source)
    assert main(["prune", str(source), str(out), "--ratio", "0.5", "--runs", "2", "-v", "--report", str(report)]) == 0
    table = capsys.readouterr().out.split("phase ")[-1].splitlines()[2:]
    names = [line.rsplit(maxsplit=1)[0] for line in table]
    assert names == [*PRUNE_PHASES, "latency timing", "total"]
    phases = json.loads(report.read_text())["phases"]
    assert list(phases) == [*PRUNE_PHASES, "latency timing"]
    assert all(seconds >= 0 for seconds in phases.values())
    assert float(table[-1].split()[-1]) == pytest.approx(sum(phases.values()), abs=2e-3)


def test_prune_without_verbose_prints_no_phases(tmp_path, capsys):
    source, out = tmp_path / "resnet.onnx", tmp_path / "pruned.onnx"
    onnx.save(export_onnx("resnet_basic"), source)
    assert main(["prune", str(source), str(out), "--ratio", "0.5", "--runs", "0"]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text
    assert "clean-up" not in text and "seconds" not in text
