"""reconstruct: pruned layers refitted by least squares to the original layers' outputs (He et al. 2017)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

from onnxprune import channels
from onnxprune.api import prepare_for_pruning
from onnxprune.channels import importance, policy, surgery
from onnxprune.core import data
from onnxprune.core.errors import InputError
from onnxprune.core.model import load, to_graph, to_model
from onnxprune.measure import stats, verify
from onnxprune.passes import fold_batchnorm
from onnxprune.passes.pipeline import prepare
from onnxprune.recover import least_squares
from tests.util import make_model, outputs, tensor

ROOT = Path(__file__).resolve().parents[2]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def calibration(count: int = 3, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((4, 3, 8, 8)).astype(np.float32)} for _ in range(count)]


def assert_close(reference: onnx.ModelProto, candidate: onnx.ModelProto, feeds, rel: float) -> None:
    for feed in feeds:
        want, got = outputs(reference, feed)[0], outputs(candidate, feed)[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=rel * float(np.abs(want).max()))


def pair(attrs: dict, size: int = 8) -> onnx.ModelProto:
    """x -> conv1 (3x3) -> relu -> conv2 (``attrs``, with bias) -> y."""
    rng = np.random.default_rng(0)
    kernel = attrs["kernel_shape"]
    inits = {"w1": rng.standard_normal((4, 3, 3, 3)), "w2": rng.standard_normal((5, 4, *kernel)),
             "b2": rng.standard_normal(5)}
    inits = {key: value.astype(np.float32) for key, value in inits.items()}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2", **attrs)]
    return make_model(nodes, [tensor("x", ["n", 3, size, size])], [tensor("y", [None] * 4)], inits)


CONVS = [
    {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 2, 1]},
    {"kernel_shape": [3, 3], "dilations": [2, 2], "pads": [2, 2, 2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
    {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"},
    {"kernel_shape": [1, 1]},
]


@pytest.mark.parametrize("attrs", CONVS, ids=lambda attrs: "-".join(f"{k}{v}" for k, v in attrs.items()))
def test_patches_times_filters_is_the_convolution(attrs):
    model = pair(attrs, size=7)
    graph = prepare(to_graph(model))
    node = next(node for node in graph.nodes if node.name == "conv2")
    x = np.random.default_rng(2).standard_normal((2, 4, 7, 7)).astype(np.float32)
    patches = least_squares.conv_patches(node, x)  # [N, *out, C, *kernel]
    weight, bias = node.inputs[1].values, node.inputs[2].values
    got = patches.reshape(*patches.shape[:3], -1) @ weight.reshape(len(weight), -1).T + bias
    conv = make_model([helper.make_node("Conv", ["r", "w2", "b2"], ["y"], **attrs)],
                      [tensor("r", [2, 4, 7, 7])], [tensor("y", [None] * 4)], {"w2": weight, "b2": bias})
    np.testing.assert_allclose(np.moveaxis(got, -1, 1), outputs(conv, {"r": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attrs", CONVS[:4], ids=lambda attrs: "-".join(f"{k}{v}" for k, v in attrs.items()))
def test_unpruned_layer_is_reproduced_exactly(attrs):
    """Nothing removed (every channel kept), conv2's weights scrambled: the refit restores the layer."""
    original = pair(attrs)
    graph = prepare(to_graph(original))
    conv2 = next(node for node in graph.nodes if node.name == "conv2")
    conv2.inputs[1].values = np.random.default_rng(3).standard_normal(conv2.inputs[1].values.shape).astype(np.float32)
    feeds = calibration()
    report = least_squares.run(graph, original, feeds, {"r": np.arange(4)}, ridge=0.0)
    assert len(report.rewrites) == 1 and report.rewrites[0].startswith("Conv 'conv2'")
    assert_close(original, to_model(graph, original), feeds + calibration(2, seed=7), 1e-5)


