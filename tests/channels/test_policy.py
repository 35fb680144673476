"""Policies: from per-channel scores to the channels each group loses, under floors and targets."""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import helper

from onnxprune.channels import importance
from onnxprune.channels import surgery as prune_channels
from onnxprune.channels.analysis import ChannelGraph, ChannelGroup, analyse
from onnxprune.channels.costs import CostModel, channel_costs
from onnxprune.channels.policy import PolicyConfig, adaptive_threshold, default_unit, select
from onnxprune.cli.options import flagged
from onnxprune.core.errors import OptionError
from onnxprune.core.model import to_graph, to_model
from onnxprune.measure.stats import model_stats
from tests.util import make_model, tensor


def network(widths, gammas=None, seed=0):
    """x -> [conv_i -> (bn_i) -> relu] for each width -> conv_out (3 channels, the graph output)."""
    rng = np.random.default_rng(seed)
    inits: dict = {}
    nodes, data, c_in = [], "x", 3
    for i, width in enumerate([*widths, 3]):
        inits[f"conv{i}.w"] = rng.standard_normal((width, c_in, 3, 3)).astype(np.float32)
        out = "y" if i == len(widths) else f"c{i}"
        nodes.append(helper.make_node("Conv", [data, f"conv{i}.w"], [out], name=f"conv{i}", kernel_shape=[3, 3],
                                      pads=[1] * 4))
        if i == len(widths):
            break
        if gammas is not None:
            inits[f"bn{i}.scale"] = np.asarray(gammas[i], dtype=np.float32)
            for key, value in (("bias", 0.0), ("mean", 0.0), ("var", 1.0)):
                inits[f"bn{i}.{key}"] = np.full(width, value, dtype=np.float32)
            params = [f"bn{i}.{key}" for key in ("scale", "bias", "mean", "var")]
            nodes.append(helper.make_node("BatchNormalization", [out, *params], [f"n{i}"], name=f"bn{i}"))
            out = f"n{i}"
        nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
        data, c_in = f"r{i}", width
    return make_model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [None] * 4)], inits)


def exact(**options) -> PolicyConfig:
    """A policy that keeps the counts it computes (no latency rounding, unless options ask for it)."""
    return PolicyConfig(**{"round_to": 1, **options})


def analysed(model) -> ChannelGraph:
    from onnxprune.passes.pipeline import prepare

    return analyse(prepare(to_graph(model)))


def group(channel_graph: ChannelGraph, layer: int) -> ChannelGroup:
    return next(g for g in channel_graph.groups if (f"conv{layer}.w", 0) in g.members)


def ranked(channel_graph: ChannelGraph, layers, seed=1) -> dict[int, np.ndarray]:
    """Scores 0..n-1 in a random order per group, so the lowest channels are known."""
    rng = np.random.default_rng(seed)
    return {group(channel_graph, i).id: rng.permutation(group(channel_graph, i).size).astype(float) for i in layers}


def lowest(scores: np.ndarray, count: int) -> np.ndarray:
    return np.sort(np.argsort(scores)[:count])


# --- ratio, floors, rounding ---------------------------------------------------------------


def test_ratio_removes_exact_counts_of_lowest_per_group():
    channel_graph = analysed(network([8, 10]))
    scores = ranked(channel_graph, [0, 1])
    first, second = group(channel_graph, 0).id, group(channel_graph, 1).id
    removed = select(channel_graph, scores, exact(ratio=0.5))
    np.testing.assert_array_equal(removed[first], lowest(scores[first], 4))
    np.testing.assert_array_equal(removed[second], lowest(scores[second], 5))
    quarter = select(channel_graph, scores, exact(ratio=0.25))
    assert {gid: len(c) for gid, c in quarter.items()} == {first: 2, second: 2}  # floor(2.5) = 2
    assert select(channel_graph, scores, exact(ratio=0.0)) == {}


