"""Block detection: exactly the expected layer-pruning units on every residual family, none elsewhere."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper
from torch import nn

from models.architectures import conv_bn, export, export_onnx, residual
from onnxprune import api
from onnxprune.core.model import to_graph
from onnxprune.layers.units import Block, find_blocks, scan
from onnxprune.measure.stats import model_stats
from onnxprune.passes.pipeline import optimize, prepare
from tests.util import make_model, tensor

MODELS = Path(__file__).resolve().parents[2] / "models"
ID, P = "identity", "projection"

EXPECTED = {
    "resnet_basic": [("/1/1.0", ID), ("/2/2.0", P), ("/3/3.0", ID), ("/4/4.0", P)],
    "resnet_bottleneck": [("/1/1.0", P), ("/2/2.0", ID), ("/3/3.0", P)],
    "resnet_cifar_option_a": [("/1/1.0", ID), ("/2/2.0", P), ("/3/3.0", ID), ("/4/4.0", P)],
    "mobilenet_v2": [("/3/3.0", ID), ("/5/5.0", ID)],  # stride 1 and same width only
    "efficientnet": [("/3/3.0", ID), ("/5/5.0", ID)],
    "regnet": [("/1/1.0", ID), ("/2/2.0", P), ("/3/3.0", ID), ("/4/4.0", P)],
    "convnext": [("/2/2.0", ID), ("/3/3.0", ID), ("/6/6.0", ID)],
    "vgg_bn": [],
    "plain_chain": [],
    "densenet": [],
}


@functools.cache
def zoo(name: str) -> onnx.ModelProto:
    return export_onnx(name)


@functools.cache
def shipped(name: str) -> onnx.ModelProto:
    return onnx.load(MODELS / f"{name}.onnx")


def prepared(model: onnx.ModelProto) -> gs.Graph:
    """The state layer pruning works on: exact clean-ups done, BN still present."""
    graph = to_graph(model)
    api.prepare_for_pruning(graph)
    return graph


def ops(graph: gs.Graph, names) -> list[str]:
    nodes = {node.name: node for node in graph.nodes}
    return [nodes[name].op for name in names]


def zero_body(graph: gs.Graph, block: Block) -> None:
    """Make F(x) = 0 exactly: zero the last BN's γ and β, or the last constant Mul (a layer scale)."""
    nodes = {node.name: node for node in graph.nodes}
    for name in reversed(block.body):
        node = nodes[name]
        constants = [t for t in node.inputs if isinstance(t, gs.Constant)]
        if node.op == "BatchNormalization":
            constants = node.inputs[1:3]
        elif node.op != "Mul" or not constants:
            continue
        for constant in constants:
            constant.values = np.zeros_like(constant.values)
        return
    raise AssertionError(f"nothing to zero in {block.name}")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_zoo_units_are_exactly_the_residual_blocks(name):
    found = find_blocks(prepared(zoo(name)))
    assert [(block.name, block.kind) for block in found] == EXPECTED[name]


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenet_v2", "convnext"])
def test_units_survive_full_optimization(name):
    graph = prepare(to_graph(optimize(zoo(name)).model))
    assert [(block.name, block.kind) for block in find_blocks(graph)] == EXPECTED[name]


def test_unit_contents_per_family():
    graph = prepared(zoo("resnet_basic"))
    basic, down = find_blocks(graph)[:2]
    assert ops(graph, basic.body) == ["Conv", "BatchNormalization", "Relu", "Conv", "BatchNormalization"]
    assert basic.projection == () and basic.shortcut == basic.source
    assert ops(graph, down.projection) == ["Conv", "BatchNormalization"]
    graph = prepared(zoo("resnet_cifar_option_a"))
    assert ops(graph, find_blocks(graph)[1].projection) == ["Slice", "Pad"]
    graph = prepared(zoo("mobilenet_v2"))
    assert ops(graph, find_blocks(graph)[0].body) == ["Conv", "BatchNormalization", "Clip"] * 2 + [
        "Conv", "BatchNormalization"]
    graph = prepared(zoo("convnext"))
    body = ops(graph, find_blocks(graph)[0].body)
    assert body[0] == "Conv" and body.count("MatMul") == 2 and "ReduceMean" in body
    assert body[-2:] == ["Mul", "Transpose"]


