"""The model zoo exports valid ONNX that matches torch and keeps each family's defining ops."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models.architectures import ARCHITECTURES, INPUT_SHAPES, build, export, export_onnx

RTOL, ATOL = 1e-4, 1e-5

WITHOUT_BN = {"squeezenet", "lenet5", "convnext"}

# Each inner set lists interchangeable op types; the graph needs one op from every set.
CHARACTERISTIC_OPS: dict[str, list[set[str]]] = {
    "resnet_basic": [{"Add"}],
    "resnet_bottleneck": [{"Add"}],
    "resnet_cifar_option_a": [{"Slice"}, {"Pad"}, {"Add"}],
    "vgg_bn": [{"MaxPool"}, {"Gemm", "MatMul"}],
    "mobilenet_v2": [{"Clip"}, {"Add"}],
    "mobilenet_v3": [{"HardSwish", "HardSigmoid"}, {"Mul"}, {"GlobalAveragePool", "ReduceMean"}],
    "densenet": [{"Concat"}, {"AveragePool"}],
    "inception": [{"Concat"}, {"MaxPool"}],
    "squeezenet": [{"Concat"}],
    "shufflenet_v2": [{"Split", "Slice"}, {"Transpose"}, {"Reshape"}, {"Concat"}],
    "efficientnet": [{"Sigmoid"}, {"Mul"}, {"Add"}],
    "resnext": [{"Add"}],
    "regnet": [{"Sigmoid"}, {"Mul"}, {"Add"}],
    "convnext": [{"LayerNormalization", "ReduceMean"}, {"Transpose"}, {"Gelu", "Erf"}, {"Mul"}],
    "repvgg_train": [{"Add"}],
    "plain_chain": [{"Conv"}],
    "lenet5": [{"MaxPool"}, {"Gemm", "MatMul"}],
}

GROUPED_CONV = {
    "mobilenet_v2", "mobilenet_v3", "shufflenet_v2", "efficientnet", "resnext", "regnet", "convnext"
}


@functools.cache
def _exported(name: str) -> onnx.ModelProto:
    return export_onnx(name)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _random_input(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _assert_matches_torch(name: str, model: onnx.ModelProto, shape: tuple[int, ...]) -> None:
    x = _random_input(shape)
    with torch.no_grad():
        expected = build(name)(torch.from_numpy(x)).numpy()
    actual = _run(model, x)
    assert actual.shape == (shape[0], 10)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


def _op_types(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in model.graph.node}


def test_every_architecture_has_expectations() -> None:
    assert set(CHARACTERISTIC_OPS) == set(ARCHITECTURES) == set(INPUT_SHAPES)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_export_is_valid_and_matches_torch(name: str) -> None:
    model = _exported(name)
    onnx.checker.check_model(model, full_check=True)
    _assert_matches_torch(name, model, INPUT_SHAPES[name])


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_batchnorm_is_kept(name: str) -> None:
    has_bn = "BatchNormalization" in _op_types(_exported(name))
    assert has_bn == (name not in WITHOUT_BN)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_characteristic_ops_present(name: str) -> None:
    ops = _op_types(_exported(name))
    missing = [alternatives for alternatives in CHARACTERISTIC_OPS[name] if not alternatives & ops]
    assert not missing, f"{name} lacks one of each of {missing}"


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_grouped_convs_where_the_family_has_them(name: str) -> None:
    groups = [
        attr.i
        for node in _exported(name).graph.node
        if node.op_type == "Conv"
        for attr in node.attribute
        if attr.name == "group"
    ]
    assert any(g > 1 for g in groups) == (name in GROUPED_CONV)


def test_repvgg_has_identity_bn_branch() -> None:
    model = _exported("repvgg_train")
    conv_outputs = {out for node in model.graph.node if node.op_type == "Conv" for out in node.output}
    bn_inputs = [node.input[0] for node in model.graph.node if node.op_type == "BatchNormalization"]
    assert any(x not in conv_outputs for x in bn_inputs)


def test_randomized_batchnorm_is_not_identity() -> None:
    bn = next(m for m in build("plain_chain").modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))


def test_build_is_deterministic_per_seed() -> None:
    first, again, other = (build("plain_chain", seed).state_dict() for seed in (0, 0, 1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize(
    ("name", "opset", "norm_op"),
    [
        ("resnet_basic", 11, "BatchNormalization"),
        ("convnext", 17, "LayerNormalization"),
        ("convnext", 18, "LayerNormalization"),
    ],
)
def test_other_opsets(name: str, opset: int, norm_op: str) -> None:
    model = export_onnx(name, opset=opset)
    assert model.opset_import[0].version == opset
    assert norm_op in _op_types(model)
    onnx.checker.check_model(model, full_check=True)
    _assert_matches_torch(name, model, INPUT_SHAPES[name])


@pytest.mark.parametrize("name", ["shufflenet_v2", "resnet_cifar_option_a"])
def test_dynamic_batch(name: str) -> None:
    model = export_onnx(name, dynamic_batch=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    _assert_matches_torch(name, model, (3, *INPUT_SHAPES[name][1:]))


def test_export_writes_path(tmp_path: Path) -> None:
    path = tmp_path / "plain_chain.onnx"
    model = export(build("plain_chain"), INPUT_SHAPES["plain_chain"], path)
    assert path.exists()
    assert onnx.load(path).graph == model.graph