def test_min_channels_is_a_floor_per_group():
    channel_graph = analysed(network([8, 2]))
    scores = ranked(channel_graph, [0, 1])
    removed = select(channel_graph, scores, exact(ratio=0.9, min_channels=3))
    assert {gid: len(c) for gid, c in removed.items()} == {group(channel_graph, 0).id: 5}
    always_one = select(channel_graph, scores, exact(ratio=0.99, min_channels=0))
    assert len(always_one[group(channel_graph, 0).id]) == 7


@pytest.mark.parametrize(("width", "ratio", "round_to", "kept"), [
    (10, 0.5, 4, 8),   # 5 kept -> 8
    (8, 0.5, 3, 6),    # 4 kept -> 6
    (10, 0.1, 8, 10),  # 9 kept -> 16 > 10: the group stays whole
    (16, 0.7, 8, 8),   # 12 removed, 4 kept -> 8
    (16, 0.5, 8, 8),   # already a multiple
])
def test_round_to_keeps_multiples(width, ratio, round_to, kept):
    channel_graph = analysed(network([width]))
    scores = ranked(channel_graph, [0])
    removed = select(channel_graph, scores, exact(ratio=ratio, round_to=round_to))
    gid = group(channel_graph, 0).id
    assert width - len(removed.get(gid, [])) == kept
    np.testing.assert_array_equal(removed.get(gid, np.zeros(0, int)), lowest(scores[gid], width - kept))


def test_nan_scores_are_never_removed():
    channel_graph = analysed(network([8]))
    gid = group(channel_graph, 0).id
    scores = {gid: np.array([np.nan, 1, 2, 3, 4, 5, 6, np.nan])}
    removed = select(channel_graph, scores, exact(ratio=0.99))
    np.testing.assert_array_equal(removed[gid], [1, 2, 3, 4, 5])  # 6 scorable, 5 removable, one kept


def test_every_axis_keeps_a_channel():
    """conv -> Split(4, 4) -> ... -> Concat: the 4 lowest channels are one Split half; one of them stays."""
    rng = np.random.default_rng(0)
    inits = {"w0": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
             "w1": rng.standard_normal((3, 8, 1, 1)).astype(np.float32), "split": np.array([4, 4], np.int64)}
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c"], name="conv0", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Split", ["c", "split"], ["s0", "s1"], name="split", axis=1),
        helper.make_node("Relu", ["s0"], ["r0"], name="relu0"),
        helper.make_node("Sigmoid", ["s1"], ["r1"], name="sigmoid1"),
        helper.make_node("Concat", ["r0", "r1"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "w1"], ["y"], name="conv1", kernel_shape=[1, 1]),
    ]
    channel_graph = analysed(make_model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [None] * 4)], inits))
    gid = next(g.id for g in channel_graph.groups if ("w0", 0) in g.members)
    scores = {gid: np.array([1.0, 2, 3, 4, 5, 6, 7, 8])}
    removed = select(channel_graph, scores, exact(ratio=0.6))
    np.testing.assert_array_equal(removed[gid], [0, 1, 2, 4])  # channel 3 is the last of the first half
    prune_channels.run(channel_graph.graph, channel_graph, removed)  # a legal cut


# --- global ranking --------------------------------------------------------------------------


def test_global_ranking_normalises_each_group_by_its_mean():
    channel_graph = analysed(network([8, 8]))
    a, b = group(channel_graph, 0).id, group(channel_graph, 1).id
    same_shape = {a: 1000.0 * np.arange(1, 9), b: np.arange(1, 9) / 1000.0}
    removed = select(channel_graph, same_shape, exact(ratio=0.5, global_ranking=True))
    assert {g: len(c) for g, c in removed.items()} == {a: 4, b: 4}  # raw scores would take all 8 from b
    # a: seven channels at half its mean, one at 4.5x; b: 1..8 over a mean of 4.5
    skewed = {a: 1000.0 * np.array([1, 1, 1, 1, 1, 1, 1, 9]), b: np.arange(1.0, 9.0)}
    removed = select(channel_graph, skewed, exact(ratio=0.5, global_ranking=True))
    assert {g: len(c) for g, c in removed.items()} == {a: 6, b: 2}
    np.testing.assert_array_equal(removed[b], [0, 1])


