"""Unit selection: by count (lowest scores), by FLOPs target (fewest units), by name; impossible requests refused."""

from __future__ import annotations

import pytest

from onnxprune.core.errors import OptionError
from onnxprune.layers.policy import select_blocks
from onnxprune.layers.units import find_blocks
from tests.layers.test_units import prepared, shipped


@pytest.fixture(scope="module")
def units():
    return find_blocks(prepared(shipped("resnet20_cifar10")))


def test_select_by_count_takes_the_lowest_scores_in_graph_order(units):
    scores = {block.name: float(-i) for i, block in enumerate(units)}  # the last units score lowest
    chosen = select_blocks(units, scores, count=3)
    assert chosen == units[-3:]
    assert select_blocks(units, scores, count=0) == []


def test_select_by_flops_target_meets_it_with_the_fewest_units(units):
    total = 2 * sum(block.macs for block in units)
    chosen = select_blocks(units, {}, flops_target=0.8, total_macs=total)
    saved = sum(block.macs for block in chosen)
    assert total - saved <= 0.8 * total < total - saved + chosen[-1].macs


def test_select_by_names(units):
    chosen = select_blocks(units, names=["/layer3/layer3.2", "/layer1/layer1.0/Add"])
    assert [block.name for block in chosen] == ["/layer1/layer1.0", "/layer3/layer3.2"]


@pytest.mark.parametrize("options, message", [
    ({"count": 40}, "count 40: the model has 9 layer-pruning units"),
    ({"names": ["/nope"]}, "no layer-pruning unit named /nope"),
    ({"flops_target": 0.01, "total_macs": 10**9}, "is unreachable"),
    ({"flops_target": 1.5, "total_macs": 10**9}, "must be in (0, 1]"),
    ({"count": 1, "names": ["/layer1/layer1.0"]}, "exactly one"),
    ({}, "exactly one"),
])
def test_impossible_selections_are_input_errors(units, options, message):
    with pytest.raises(OptionError) as error:
        select_blocks(units, {}, **options)
    assert message in str(error.value)
