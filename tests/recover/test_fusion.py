"""compensate: removed channels fused into the most similar kept ones before pruning (seed 003)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxprune.channels import importance, policy
from onnxprune.channels import surgery as prune_channels
from onnxprune.channels.analysis import ChannelGraph, analyse
from onnxprune.core.model import to_graph, to_model
from onnxprune.passes.pipeline import prepare
from onnxprune.recover import fusion as compensate
from tests.util import assert_equivalent, make_model, outputs, random_inputs, tensor

C_IN, WIDTH, C_OUT = 4, 8, 5


def chain(w1, b1=None, activation="Relu", bn=None, seed=0) -> onnx.ModelProto:
    """x -> conv1 (3x3) [-> BN] -> activation -> conv2 (3x3) -> y."""
    rng = np.random.default_rng(seed)
    inits = {"w1": np.asarray(w1, np.float32), "w2": rng.standard_normal((C_OUT, len(w1), 3, 3)).astype(np.float32)}
    conv1 = ["x", "w1"]
    if b1 is not None:
        inits["b1"] = np.asarray(b1, np.float32)
        conv1.append("b1")
    nodes = [helper.make_node("Conv", conv1, ["a"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4)]
    if bn is not None:
        inits.update({f"bn.{key}": np.asarray(value, np.float32) for key, value in bn.items()})
        nodes.append(helper.make_node("BatchNormalization", ["a", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["n"],
                                      name="bn"))
    nodes += [
        helper.make_node(activation, ["n" if bn is not None else "a"], ["r"], name="act"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", kernel_shape=[3, 3], pads=[1] * 4),
    ]
    return make_model(nodes, [tensor("x", [2, C_IN, 8, 8])], [tensor("y", [None] * 4)], inits)


def analysed(model: onnx.ModelProto) -> ChannelGraph:
    return analyse(prepare(to_graph(model)))


def group_id(channel_graph: ChannelGraph) -> int:
    return next(g.id for g in channel_graph.groups if ("w1", 0) in g.members)


def prune(model, remove_channels, fuse, **options):
    """(pruned model, compensate report or None) with ``remove_channels`` of conv1's group removed."""
    channel_graph = analysed(model)
    remove = {group_id(channel_graph): np.asarray(remove_channels)}
    report = compensate.run(channel_graph.graph, channel_graph, remove, **options) if fuse else None
    prune_channels.run(channel_graph.graph, channel_graph, remove)
    return to_model(channel_graph.graph, model), report


def fidelity(reference, candidate) -> float:
    feeds = random_inputs(reference, seed=3)
    expected, actual = outputs(reference, feeds)[0].ravel(), outputs(candidate, feeds)[0].ravel()
    return float(expected @ actual / np.linalg.norm(expected) / np.linalg.norm(actual))


def proportional_weights(seed=1):
    w1 = np.random.default_rng(seed).standard_normal((WIDTH, C_IN, 3, 3))
    w1[5] = 2.5 * w1[2]  # removed filter 5 is an exact positive multiple of kept filter 2
    w1[6] = 0.5 * w1[0]
    return w1


@pytest.mark.parametrize("bias", ["none", "zero", "proportional"])
def test_exact_multiple_is_merged_without_loss(bias):
    w1 = proportional_weights()
    b1 = {"none": None, "zero": np.zeros(WIDTH)}.get(bias)
    if bias == "proportional":
        b1 = np.random.default_rng(2).standard_normal(WIDTH)
        b1[5], b1[6] = 2.5 * b1[2], 0.5 * b1[0]
    model = chain(w1, b1)
    fused, report = prune(model, [5, 6], fuse=True)
    assert_equivalent(model, fused, rel=1e-5)
    assert report.merged == 2
    assert report.mean_similarity == pytest.approx(1.0)
    assert report.to_dict()["merged"] == 2 and report.skipped == []
    plain, _ = prune(model, [5, 6], fuse=False)
    with pytest.raises(AssertionError):
        assert_equivalent(model, plain, rel=1e-5)