# --- adaptive threshold ----------------------------------------------------------------------


def test_adaptive_threshold_finds_first_local_minimum():
    rng = np.random.default_rng(0)
    low, high = rng.uniform(0.0, 0.01, 12), rng.uniform(0.6, 0.9, 20)  # polarised γ: ~0 or clearly > 0
    assert adaptive_threshold(np.concatenate([low, high]), 0.01) == pytest.approx(0.01)  # the first empty bin
    # the scan stops at the first dip, even one inside the low cluster: counts 5, 3, 4, 0, ...
    clustered = np.concatenate([np.repeat([0.005, 0.015, 0.025], [5, 3, 4]), high])
    assert adaptive_threshold(clustered, 0.01) == pytest.approx(0.01)
    # a valley that is not empty: counts 5, 3, 1, 2, 6 -> bin 2
    values = np.repeat([0.105, 0.115, 0.125, 0.135, 0.145], [5, 3, 1, 2, 6])
    assert adaptive_threshold(values, 0.01) == pytest.approx(0.12)
    # no valley before the bulk: nothing is below δ
    rising = np.repeat([0.505, 0.515, 0.525], [1, 2, 3])
    assert adaptive_threshold(rising, 0.01) == pytest.approx(0.50)


def test_adaptive_threshold_removes_channels_below_delta():
    rng = np.random.default_rng(1)
    gamma = rng.uniform(0.5, 0.9, 16)
    small = np.array([1, 4, 5, 9, 12, 13])
    gamma[small] = rng.uniform(0.001, 0.02, len(small)) * rng.choice([-1, 1], len(small))
    channel_graph = analysed(network([16], gammas=[gamma]))
    gid = group(channel_graph, 0).id
    scores = importance.score_groups(channel_graph, importance.make("l1"))  # the threshold reads γ itself
    removed = select(channel_graph, scores, exact(threshold="adaptive"))
    np.testing.assert_array_equal(removed[gid], small)
    floored = select(channel_graph, scores, exact(threshold="adaptive", min_channels=12))
    np.testing.assert_array_equal(floored[gid], lowest(np.where(np.isin(np.arange(16), small), scores[gid], np.inf), 4))


def test_adaptive_threshold_leaves_groups_without_bn_whole():
    channel_graph = analysed(network([8]))
    scores = ranked(channel_graph, [0])
    assert select(channel_graph, scores, exact(threshold="adaptive")) == {}


# --- FLOPs / params targets ------------------------------------------------------------------


def pruned_stats(model, config):
    channel_graph = analysed(model)
    stats = model_stats(to_model(channel_graph.graph, model))
    scores = importance.score_groups(channel_graph, importance.make("l1"))
    removed = select(channel_graph, scores, config, stats)
    costs = channel_costs(channel_graph, stats)
    largest_channel = (max(float(c.macs.max()) for c in costs.values()),
                       max(float(c.params.max()) for c in costs.values()))
    prune_channels.run(channel_graph.graph, channel_graph, removed)
    return stats, model_stats(to_model(channel_graph.graph, model)), largest_channel


@pytest.mark.parametrize("global_ranking", [True, False])
def test_flops_target_is_reached_within_one_channel(global_ranking):
    before, after, (channel_macs, _) = pruned_stats(network([16, 24, 16]), exact(flops_target=0.5,
                                                                                         global_ranking=global_ranking))
    assert after.macs <= 0.5 * before.macs
    if global_ranking:
        assert after.macs >= 0.5 * before.macs - channel_macs


def test_params_target_is_reached_within_one_channel():
    before, after, (_, channel_params) = pruned_stats(network([16, 24, 16]), exact(params_target=0.3,
                                                                                           global_ranking=True))
    assert 0.3 * before.params - channel_params <= after.params <= 0.3 * before.params


