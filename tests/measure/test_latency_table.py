"""The layer latency table: one-node models that run, a per-machine cache that makes a second run time nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxprune.measure.latency_table import CACHE_ENV, LatencyTable, LayerShape, default_cache_dir, machine_key
from onnxprune.measure.verify import run

CONV = LayerShape("Conv", (1, 8, 6, 6), (16, 8, 3, 3), (("group", 1), ("pads", (1, 1, 1, 1))))
DEPTHWISE = LayerShape("Conv", (1, 8, 6, 6), (8, 1, 3, 3), (("group", 8), ("strides", (2, 2))))
GEMM = LayerShape("Gemm", (1, 12), (5, 12), (("transB", 1),))


@pytest.mark.parametrize(("shape", "output"), [(CONV, (1, 16, 6, 6)), (DEPTHWISE, (1, 8, 2, 2)), (GEMM, (1, 5))])
def test_one_node_model_has_the_layer_shape(shape, output):
    model = shape.model()
    (y,) = run(model, [{"x": np.ones(shape.input, np.float32)}])[0].values()
    assert y.shape == output and [n.op_type for n in model.graph.node] == [shape.op]


def test_second_table_on_the_same_cache_times_nothing(tmp_path):
    first = LatencyTable(cache_dir=tmp_path, runs=2)
    times = first([CONV, GEMM, CONV])
    assert first.timed == 2 and times[0] == times[2] and all(t is not None and t > 0 for t in times)
    assert first([GEMM]) == [times[1]] and first.timed == 2
    second = LatencyTable(cache_dir=tmp_path, runs=2)
    assert second([CONV, GEMM]) == times[:2] and second.timed == 0
    cached = json.loads(second.path.read_text())
    assert cached == {CONV.key: times[0], GEMM.key: times[1]}
    assert "-t1" in second.path.name and LatencyTable(threads=2, cache_dir=tmp_path).path != second.path


def test_a_shape_onnxruntime_refuses_is_none(tmp_path):
    broken = LayerShape("Conv", (1, 8, 6, 6), (16, 3, 3, 3))  # 8 input channels, weight reads 3
    table = LatencyTable(cache_dir=tmp_path, runs=1)
    assert table([broken, GEMM])[0] is None and table.timed == 2


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "onnxprune"
    assert machine_key(4).endswith("-t4") and "/" not in machine_key(1)


def test_huge_layers_are_not_timed_and_the_budget_bounds_the_rest(tmp_path):
    huge = LayerShape("Conv", (1, 4096, 64, 64), (4096, 4096, 3, 3), (("pads", (1, 1, 1, 1)),))
    assert huge.macs > 10**11
    table = LatencyTable(cache_dir=tmp_path, runs=1)
    assert table([huge, GEMM])[0] is None and table.timed == 2  # answered at once: no 600 MiB weight built
    spent = LatencyTable(cache_dir=tmp_path / "other", runs=1, budget_s=0.0)
    assert spent([CONV, GEMM]) == [None, None] and spent.timed == 0 and not spent.path.exists()


def test_a_layer_is_timed_as_inside_a_blocked_network_not_as_a_one_node_model(tmp_path, monkeypatch):
    """Blocked convs drop the reorders of their one-node model; unblocked convs pay the reorders at their borders."""
    from onnxprune.measure import latency_table

    kernels = {
        (1, 64, 56, 56): [("ReorderInput", 0.2), ("Conv", 0.5), ("ReorderOutput", 0.3)],  # the reorder probe
        (1, 16, 10, 10): [("ReorderInput", 0.1), ("Conv", 2.0), ("ReorderOutput", 0.1)],  # blocked
        (1, 14, 10, 10): [("Conv", 3.0)],  # unblocked
        (1, 12): [("Gemm", 0.5)],
    }
    monkeypatch.setattr(latency_table, "_kernel_ms", lambda shape, *_: kernels[shape.input])
    blocked = LayerShape("Conv", (1, 16, 10, 10), (16, 16, 1, 1))
    unblocked = LayerShape("Conv", (1, 14, 10, 10), (14, 14, 1, 1), (("strides", (2, 2)),))
    table = LatencyTable(cache_dir=tmp_path, runs=1)
    ns_per_element = 1e6 * 0.5 / (2 * 64 * 56 * 56)
    assert table([blocked, GEMM, unblocked]) == pytest.approx(
        [2.0, 0.5, 3.0 + ns_per_element * (14 * 10 * 10 + 14 * 5 * 5) * 1e-6])
    assert json.loads(table.path.read_text())["reorder|ns per element"] == pytest.approx(ns_per_element)
    assert "-v3-" in table.path.name  # entries of earlier formats (whole one-node models, warm caches) are not read


def test_profiling_finds_the_reorders_of_a_blocked_conv_and_leaves_no_trace(tmp_path, monkeypatch):
    from onnxprune.measure.latency_table import _kernel_ms

    monkeypatch.chdir(tmp_path)
    blocked = _kernel_ms(LayerShape("Conv", (1, 32, 8, 8), (32, 32, 1, 1)), threads=1, runs=2, warmup=1)
    odd = _kernel_ms(LayerShape("Conv", (1, 14, 8, 8), (14, 14, 1, 1)), threads=1, runs=2, warmup=1)
    assert {"ReorderInput", "ReorderOutput"} <= {op for op, _ in blocked} and all(ms > 0 for _, ms in blocked)
    assert not {"ReorderInput", "ReorderOutput"} & {op for op, _ in odd}
    assert not list(tmp_path.iterdir())  # the profiler's trace went to a temporary folder
