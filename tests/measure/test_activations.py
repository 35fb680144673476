"""activations: inner tensors streamed batch by batch, equal to what onnxruntime computes."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

from onnxprune.core.errors import InputError
from onnxprune.measure import activations
from tests.util import make_model, tensor

INNER = ["a", "r", "s", "b"]


def branched() -> onnx.ModelProto:
    """x -> conv1 -> a -> relu -> r -> {conv2 -> b, Shape -> s (int64)} ; y = b + r. No value_info at all."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "w2": rng.standard_normal((4, 4, 1, 1)).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Shape", ["r"], ["s"], name="shape"),
        helper.make_node("Conv", ["r", "w2"], ["b"], name="conv2", kernel_shape=[1, 1]),
        helper.make_node("Add", ["b", "r"], ["y"], name="add"),
    ]
    return make_model(nodes, [tensor("x", ["n", 3, 6, 6])], [tensor("y", [None] * 4)], inits)


def feeds(count: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32)} for _ in range(count)]


def reference(model: onnx.ModelProto, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every requested tensor as a plain extra output of the full model, run by onnxruntime."""
    import onnxruntime as ort

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(names, feed)


def test_collect_gives_onnxruntime_values_batch_by_batch():
    model, data = branched(), feeds()
    seen: list[dict[str, np.ndarray]] = []
    activations.collect(model, INNER, data, lambda values: seen.append(dict(values)))
    assert len(seen) == len(data)
    for values, feed in zip(seen, data):
        assert list(values) == INNER
        for name, expected in zip(INNER, reference(model, INNER, feed)):
            assert values[name].dtype == expected.dtype
            np.testing.assert_array_equal(values[name], expected)
    assert seen[0]["s"].dtype == np.int64  # declared without type: onnxruntime inferred it


def test_collect_takes_a_generator_and_graph_inputs():
    model, data = branched(), feeds(2)
    seen = []
    activations.collect(model, ["x", "y"], (feed for feed in data), lambda values: seen.append(dict(values)),
                        threads=1, progress="test")
    assert len(seen) == 2
    np.testing.assert_array_equal(seen[1]["x"], data[1]["x"])
    np.testing.assert_array_equal(seen[1]["y"], reference(model, ["y"], data[1])[0])


def test_tap_runs_only_the_nodes_its_tensors_need():
    model = branched()
    early = activations.truncated(model, ["r"])
    assert [node.name for node in early.graph.node] == ["conv1", "relu"]
    assert [init.name for init in early.graph.initializer] == ["w1"]
    assert [value.name for value in early.graph.output] == ["r"]
    assert len(model.graph.node) == 5  # the caller's model is untouched


def test_unknown_tensor_is_refused():
    with pytest.raises(InputError, match="nope"):
        activations.collect(branched(), ["nope"], feeds(1), lambda values: None)


def test_stages_put_parallel_nodes_together():
    graph = gs.import_onnx(branched())
    graph.toposort()
    nodes = {node.name: node for node in graph.nodes}
    chosen = [nodes["conv1"], nodes["shape"], nodes["conv2"], nodes["add"]]
    staged = activations.stages(graph, chosen)
    assert [[node.name for node in stage] for stage in staged] == [["conv1"], ["shape", "conv2"], ["add"]]


def test_cut_is_in_front_of_the_changing_nodes():
    graph = gs.import_onnx(branched()).toposort()
    nodes = {node.name: node for node in graph.nodes}
    assert activations.cut(graph, [nodes["conv2"]], ["y"]) == ["r"]  # y = conv2(r) + r: r feeds both
    assert activations.cut(graph, [nodes["conv1"]], ["b"]) == ["x"]
    assert activations.cut(graph, [nodes["add"]], ["b", "y"]) == ["b", "r"]  # b is not computed from add


@pytest.mark.parametrize("limit", [activations.CACHE_LIMIT, 0], ids=["cached", "from inputs"])
def test_frontier_sees_each_update_like_a_fresh_run(limit):
    """Scale conv2 after a first pass: the second pass, started from the cut, sees the new weights."""
    model, data = branched(), feeds()
    graph = gs.import_onnx(model).toposort()
    nodes = {node.name: node for node in graph.nodes}
    frontier = activations.Frontier(data, limit=limit)
    keep = activations.cut(graph, [nodes["conv2"]], ["y"])
    first = [values["a"] for values in frontier.run(gs.export_onnx(graph), ["a"], keep)]
    nodes["conv2"].inputs[1].values = 3 * nodes["conv2"].inputs[1].values
    clean = [dict(feed) for feed in data]
    if limit:  # the second pass must start from the cut, not from the inputs
        for feed in data:
            feed["x"] = np.full_like(feed["x"], np.nan)
    second = [values["y"] for values in frontier.run(gs.export_onnx(graph), ["y"])]
    updated = gs.export_onnx(graph)
    for feed, a, y in zip(clean, first, second):
        np.testing.assert_array_equal(a, reference(model, ["a"], feed)[0])
        np.testing.assert_allclose(y, reference(updated, ["y"], feed)[0], rtol=1e-5, atol=1e-5)