def test_cost_model_predicts_pruned_counts_exactly():
    model = network([16, 24, 16])
    channel_graph = analysed(model)
    stats = model_stats(to_model(channel_graph.graph, model))
    costs = CostModel(channel_graph, stats)
    removed = select(channel_graph, ranked(channel_graph, [0, 1, 2]), exact(ratio=0.4))
    macs, params = costs.left(costs.removed(removed, channel_graph))
    prune_channels.run(channel_graph.graph, channel_graph, removed)
    after = model_stats(to_model(channel_graph.graph, model))
    assert (macs, params) == (pytest.approx(after.macs), pytest.approx(after.params))


# --- exclude ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "whole"), [
    ("^conv1$", {0, 1}),  # conv1 reads group 0 and writes group 1: both stay whole
    ("^c1$", {1}),  # a tensor of group 1
    ("relu1", {1}),  # a node reading and writing group 1 only
])
def test_exclude_leaves_matching_groups_whole(pattern, whole):
    channel_graph = analysed(network([8, 8, 8]))
    scores = ranked(channel_graph, [0, 1, 2])
    removed = select(channel_graph, scores, exact(ratio=0.5, exclude=[pattern]))
    assert set(removed) == {group(channel_graph, layer).id for layer in {0, 1, 2} - whole}


# --- impossible requests ---------------------------------------------------------------------


@pytest.mark.parametrize(("config", "message"), [
    (exact(ratio=1.0), r"--ratio 1 is outside \[0, 1\)"),
    (exact(ratio=-0.1), r"--ratio -0.1 is outside \[0, 1\)"),
    (exact(flops_target=0.0), r"--flops-target 0 must be in \(0, 1\]"),
    (exact(flops_target=1.5), r"--flops-target 1.5 must be in \(0, 1\]"),
    (exact(params_target=-1), r"--params-target -1 must be in \(0, 1\]"),
    (exact(threshold="otsu"), "--threshold 'otsu' is unknown"),
    (exact(threshold="adaptive", ratio=0.5), "--threshold adaptive chooses"),
    (exact(threshold="adaptive", global_ranking=True), "--threshold adaptive chooses"),
    (exact(ratio=0.5, flops_target=0.5), "--ratio and --flops-target/--params-target are exclusive"),
    (exact(round_to=0), "--round-to 0 must be at least 1"),
    (exact(min_channels=-1), "--min-channels -1 must be at least 0"),
    (exact(exclude=["conv("]), "--exclude 'conv\\(' is not a valid regular expression"),
])
def test_impossible_requests_raise(config, message):
    """Library terms in the message itself; the CLI's rendering names the flags."""
    channel_graph = analysed(network([8]))
    with pytest.raises(OptionError) as error:
        select(channel_graph, ranked(channel_graph, [0]), config)
    assert re.search(message, flagged(error.value)) and "--" not in str(error.value)


@pytest.mark.parametrize(("option", "config", "what"), [
    ("--flops-target", exact(flops_target=0.01), "FLOPs"),
    ("--params-target", exact(params_target=0.01, min_channels=2), "parameters"),
])
def test_unreachable_target_says_the_floor(option, config, what):
    model = network([8, 8])
    channel_graph = analysed(model)
    stats = model_stats(to_model(channel_graph.graph, model))
    floor = rf"with --min-channels {config.min_channels} the floor is 0\.\d\d of the {what}"
    pattern = rf"{option} 0.01 is unreachable: {floor}"
    with pytest.raises(OptionError) as error:
        select(channel_graph, ranked(channel_graph, [0, 1]), config, stats)
    assert re.search(pattern, flagged(error.value))


# --- latency-aware rounding and latency target (fake tables: machine-independent) -----------------


