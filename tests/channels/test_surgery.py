"""prune_channels: the surgery on small graphs (exact expected shapes) and on every zoo architecture.

The oracle: channels zeroed beforehand (``zero_channels``) and then pruned give the zeroed model's
outputs. Pruning only ever touches what the analysis reports as prunable, so the zoo tests cover
more groups as more handlers land.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from models.architectures import ARCHITECTURES, export_onnx
from onnxprune.channels import surgery as prune_channels
from onnxprune.channels.analysis import ChannelGraph, ChannelGroup, analyse
from onnxprune.channels.costs import CostModel
from onnxprune.core.errors import InputError
from onnxprune.core.model import to_graph, to_model
from onnxprune.measure.stats import ModelStats, model_stats
from onnxprune.passes.base import PassReport
from onnxprune.passes.pipeline import optimize, prepare
from tests.util import assert_equivalent, make_model, outputs, random_inputs, tensor

RNG = np.random.default_rng(0)
ZOO = [(name, optimized) for name in sorted(ARCHITECTURES) for optimized in (False, True)]
ZOO_IDS = [f"{name}-{'optimized' if optimized else 'raw'}" for name, optimized in ZOO]


# --- helpers -------------------------------------------------------------------------------


@functools.cache
def zoo_model(name: str, optimized: bool) -> onnx.ModelProto:
    """Static-batch export; ``optimized``: after the exact passes (BN folded), else BN still present."""
    model = export_onnx(name)
    return optimize(model).model if optimized else model


@functools.cache
def zoo_stats(name: str, optimized: bool) -> ModelStats:
    return model_stats(zoo_model(name, optimized))


def analysed(model: onnx.ModelProto):
    graph = prepare(to_graph(model))
    return graph, analyse(graph)


def prune(model: onnx.ModelProto, remove, zero_first: bool = False):
    """(zeroed model or None, pruned model, report): the surgery on a fresh graph of ``model``."""
    graph, channel_graph = analysed(model)
    zeroed = None
    if zero_first:
        assert prune_channels.zero_channels(graph, channel_graph, remove) > 0
        zeroed = to_model(graph, model)
    report = prune_channels.run(graph, channel_graph, remove)
    return zeroed, to_model(graph, model), report


def every_other(group: ChannelGroup) -> np.ndarray:
    """Every other prunable channel (never the first), backing off where an axis would lose all."""
    chosen = set(np.flatnonzero(group.prunable)[1::2].tolist())
    for _, owner in group.members.values():
        if set(owner.tolist()) <= chosen:
            chosen.discard(int(owner[0]))
    return np.array(sorted(chosen), dtype=np.int64)


def half(channel_graph: ChannelGraph, exact_only: bool = False) -> dict[int, np.ndarray]:
    groups = [g for g in channel_graph.prunable if not (exact_only and g.inexact)]
    return {group.id: channels for group in groups if len(channels := every_other(group))}


def group_of(channel_graph: ChannelGraph, dim) -> ChannelGroup:
    return next(group for group in channel_graph.groups if dim in group.members)


def channels_at(group: ChannelGroup, dim, positions) -> np.ndarray:
    """The group's channels that occupy ``positions`` of axis ``dim``."""
    where, owner = group.members[dim]
    return np.unique(owner[np.isin(where, positions)])


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def interface(model: onnx.ModelProto) -> list[tuple]:
    """Names, element types and static dims of the graph's inputs and outputs (symbolic dims as None)."""
    return [
        (value.name, value.type.tensor_type.elem_type,
         [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim])
        for value in [*model.graph.input, *model.graph.output]
    ]


def rand(*shape) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.5).astype(np.float32)


def assert_oracle(model: onnx.ModelProto, remove, rel: float = 1e-5) -> onnx.ModelProto:
    """Zeroed-then-pruned equals zeroed; returns the pruned model."""
    zeroed, pruned, _ = prune(model, remove, zero_first=True)
    assert_equivalent(zeroed, pruned, rel=rel)
    return pruned