def dense(op: str) -> onnx.ModelProto:
    """x -> Gemm (transB) -> relu -> Gemm (alpha 0.5, beta 2, bias) -> y, or the same with MatMul on [n, 3, 6]."""
    rng = np.random.default_rng(6)
    inits = {"w1": rng.standard_normal((5, 6)).astype(np.float32)}
    if op == "Gemm":
        inits.update(w2=rng.standard_normal((4, 5)).astype(np.float32), b2=rng.standard_normal(4).astype(np.float32))
        nodes = [helper.make_node("Gemm", ["x", "w1"], ["a"], name="first", transB=1),
                 helper.make_node("Relu", ["a"], ["r"], name="relu"),
                 helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="second", transB=1, alpha=0.5, beta=2.0)]
        return make_model(nodes, [tensor("x", ["n", 6])], [tensor("y", [None, None])], inits)
    inits.update(w1=inits["w1"].T.copy(), w2=rng.standard_normal((5, 4)).astype(np.float32))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="second")]
    return make_model(nodes, [tensor("x", ["n", 3, 6])], [tensor("y", [None] * 3)], inits)


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_unpruned_dense_layer_is_reproduced_exactly(op):
    original = dense(op)
    graph = prepare(to_graph(original))
    second = next(node for node in graph.nodes if node.name == "second")
    second.inputs[1].values = np.random.default_rng(3).standard_normal(second.inputs[1].values.shape).astype(np.float32)
    rng = np.random.default_rng(8)
    shape = (16, 6) if op == "Gemm" else (4, 3, 6)
    feeds = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(3)]
    report = least_squares.run(graph, original, feeds, {"r": np.arange(5)}, ridge=0.0)
    assert [line.split(":")[0] for line in report.rewrites] == [f"{op} 'second'"]
    assert_close(original, to_model(graph, original), feeds, 1e-5)


def combined(bn: bool) -> onnx.ModelProto:
    """x -> conv1 (6 filters, 4 and 5 linear combinations of 0..3) -> conv2 [-> bn2] -> relu -> y."""
    rng = np.random.default_rng(4)
    w1, b1 = rng.standard_normal((6, 3, 3, 3)), rng.standard_normal(6)
    mix = rng.standard_normal((2, 4))
    w1[4:], b1[4:] = np.einsum("rj,jckl->rckl", mix, w1[:4]), mix @ b1[:4]
    inits = {"w1": w1, "b1": b1, "w2": rng.standard_normal((5, 6, 3, 3)), "b2": rng.standard_normal(5)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Conv", ["a", "w2", "b2"], ["c"], name="conv2", kernel_shape=[3, 3], pads=[1] * 4)]
    if bn:
        inits.update({"g": rng.uniform(0.5, 2, 5), "beta": rng.standard_normal(5), "mu": rng.standard_normal(5),
                      "var": rng.uniform(0.5, 2, 5)})
        nodes.append(helper.make_node("BatchNormalization", ["c", "g", "beta", "mu", "var"], ["n"], name="bn2"))
    nodes.append(helper.make_node("Relu", ["n" if bn else "c"], ["y"], name="relu"))
    inits = {key: np.asarray(value, np.float32) for key, value in inits.items()}
    return make_model(nodes, [tensor("x", ["n", 3, 8, 8])], [tensor("y", [None] * 4)], inits)


def prune(model: onnx.ModelProto, weight: str, remove: list[int]):
    """(pruned graph, kept channels) with ``remove`` of the group of ``weight``'s filters cut."""
    graph = prepare(to_graph(model))
    channel_graph = channels.analyse(graph)
    group = next(g.id for g in channel_graph.groups if (weight, 0) in g.members)
    chosen = {group: np.asarray(remove)}
    kept = surgery.kept_channels(channel_graph, chosen)
    surgery.run(graph, channel_graph, chosen)
    return graph, kept


@pytest.mark.parametrize("case", ["no BN", "BN kept", "BN folded", "BN re-estimated"])
def test_redundant_inputs_are_recovered_exactly(case):
    """The refit matches the original after its BN, whatever became of the pruned graph's BN."""
    original = combined(bn=case != "no BN")
    graph, kept = prune(original, "w1", [4, 5])
    assert kept["a"].tolist() == [0, 1, 2, 3]
    if case == "BN folded":
        assert fold_batchnorm.run(graph).rewrites
        prepare(graph)
    if case == "BN re-estimated":  # as recalibrate_bn would leave it: other statistics, same γ, β
        bn2 = next(node for node in graph.nodes if node.op == "BatchNormalization")
        bn2.inputs[3].values = bn2.inputs[3].values + 1.5
        bn2.inputs[4].values = bn2.inputs[4].values * 3
    feeds = calibration()
    before = to_model(graph, original)
    report = least_squares.run(graph, original, feeds, kept, ridge=0.0)
    assert [line.split(":")[0] for line in report.rewrites] == ["Conv 'conv2'"]
    with pytest.raises(AssertionError):
        assert_close(original, before, feeds, 1e-2)
    assert_close(original, to_model(graph, original), feeds, 1e-4)
    assert_close(original, to_model(graph, original), calibration(2, seed=7), 1e-4)  # unseen inputs too


def test_grouped_conv_is_left_alone_with_reason():
    rng = np.random.default_rng(5)
    inits = {"w1": rng.standard_normal((6, 3, 3, 3)), "wd": rng.standard_normal((6, 1, 3, 3)),
             "w3": rng.standard_normal((4, 6, 1, 1))}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wd"], ["d"], name="dw", kernel_shape=[3, 3], pads=[1] * 4, group=6),
             helper.make_node("Conv", ["d", "w3"], ["y"], name="conv3", kernel_shape=[1, 1])]
    original = make_model(nodes, [tensor("x", ["n", 3, 8, 8])], [tensor("y", [None] * 4)],
                          {key: value.astype(np.float32) for key, value in inits.items()})
    graph, kept = prune(original, "w1", [1, 4])
    report = least_squares.run(graph, original, calibration(), kept)
    assert [line.split(":")[0] for line in report.rewrites] == ["Conv 'conv3'"]
    assert len(report.skipped) == 1 and report.skipped[0].startswith("Conv 'dw': grouped convolution (group=4)")