class FakeTable:
    """ms = weight elements / 1000, times ``slow`` where the output count is no multiple of ``block``; counts calls."""

    def __init__(self, slow: float = 1.0, untimeable: bool = False, block: int = 16, inputs: bool = False) -> None:
        self.slow, self.untimeable, self.block, self.inputs, self.shapes = slow, untimeable, block, inputs, []

    def __call__(self, shapes):
        self.shapes += shapes
        return [None if self.untimeable else np.prod(s.weight) / 1000 * (self.slow if self._off(s) else 1.0)
                for s in shapes]

    def _off(self, shape) -> bool:
        return bool(shape.weight[0] % self.block or self.inputs and shape.weight[1] % self.block)


def kept_counts(channel_graph, removed, layers):
    return [group(channel_graph, i).size - len(removed.get(group(channel_graph, i).id, ())) for i in layers]


@pytest.mark.parametrize(("slow", "kept"), [
    (1.0, [24, 40, 8]),  # ms linear in channels: the halves themselves are fastest
    (3.0, [24, 48, 16]),  # an output count off a multiple of 16 costs 3x: 40 -> 48 and 8 -> 16 pay off; 24 is
                          # only an input of conv1 (80 outputs), and 32 is slower there
])
def test_rounding_takes_the_fastest_count_near_the_target(slow, kept):
    channel_graph = analysed(network([48, 80, 16]))
    scores = ranked(channel_graph, [0, 1, 2])
    removed = select(channel_graph, scores, PolicyConfig(ratio=0.5), timer=FakeTable(slow))
    assert kept_counts(channel_graph, removed, [0, 1, 2]) == kept
    for i in (0, 1):  # the lowest-scored channels still go first
        np.testing.assert_array_equal(removed[group(channel_graph, i).id],
                                      lowest(scores[group(channel_graph, i).id], 48 + 32 * i - kept[i]))


@pytest.mark.parametrize(("size", "unit"), [(6, 1), (16, 2), (20, 2), (32, 4), (44, 4), (63, 4), (64, 8), (2048, 8)])
def test_default_rounding_unit_is_at_most_an_eighth_of_the_group(size, unit):
    assert default_unit(size) == unit


def test_untimeable_layers_fall_back_to_the_default_units():
    channel_graph = analysed(network([72, 44, 20, 6]))
    scores = ranked(channel_graph, [0, 1, 2, 3])
    removed = select(channel_graph, scores, PolicyConfig(ratio=0.5), timer=FakeTable(untimeable=True))
    # 36 -> 40 (multiples of 8), 22 -> 24 (of 4), 10 stays (of 2), 6 channels: exact
    assert kept_counts(channel_graph, removed, [0, 1, 2, 3]) == [40, 24, 10, 3]
    unrounded = select(channel_graph, scores, PolicyConfig(ratio=0.5, round_to=1), timer=FakeTable(slow=3.0))
    assert kept_counts(channel_graph, unrounded, [0, 1, 2, 3]) == [36, 22, 10, 3]


def test_flops_target_on_small_groups_is_not_overshot():
    """16-channel groups (CIFAR ResNets) rounded to multiples of 8 could only keep 16 or 8: a 0.7 target gave 0.55."""
    model = network([16, 16, 16, 16])
    channel_graph = analysed(model)
    stats = model_stats(to_model(channel_graph.graph, model))
    costs = CostModel(channel_graph, stats)
    removed = select(channel_graph, ranked(channel_graph, [0, 1, 2, 3]), PolicyConfig(flops_target=0.7), stats,
                     timer=FakeTable(untimeable=True))
    macs, _ = costs.left(costs.removed(removed, channel_graph))
    assert 0.65 * stats.macs < macs <= 0.7 * stats.macs  # 8 would be 0.3; the slack is given back