# --- the zoo -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "optimized"), ZOO, ids=ZOO_IDS)
def test_zoo_half_pruned_is_valid_and_smaller(name, optimized):
    model = zoo_model(name, optimized)
    _, channel_graph = analysed(model)
    remove = half(channel_graph)
    assert remove, f"{name}: no prunable group"
    _, pruned, report = prune(model, remove)
    onnx.checker.check_model(pruned, full_check=True)
    assert interface(pruned) == interface(model)
    declared = [dims for value, _, dims in interface(model) if value in {o.name for o in model.graph.output}]
    for shape, dims in zip([o.shape for o in outputs(pruned, random_inputs(model))], declared, strict=True):
        assert len(shape) == len(dims) and all(d is None or d == n for n, d in zip(shape, dims))
    before, after = zoo_stats(name, optimized), model_stats(pruned)
    assert after.params < before.params and after.macs < before.macs
    assert len(report.rewrites) == len(remove)
    assert all(" channels (" in line for line in report.rewrites)


@pytest.mark.parametrize(("name", "optimized"), ZOO, ids=ZOO_IDS)
def test_zoo_nothing_removed_is_identical(name, optimized):
    model = zoo_model(name, optimized)
    _, channel_graph = analysed(model)
    _, pruned, report = prune(model, {group.id: [] for group in channel_graph.prunable})
    assert report.rewrites == []
    assert_equivalent(model, pruned, rel=0)
    before, after = weights(model), weights(pruned)
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[name], after[name]) for name in before)


@pytest.mark.parametrize(("name", "optimized"), ZOO, ids=ZOO_IDS)
def test_zoo_oracle_zeroed_channels_prune_exactly(name, optimized):
    model = zoo_model(name, optimized)
    _, channel_graph = analysed(model)
    remove = half(channel_graph, exact_only=True)
    if not remove:
        pytest.skip("no prunable group without inexact reasons")
    assert_oracle(model, remove)


@pytest.mark.parametrize("name", ["plain_chain", "inception"])
def test_zoo_errors_leave_the_graph_untouched(name):
    model = zoo_model(name, False)
    graph, channel_graph = analysed(model)
    full = next(g for g in channel_graph.prunable if g.prunable.all())
    with pytest.raises(InputError, match=f"would remove every channel of group {full.id}"):
        prune_channels.run(graph, channel_graph, {full.id: np.arange(full.size)})
    blocked = next(g for g in channel_graph.groups if not g.prunable.all() and g.constants)
    channel = int(np.flatnonzero(~blocked.prunable)[0])
    with pytest.raises(InputError, match=f"channel {channel} of group {blocked.id} is not prunable"):
        prune_channels.run(graph, channel_graph, {blocked.id: [channel]})
    with pytest.raises(InputError, match="no channel group"):
        prune_channels.run(graph, channel_graph, {len(channel_graph.groups): [0]})
    with pytest.raises(InputError, match="has channels 0.."):
        prune_channels.run(graph, channel_graph, {full.id: [full.size]})
    assert_equivalent(model, to_model(graph, model), rel=0)
    assert weights(to_model(graph, model)).keys() == weights(model).keys()


# --- small graphs: exact expected weights ----------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_relu_conv(bias):
    inits = {"w1": rand(8, 3, 3, 3), "w2": rand(4, 8, 3, 3), "gamma": rand(8) + 1, "beta": rand(8),
             "mean": rand(8), "var": np.abs(rand(8)) + 0.5}
    conv1_inputs = ["x", "w1"] + (["b1"] if bias else [])
    if bias:
        inits["b1"] = rand(8)
    nodes = [
        helper.make_node("Conv", conv1_inputs, ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2"),
    ]
    model = make_model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 4, 6, 6])], inits)
    _, channel_graph = analysed(model)
    group = group_of(channel_graph, ("w1", 0))
    gone = [1, 4, 6]
    remove = {group.id: channels_at(group, ("w1", 0), gone)}
    _, pruned, report = prune(model, remove)
    assert report.rewrites == [f"group {group.id}: removed 3 of 8 channels (conv1, bn1, conv2)"]
    expected = {name: np.delete(value, gone, axis=1 if name == "w2" else 0) for name, value in inits.items()}
    for name, value in weights(pruned).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    assert_oracle(model, remove)


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv_updates_group(multiplier):
    inits = {"w1": rand(8, 3, 1, 1), "wd": rand(8 * multiplier, 1, 3, 3), "bd": rand(8 * multiplier),
             "w2": rand(4, 8 * multiplier, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wd", "bd"], ["d"], name="dw", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d", "w2"], ["y"], name="conv2"),
    ]
    model = make_model(nodes, [tensor("x", [1, 3, 6, 6])], [tensor("y", [1, 4, 6, 6])], inits)
    _, channel_graph = analysed(model)
    group = group_of(channel_graph, ("w1", 0))
    assert ("wd", 0) in group.members and ("w2", 1) in group.members
    remove = {group.id: channels_at(group, ("w1", 0), [0, 5])}
    pruned = assert_oracle(model, remove)
    dw = next(node for node in pruned.graph.node if node.name == "dw")
    assert helper.get_attribute_value(next(a for a in dw.attribute if a.name == "group")) == 6
    shapes = {name: value.shape for name, value in weights(pruned).items()}
    assert shapes == {"w1": (6, 3, 1, 1), "wd": (6 * multiplier, 1, 3, 3), "bd": (6 * multiplier,),
                      "w2": (4, 6 * multiplier, 1, 1)}
    gone = np.concatenate([np.arange(c * multiplier, (c + 1) * multiplier) for c in (0, 5)])
    np.testing.assert_array_equal(weights(pruned)["wd"], np.delete(inits["wd"], gone, axis=0))


