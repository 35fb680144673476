"""Importance criteria: each scores the channels of one group, aggregated over the whole group."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnxprune.channels import importance
from onnxprune.channels.analysis import ChannelGraph, ChannelGroup, analyse
from onnxprune.channels.importance import BNScale, Entropy, Magnitude, Random, from_filter_scores
from onnxprune.core.errors import InputError
from onnxprune.core.model import to_graph
from onnxprune.passes.pipeline import prepare
from tests.util import make_model, tensor


def conv(inits, name, data, out, weight, bias=None, pads=0):
    """A Conv node over the given weight (and bias); its parameters go into ``inits``."""
    inits[f"{name}.w"] = np.asarray(weight, dtype=np.float32)
    inputs = [data, f"{name}.w"]
    if bias is not None:
        inits[f"{name}.b"] = np.asarray(bias, dtype=np.float32)
        inputs.append(f"{name}.b")
    k = inits[f"{name}.w"].shape[2]
    return helper.make_node("Conv", inputs, [out], name=name, kernel_shape=[k, k], pads=[pads] * 4)


def batchnorm(inits, name, data, out, gamma, seed=3):
    rng = np.random.default_rng(seed)
    channels = len(gamma)
    inits[f"{name}.scale"] = np.asarray(gamma, dtype=np.float32)
    inits[f"{name}.bias"] = rng.standard_normal(channels).astype(np.float32)
    inits[f"{name}.mean"] = rng.standard_normal(channels).astype(np.float32)
    inits[f"{name}.var"] = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    inputs = [data] + [f"{name}.{key}" for key in ("scale", "bias", "mean", "var")]
    return helper.make_node("BatchNormalization", inputs, [out], name=name)


def analysed(nodes, inits, c_in=4, size=6) -> ChannelGraph:
    model = make_model(nodes, [tensor("x", [1, c_in, size, size])], [tensor("y", [None, None, None, None])], inits)
    return analyse(prepare(to_graph(model)))


def group_of(channel_graph: ChannelGraph, name: str, axis: int = 0) -> ChannelGroup:
    return next(g for g in channel_graph.groups if (name, axis) in g.members)


def chain(w1, bn_gamma=None, c_out=5, seed=0) -> ChannelGraph:
    """x -> conv1(w1) [-> bn] -> relu -> conv2 -> y; the group of interest is conv1's output."""
    rng = np.random.default_rng(seed)
    w1 = np.asarray(w1, dtype=np.float32)
    inits: dict = {}
    nodes = [conv(inits, "conv1", "x", "a", w1)]
    if bn_gamma is not None:
        nodes.append(batchnorm(inits, "bn", "a", "a_bn", bn_gamma))
    nodes += [
        helper.make_node("Relu", ["a_bn" if bn_gamma is not None else "a"], ["r"], name="relu"),
        conv(inits, "conv2", "r", "y", rng.standard_normal((c_out, w1.shape[0], 1, 1))),
    ]
    return analysed(nodes, inits, c_in=w1.shape[1])


