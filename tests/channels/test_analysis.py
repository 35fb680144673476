"""Channel analysis: exact expected groups on graphs built in code, and on every zoo architecture.

Small graphs name each node after its output; ``w<name>``/``b<name>`` are a conv's weight and bias.
Where a shape handler rewrites an attribute or a shape constant, the graph is also pruned, and the
surgery's oracle holds: channels zeroed beforehand, then removed, leave the outputs unchanged.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import helper

from models.architectures import ARCHITECTURES, export_onnx
from onnxprune.channels import surgery as prune_channels
from onnxprune.channels.analysis import ChannelGraph, ChannelGroup, analyse
from onnxprune.channels.relations import ROLE_IN, ROLE_OUT, ROLE_PARAM, ROLE_SCALE
from onnxprune.core.graph import constant_value
from onnxprune.core.model import to_graph, to_model
from onnxprune.passes.pipeline import optimize, prepare
from tests.util import assert_equivalent, make_model, tensor

RNG = np.random.default_rng(0)
BIG = int(np.iinfo(np.int64).max)
SMALL = int(np.iinfo(np.int64).min)


# --- building and reading graphs -------------------------------------------------------------------


def rand(*shape) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.5).astype(np.float32)


class Net:
    """Nodes and initializers of a test graph; every node is named after its (single) output."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}

    def const(self, name: str, value) -> str:
        self.inits[name] = np.asarray(value)
        return name

    def op(self, op: str, inputs, output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=output, **attrs))
        return output

    def conv(self, x: str, name: str, cout: int, cin: int, k: int = 1, group: int = 1, bias: bool = False,
             **attrs) -> str:
        inputs = [x, self.const(f"w{name}", rand(cout, cin // group, k, k))]
        if bias:
            inputs.append(self.const(f"b{name}", rand(cout)))
        return self.op("Conv", inputs, name, group=group, pads=[k // 2] * 4, **attrs)

    def model(self, shape, outputs, opset: int = 13) -> onnx.ModelProto:
        """``outputs`` maps graph output names to their ranks."""
        values = [tensor(name, [None] * rank) for name, rank in outputs.items()]
        return make_model(self.nodes, [tensor("x", shape)], values, self.inits, opset)


def analysed(model: onnx.ModelProto) -> ChannelGraph:
    return analyse(prepare(to_graph(model)))


def group_of(channel_graph: ChannelGraph, dim) -> ChannelGroup:
    return next(group for group in channel_graph.groups if dim in group.members)


def owners(group: ChannelGroup, dim) -> list[int]:
    """The channel at each position of ``dim`` (every position of it must belong to ``group``)."""
    where, owner = group.members[dim]
    assert where.tolist() == list(range(len(where)))
    return owner.tolist()


def roles(group: ChannelGroup) -> dict:
    return {dim: role for dim, (_, _, role) in group.roles.items()}


def with_constants(channel_graph: ChannelGraph) -> list[ChannelGroup]:
    return [group for group in channel_graph.groups if group.constants]


def prune_exactly(model: onnx.ModelProto, *where) -> onnx.ModelProto:
    """Remove the channels at ``(dim, positions)`` pairs (all of one group); assert the zeroing oracle."""
    graph = prepare(to_graph(model))
    channel_graph = analyse(graph)
    group = group_of(channel_graph, where[0][0])
    picked = [group.members[dim][1][np.isin(group.members[dim][0], positions)] for dim, positions in where]
    remove = {group.id: np.unique(np.concatenate(picked))}
    prune_channels.zero_channels(graph, channel_graph, remove)
    zeroed = to_model(graph, model)
    prune_channels.run(graph, channel_graph, remove)
    pruned = to_model(graph, model)
    assert_equivalent(zeroed, pruned, rel=1e-5)
    return pruned


def node_values(model: onnx.ModelProto, name: str) -> tuple[dict, list]:
    """(attributes, constant input values or None) of node ``name``."""
    node = next(node for node in to_graph(model).nodes if node.name == name)
    return dict(node.attrs), [None if t.is_empty() else constant_value(t) for t in node.inputs]


# --- convolutions, residuals, concatenation --------------------------------------------------------


def test_plain_chain_conv_bn_relu_conv():
    net = Net()
    a = net.conv("x", "a", 8, 3, k=3, bias=True)
    stats = [net.const(name, value) for name, value in
             (("gamma", rand(8) + 1), ("beta", rand(8)), ("mean", rand(8)), ("var", np.abs(rand(8)) + 0.5))]
    net.op("Relu", [net.op("BatchNormalization", [a, *stats], "n")], "r")
    net.conv("r", "c", 4, 8, k=3)
    channel_graph = analysed(net.model([1, 3, 8, 8], {"c": 4}))
    groups = with_constants(channel_graph)
    assert len(groups) == 3 and len(channel_graph.prunable) == 1
    hidden = group_of(channel_graph, ("wa", 0))
    assert hidden.size == 8 and hidden.prunable.all() and not hidden.inexact
    assert set(hidden.members) == {("wa", 0), ("ba", 0), ("a", 1), ("gamma", 0), ("beta", 0), ("mean", 0),
                                   ("var", 0), ("n", 1), ("r", 1), ("wc", 1)}
    assert all(owners(hidden, dim) == list(range(8)) for dim in hidden.members)
    assert roles(hidden) == {("wa", 0): ROLE_OUT, ("ba", 0): ROLE_OUT, ("gamma", 0): ROLE_SCALE,
                             ("beta", 0): ROLE_PARAM, ("mean", 0): ROLE_PARAM, ("var", 0): ROLE_PARAM,
                             ("wc", 1): ROLE_IN}
    entry, exit_ = group_of(channel_graph, ("wa", 1)), group_of(channel_graph, ("wc", 0))
    assert set(entry.members) == {("x", 1), ("wa", 1)} and entry.reasons == ["graph input 'x'"]
    assert set(exit_.members) == {("wc", 0), ("c", 1)} and exit_.reasons == ["graph output 'c'"]
    assert not entry.is_prunable and not exit_.is_prunable


def test_residual_add_ties_block_outputs():
    net = Net()
    net.op("Relu", [net.conv("x", "a", 8, 3, k=3)], "ra")
    net.op("Relu", [net.op("Add", [net.conv("ra", "b", 8, 8, k=3), "ra"], "s")], "t")
    net.conv("t", "c", 4, 8)
    channel_graph = analysed(net.model([1, 3, 6, 6], {"c": 4}))
    group = group_of(channel_graph, ("wa", 0))
    assert set(group.members) == {("wa", 0), ("a", 1), ("ra", 1), ("wb", 1), ("wb", 0), ("b", 1), ("s", 1),
                                  ("t", 1), ("wc", 1)}
    assert group.size == 8 and group.prunable.all()
    assert len(channel_graph.prunable) == 1


def test_depthwise_conv_couples_input_and_output():
    net = Net()
    net.conv(net.conv("x", "a", 8, 3), "d", 8, 8, k=3, group=8)
    net.conv("d", "c", 4, 8)
    channel_graph = analysed(net.model([1, 3, 6, 6], {"c": 4}))
    group = group_of(channel_graph, ("wa", 0))
    assert set(group.members) == {("wa", 0), ("a", 1), ("wd", 0), ("d", 1), ("wc", 1)}
    assert group.size == 8 and group.prunable.all() and len(channel_graph.prunable) == 1


def test_grouped_conv_ties_the_in_group_index_across_groups():
    net = Net()
    net.op("Relu", [net.conv("x", "a", 8, 3)], "ra")
    net.op("Relu", [net.conv("ra", "g", 8, 8, k=3, group=4)], "rg")
    net.conv("rg", "c", 4, 8)
    channel_graph = analysed(net.model([1, 3, 6, 6], {"c": 4}))
    into, out_of = group_of(channel_graph, ("wg", 1)), group_of(channel_graph, ("wg", 0))
    assert set(into.members) == {("wa", 0), ("a", 1), ("ra", 1), ("wg", 1)}
    assert set(out_of.members) == {("wg", 0), ("g", 1), ("rg", 1), ("wc", 1)}
    assert into.size == out_of.size == 2
    assert owners(into, ("ra", 1)) == [0, 1] * 4 and owners(into, ("wg", 1)) == [0, 1]
    assert owners(out_of, ("wg", 0)) == [0, 1] * 4 == owners(out_of, ("wc", 1))


def option_a_net() -> Net:
    """conv a (4) -> x[:, :, ::2, ::2] -> zero-pad channels 2 + 2 -> + conv b (8, stride 2) -> conv c."""
    net = Net()
    net.op("Relu", [net.conv("x", "a", 4, 3, k=3)], "ra")
    bounds = [net.const(n, v) for n, v in (("st", [0, 0]), ("en", [BIG, BIG]), ("ax", [2, 3]), ("sp", [2, 2]))]
    net.op("Pad", [net.op("Slice", ["ra", *bounds], "sl"), net.const("pads", [0, 2, 0, 0, 0, 2, 0, 0])], "p")
    net.conv("ra", "b", 8, 4, k=3, strides=[2, 2])
    net.op("Relu", [net.op("Add", ["b", "p"], "s")], "t")
    net.conv("t", "c", 3, 8)
    return net


@pytest.mark.parametrize("batch", [1, "N"])
def test_option_a_shortcut_couples_block_output_and_pad_regions(batch):
    model = option_a_net().model([batch, 3, 8, 8], {"c": 4})
    channel_graph = analysed(model)
    group = group_of(channel_graph, ("wa", 0))
    assert set(group.members) == {("wa", 0), ("a", 1), ("ra", 1), ("wb", 1), ("sl", 1), ("p", 1), ("wb", 0),
                                  ("b", 1), ("s", 1), ("t", 1), ("wc", 1)}
    assert group.size == 8 and group.prunable.all() and len(channel_graph.prunable) == 1
    padded = owners(group, ("p", 1))
    assert owners(group, ("ra", 1)) == owners(group, ("sl", 1)) == padded[2:6]
    assert owners(group, ("b", 1)) == padded == owners(group, ("wc", 1))
    assert not set(padded[:2] + padded[6:]) & set(padded[2:6])  # zero channels: the block's own
    assert "step 2 on axis 2" in channel_graph.relations.blocked[("sl", 2)]
    pruned = prune_exactly(model, (("p", 1), [0, 3, 7]))
    assert node_values(pruned, "p")[1][1].tolist() == [0, 1, 0, 0, 0, 1, 0, 0]
    assert node_values(pruned, "b")[1][1].shape == (5, 3, 3, 3)


def test_concat_keeps_each_producers_channels_at_their_offsets():
    net = Net()
    net.op("Relu", [net.conv("x", "a", 4, 3)], "ra")
    net.op("Relu", [net.conv("ra", "b", 2, 4, k=3)], "rb")
    stats = [net.const(name, rand(6) + 1) for name in ("gamma", "beta", "mean", "var")]
    net.op("Relu", [net.op("BatchNormalization", [net.op("Concat", ["ra", "rb"], "k", axis=1), *stats], "n")], "r")
    net.conv("r", "c", 3, 6)
    channel_graph = analysed(net.model([1, 3, 6, 6], {"c": 4}))
    group = group_of(channel_graph, ("wa", 0))
    assert group is group_of(channel_graph, ("wb", 0)) and group.size == 6 and group.prunable.all()
    assert set(group.members) == {("wa", 0), ("a", 1), ("ra", 1), ("wb", 1), ("wb", 0), ("b", 1), ("rb", 1),
                                  ("k", 1), ("gamma", 0), ("beta", 0), ("mean", 0), ("var", 0), ("n", 1),
                                  ("r", 1), ("wc", 1)}
    columns = owners(group, ("wc", 1))
    assert columns[:4] == owners(group, ("wa", 0)) and columns[4:] == owners(group, ("wb", 0))
    assert columns == owners(group, ("gamma", 0)) and len(set(columns)) == 6


# --- Split, Slice, Pad, Gather -------------------------------------------------------------------


@pytest.mark.parametrize(("opset", "form", "sizes"), [(11, "attribute", [2, 4]), (13, "input", [2, 4]),
                                                      (13, "equal", [3, 3]), (18, "num_outputs", [3, 3])])
def test_split_segments_and_sizes(opset, form, sizes):
    net = Net()
    net.op("Relu", [net.conv("x", "a", 6, 3)], "ra")
    inputs, attrs = ["ra"], {"axis": 1}
    if form == "attribute":
        attrs["split"] = sizes
    elif form == "input":
        inputs.append(net.const("sizes", np.array(sizes, dtype=np.int64)))
    elif form == "num_outputs":
        attrs["num_outputs"] = 2
    net.nodes.append(helper.make_node("Split", inputs, ["s0", "s1"], name="sp", **attrs))
    net.conv("s0", "b", 2, sizes[0])
    net.conv("s1", "c", 2, sizes[1])
    model = net.model([1, 3, 4, 4], {"b": 4, "c": 4}, opset)
    channel_graph = analysed(model)
    group = group_of(channel_graph, ("wa", 0))
    assert set(group.members) == {("wa", 0), ("a", 1), ("ra", 1), ("s0", 1), ("s1", 1), ("wb", 1), ("wc", 1)}
    assert owners(group, ("ra", 1)) == owners(group, ("s0", 1)) + owners(group, ("s1", 1))
    assert group.prunable.all()
    pruned = prune_exactly(model, (("ra", 1), [0, 4]))
    attrs, inputs = node_values(pruned, "sp")
    new = attrs["split"] if form == "attribute" else inputs[1].tolist()
    assert new == [sizes[0] - 1, sizes[1] - 1] and "num_outputs" not in attrs


def slice_net(starts, ends, steps=None, opset: int = 13) -> tuple[onnx.ModelProto, int]:
    """conv a (8) -> Slice of the channel axis -> conv b."""
    net = Net()
    net.op("Relu", [net.conv("x", "a", 8, 3)], "ra")
    taken = len(range(*slice(starts, ends, steps or 1).indices(8)))
    if opset < 10:
        net.op("Slice", ["ra"], "sl", starts=[starts], ends=[ends], axes=[1])
    else:
        bounds = [net.const(n, np.array([v], dtype=np.int64)) for n, v in (("st", starts), ("en", ends), ("ax", 1))]
        if steps is not None:
            bounds.append(net.const("sp", np.array([steps], dtype=np.int64)))
        net.op("Slice", ["ra", *bounds], "sl")
    net.conv("sl", "b", 3, taken)
    return net.model([1, 3, 4, 4], {"b": 4}, opset), taken


@pytest.mark.parametrize(("opset", "steps"), [(9, None), (13, None), (13, 1)])
def test_slice_takes_a_range_and_shifts_its_bounds(opset, steps):
    model, _ = slice_net(2, 7, steps, opset)
    channel_graph = analysed(model)
    group = group_of(channel_graph, ("wa", 0))
    assert set(group.members) == {("wa", 0), ("a", 1), ("ra", 1), ("sl", 1), ("wb", 1)}
    assert owners(group, ("sl", 1)) == owners(group, ("ra", 1))[2:7] and group.prunable.all()
    pruned = prune_exactly(model, (("ra", 1), [0, 3, 7]))
    attrs, inputs = node_values(pruned, "sl")
    bounds = [attrs["starts"], attrs["ends"]] if opset < 10 else [inputs[1].tolist(), inputs[2].tolist()]
    assert bounds == [[1], [5]]


def test_slice_with_negative_step_reverses_channels():
    model, _ = slice_net(-1, -BIG, -1)
    group = group_of(analysed(model), ("wa", 0))
    assert owners(group, ("sl", 1)) == owners(group, ("ra", 1))[::-1]
    pruned = prune_exactly(model, (("ra", 1), [0, 3]))
    _, inputs = node_values(pruned, "sl")
    assert [inputs[1].tolist(), inputs[2].tolist(), inputs[4].tolist()] == [[5], [SMALL], [-1]]


def test_slice_with_a_stride_on_channels_blocks():
    model, taken = slice_net(1, 8, 3)
    group = group_of(analysed(model), ("wa", 0))
    assert taken == 3 and not group.is_prunable
    assert group.reasons[0] == "Slice 'sl': step 3 on axis 1: deleting elements breaks the stride"


def test_pad_that_crops_and_pads_channels():
    net = Net()
    net.op("Relu", [net.conv("x", "a", 6, 3)], "ra")
    net.op("Pad", ["ra"], "p", pads=[0, 1, 0, 0, 0, -2, 0, 0])  # opset 10: attribute; 1 zero channel, 2 cut
    net.conv("p", "c", 3, 5)
    model = net.model([1, 3, 4, 4], {"c": 4}, opset=10)
    group = group_of(analysed(model), ("wa", 0))
    assert owners(group, ("p", 1))[1:] == owners(group, ("ra", 1))[:4] and group.size == 7
    pruned = prune_exactly(model, (("p", 1), [0]), (("ra", 1), [2, 5]))
    assert node_values(pruned, "p")[0]["pads"] == [0, 0, 0, 0, 0, -1, 0, 0]


@pytest.mark.parametrize(("pads", "prunable"), [([0, 0, 1, 1, 0, 0, 1, 1], True), ([0, 1, 0, 0, 0, 1, 0, 0], False)])
def test_reflect_pad_leaves_channels_alone_but_cannot_pad_them(pads, prunable):
    net = Net()
    net.op("Pad", [net.conv("x", "a", 4, 3), net.const("pads", np.array(pads, dtype=np.int64))], "p", mode="reflect")
    net.conv("p", "c", 3, 4 + pads[1] + pads[5])
    group = group_of(analysed(net.model([1, 3, 4, 4], {"c": 4})), ("wa", 0))
    assert group.is_prunable == prunable
    assert prunable or group.reasons[0] == "Pad 'p': reflect padding of axis 1"


def test_gather_with_constant_indices_picks_channels():
    net = Net()
    net.op("Relu", [net.conv("x", "a", 6, 3)], "ra")
    net.op("Gather", ["ra", net.const("idx", np.array([4, 0, 2], dtype=np.int64))], "g", axis=1)
    net.conv("g", "c", 3, 3)
    model = net.model([1, 3, 4, 4], {"c": 4})
    group = group_of(analysed(model), ("wa", 0))
    ra = owners(group, ("ra", 1))
    assert owners(group, ("g", 1)) == [ra[4], ra[0], ra[2]] and group.prunable.all()
    pruned = prune_exactly(model, (("ra", 1), [0, 1]))
    assert node_values(pruned, "g")[1][1].tolist() == [2, 0]


# --- re-views: channel shuffle, Reshape, Flatten, Squeeze/Unsqueeze --------------------------------


def test_channel_shuffle_couples_b_and_half_plus_b():
    net = Net()
    net.op("Relu", [net.conv("x", "a", 4, 3)], "ra")
    net.op("Relu", [net.conv("x", "b", 4, 3)], "rb")
    net.op("Concat", ["ra", "rb"], "k", axis=1)
    net.op("Reshape", ["k", net.const("split", np.array([1, 2, 4, 4, 4], dtype=np.int64))], "r1")
    net.op("Reshape", [net.op("Transpose", ["r1"], "t", perm=[0, 2, 1, 3, 4]),
                       net.const("merge", np.array([1, 8, 4, 4], dtype=np.int64))], "r2")
    net.conv("r2", "c", 3, 8)
    model = net.model([1, 3, 4, 4], {"c": 4})
    channel_graph = analysed(model)
    group = group_of(channel_graph, ("wa", 0))
    assert set(group.members) == {("wa", 0), ("a", 1), ("ra", 1), ("wb", 0), ("b", 1), ("rb", 1), ("k", 1),
                                  ("r1", 2), ("t", 1), ("r2", 1), ("wc", 1)}
    assert group.size == 4 and group.prunable.all()
    assert owners(group, ("k", 1)) == [0, 1, 2, 3] * 2 and owners(group, ("r2", 1)) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert "Reshape 'r1' cannot change axis 1" in channel_graph.relations.blocked[("r1", 1)]
    pruned = prune_exactly(model, (("k", 1), [1]))
    assert node_values(pruned, "r1")[1][1].tolist() == [1, 2, 3, 4, 4]
    assert node_values(pruned, "r2")[1][1].tolist() == [1, 6, 4, 4]


@pytest.mark.parametrize(("target", "new"), [([0, -1], [0, -1]), ([-1, 64], [-1, 48]), ([2, 64], [2, 48])])
def test_reshape_into_gemm_with_dynamic_batch(target, new):
    net = Net()
    net.op("Relu", [net.conv("x", "a", 4, 3, k=3)], "ra")
    net.op("Reshape", ["ra", net.const("shape", np.array(target, dtype=np.int64))], "f")
    net.op("Gemm", ["f", net.const("fc", rand(5, 64))], "y", transB=1)
    model = net.model(["N", 3, 4, 4] if target[0] != 2 else [2, 3, 4, 4], {"y": 2})
    group = group_of(analysed(model), ("wa", 0))
    assert owners(group, ("fc", 1)) == np.repeat(owners(group, ("wa", 0)), 16).tolist() and group.prunable.all()
    pruned = prune_exactly(model, (("wa", 0), [1]))
    assert node_values(pruned, "f")[1][1].tolist() == new


def test_reshape_splitting_features_into_channels_links_the_outer_axis():
    net = Net()
    net.op("Gemm", ["x", net.const("fc", rand(32, 6))], "g", transB=1)
    net.op("Reshape", ["g", net.const("shape", np.array([1, 2, 4, 4], dtype=np.int64))], "u")
    net.conv("u", "c", 3, 2)
    model = net.model([1, 6], {"c": 4})
    group = group_of(analysed(model), ("fc", 0))
    assert group.size == 2 and owners(group, ("fc", 0)) == [0] * 16 + [1] * 16 and group.prunable.all()
    pruned = prune_exactly(model, (("wc", 1), [0]))
    assert node_values(pruned, "u")[1][1].tolist() == [1, 1, 4, 4]


def test_unresolvable_reshape_blocks_with_its_reason():
    net = Net()
    net.op("Reshape", [net.conv("x", "a", 8, 3), net.const("shape", np.array([1, 4, 8, 4], dtype=np.int64))], "r")
    net.conv("r", "c", 3, 4)
    group = group_of(analysed(net.model([1, 3, 4, 4], {"c": 4})), ("wa", 0))
    assert not group.is_prunable
    assert group.reasons == ["Reshape 'r': unresolvable reshape of axes [1, 2] into [1, 2]"]


def test_gemm_after_flatten_reads_a_block_of_features_per_channel():
    net = Net()
    net.op("Flatten", [net.op("Relu", [net.conv("x", "a", 4, 3, k=3)], "ra")], "f")
    net.op("Gemm", ["f", net.const("fc", rand(5, 36))], "y", transB=1)
    channel_graph = analysed(net.model([1, 3, 3, 3], {"y": 2}))
    group = group_of(channel_graph, ("wa", 0))
    assert set(group.members) == {("wa", 0), ("a", 1), ("ra", 1), ("f", 1), ("fc", 1)}
    assert owners(group, ("f", 1)) == np.repeat(range(4), 9).tolist() and group.prunable.all()
    assert roles(group) == {("wa", 0): ROLE_OUT, ("fc", 1): ROLE_IN}


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_excite_through_squeeze_gemm_unsqueeze(opset):
    net = Net()
    net.op("Relu", [net.conv("x", "a", 8, 3)], "ra")
    axes = {"axes": [2, 3]} if opset < 13 else {}
    extra = [] if opset < 13 else [net.const("axes", np.array([2, 3], dtype=np.int64))]
    net.op("Squeeze", [net.op("GlobalAveragePool", ["ra"], "gp"), *extra], "sq", **axes)
    net.op("Relu", [net.op("Gemm", ["sq", net.const("w1", rand(2, 8)), net.const("b1", rand(2))], "g1", transB=1)], "h")
    gemm2 = net.op("Gemm", ["h", net.const("w2", rand(8, 2)), net.const("b2", rand(8))], "g2", transB=1)
    net.op("Sigmoid", [gemm2], "gate")
    net.op("Mul", ["ra", net.op("Unsqueeze", ["gate", *extra], "us", **axes)], "m")
    net.conv("m", "c", 3, 8)
    model = net.model([1, 3, 4, 4], {"c": 4}, opset)
    channel_graph = analysed(model)
    block, hidden = group_of(channel_graph, ("wa", 0)), group_of(channel_graph, ("w1", 0))
    assert {("gp", 1), ("sq", 1), ("w1", 1), ("w2", 0), ("b2", 0), ("us", 1), ("m", 1), ("wc", 1)} <= set(block.members)
    assert set(hidden.members) == {("w1", 0), ("b1", 0), ("g1", 1), ("h", 1), ("w2", 1)}
    assert block.prunable.all() and hidden.prunable.all() and len(channel_graph.prunable) == 2
    prune_exactly(model, (("ra", 1), [1, 6]))
    prune_exactly(model, (("h", 1), [0]))


# --- ops that leave channels alone ----------------------------------------------------------------


@pytest.mark.parametrize("by", ["scales", "sizes", "upsample"])
def test_resize_passes_channels_through(by):
    net = Net()
    net.op("Relu", [net.conv("x", "a", 4, 3)], "ra")
    scales = net.const("scales", np.array([1, 1, 2, 2], dtype=np.float32))
    if by == "sizes":
        sizes = net.const("sizes", np.array([1, 4, 8, 8], dtype=np.int64))
        net.op("Resize", ["ra", "", "", sizes], "up", mode="nearest")
    else:
        net.op("Upsample" if by == "upsample" else "Resize", ["ra", *([] if by == "upsample" else [""]), scales], "up")
    net.conv("up", "c", 3, 4)
    model = net.model([1, 3, 4, 4], {"c": 4}, opset=9 if by == "upsample" else 13)
    channel_graph = analysed(model)
    group = group_of(channel_graph, ("wa", 0))
    assert ("up", 1) in group.members and group.prunable.all()
    assert ("up", 2) not in group.members
    pruned = prune_exactly(model, (("ra", 1), [2]))
    if by == "sizes":
        assert node_values(pruned, "up")[1][3].tolist() == [1, 3, 8, 8]


def test_expand_and_tile_pass_unbroadcast_axes():
    net = Net()
    net.op("Relu", [net.conv("x", "a", 4, 3)], "ra")
    net.op("Expand", [net.op("GlobalAveragePool", ["ra"], "gp"), net.const("to", np.array([1, 4, 4, 4]))], "e")
    net.op("Tile", [net.op("Add", ["ra", "e"], "s"), net.const("reps", np.array([1, 1, 2, 2]))], "tl")
    net.conv("tl", "c", 3, 4)
    model = net.model([1, 3, 4, 4], {"c": 4})
    group = group_of(analysed(model), ("wa", 0))
    assert {("gp", 1), ("e", 1), ("s", 1), ("tl", 1), ("wc", 1)} <= set(group.members)
    assert ("e", 2) not in group.members and ("tl", 2) not in group.members and group.prunable.all()
    pruned = prune_exactly(model, (("ra", 1), [0]))
    assert node_values(pruned, "e")[1][1].tolist() == [1, 3, 4, 4]


def test_channels_last_layernorm_and_linear_pair():
    net = Net()
    a = net.conv("x", "a", 8, 3, k=3)
    net.op("Transpose", [a], "t1", perm=[0, 2, 3, 1])
    net.op("LayerNormalization", ["t1", net.const("ln_w", rand(8) + 1), net.const("ln_b", rand(8))], "ln", axis=-1)
    net.op("Relu", [net.op("MatMul", ["ln", net.const("m1", rand(8, 32))], "h1")], "h")
    net.op("Transpose", [net.op("MatMul", ["h", net.const("m2", rand(32, 8))], "h2")], "t2", perm=[0, 3, 1, 2])
    net.conv(net.op("Add", [a, "t2"], "s"), "c", 3, 8)
    channel_graph = analysed(net.model([1, 3, 4, 4], {"c": 4}, opset=17))
    stream, hidden = group_of(channel_graph, ("wa", 0)), group_of(channel_graph, ("m1", 1))
    expected = {("t1", 3), ("ln_w", 0), ("ln_b", 0), ("ln", 3), ("m1", 0), ("m2", 1), ("t2", 1), ("s", 1)}
    assert expected <= set(stream.members)
    assert stream.prunable.all() and stream.inexact == ["LayerNormalization 'ln': normalises over the channel axis"]
    assert set(hidden.members) == {("m1", 1), ("h1", 3), ("h", 3), ("m2", 0)}
    assert hidden.size == 32 and hidden.prunable.all() and not hidden.inexact
    assert roles(hidden) == {("m1", 1): ROLE_OUT, ("m2", 0): ROLE_IN}


def test_graph_output_unknown_op_and_shape_block_with_their_reasons():
    net = Net()
    net.op("Relu", [net.conv("x", "a", 4, 3)], "ra")
    net.conv("ra", "b", 4, 4)
    net.conv(net.op("LRN", ["b"], "lrn", size=3), "c", 3, 4)
    net.op("Shape", [net.conv("x", "d", 4, 3)], "shape", start=1)
    net.conv("d", "e", 3, 4)
    channel_graph = analysed(net.model([1, 3, 4, 4], {"c": 4, "ra": 4, "shape": 1, "e": 4}, opset=15))
    assert group_of(channel_graph, ("wa", 0)).reasons == ["graph output 'ra'"]
    assert group_of(channel_graph, ("wb", 0)).reasons == ["LRN 'lrn' has no channel handler"]
    assert group_of(channel_graph, ("wd", 0)).reasons == ["Shape 'shape' reads the size of axis 1 at run time"]
    assert "Shape 'shape'" not in channel_graph.relations.blocked.get(("d", 0), "")  # start=1: batch not read
    assert channel_graph.prunable == []


# --- the zoo -------------------------------------------------------------------------------------

# name: (groups, prunable groups, prunable channels), on the export after fold_constants (BN kept).
ZOO = {
    "convnext": (51, 5, 304),  # 2 residual streams (16, 32; lossy LN) + 3 MLP hidden dims (64, 64, 128)
    "densenet": (49, 8, 276),  # 2 dense blocks as one group each (16+3*8, 20+3*8) + 6 bottlenecks of 32
    "efficientnet": (52, 14, 404),  # stem, 5 hidden, 5 SE reduce, 1x1 project 8, residuals 16, 24, head 64
    "inception": (30, 7, 148),  # stem, 2 modules x (two reduce 1x1s + the concat)
    "lenet5": (16, 4, 226),  # conv 6, conv 16, fc 120, fc 84
    "mobilenet_v2": (42, 9, 308),  # stem+dw, project 8, 4 hidden, residuals 12 and 16, head 64
    "mobilenet_v3": (49, 13, 496),  # stem+dw, SE 8, project 16, 4 hidden, 2 SE 16, res 24, 32, conv 64, fc 64
    "plain_chain": (16, 3, 56),
    "regnet": (48, 15, 200),  # residuals 16/32/64 + per block: conv1, group conv + SE expand, SE reduce
    "repvgg_train": (20, 3, 112),  # identity BN branches tie 16 | 32+32 | 64+64
    "resnet_basic": (28, 7, 256),  # 4 block-internal + residual streams 16, 32, 64
    "resnet_bottleneck": (34, 9, 176),  # stem, 3 x 2 internal, residuals 32, 64
    "resnet_cifar_option_a": (28, 5, 208),  # 4 block-internal + ONE residual stream through both Pads
    "resnext": (34, 9, 144),  # stem, 3 x (conv1, group conv: in-group index), residuals 32, 64
    "shufflenet_v2": (43, 8, 224),  # stem, 2 x (branch conv1, shuffled concat), 2 unit branches, head
    "squeezenet": (34, 7, 156),  # stem, 3 x (squeeze, expand concat)
    "vgg_bn": (22, 5, 240),
}


@functools.cache
def zoo(name: str) -> tuple:
    """(graph, channel graph) of the static-batch export after fold_constants, BN still present."""
    graph = prepare(to_graph(optimize(export_onnx(name), passes=["fold_constants"]).model))
    return graph, analyse(graph)


def test_every_architecture_has_an_expectation():
    assert sorted(ZOO) == sorted(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_prunable_groups(name):
    _, channel_graph = zoo(name)
    prunable = channel_graph.prunable
    counts = (len(channel_graph.groups), len(prunable), sum(int(group.prunable.sum()) for group in prunable))
    assert counts == ZOO[name] and len(prunable) >= 1
    blocked = {reason for group in with_constants(channel_graph) if not group.is_prunable for reason in group.reasons}
    assert blocked <= {"graph input 'input'", "graph output 'logits'"}


def nodes_of(graph, op: str) -> list:
    return [node for node in graph.nodes if node.op == op]


def downstream(node, *ops: str):
    """Follow first consumers through ``ops`` (checking each op type); returns the last node."""
    for op in ops:
        node = node.outputs[0].outputs[0]
        assert node.op == op, (node.op, op)
    return node


def test_zoo_option_a_pads_couple_stages_and_own_their_zero_channels():
    graph, channel_graph = zoo("resnet_cifar_option_a")
    first, second = nodes_of(graph, "Pad")
    stream = group_of(channel_graph, (first.outputs[0].name, 1))
    assert stream is group_of(channel_graph, (second.outputs[0].name, 1)) and stream.size == 64
    assert stream.prunable.all()
    stage1 = owners(stream, (first.inputs[0].name, 1))
    stage2 = owners(stream, (first.outputs[0].name, 1))
    stage3 = owners(stream, (second.outputs[0].name, 1))
    assert stage2[8:24] == stage1 and stage3[16:48] == stage2
    assert len(set(stage3)) == 64 and not set(stage2[:8] + stage2[24:]) & set(stage1)


def test_zoo_shufflenet_shuffle_couples_b_and_half_plus_b():
    graph, channel_graph = zoo("shufflenet_v2")
    for concat in nodes_of(graph, "Concat"):
        width = concat.outputs[0].shape[1]
        shuffled = downstream(concat, "Reshape", "Transpose", "Reshape").outputs[0]
        group = group_of(channel_graph, (concat.outputs[0].name, 1))
        before, after = owners(group, (concat.outputs[0].name, 1)), owners(group, (shuffled.name, 1))
        assert before[: width // 2] == before[width // 2:] == after[0::2] == after[1::2]
        assert group.size == width // 2 and group.prunable.all()


def test_zoo_densenet_concat_offsets():
    graph, channel_graph = zoo("densenet")
    concats = nodes_of(graph, "Concat")[:3]
    block = group_of(channel_graph, (concats[-1].outputs[0].name, 1))
    assert block.size == 40 and block.prunable.all()
    layout = owners(block, (concats[-1].outputs[0].name, 1))
    stem = nodes_of(graph, "Conv")[0]
    assert layout[:16] == owners(block, (stem.inputs[1].name, 0))
    for index, concat in enumerate(concats):
        grown = concat.inputs[1].inputs[0]  # the dense layer's BN-ReLU-Conv 3x3 ends in its Conv
        assert grown.op == "Conv"
        start = 16 + 8 * index
        assert layout[start:start + 8] == owners(block, (grown.inputs[1].name, 0))


@pytest.mark.parametrize(("name", "widths"), [("inception", [40, 56]), ("squeezenet", [32, 32, 48])])
def test_zoo_concat_branches_form_one_group(name, widths):
    graph, channel_graph = zoo(name)
    for concat, width in zip(nodes_of(graph, "Concat"), widths, strict=True):
        group = group_of(channel_graph, (concat.outputs[0].name, 1))
        producers = [dim for dim, role in roles(group).items() if role == ROLE_OUT and dim[0].endswith("weight")]
        assert group.size == width and group.prunable.all() and len(producers) == len(concat.inputs)


def test_zoo_convnext_hidden_dims_are_exact_and_streams_lossy():
    _, channel_graph = zoo("convnext")
    sizes = sorted(group.size for group in channel_graph.prunable if not group.inexact)
    assert sizes == [64, 64, 128]
    lossy = [group for group in channel_graph.prunable if group.inexact]
    assert sorted(group.size for group in lossy) == [16, 32]
    assert all("ReduceMean" in line for group in lossy for line in group.inexact)


@pytest.mark.parametrize(("name", "reduce_widths"), [("mobilenet_v3", [8, 16, 16]), ("efficientnet", [4, 2, 4, 4, 6])])
def test_zoo_squeeze_excite_gate(name, reduce_widths):
    graph, channel_graph = zoo(name)
    widths = []
    for pool in nodes_of(graph, "GlobalAveragePool")[:-1]:  # the last one feeds the classifier
        reduce = pool.outputs[0].outputs[0]
        gate = next(node for node in pool.inputs[0].outputs if node.op == "Mul")
        expand = reduce.outputs[0].outputs[0]
        while expand.op != "Conv":  # through the activation (ReLU; SiLU is Sigmoid and Mul)
            expand = expand.outputs[0].outputs[0]
        hidden = group_of(channel_graph, (reduce.inputs[1].name, 0))
        assert hidden.prunable.all() and (expand.inputs[1].name, 1) in hidden.members
        block = group_of(channel_graph, (gate.outputs[0].name, 1))
        assert (expand.inputs[1].name, 0) in block.members and block.prunable.all()
        widths.append(hidden.size)
    assert widths == reduce_widths
