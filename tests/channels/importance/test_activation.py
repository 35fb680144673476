"""Activation criteria (mean |a|, 1 − APoZ, HRank) against numpy on the activation the next layer reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from onnxprune.channels import importance
from onnxprune.channels.analysis import ChannelGraph, analyse
from onnxprune.channels.importance.activation import Activation, map_ranks
from onnxprune.cli import main
from onnxprune.core.errors import OptionError
from onnxprune.core.model import to_graph
from onnxprune.passes.pipeline import prepare
from tests.channels.importance.test_criteria import group_of
from tests.util import make_model, tensor

ROOT = Path(__file__).resolve().parents[3]
IMAGES = 12

# conv1 (1x1, 2 -> 3): channel 0 = relu(x0), channel 1 = relu(-1) = 0 always, channel 2 = relu(x1) = x1.
W1 = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], dtype=np.float32).reshape(3, 2, 1, 1)
B1 = np.array([0.0, -1.0, 0.0], dtype=np.float32)


def build(flatten: bool = False) -> ChannelGraph:
    """x[N,2,4,4] -> conv1 -> relu -> r -> conv2 -> y (and, with ``flatten``, r -> Flatten -> Gemm -> z)."""
    rng = np.random.default_rng(0)
    inits = {"conv1.w": W1, "conv1.b": B1, "conv2.w": rng.standard_normal((2, 3, 1, 1)).astype(np.float32),
             "fc.w": rng.standard_normal((48, 2)).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["a"], name="conv1", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "conv2.w"], ["y"], name="conv2", kernel_shape=[1, 1]),
    ]
    outputs = [tensor("y", [None, 2, 4, 4])]
    if flatten:
        nodes += [helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
                  helper.make_node("Gemm", ["f", "fc.w"], ["z"], name="fc")]
        outputs.append(tensor("z", [None, 2]))
    model = make_model(nodes, [tensor("x", ["N", 2, 4, 4])], outputs, inits)
    return analyse(prepare(to_graph(model)))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Input channel 0: N(0, 1) noise (about half the ReLU outputs zero); channel 1: a positive rank-1 map u vᵀ."""
    rng = np.random.default_rng(1)
    x = np.empty((IMAGES, 2, 4, 4), dtype=np.float32)
    x[:, 0] = rng.standard_normal((IMAGES, 4, 4))
    x[:, 1] = np.einsum("ni,nj->nij", rng.uniform(0.5, 2, (IMAGES, 4)), rng.uniform(0.5, 2, (IMAGES, 4)))
    return x


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, images) -> str:
    path = tmp_path_factory.mktemp("calibration") / "x.npz"
    np.savez(path, x=images)
    return str(path)


def relu_maps(x: np.ndarray) -> np.ndarray:
    """The tensor r that conv2 reads, computed directly."""
    return np.maximum(np.einsum("oc,nchw->nohw", W1[:, :, 0, 0], x) + B1[None, :, None, None], 0)


def expected(statistic: str, x: np.ndarray) -> np.ndarray:
    r = relu_maps(x)
    if statistic == "activation":
        return np.abs(r).mean(axis=(0, 2, 3))
    if statistic == "apoz":
        return 1 - (r == 0).mean(axis=(0, 2, 3))
    return np.array([[np.linalg.matrix_rank(r[n, c]) for c in range(3)] for n in range(len(r))]).mean(axis=0)


def score(channel_graph: ChannelGraph, **options) -> np.ndarray:
    return Activation(**options)(group_of(channel_graph, "conv1.w"), channel_graph.graph)


@pytest.mark.parametrize("statistic", ["activation", "apoz", "hrank"])
def test_matches_numpy_on_the_relu_output(statistic, data_file, images):
    values = score(build(), statistic=statistic, data=data_file)
    np.testing.assert_allclose(values, expected(statistic, images), rtol=1e-6)
    assert values[1] == 0  # always zero: mean 0, APoZ 1, rank 0


def test_crafted_channels(data_file, images):
    apoz = score(build(), statistic="apoz", data=data_file)
    hrank = score(build(), statistic="hrank", data=data_file)
    assert apoz[2] == 1 and 0.3 < apoz[0] < 0.7  # never zero; ReLU of noise: about half zero
    assert hrank[2] == 1  # every map of channel 2 is rank 1
    assert hrank[0] > 2


@pytest.mark.parametrize("statistic", ["activation", "apoz", "hrank"])
def test_streaming_over_batches_matches_one_batch(statistic, data_file):
    channel_graph = build()
    whole = score(channel_graph, statistic=statistic, data=data_file, batch_size=IMAGES)
    for batch in (5, 1):
        np.testing.assert_allclose(score(channel_graph, statistic=statistic, data=data_file, batch_size=batch),
                                   whole, rtol=1e-12)


def test_samples_and_rank_samples_take_the_first_images(data_file, images):
    channel_graph = build()
    np.testing.assert_allclose(score(channel_graph, statistic="apoz", data=data_file, samples=6, batch_size=3),
                               expected("apoz", images[:6]), rtol=1e-12)
    np.testing.assert_allclose(score(channel_graph, statistic="hrank", data=data_file, batch_size=5, rank_samples=7),
                               expected("hrank", images[:7]), rtol=1e-12)


def test_sums_over_the_tensors_consumers_read(data_file, images):
    """r is read by conv2 and, flattened, by the Gemm: the flat tensor holds 16 positions per channel, and their
    mean is the same mean |a| / 1 − APoZ; its 1x1 "maps" have rank 1 where non-zero."""
    channel_graph = build(flatten=True)
    np.testing.assert_allclose(score(channel_graph, statistic="activation", data=data_file),
                               2 * expected("activation", images), rtol=1e-6)
    np.testing.assert_allclose(score(channel_graph, statistic="hrank", data=data_file),
                               expected("hrank", images) + expected("apoz", images), rtol=1e-12)


def test_map_ranks_tolerance():
    maps = np.zeros((1, 2, 3, 3), dtype=np.float32)
    maps[0, 0] = np.diag([1.0, 1e-3, 1e-9])
    maps[0, 1] = np.eye(3)
    ranks, count = map_ranks(maps)
    assert count == 1 and ranks.tolist() == [2, 3]
    assert map_ranks(maps, rtol=1e-2)[0].tolist() == [1, 3]


def test_registered_as_data_criteria():
    for name in ("activation", "apoz", "hrank"):
        assert importance.needs_data(name)
        with pytest.raises(OptionError, match=f"criterion {name} needs calibration data"):
            importance.make(name)


def test_cli_prunes_resnet20_with_apoz(tmp_path):
    """End to end: the CLI passes --data/--mean/--std to the criterion, 64 calibration images."""
    out, report, data = tmp_path / "pruned.onnx", tmp_path / "report.json", str(tmp_path / "first64.npz")
    with np.load(ROOT / "models/data/cifar10_test1000.npz") as stored:  # fewer images: the fidelity check runs them all
        np.savez(data, x_test=stored["x_test"][:64], y_test=stored["y_test"][:64])
    args = ["prune", str(ROOT / "models/resnet20_cifar10.onnx"), str(out), "--criterion", "apoz", "--data", data,
            "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--flops-target", "0.7", "--runs", "0",
            "--report", str(report), "-q"]
    assert main(args) == 0
    assert out.exists()
    result = json.loads(report.read_text())
    assert result["criterion"] == "apoz" and sum(group["removed"] for group in result["groups"]) > 0