def test_grouped_conv_keeps_group_and_divisibility():
    inits = {"w1": rand(8, 3, 1, 1), "wg": rand(8, 4, 3, 3), "w2": rand(4, 8, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wg"], ["g"], name="gconv", group=2, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["g"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w2"], ["y"], name="conv2"),
    ]
    model = make_model(nodes, [tensor("x", [1, 3, 6, 6])], [tensor("y", [1, 4, 6, 6])], inits)
    _, channel_graph = analysed(model)
    into, out_of = group_of(channel_graph, ("wg", 1)), group_of(channel_graph, ("wg", 0))
    assert into.size == 4 and out_of.size == 4  # the in-group index j of both groups is one channel
    remove = {into.id: channels_at(into, ("wg", 1), [1]), out_of.id: channels_at(out_of, ("wg", 0), [2])}
    pruned = assert_oracle(model, remove)
    gconv = next(node for node in pruned.graph.node if node.name == "gconv")
    assert helper.get_attribute_value(next(a for a in gconv.attribute if a.name == "group")) == 2
    values = weights(pruned)
    np.testing.assert_array_equal(values["w1"], np.delete(inits["w1"], [1, 5], axis=0))
    np.testing.assert_array_equal(values["wg"], np.delete(np.delete(inits["wg"], [2, 6], axis=0), [1], axis=1))
    np.testing.assert_array_equal(values["w2"], np.delete(inits["w2"], [2, 6], axis=1))


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_after_flatten_loses_column_blocks(trans_b):
    gemm_weight = rand(36, 5) if not trans_b else rand(5, 36)
    inits = {"w": rand(4, 3, 3, 3), "fc": gemm_weight, "fb": rand(5)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], name="fc", transB=trans_b),
    ]
    model = make_model(nodes, [tensor("x", [1, 3, 3, 3])], [tensor("y", [1, 5])], inits)
    _, channel_graph = analysed(model)
    group = group_of(channel_graph, ("w", 0))
    pruned = assert_oracle(model, {group.id: channels_at(group, ("w", 0), [1, 3])})
    blocks = np.r_[9:18, 27:36]
    np.testing.assert_array_equal(weights(pruned)["fc"], np.delete(gemm_weight, blocks, axis=1 if trans_b else 0))


