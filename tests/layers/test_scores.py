"""Block importance: seed 001's sparsity score from known γ, the BN gain ratio, and the data scores."""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from onnxprune.core.data import random_feeds, resolve_input_shapes
from onnxprune.core.errors import InputError
from onnxprune.core.graph import constant_value
from onnxprune.layers import scores as block_importance
from onnxprune.layers.units import find_blocks
from tests.layers.test_units import prepared, shipped, zero_body, zoo


def _bns(graph: gs.Graph, names) -> list[gs.Node]:
    nodes = {node.name: node for node in graph.nodes}
    return [nodes[name] for name in names if nodes[name].op == "BatchNormalization"]


def gamma(node: gs.Node) -> float:
    return float(np.abs(constant_value(node.inputs[1])).mean())


def test_bn_sparsity_is_the_fraction_below_the_first_valley():
    assert block_importance.bn_sparsity(np.array([0.001] * 4 + [1.0] * 4)) == 0.5  # δ = 0.01
    assert block_importance.bn_sparsity(np.array([-0.002, 0.003, 0.5, 0.52, 0.51])) == 0.4  # |γ|
    assert block_importance.bn_sparsity(np.ones(8)) == 0.0  # no valley before the bulk


def test_sparsity_score_is_one_minus_the_mean_sparsity():
    graph = prepared(zoo("resnet_basic"))
    block = find_blocks(graph)[0]
    first, last = _bns(graph, block.body)
    first.inputs[1].values = np.array([0.001] * 8 + [1.0] * 8, np.float32)  # s = 0.5
    last.inputs[1].values = np.ones(16, np.float32)  # s = 0
    assert block_importance.score_blocks(graph, [block], "sparsity")[block.name] == pytest.approx(0.75)


def test_sparsity_of_a_body_without_bn_is_unscored():
    graph = prepared(zoo("convnext"))
    scores = block_importance.score_blocks(graph, find_blocks(graph), "sparsity")
    assert all(math.isnan(score) for score in scores.values())


def test_bn_score_is_the_last_bn_gain_over_the_shortcut_gain():
    graph = prepared(zoo("resnet_basic"))
    identity, projection = find_blocks(graph)[:2]
    scores = block_importance.score_blocks(graph, [identity, projection], "bn")
    assert scores[identity.name] == pytest.approx(gamma(_bns(graph, identity.body)[-1]))
    expected = gamma(_bns(graph, projection.body)[-1]) / gamma(_bns(graph, projection.projection)[-1])
    assert scores[projection.name] == pytest.approx(expected)


def test_bn_score_without_bn_uses_the_last_layer_and_its_layer_scale():
    graph = prepared(zoo("convnext"))
    block = find_blocks(graph)[0]
    zero_body(graph, block)  # the layer scale
    assert block_importance.score_blocks(graph, [block], "bn")[block.name] == 0.0


@pytest.mark.parametrize("score", ["data", "data-e2e"])
def test_data_scores_rank_a_zeroed_unit_lowest(score):
    model = shipped("resnet20_cifar10")
    graph = prepared(model)
    found = find_blocks(graph)
    zero_body(graph, found[4])
    feeds = random_feeds(model, resolve_input_shapes(model), count=2)
    scores = block_importance.score_blocks(graph, found, score, feeds)
    assert scores[found[4].name] == pytest.approx(0.0, abs=1e-6)
    assert min(scores, key=scores.get) == found[4].name
    assert all(scores[block.name] > 1e-3 for block in found if block is not found[4])


def test_output_change_metrics():
    reference = [{"y": np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])}]
    swapped = [{"y": np.array([[0.0, 2.0, 0.0], [0.0, 3.0, 0.0]])}]
    assert block_importance.output_change(reference, reference) == 0.0
    assert block_importance.output_change(reference, swapped, "top1") == 0.5
    assert block_importance.output_change(reference, swapped, "kl") > 0
    assert block_importance.output_change(reference, swapped, "l2") == pytest.approx(np.sqrt(8) / np.sqrt(13))


def test_bad_requests_are_input_errors():
    graph = prepared(zoo("resnet_basic"))
    found = find_blocks(graph)
    with pytest.raises(InputError, match="unknown"):
        block_importance.score_blocks(graph, found, "taylor")
    with pytest.raises(InputError, match="needs calibration data"):
        block_importance.score_blocks(graph, found, "data")


@pytest.mark.parametrize("group", [2, 4])
def test_filters_of_a_grouped_conv_transpose_are_one_per_output_channel(group):
    weight = np.random.default_rng(0).standard_normal((4, 8 // group, 3, 3)).astype(np.float32)
    node = gs.Node("ConvTranspose", attrs={"group": group}, inputs=[gs.Variable("x"), gs.Constant("w", weight)],
                   outputs=[gs.Variable("y")])
    rows = 4 // group
    expected = [weight[g * rows:(g + 1) * rows, j].ravel() for g in range(group) for j in range(8 // group)]
    np.testing.assert_array_equal(block_importance._filters(node), np.stack(expected))
