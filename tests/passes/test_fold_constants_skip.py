"""fold_constants' fast path: a graph gs could not fold is left exactly as it is, without calling gs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxprune.core.model import to_graph
from onnxprune.passes import fold_constants
from onnxprune.passes.pipeline import prepare
from tests.util import make_model, run_pass, tensor

W = np.ones((4, 3, 1, 1), np.float32)


def conv_then(*nodes, initializers=None, output="y", shape=(1, 4, 8, 8), dtype=TensorProto.FLOAT):
    """x -> Conv(W) -> c -> ``nodes`` -> ``output``."""
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv")
    return make_model([conv, *nodes], [tensor("x", [1, 3, 8, 8])], [tensor(output, list(shape), dtype)],
                      {"w": W, **(initializers or {})})


def test_a_conv_relu_graph_cannot_fold_and_the_pass_leaves_it_alone(monkeypatch):
    model = conv_then(helper.make_node("Relu", ["c"], ["y"], name="relu"))
    graph = prepare(to_graph(model))
    assert not fold_constants.may_fold(graph)
    monkeypatch.setattr(type(graph), "fold_constants", lambda *a, **k: pytest.fail("gs was called"))
    report = fold_constants.run(graph)
    assert (report.rewrites, report.skipped) == ([], [])
    assert [node.name for node in graph.nodes] == ["conv", "relu"]


def test_an_add_of_an_activation_and_a_constant_cannot_fold():
    bias = {"k": np.ones((1, 4, 1, 1), np.float32)}
    model = conv_then(helper.make_node("Add", ["c", "k"], ["y"]), initializers=bias)
    assert not fold_constants.may_fold(prepare(to_graph(model)))


@pytest.mark.parametrize(("nodes", "shape", "dtype"), [
    ([helper.make_node("Constant", [], ["k"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [2.0])),
      helper.make_node("Add", ["c", "k"], ["y"])], (1, 4, 8, 8), TensorProto.FLOAT),
    ([helper.make_node("Shape", ["c"], ["y"])], (4,), TensorProto.INT64),
    ([helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT16)], (1, 4, 8, 8), TensorProto.FLOAT16),
])
def test_constant_shape_and_cast_nodes_keep_the_full_pass(nodes, shape, dtype):
    assert fold_constants.may_fold(prepare(to_graph(conv_then(*nodes, shape=shape, dtype=dtype))))


def test_a_node_reading_only_constants_is_still_folded():
    double = helper.make_node("Mul", ["k", "two"], ["k2"], name="double")
    add = helper.make_node("Add", ["c", "k2"], ["y"], name="add")
    model = conv_then(double, add, initializers={"k": np.ones((1, 4, 1, 1), np.float32),
                                                 "two": np.full((1, 4, 1, 1), 2, np.float32)})
    assert fold_constants.may_fold(prepare(to_graph(model)))
    result, report = run_pass(model, "fold_constants")
    assert report.rewrites == ["folded Mul 'double'"]
    assert [node.op_type for node in result.graph.node] == ["Conv", "Add"]