def test_residual_add_prunes_both_operands():
    inits = {"wa": rand(8, 3, 3, 3), "wb": rand(8, 8, 3, 3), "wc": rand(4, 8, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conva", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relua"),
        helper.make_node("Conv", ["r", "wb"], ["b"], name="convb", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["b", "r"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["t"], name="relub"),
        helper.make_node("Conv", ["t", "wc"], ["y"], name="convc"),
    ]
    model = make_model(nodes, [tensor("x", [1, 3, 6, 6])], [tensor("y", [1, 4, 6, 6])], inits)
    _, channel_graph = analysed(model)
    group = group_of(channel_graph, ("wa", 0))
    assert {("wb", 0), ("wb", 1), ("wc", 1), ("s", 1)} <= group.members.keys()
    pruned = assert_oracle(model, {group.id: channels_at(group, ("wa", 0), [2, 3])})
    values = weights(pruned)
    np.testing.assert_array_equal(values["wb"], np.delete(np.delete(inits["wb"], [2, 3], 0), [2, 3], 1))
    assert values["wa"].shape == (6, 3, 3, 3) and values["wc"].shape == (4, 6, 1, 1)


def concat_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    inits = {"wa": rand(3, 3, 1, 1), "wb": rand(5, 3, 3, 3), "wc": rand(4, 8, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conva"),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="convb", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),
        helper.make_node("Relu", ["cat"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "wc"], ["y"], name="convc"),
    ]
    return make_model(nodes, [tensor("x", [1, 3, 6, 6])], [tensor("y", [1, 4, 6, 6])], inits), inits


def test_concat_segments_at_their_offsets():
    model, inits = concat_model()
    _, channel_graph = analysed(model)
    group = group_of(channel_graph, ("cat", 1))
    pruned = assert_oracle(model, {group.id: channels_at(group, ("cat", 1), [1, 4, 6])})
    values = weights(pruned)
    np.testing.assert_array_equal(values["wa"], np.delete(inits["wa"], [1], 0))
    np.testing.assert_array_equal(values["wb"], np.delete(inits["wb"], [1, 3], 0))
    np.testing.assert_array_equal(values["wc"], np.delete(inits["wc"], [1, 4, 6], 1))


def test_emptying_one_concat_input_is_refused():
    model, _ = concat_model()
    graph, channel_graph = analysed(model)
    group = group_of(channel_graph, ("cat", 1))
    with pytest.raises(InputError, match="would remove every channel of axis 0 of 'wa'|axis 1 of 'a'"):
        prune_channels.run(graph, channel_graph, {group.id: channels_at(group, ("cat", 1), [0, 1, 2])})


def test_report_is_a_pass_report():
    model, _ = concat_model()
    graph, channel_graph = analysed(model)
    group = group_of(channel_graph, ("cat", 1))
    report = prune_channels.run(graph, channel_graph, {group.id: [0]})
    assert isinstance(report, PassReport) and report.name == prune_channels.NAME == "prune_channels"
    assert report.rewrites == [f"group {group.id}: removed 1 of 8 channels (conva, convb, convc)"]


def test_concat_with_a_graph_input_prunes_only_the_free_segment():
    inits = {"wa": rand(5, 3, 3, 3), "wc": rand(4, 8, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conva", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["x", "a"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "wc"], ["y"], name="convc"),
    ]
    model = make_model(nodes, [tensor("x", [1, 3, 6, 6])], [tensor("y", [1, 4, 6, 6])], inits)
    graph, channel_graph = analysed(model)
    group = group_of(channel_graph, ("cat", 1))
    blocked = channels_at(group, ("cat", 1), [0])
    assert not group.prunable[blocked].any() and group.prunable.sum() == 5
    with pytest.raises(InputError, match="not prunable: graph input 'x'"):
        prune_channels.run(graph, channel_graph, {group.id: blocked})
    pruned = assert_oracle(model, {group.id: channels_at(group, ("cat", 1), [4, 7])})
    np.testing.assert_array_equal(weights(pruned)["wa"], np.delete(inits["wa"], [1, 4], 0))
    np.testing.assert_array_equal(weights(pruned)["wc"], np.delete(inits["wc"], [4, 7], 1))


def test_shared_weight_is_sliced_once_on_both_axes():
    inits = {"w1": rand(8, 3, 1, 1), "w": rand(8, 8, 3, 3), "w3": rand(4, 8, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
        helper.make_node("Conv", ["a", "w"], ["b"], name="convb", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w"], ["c"], name="convc", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c", "w3"], ["y"], name="conv3"),
    ]
    model = make_model(nodes, [tensor("x", [1, 3, 6, 6])], [tensor("y", [1, 4, 6, 6])], inits)
    _, channel_graph = analysed(model)
    group = group_of(channel_graph, ("w", 0))
    assert ("w", 1) in group.members  # the tied weight couples a, b and c into one group
    pruned = assert_oracle(model, {group.id: channels_at(group, ("w", 0), [1, 2])})
    np.testing.assert_array_equal(weights(pruned)["w"], np.delete(np.delete(inits["w"], [1, 2], 0), [1, 2], 1))


def conv_transpose_model(group: int, c_out: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x -> conv1 (4) -> relu -> ConvTranspose (group, 4 -> c_out, stride 2) -> relu -> conv2 -> y."""
    inits = {"w1": rand(4, 3, 1, 1), "wt": rand(4, c_out // group, 3, 3), "bt": rand(c_out), "w2": rand(3, c_out, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
        helper.make_node("Relu", ["a"], ["r"], name="relu1"),
        helper.make_node("ConvTranspose", ["r", "wt", "bt"], ["t"], name="deconv", group=group, strides=[2, 2]),
        helper.make_node("Relu", ["t"], ["rt"], name="relu2"),
        helper.make_node("Conv", ["rt", "w2"], ["y"], name="conv2"),
    ]
    return make_model(nodes, [tensor("x", [1, 3, 5, 5])], [tensor("y", [1, 3, 11, 11])], inits), inits


def group_attribute(model: onnx.ModelProto, name: str) -> int:
    node = next(node for node in model.graph.node if node.name == name)
    return helper.get_attribute_value(next(a for a in node.attribute if a.name == "group"))


def test_grouped_conv_transpose_keeps_group_and_divisibility():
    """Weight [in, out / 2, k]: input c is row c, output o = 3 * g + j is column j of group g's rows."""
    model, inits = conv_transpose_model(group=2, c_out=6)
    _, channel_graph = analysed(model)
    into, out_of = group_of(channel_graph, ("wt", 0)), group_of(channel_graph, ("wt", 1))
    assert into.size == 2 and out_of.size == 3  # the in-group index j of both groups is one channel
    assert {("w1", 0), ("r", 1)} <= into.members.keys() and {("bt", 0), ("w2", 1)} <= out_of.members.keys()
    assert into.is_prunable and out_of.is_prunable
    remove = {into.id: channels_at(into, ("wt", 0), [1]), out_of.id: channels_at(out_of, ("wt", 1), [2])}
    pruned = assert_oracle(model, remove, rel=1e-6)
    assert group_attribute(pruned, "deconv") == 2
    values = weights(pruned)
    np.testing.assert_array_equal(values["w1"], np.delete(inits["w1"], [1, 3], axis=0))
    np.testing.assert_array_equal(values["wt"], np.delete(np.delete(inits["wt"], [1, 3], axis=0), [2], axis=1))
    np.testing.assert_array_equal(values["bt"], np.delete(inits["bt"], [2, 5]))
    np.testing.assert_array_equal(values["w2"], np.delete(inits["w2"], [2, 5], axis=1))


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv_transpose_updates_group(multiplier):
    """Weight [in, m, k] with one group per input channel c: c and its outputs c*m .. c*m+m-1 go together."""
    model, inits = conv_transpose_model(group=4, c_out=4 * multiplier)
    _, channel_graph = analysed(model)
    group = group_of(channel_graph, ("w1", 0))
    assert {("wt", 0), ("t", 1), ("bt", 0), ("w2", 1)} <= group.members.keys() and group.size == 4
    pruned = assert_oracle(model, {group.id: channels_at(group, ("w1", 0), [0, 2])}, rel=1e-6)
    assert group_attribute(pruned, "deconv") == 2
    gone = np.concatenate([np.arange(c * multiplier, (c + 1) * multiplier) for c in (0, 2)])
    values = weights(pruned)
    np.testing.assert_array_equal(values["wt"], np.delete(inits["wt"], [0, 2], axis=0))
    np.testing.assert_array_equal(values["bt"], np.delete(inits["bt"], gone))
    np.testing.assert_array_equal(values["w2"], np.delete(inits["w2"], gone, axis=1))


@pytest.mark.parametrize(("group", "c_out"), [(2, 6), (4, 4), (4, 8)], ids=["grouped", "depthwise", "depthwise-x2"])
def test_cost_model_predicts_pruned_conv_transpose_counts(group, c_out):
    """MACs of a ConvTranspose: input elements x out / group x kernel; pruning inputs or outputs shrinks them."""
    model, _ = conv_transpose_model(group=group, c_out=c_out)
    graph, channel_graph = analysed(model)
    costs = CostModel(channel_graph, model_stats(to_model(graph, model)))
    remove = half(channel_graph)
    assert remove
    macs, params = costs.left(costs.removed(remove, channel_graph))
    prune_channels.run(graph, channel_graph, remove)
    after = model_stats(to_model(graph, model))
    assert (macs, params) == (pytest.approx(after.macs), pytest.approx(after.params))
