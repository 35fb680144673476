"""Latency measurement: counts and sanity of the statistics, never timing thresholds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxprune.core.errors import InputError
from onnxprune.measure.latency import compare_latency, measure
from onnxprune.measure.verify import session


def relu_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


FEED = {"x": np.ones((1, 8), np.float32)}


def test_measure_counts_runs_and_orders_statistics():
    lat = measure(relu_model(), FEED, runs=7, warmup=1, threads=1, optimize=False)
    assert lat.runs == 7 and lat.threads == 1
    assert 0 < lat.min_ms <= lat.median_ms <= lat.p90_ms
    assert lat.mean_ms > 0
    assert set(lat.to_dict()) == {"median_ms", "p90_ms", "mean_ms", "min_ms", "runs", "threads"}


def test_measure_accepts_session_and_progress(capsys):
    lat = measure(session(relu_model()), FEED, runs=3, warmup=0, progress=True)
    assert lat.runs == 3
    assert capsys.readouterr().out == ""  # the bar goes to stderr


def test_compare_latency_interleaves_both_models():
    a, b, ratio = compare_latency(relu_model(), relu_model(), FEED, runs=5, warmup=1)
    assert a.runs == b.runs == 5
    assert ratio == pytest.approx(b.median_ms / a.median_ms)


@pytest.mark.parametrize(("runs", "warmup"), [(0, 1), (3, -1)])
def test_bad_counts_are_input_errors(runs, warmup):
    with pytest.raises(InputError, match="runs >= 1"):
        measure(relu_model(), FEED, runs=runs, warmup=warmup)
