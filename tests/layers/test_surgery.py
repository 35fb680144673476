"""bypass_blocks: the zero-body oracle, the exact MAC drop and refusals.

The oracle: a unit whose body was made to output exactly 0 (last BN's γ = β = 0, or a zero layer
scale) computes y = s, so bypassing it must leave the outputs unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxprune.core.data import resolve_input_shapes
from onnxprune.core.model import to_graph, to_model
from onnxprune.layers import surgery as bypass_blocks
from onnxprune.layers.units import find_blocks
from onnxprune.measure.stats import model_stats
from onnxprune.passes.pipeline import prepare
from tests.layers.test_units import EXPECTED, _unit, prepared, shipped, zero_body, zoo
from tests.util import assert_equivalent, make_model, outputs, random_inputs, tensor

RESIDUAL = sorted(name for name, units in EXPECTED.items() if units)


@pytest.mark.parametrize("name", RESIDUAL)
def test_bypassing_zeroed_units_keeps_the_outputs(name):
    model = zoo(name)
    graph = prepared(model)
    found = find_blocks(graph)
    for block in found:
        zero_body(graph, block)
    reference = to_model(graph, model)
    report = bypass_blocks.run(graph, found)
    assert len(report.rewrites) == len(found) and report.skipped == []
    result = to_model(graph, model)
    assert_equivalent(reference, result, rel=1e-5)
    removed = sum(len(block.body) + 1 for block in found)
    assert len(result.graph.node) == len(reference.graph.node) - removed
    assert find_blocks(prepare(to_graph(result))) == []


def test_flops_drop_by_exactly_the_units_macs():
    model = shipped("resnet56_cifar10")
    graph = prepared(model)
    found = find_blocks(graph)
    chosen = [found[i] for i in (0, 4, 9, 13, 18, 26)]  # identity units of every stage, both option-A units
    assert [block.kind for block in chosen].count("projection") == 2
    shapes = resolve_input_shapes(model)
    before = model_stats(to_model(graph, model), shapes)
    report = bypass_blocks.run(graph, chosen)
    assert len(report.rewrites) == 6
    after = model_stats(to_model(graph, model), shapes)
    assert before.macs - after.macs == sum(block.macs for block in chosen)
    assert before.params - after.params == sum(block.params for block in chosen)
    result = to_model(graph, model)
    onnx.checker.check_model(result, full_check=True)
    assert outputs(result, random_inputs(result))[0].shape == (2, 10)
    assert [b.name for b in find_blocks(prepare(to_graph(result)))] == [
        b.name for b in found if b not in chosen]


def test_a_graph_output_keeps_its_name():
    nodes = [helper.make_node("Conv", ["x", "w"], ["f"], name="/u/conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["x", "f"], ["y"], name="/u/add")]
    model = make_model(nodes, [tensor("x", [1, 4, 5, 5])], [tensor("y", [1, 4, 5, 5])],
                       {"w": np.zeros((4, 4, 3, 3), np.float32)})
    graph = prepare(to_graph(model))
    report = bypass_blocks.run(graph, find_blocks(graph))
    assert len(report.rewrites) == 1
    result = to_model(graph, model)
    assert [node.op_type for node in result.graph.node] == ["Identity"]
    assert_equivalent(model, result)


def test_a_unit_that_would_break_shapes_is_refused():
    model = _unit(cin=1)  # y = x[1,1,6,6] + f[1,4,6,6]: y := x would change y's shape
    graph = prepare(to_graph(model))
    good = find_blocks(prepare(to_graph(_unit())))[0]  # the same names, on a graph where it is legal
    report = bypass_blocks.run(graph, [good])
    assert report.rewrites == []
    assert len(report.skipped) == 1 and "shapes differ" in report.skipped[0]
    assert [n.op_type for n in to_model(graph, model).graph.node] == [n.op_type for n in model.graph.node]


def test_a_unit_bypassed_twice_is_left_alone_the_second_time():
    graph = prepared(zoo("resnet_basic"))
    block = find_blocks(graph)[0]
    assert len(bypass_blocks.run(graph, [block]).rewrites) == 1
    report = bypass_blocks.run(graph, [block])
    assert report.rewrites == [] and "not in the graph" in report.skipped[0]