def test_no_calibration_data_is_refused():
    original = pair(CONVS[0])
    with pytest.raises(InputError, match="calibration data"):
        least_squares.run(prepare(to_graph(original)), original, [], {"r": np.arange(4)})


@functools.lru_cache(maxsize=1)
def _pruned_resnet20() -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, np.ndarray], onnx.ModelProto]:
    model = load(ROOT / "models" / "resnet20_cifar10.onnx")
    graph = to_graph(model)
    prepare_for_pruning(graph)
    original = to_model(graph, model)
    channel_graph = channels.analyse(graph)
    scorer = importance.make("l1")
    scores = {group.id: scorer(group, graph) for group in channel_graph.prunable}
    counted = stats.model_stats(original, data.resolve_input_shapes(model, None))
    config = policy.PolicyConfig(flops_target=0.7, global_ranking=True, round_to=1)
    remove = policy.select(channel_graph, scores, config, counted)
    kept = surgery.kept_channels(channel_graph, remove)
    surgery.run(graph, channel_graph, remove)
    return original, to_model(graph, model), kept, model


def pruned_resnet20() -> tuple[onnx.ModelProto, gs.Graph, dict[str, np.ndarray], onnx.ModelProto]:
    """(cleaned original, pruned graph with BN kept, kept channels, template): ResNet-20 at -30 % FLOPs, L1."""
    original, pruned, kept, model = _pruned_resnet20()
    return original, prepare(to_graph(pruned)), kept, model


@functools.lru_cache(maxsize=1)
def resnet20_feeds() -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """(calibration: images 0..31, held out: images 512..639) of the shipped CIFAR-10 subset."""
    source = data.DataSource(ROOT / "models" / "data" / "cifar10_test1000.npz", MEAN, STD)
    feeds = source.feeds(_pruned_resnet20()[3], {"input": (32, 3, 32, 32)})
    return feeds[:1], feeds[16:20]


@functools.lru_cache(maxsize=1)
def _original_logits() -> np.ndarray:
    return np.concatenate([out["logits"] for out in verify.run(_pruned_resnet20()[0], resnet20_feeds()[1])])


def fidelity(graph: gs.Graph, template: onnx.ModelProto) -> tuple[float, float]:
    """(mean cosine, top-1 agreement) of the logits with the original's, on the held-out images."""
    want = _original_logits()
    got = np.concatenate([out["logits"] for out in verify.run(to_model(graph, template), resnet20_feeds()[1])])
    cosine = (want * got).sum(axis=1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    return float(cosine.mean()), float((want.argmax(axis=1) == got.argmax(axis=1)).mean())


def test_reconstruction_improves_pruned_resnet20():
    calibrate, _ = resnet20_feeds()
    original, graph, kept, template = pruned_resnet20()
    cosine, agreement = fidelity(graph, template)
    report = least_squares.run(graph, original, calibrate, kept)
    assert len(report.rewrites) == 18 and not report.skipped  # every conv but the first, and the classifier
    refitted_cosine, refitted_agreement = fidelity(graph, template)
    assert refitted_cosine > cosine + 0.1
    assert refitted_agreement > agreement + 0.2