def test_batchnorm_is_folded_before_comparing():
    """Same conv filters, BN scales 2x apart (and shifts): the effective filters are multiples."""
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((WIDTH, C_IN, 3, 3))
    w1[4] = w1[1]
    bn = {"scale": rng.uniform(0.5, 1.5, WIDTH), "bias": rng.standard_normal(WIDTH),
          "mean": rng.standard_normal(WIDTH), "var": rng.uniform(0.5, 2.0, WIDTH)}
    bn["mean"][4], bn["var"][4] = bn["mean"][1], bn["var"][1]
    bn["scale"][4], bn["bias"][4] = 2 * bn["scale"][1], 2 * bn["bias"][1]
    model = chain(w1, bn=bn)
    fused, report = prune(model, [4], fuse=True)
    assert_equivalent(model, fused, rel=1e-5)
    assert report.mean_similarity == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fusing_improves_fidelity_on_random_weights(seed):
    model = chain(np.random.default_rng(seed).standard_normal((16, C_IN, 3, 3)), seed=seed)
    channel_graph = analysed(model)
    scores = importance.score_groups(channel_graph, importance.make("l1"))
    remove = policy.select(channel_graph, scores, policy.PolicyConfig(ratio=0.5, round_to=1))
    removed = remove[group_id(channel_graph)]
    plain, _ = prune(model, removed, fuse=False)
    fused, report = prune(model, removed, fuse=True)
    assert report.merged == len(removed)
    assert fidelity(model, fused) > fidelity(model, plain) + 0.02


def test_non_homogeneous_activation_is_reported_or_skipped():
    model = chain(proportional_weights(), activation="Sigmoid")
    _, report = prune(model, [5], fuse=True)
    assert report.merged == 1 and "Sigmoid 'act' is not positive-homogeneous" in report.rewrites[0]
    channel_graph = analysed(model)
    before = {name: np.array(t.values) for name, t in channel_graph.graph.tensors().items() if hasattr(t, "values")}
    strict = compensate.run(channel_graph.graph, channel_graph, {group_id(channel_graph): np.array([5])},
                            homogeneous_only=True)
    assert strict.rewrites == [] and "not exact: Sigmoid 'act'" in strict.skipped[0]
    for name, tensor_ in channel_graph.graph.tensors().items():
        if name in before:
            np.testing.assert_array_equal(tensor_.values, before[name])


def test_no_positive_similarity_leaves_weights_alone():
    w1 = np.abs(np.random.default_rng(5).standard_normal((WIDTH, C_IN, 3, 3)))
    w1[3] = -w1[3]  # anti-correlated with every kept filter
    model = chain(w1)
    channel_graph = analysed(model)
    w2 = np.array(channel_graph.graph.tensors()["w2"].values)
    report = compensate.run(channel_graph.graph, channel_graph, {group_id(channel_graph): np.array([3])})
    assert report.merged == 0 and "no kept channel has a positive similarity" in report.skipped[0]
    np.testing.assert_array_equal(channel_graph.graph.tensors()["w2"].values, w2)


def test_grouped_conv_transpose_is_compared_per_output_channel():
    """Group 2, 4 -> 6 outputs: channel j holds outputs j and 3 + j, whose filters are W[:2, j] and W[2:, j].

    The BN after it scales outputs, so its scales must be read at 2 and 5 for channel 2 (not at 2 for both):
    only then are channel 2's effective filters exactly 2 x channel 0's, and the merge exact.
    """
    rng = np.random.default_rng(6)
    weight = rng.standard_normal((4, 3, 3, 3))
    weight[:2, 2] = weight[:2, 0]
    weight[2:, 2] = 4 * weight[2:, 0]
    scale = rng.uniform(0.5, 1.5, 6)
    scale[2], scale[5] = 2 * scale[0], 0.5 * scale[3]
    inits = {"wt": weight.astype(np.float32), "w2": rng.standard_normal((C_OUT, 6, 3, 3)).astype(np.float32),
             "bn.scale": scale.astype(np.float32), "bn.bias": np.zeros(6, np.float32),
             "bn.mean": np.zeros(6, np.float32), "bn.var": np.ones(6, np.float32)}
    nodes = [
        helper.make_node("ConvTranspose", ["x", "wt"], ["t"], name="deconv", group=2, strides=[2, 2]),
        helper.make_node("BatchNormalization", ["t", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["r"], name="act"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", kernel_shape=[3, 3], pads=[1] * 4),
    ]
    model = make_model(nodes, [tensor("x", [2, C_IN, 5, 5])], [tensor("y", [None] * 4)], inits)
    channel_graph = analysed(model)
    group = next(g for g in channel_graph.groups if ("wt", 1) in g.members)
    where, owner = group.members[("wt", 1)]
    remove = {group.id: owner[where == 2]}
    report = compensate.run(channel_graph.graph, channel_graph, remove)
    prune_channels.run(channel_graph.graph, channel_graph, remove)
    assert report.merged == 1 and report.mean_similarity == pytest.approx(1.0)
    assert_equivalent(model, to_model(channel_graph.graph, model), rel=1e-5)
