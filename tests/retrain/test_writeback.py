"""Write-back is exact: no training gives the same bytes; training changes only float params."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from onnxprune.core.errors import InputError
from onnxprune.retrain.interpreter import OnnxModule
from onnxprune.retrain.writeback import changed_initializers, write_back
from tests.util import make_model, outputs, random_inputs, tensor

MODELS = Path(__file__).resolve().parents[2] / "models"


def small_model() -> onnx.ModelProto:
    """Conv-BN-Relu-Reshape-Gemm with an int64 shape initializer and a float_data-stored bias."""
    rng = np.random.default_rng(0)
    inits = {
        "w": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
        "gamma": rng.uniform(0.5, 1.5, 4).astype(np.float32),
        "beta": rng.standard_normal(4).astype(np.float32),
        "mean": rng.standard_normal(4).astype(np.float32),
        "var": rng.uniform(0.5, 1.5, 4).astype(np.float32),
        "shape": np.array([0, -1], np.int64),
        "fc": rng.standard_normal((3, 64)).astype(np.float32),
        "fc_bias": np.zeros(3, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"]),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fc_bias"], ["y"], transB=1),
    ]
    model = make_model(nodes, [tensor("x", ["N", 2, 4, 4])], [tensor("y", ["N", 3])], inits)
    bias = helper.make_tensor("fc_bias", onnx.TensorProto.FLOAT, [3], [0.1, -0.2, 0.3])  # float_data, not raw
    model.graph.initializer[-1].CopyFrom(bias)
    model.doc_string = "kept as is"
    return model


@pytest.mark.parametrize("model", [small_model(), onnx.load(MODELS / "resnet20_cifar10.onnx")],
                         ids=["small", "resnet20"])
def test_round_trip_without_training_is_bit_identical(model):
    module = OnnxModule(model)
    result = write_back(model, module.initializer_arrays())
    assert result.SerializeToString() == model.SerializeToString()
    assert result is not model


def train_step(model: onnx.ModelProto) -> OnnxModule:
    module = OnnxModule(model).train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((8, 2, 4, 4)).astype(np.float32))
    torch.nn.functional.cross_entropy(module(x), torch.arange(8) % 3).backward()
    optimizer.step()
    return module


def test_after_a_training_step_only_float_parameters_and_running_stats_change():
    model = small_model()
    module = train_step(model)
    result = write_back(model, module.initializer_arrays())
    changed = set(changed_initializers(model, result))
    assert changed == {"w", "gamma", "beta", "fc", "fc_bias", "mean", "var"}
    assert "shape" not in changed
    assert result.graph.node == model.graph.node
    assert result.graph.input == model.graph.input and result.graph.output == model.graph.output
    assert result.doc_string == model.doc_string and result.opset_import == model.opset_import
    onnx.checker.check_model(result, full_check=True)
    # the written model computes what the trained torch module computes
    feeds = random_inputs(result, seed=3, batch=2)
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(feeds["x"])).numpy()
    np.testing.assert_allclose(outputs(result, feeds)[0], expected, rtol=1e-5, atol=1e-5)


def test_unchanged_tensors_keep_their_storage():
    model = small_model()
    module = train_step(model)
    arrays = module.initializer_arrays()
    arrays["fc_bias"] = numpy_helper.to_array(model.graph.initializer[-1])  # pretend the bias did not move
    result = write_back(model, arrays)
    assert result.graph.initializer[-1] == model.graph.initializer[-1]  # still float_data, same bytes


def test_unknown_name_and_wrong_shape_are_refused():
    model = small_model()
    with pytest.raises(InputError, match="no initializer named nope"):
        write_back(model, {"nope": np.zeros(3, np.float32)})
    with pytest.raises(InputError, match=r"'gamma' has shape \[4\], the trained value \[5\]"):
        write_back(model, {"gamma": np.zeros(5, np.float32)})
