"""recalibrate_bn: BN running statistics re-estimated from calibration data, stage by stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxprune.core.errors import InputError
from onnxprune.core.model import to_graph, to_model
from onnxprune.measure import verify
from onnxprune.passes.pipeline import prepare
from onnxprune.recover import bn_recalibration
from tests.util import make_model, tensor

ROOT = Path(__file__).resolve().parents[2]
BNS = ["bn1", "bn2", "bn3", "bn4"]


def conv(name: str, src: str, dst: str, shape, rng, pads=1) -> tuple[onnx.NodeProto, dict]:
    weight = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
    node = helper.make_node("Conv", [src, f"{name}.w"], [dst], name=name, kernel_shape=list(shape[2:]),
                            pads=[pads] * 4)
    return node, {f"{name}.w": weight}


def bn(name: str, src: str, dst: str, channels: int, rng) -> tuple[onnx.NodeProto, dict]:
    params = {f"{name}.scale": rng.uniform(0.5, 2, channels), f"{name}.bias": rng.standard_normal(channels),
              f"{name}.mean": rng.standard_normal(channels), f"{name}.var": rng.uniform(0.5, 2, channels)}
    node = helper.make_node("BatchNormalization", [src, *params], [dst], name=name)
    return node, {key: value.astype(np.float32) for key, value in params.items()}


def network() -> onnx.ModelProto:
    """conv1-bn1-relu, then two branches (conv2-bn2, 1x1 conv3-bn3) added, relu, conv4-bn4: BN stages 1 | 2, 3 | 4."""
    rng = np.random.default_rng(0)
    parts = [conv("conv1", "x", "c1", (4, 3, 3, 3), rng), bn("bn1", "c1", "n1", 4, rng),
             (helper.make_node("Relu", ["n1"], ["r1"], name="relu1"), {}),
             conv("conv2", "r1", "c2", (4, 4, 3, 3), rng), bn("bn2", "c2", "n2", 4, rng),
             conv("conv3", "r1", "c3", (4, 4, 1, 1), rng, pads=0), bn("bn3", "c3", "n3", 4, rng),
             (helper.make_node("Add", ["n2", "n3"], ["s"], name="add"), {}),
             (helper.make_node("Relu", ["s"], ["r2"], name="relu2"), {}),
             conv("conv4", "r2", "c4", (5, 4, 3, 3), rng), bn("bn4", "c4", "y", 5, rng)]
    inits = {key: value for _, params in parts for key, value in params.items()}
    return make_model([node for node, _ in parts], [tensor("x", ["n", 3, 8, 8])], [tensor("y", [None] * 4)], inits)


def calibration(count: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": (0.5 + 2 * rng.standard_normal((4, 3, 8, 8))).astype(np.float32)} for _ in range(count)]


def inputs_of(model: onnx.ModelProto, name: str, feeds) -> np.ndarray:
    """The input of BN ``name`` over all feeds, concatenated, from a plain onnxruntime run."""
    node = next(node for node in model.graph.node if node.name == name)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(onnx.ValueInfoProto(name=node.input[0]))
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([node.input[0]], feed)[0] for feed in feeds])


def set_stats(model: onnx.ModelProto, name: str, mean: np.ndarray, var: np.ndarray) -> None:
    for init in model.graph.initializer:
        if init.name in (f"{name}.mean", f"{name}.var"):
            values = mean if init.name.endswith("mean") else var
            init.CopyFrom(numpy_helper.from_array(np.asarray(values, np.float32), init.name))


def true_stats(model: onnx.ModelProto, feeds) -> onnx.ModelProto:
    """Each BN, in order, given numpy's mean/var of its input in the network with the BNs before it fixed."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    for name in BNS:
        values = inputs_of(result, name, feeds).astype(np.float64)
        set_stats(result, name, values.mean(axis=(0, 2, 3)), values.var(axis=(0, 2, 3)))
    return result


def recalibrated(model: onnx.ModelProto, feeds):
    graph = prepare(to_graph(model))
    report = bn_recalibration.run(graph, feeds)
    return to_model(graph, model), report


def test_recalibration_restores_corrupted_statistics():
    feeds = calibration()
    truth = true_stats(network(), feeds)
    corrupted = onnx.ModelProto()
    corrupted.CopyFrom(truth)
    rng = np.random.default_rng(2)
    for name in BNS:
        channels = 5 if name == "bn4" else 4
        set_stats(corrupted, name, 3 * rng.standard_normal(channels), np.exp(2 * rng.standard_normal(channels)))
    fixed, report = recalibrated(corrupted, feeds)
    assert len(report.rewrites) == 4 and not report.skipped
    assert "mean shift" in report.rewrites[0] and "variance ratio" in report.rewrites[0]
    expected, broken = verify.run(truth, feeds), verify.run(corrupted, feeds)
    for want, got, bad in zip(expected, verify.run(fixed, feeds), broken):
        scale = float(np.abs(want["y"]).max())
        assert np.abs(bad["y"] - want["y"]).max() > 0.1 * scale
        np.testing.assert_allclose(got["y"], want["y"], rtol=0, atol=1e-4 * scale)


def test_statistics_equal_numpy_mean_and_biased_variance():
    feeds = calibration()
    fixed, _ = recalibrated(network(), feeds)
    stored = {init.name: numpy_helper.to_array(init) for init in fixed.graph.initializer}
    for name in BNS:
        values = inputs_of(fixed, name, feeds).astype(np.float64)
        np.testing.assert_allclose(stored[f"{name}.mean"], values.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stored[f"{name}.var"], values.var(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)


def test_stages_follow_dependencies():
    graph = prepare(to_graph(network()))
    bns = [node for node in graph.nodes if node.op == "BatchNormalization"]
    from onnxprune.measure.activations import stages

    assert [sorted(node.name for node in stage) for stage in stages(graph, bns)] == [["bn1"], ["bn2", "bn3"], ["bn4"]]


def test_bn_with_non_constant_statistics_is_skipped():
    model = network()
    model.graph.input.append(tensor("bn4.mean", [5]))
    kept = [init for init in model.graph.initializer if init.name != "bn4.mean"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    _, report = recalibrated(model, calibration(1))
    assert len(report.rewrites) == 3
    assert report.skipped == ["BatchNormalization 'bn4': scale, bias, mean and variance are not all constant"]


def test_no_calibration_data_is_refused():
    with pytest.raises(InputError, match="calibration data"):
        recalibrated(network(), [])


def test_recalibration_improves_pruned_resnet20():
    from tests.recover.test_least_squares import fidelity, pruned_resnet20, resnet20_feeds

    calibrate, _ = resnet20_feeds()
    _, graph, _, template = pruned_resnet20()
    cosine, agreement = fidelity(graph, template)
    report = bn_recalibration.run(graph, calibrate)
    assert len(report.rewrites) == 19 and not report.skipped
    recalibrated_cosine, recalibrated_agreement = fidelity(graph, template)
    assert recalibrated_cosine > cosine + 0.1
    assert recalibrated_agreement > agreement + 0.1