def test_flops_target_holds_after_latency_rounding():
    model = network([48, 80, 48])
    channel_graph = analysed(model)
    stats = model_stats(to_model(channel_graph.graph, model))
    costs = CostModel(channel_graph, stats)
    scores = ranked(channel_graph, [0, 1, 2])
    removed = select(channel_graph, scores, PolicyConfig(flops_target=0.4), stats, timer=FakeTable(slow=3.0))
    macs, _ = costs.left(costs.removed(removed, channel_graph))
    assert macs <= 0.4 * stats.macs
    assert kept_counts(channel_graph, removed, [0, 1, 2]) == [28, 48, 32]  # units 4, 8, 4; 32: faster than 28


@pytest.mark.parametrize("target", [0.6, 0.3])
def test_latency_target_is_reached_by_the_cheapest_blocks(target):
    channel_graph = analysed(network([64, 64, 64]))
    scores = ranked(channel_graph, [0, 1, 2])
    removed = select(channel_graph, scores, PolicyConfig(latency_target=target), timer=FakeTable())
    kept = kept_counts(channel_graph, removed, [0, 1, 2])
    # group 1 sits between the two 64x64 convs: each of its channels saves the most ms, so it goes furthest
    assert all(k % 8 == 0 for k in kept) and kept[1] < min(kept[0], kept[2])
    # the fake ms is linear in each layer's channels, so the interpolated prediction is exact
    full = sum(w[0] * w[1] for w in ([64, 3], [64, 64], [64, 64], [3, 64]))
    left = 3 * kept[0] + kept[0] * kept[1] + kept[1] * kept[2] + 3 * kept[2]
    assert removed.predicted_latency == pytest.approx(left / full) and target - 0.1 < left / full <= target


@pytest.mark.parametrize(("target", "kept"), [
    (0.5, [8, 40]),  # one unit at a time: [16, 24], the 16-channel group never passing its slow 14
    (0.8, [8, 64]),  # 16 -> 8 overshoots (0.59): the 64-channel group's units come back (0.67)
])
def test_latency_target_steps_over_slow_counts_and_gives_back_what_it_overshot(target, kept):
    """A 16-channel group rounds in steps of 2, and a conv with either side off a multiple of 8 is
    3x slower (unblocked kernels): 14, 12 and 10 channels cost time, 8 saves it."""
    channel_graph = analysed(network([16, 64]))
    scores = ranked(channel_graph, [0, 1])
    table = FakeTable(slow=3.0, block=8, inputs=True)
    removed = select(channel_graph, scores, PolicyConfig(latency_target=target), timer=table)
    assert kept_counts(channel_graph, removed, [0, 1]) == kept and removed.predicted_latency <= target


@pytest.mark.parametrize(("config", "message"), [
    (PolicyConfig(latency_target=1.0), r"--latency-target 1 must be in \(0, 1\)"),
    (PolicyConfig(latency_target=0.0), r"--latency-target 0 must be in \(0, 1\)"),
    (PolicyConfig(latency_target=0.5, ratio=0.5), "--latency-target and --ratio/.* are exclusive"),
    (PolicyConfig(latency_target=0.5, flops_target=0.5), "--latency-target and --ratio/.* are exclusive"),
    (PolicyConfig(latency_target=0.5, latency_aware=False), "needs the layer latency table, which --no-latency-table"),
    (PolicyConfig(latency_target=0.01, min_channels=60), r"--latency-target 0.01 is unreachable: with --min-channels"),
])
def test_latency_target_options(config, message):
    channel_graph = analysed(network([64, 64]))
    with pytest.raises(OptionError) as error:
        select(channel_graph, ranked(channel_graph, [0, 1]), config, timer=FakeTable())
    assert re.search(message, flagged(error.value)) and "--" not in str(error.value)