def test_costs_are_the_stats_of_the_removed_nodes():
    model = zoo("resnet_basic")
    graph = prepared(model)
    block = find_blocks(graph)[0]
    per_node = {cost.name: cost for cost in model_stats(gs.export_onnx(graph), {"input": (1, 3, 32, 32)}).per_node}
    assert block.macs == sum(per_node[name].macs for name in (*block.body, block.add)) > 0
    assert block.params == sum(per_node[name].params for name in block.body) == 2 * (16 * 16 * 9 + 4 * 16)
    assert block.output_shape == (1, 16, 32, 32)


def test_shipped_resnets():
    for name, identity, projection in (("resnet20_cifar10", 7, 2), ("resnet56_cifar10", 25, 2)):
        found = find_blocks(prepared(shipped(name)))
        assert [b.kind for b in found].count(ID) == identity and [b.kind for b in found].count(P) == projection
        assert all(block.macs > 0 for block in found)
    names = [block.name for block in find_blocks(prepared(shipped("resnet20_cifar10")))]
    assert names == [f"/layer{s}/layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]


def test_only_the_innermost_of_nested_residuals():
    inner = residual(nn.Sequential(conv_bn(8, 8), conv_bn(8, 8, act=None)), act=nn.ReLU)
    outer = nn.Sequential(conv_bn(3, 8), residual(nn.Sequential(conv_bn(8, 8), inner, conv_bn(8, 8, act=None))))
    result = scan(prepared(export(outer.eval(), (1, 3, 16, 16))))
    assert [block.name for block in result.blocks] == ["/1/1.0/branches.0/branches.0.1/branches.0.1.0"]
    assert result.skipped == [f"unit at '/1/1.0/Add': holds the unit at '{result.blocks[0].add}'; only innermost units"]


# --- small graphs: operand order, Sum, refusals ---------------------------------------------------


def _unit(merge: str = "Add", swap: bool = False, cout: int = 4, cin: int = 4, extra: list | None = None):
    """x -> Conv -> Relu -> Conv -> f; y = merge(f, x) -> Relu -> out."""
    rng = np.random.default_rng(0)
    operands = ["x", "f"] if swap else ["f", "x"]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="/u/conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="/u/relu"),
        helper.make_node("Conv", ["r", "w2"], ["f"], name="/u/conv2", pads=[1, 1, 1, 1]),
        helper.make_node(merge, operands, ["y"], name="/u/add"),
        helper.make_node("Relu", ["y"], ["out"], name="/act"),
        *(extra or []),
    ]
    outputs = [tensor(name, [1, 4, 6, 6]) for name in ["out"] + [n.output[0] for n in extra or []]]
    weights = {"w1": rng.standard_normal((4, cin, 3, 3)).astype(np.float32),
               "w2": rng.standard_normal((cout, 4, 3, 3)).astype(np.float32)}
    return make_model(nodes, [tensor("x", [1, cin, 6, 6])], outputs, weights)


@pytest.mark.parametrize("merge, swap", [("Add", False), ("Add", True), ("Sum", False), ("Sum", True)])
def test_either_operand_order_and_sum(merge, swap):
    (block,) = find_blocks(prepare(to_graph(_unit(merge, swap))))
    assert (block.name, block.kind, block.shortcut, block.body) == ("/u", ID, "x", ("/u/conv1", "/u/relu", "/u/conv2"))


def test_a_body_tensor_read_outside_is_refused_with_the_reason():
    leak = helper.make_node("Sigmoid", ["r"], ["leak"], name="/other")
    result = scan(prepare(to_graph(_unit(extra=[leak]))))
    assert result.blocks == []
    assert any("also read by '/other'" in line for line in result.skipped)


def test_a_broadcasting_merge_is_refused():
    result = scan(prepare(to_graph(_unit(cin=1))))  # x [1,1,6,6] + f [1,4,6,6]: y := x would shrink y
    assert result.blocks == []
    assert any("shapes differ" in line for line in result.skipped)


def test_a_body_with_a_second_input_is_not_a_unit():
    nodes = [helper.make_node("Mul", ["x", "g"], ["f"], name="/u/mul"), helper.make_node("Add", ["f", "x"], ["y"])]
    model = make_model(nodes, [tensor("x", [1, 4]), tensor("g", [1, 4])], [tensor("y", [1, 4])])
    assert scan(prepare(to_graph(model))).blocks == []