def residual(wa, wb, seed=0) -> ChannelGraph:
    """conv_a(x) + conv_b(x) -> relu -> conv_c: one group holds both producers."""
    rng = np.random.default_rng(seed)
    inits: dict = {}
    nodes = [
        conv(inits, "conv_a", "x", "a", wa),
        conv(inits, "conv_b", "x", "b", wb),
        helper.make_node("Add", ["a", "b"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r"], name="relu"),
        conv(inits, "conv_c", "r", "y", rng.standard_normal((3, len(wa), 1, 1))),
    ]
    return analysed(nodes, inits, c_in=np.shape(wa)[1])


def scores(criterion, channel_graph: ChannelGraph, name: str = "conv1.w", axis: int = 0) -> np.ndarray:
    return criterion(group_of(channel_graph, name, axis), channel_graph.graph)


# --- magnitude -------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 2])
def test_magnitude_ranks_small_filter_lowest(p):
    weight = np.random.default_rng(0).standard_normal((6, 4, 3, 3))
    weight[3] *= 0.01
    channel_graph = chain(weight)
    values = scores(Magnitude(p=p), channel_graph)
    assert values.shape == (6,)
    assert np.argmin(values) == 3
    expected = np.linalg.norm(weight.astype(np.float32).reshape(6, -1).astype(np.float64), ord=p, axis=1)
    np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_magnitude_sums_over_producers_of_a_residual_group():
    rng = np.random.default_rng(1)
    wa, wb = rng.standard_normal((6, 4, 1, 1)), rng.standard_normal((6, 4, 1, 1))
    wa[2] *= 0.01  # small in one producer only: still important through the other
    wa[4] *= 0.01
    wb[4] *= 0.01  # small in both: the least important channel of the group
    channel_graph = residual(wa, wb)
    values = scores(Magnitude(p=1), channel_graph, "conv_a.w")
    expected = np.abs(wa.astype(np.float32)).reshape(6, -1).sum(1) + np.abs(wb.astype(np.float32)).reshape(6, -1).sum(1)
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    assert np.argmin(values) == 4
    assert values[2] > values[4]


def test_magnitude_falls_back_to_consumer_columns_without_filters():
    """A Gemm with one input feature has one element per output channel: the consumer's columns decide."""
    rng = np.random.default_rng(2)
    inits = {"fc1.w": rng.standard_normal((1, 6)).astype(np.float32), "fc1.b": np.zeros(6, np.float32),
             "fc2.w": rng.standard_normal((6, 3)).astype(np.float32)}
    inits["fc2.w"][1] *= 0.001
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.w", "fc1.b"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "fc2.w"], ["y"], name="fc2"),
    ]
    model = make_model(nodes, [tensor("x", [2, 1])], [tensor("y", [None, None])], inits)
    channel_graph = analyse(prepare(to_graph(model)))
    values = scores(Magnitude(p=1), channel_graph, "fc1.w", axis=1)
    np.testing.assert_allclose(values, np.abs(inits["fc2.w"]).sum(1), rtol=1e-6)
    assert np.argmin(values) == 1


def deconv_chain(group: int, c_out: int, seed: int = 4) -> tuple[ChannelGraph, dict[str, np.ndarray]]:
    """x -> conv1 (4) -> relu -> ConvTranspose (group, 4 -> c_out) -> relu -> conv2 -> y."""
    rng = np.random.default_rng(seed)
    inits: dict = {}
    nodes = [
        conv(inits, "conv1", "x", "a", rng.standard_normal((4, 3, 1, 1))),
        helper.make_node("Relu", ["a"], ["r"], name="relu1"),
        helper.make_node("ConvTranspose", ["r", "deconv.w"], ["t"], name="deconv", group=group, strides=[2, 2]),
        helper.make_node("Relu", ["t"], ["rt"], name="relu2"),
        conv(inits, "conv2", "rt", "y", rng.standard_normal((3, c_out, 1, 1))),
    ]
    inits["deconv.w"] = rng.standard_normal((4, c_out // group, 3, 3)).astype(np.float32)
    return analysed(nodes, inits, c_in=3), inits


def norms(rows: np.ndarray, p: float) -> np.ndarray:
    return np.linalg.norm(rows.astype(np.float64).reshape(len(rows), -1), ord=p, axis=1)


@pytest.mark.parametrize("p", [1, 2])
def test_magnitude_of_grouped_conv_transpose_sums_its_filters(p):
    """Weight [4, 3, k], group 2: the filter of output 3 g + j is W[2 g : 2 g + 2, j], not the column W[:, j]."""
    channel_graph, inits = deconv_chain(group=2, c_out=6)
    weight = inits["deconv.w"]
    group = group_of(channel_graph, "deconv.w", axis=1)
    where, owner = group.members[("deconv.w", 1)]
    expected = np.zeros(group.size)
    for block in (weight[:2], weight[2:]):
        expected[owner] += norms(np.moveaxis(block, 1, 0)[where], p)
    np.testing.assert_allclose(Magnitude(p=p)(group, channel_graph.graph), expected, rtol=1e-6)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("multiplier", [1, 2])
def test_magnitude_of_depthwise_conv_transpose_sums_each_output_filter(p, multiplier):
    """Weight [4, m, k], group 4: input c's outputs c*m .. c*m+m-1 have the filters W[c, j], one each."""
    channel_graph, inits = deconv_chain(group=4, c_out=4 * multiplier)
    group = group_of(channel_graph, "conv1.w")
    filters = norms(inits["deconv.w"].reshape(4 * multiplier, -1), p)
    expected = norms(inits["conv1.w"], p) + filters.reshape(4, multiplier).sum(1)
    np.testing.assert_allclose(Magnitude(p=p)(group, channel_graph.graph), expected, rtol=1e-6)


# --- BN scale --------------------------------------------------------------------------------


def test_bn_scale_ranks_zero_gamma_lowest():
    gamma = np.array([0.9, -1.2, 1e-4, 0.5, 0.7, -0.3])
    channel_graph = chain(np.random.default_rng(0).standard_normal((6, 4, 3, 3)), bn_gamma=gamma)
    values = scores(BNScale(), channel_graph)
    np.testing.assert_allclose(values, np.abs(gamma.astype(np.float32)), rtol=1e-6)
    assert np.argmin(values) == 2


def test_bn_scale_without_bn_falls_back_or_abstains():
    weight = np.random.default_rng(0).standard_normal((6, 4, 3, 3))
    channel_graph = chain(weight)
    np.testing.assert_array_equal(scores(BNScale(), channel_graph), scores(Magnitude(p=1), channel_graph))
    assert np.isnan(scores(BNScale(fallback=None), channel_graph)).all()


# --- entropy ---------------------------------------------------------------------------------


def test_entropy_ranks_duplicated_filter_lowest():
    weight = np.random.default_rng(4).standard_normal((12, 4, 3, 3))
    weight[7] = 3.0 * weight[2]  # the same pattern at another scale: redundant
    values = scores(Entropy(), chain(weight))
    assert set(np.argsort(values)[:2]) == {2, 7}
    assert values[2] == pytest.approx(values[7], rel=1e-5)


def test_entropy_ranks_dead_filter_lowest_and_ignores_scale():
    weight = np.random.default_rng(5).standard_normal((8, 4, 3, 3))
    weight[5] = 0
    values = scores(Entropy(), chain(weight))
    assert np.argmin(values) == 5
    scaled = weight.copy()
    scaled[1] *= 10  # cosine similarities do not change with a filter's norm
    np.testing.assert_allclose(scores(Entropy(), chain(scaled)), values, rtol=1e-5)


def test_entropy_sums_over_producers():
    rng = np.random.default_rng(6)
    wa, wb = rng.standard_normal((6, 4, 1, 1)), rng.standard_normal((6, 4, 1, 1))
    channel_graph = residual(wa, wb)
    group = group_of(channel_graph, "conv_a.w")
    alone_a = Entropy()(group_of(chain(wa), "conv1.w"), chain(wa).graph)
    alone_b = Entropy()(group_of(chain(wb), "conv1.w"), chain(wb).graph)
    np.testing.assert_allclose(Entropy()(group, channel_graph.graph), alone_a + alone_b, rtol=1e-6)


# --- random ----------------------------------------------------------------------------------


def test_random_is_seeded_and_deterministic():
    channel_graph = chain(np.random.default_rng(0).standard_normal((6, 4, 3, 3)))
    first = scores(Random(seed=3), channel_graph)
    np.testing.assert_array_equal(first, scores(Random(seed=3), channel_graph))
    assert not np.array_equal(first, scores(Random(seed=4), channel_graph))
    assert ((first >= 0) & (first < 1)).all()


# --- adapter and registry --------------------------------------------------------------------


def test_filter_scores_map_onto_groups_through_producers():
    rng = np.random.default_rng(7)
    channel_graph = residual(rng.standard_normal((6, 4, 1, 1)), rng.standard_normal((6, 4, 1, 1)))
    given = {"conv_a.w": np.arange(6.0), "conv_b.w": np.ones(6), "conv_c.w": np.zeros(3)}
    criterion = from_filter_scores(given)
    np.testing.assert_array_equal(scores(criterion, channel_graph, "conv_a.w"), np.arange(6.0) + 1)
    assert np.isnan(from_filter_scores({})(group_of(channel_graph, "conv_a.w"), channel_graph.graph)).all()


def test_registry_builds_criteria_and_says_which_need_data():
    assert importance.make("l2") == Magnitude(p=2.0)
    assert importance.make("random", seed=5) == Random(seed=5)
    assert isinstance(importance.make("entropy"), importance.Criterion)
    assert not any(importance.needs_data(name) for name in ("l1", "l2", "bn", "entropy", "random"))
    with pytest.raises(InputError, match="unknown criterion 'nope'"):
        importance.make("nope")
    with pytest.raises(InputError, match="criterion random"):
        importance.make("random", seed=-1)
    importance.register("_test_data", lambda data: from_filter_scores(data), needs_data=True)
    try:
        assert importance.needs_data("_test_data")
    finally:
        del importance.CRITERIA["_test_data"]


def test_score_groups_scores_every_prunable_group():
    channel_graph = chain(np.random.default_rng(0).standard_normal((6, 4, 3, 3)))
    result = importance.score_groups(channel_graph, importance.make("l1"))
    assert set(result) == {g.id for g in channel_graph.prunable}
    assert all(values.shape == (g.size,) for g in channel_graph.prunable for values in [result[g.id]])