def test_keep_residual_prunes_only_inside_the_blocks():
    """On the shipped ResNet-20 the option-A stream (one 64-channel group through every Add) stays whole."""
    from pathlib import Path

    import onnx

    from onnxprune.api import prune_model

    model = onnx.load(Path(__file__).resolve().parents[2] / "models" / "resnet20_cifar10.onnx")
    added = {name for node in model.graph.node if node.op_type == "Add" for name in node.input}

    def pruned_groups(**options):
        pruned = prune_model(model, "l1", PolicyConfig(ratio=0.5, round_to=1, **options))
        groups = {g.id: g for g in pruned.channel_graph.groups}
        return {gid: any(name in added for name, _ in groups[gid].members) for gid in pruned.removed}

    everything, inner = pruned_groups(), pruned_groups(keep_residual=True)
    assert sum(everything.values()) == 1 and len(everything) == 10  # the stream and the 9 blocks' inner groups
    assert not any(inner.values()) and len(inner) == 9


def dense_block(growth=32):
    """conv0 -> conv1 -> concat -> conv2 -> concat -> head: one 3 x ``growth`` channel group, a slice per conv."""
    rng = np.random.default_rng(0)
    shapes = {"conv0.w": (growth, 3, 3, 3), "conv1.w": (growth, growth, 3, 3), "conv2.w": (growth, 2 * growth, 3, 3),
              "head.w": (3, 3 * growth, 1, 1)}
    inits = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}

    def conv(name, source, out):
        kernel = shapes[f"{name}.w"][2]
        return helper.make_node("Conv", [source, f"{name}.w"], [out], name=name, kernel_shape=[kernel] * 2,
                                pads=[kernel // 2] * 4)

    nodes = [conv("conv0", "x", "c0"), conv("conv1", "c0", "c1"),
             helper.make_node("Concat", ["c0", "c1"], ["cat1"], axis=1), conv("conv2", "cat1", "c2"),
             helper.make_node("Concat", ["cat1", "c2"], ["cat2"], axis=1), conv("head", "cat2", "y")]
    return make_model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [None] * 4)], inits)


def slice_kept(removed: np.ndarray, growth=32) -> list[int]:
    return [growth - int(((removed >= growth * k) & (removed < growth * (k + 1))).sum()) for k in range(3)]


def test_concat_bound_group_keeps_every_slice_aligned():
    """DenseNet: rounding only the group total left growth convs at 17-31 channels, off onnxruntime's NCHWc blocks."""
    channel_graph = analysed(dense_block())
    (only,) = channel_graph.prunable
    by_index = {only.id: np.arange(96, dtype=float)}  # conv0's slice is the least important, then conv1's
    removed = select(channel_graph, by_index, PolicyConfig(ratio=0.5), timer=FakeTable(untimeable=True))[only.id]
    assert slice_kept(removed) == [8, 8, 32]  # whole blocks of 8, lowest mean score first; a slice keeps one block
    exact_counts = select(channel_graph, by_index, exact(ratio=0.5), timer=FakeTable(untimeable=True))[only.id]
    assert slice_kept(exact_counts) == [1, 15, 32]  # the group-wide ranking (--round-to 1): 31 + 17 removed
    for seed in range(5):
        scores = {only.id: np.random.default_rng(seed).random(96)}
        kept = slice_kept(select(channel_graph, scores, PolicyConfig(ratio=0.5), timer=FakeTable(untimeable=True))
                          [only.id])
        assert sum(kept) == 48 and all(count % 8 == 0 and count >= 8 for count in kept)


@pytest.mark.parametrize("name", ["densenet", "inception"])
def test_pruned_zoo_concat_producers_keep_multiples_of_the_unit(name):
    import onnxruntime as ort

    from models.architectures import export_onnx
    from onnxprune.api import prune_model

    model = export_onnx(name)
    pruned = prune_model(model, "l1", PolicyConfig(ratio=0.5, round_to=4)).model
    before, after = conv_widths(model), conv_widths(pruned)
    assert all(width % 4 == 0 for width in after) and sum(after) < sum(before)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    feed = {model.graph.input[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    (out,) = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    assert np.isfinite(out).all()


def conv_widths(model) -> list[int]:
    dims = {t.name: t.dims for t in model.graph.initializer}
    return [dims[node.input[1]][0] for node in model.graph.node if node.op_type == "Conv"]
