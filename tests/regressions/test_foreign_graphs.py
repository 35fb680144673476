"""Failures on real graphs from other exporters, each rebuilt in code from what caused it (issue 9).

* An opset-12, IR-6 OCR model (CNN, LSTM, MatMul head) listed its input or output in
  ``value_info`` with a dtype but no shape; onnx-graphsurgeon kept that entry over the declared
  one, and the written model failed onnx's checker ("Field 'shape' of 'type' is required").
* onnx's "light" SqueezeNet (IR 3, weights filled by ConstantOfShape) crashed ``prune``: shape
  inference ignored the small initializers of an IR-3 probe, so conv outputs lost their shapes
  once pruning made their weights small.
* On a CNN+LSTM, ``prune`` did not say that most parameters sit where no group can cut them.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli import main

OCR_INPUT = "input1:1,1,32,64"
HIDDEN = 16


def _ocr_model(interface_in_value_info: str | None = None, squeeze_axes: bool = True) -> onnx.ModelProto:
    """Conv/BN/Relu/MaxPool x3 -> Transpose/Reshape to [T, 1, F] -> LSTM -> Squeeze -> MatMul head.

    The width (so the sequence length) is dynamic; without ``squeeze_axes`` the LSTM's output is
    squeezed as some exporters write it, and shape inference cannot tell the rank of anything after.
    ``interface_in_value_info`` names an input or output also listed in value_info without a shape.
    """
    rng = np.random.default_rng(0)
    inits: dict[str, np.ndarray] = {}
    nodes, x, cin = [], "input1", 1
    for i, (cout, pool) in enumerate([(8, [2, 2]), (16, [2, 2]), (16, [4, 1])]):
        inits[f"w{i}"] = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * 0.3
        inits[f"b{i}"] = rng.standard_normal(cout).astype(np.float32) * 0.1
        for part, values in (("s", rng.uniform(0.5, 1.5, cout)), ("o", rng.standard_normal(cout) * 0.1),
                             ("m", rng.standard_normal(cout) * 0.1), ("v", rng.uniform(0.5, 1.5, cout))):
            inits[f"bn{i}_{part}"] = values.astype(np.float32)
        nodes += [
            helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1] * 4),
            helper.make_node("BatchNormalization", [f"c{i}", *(f"bn{i}_{p}" for p in "somv")], [f"n{i}"],
                             name=f"bn{i}"),
            helper.make_node("Relu", [f"n{i}"], [f"r{i}"], name=f"relu{i}"),
            helper.make_node("MaxPool", [f"r{i}"], [f"p{i}"], name=f"pool{i}", kernel_shape=pool, strides=pool),
        ]
        x, cin = f"p{i}", cout
    features = cin * 2  # [1, 16, 2, W/4] -> [W/4, 1, 32]
    squeeze = helper.make_node("Squeeze", ["rnn_y"], ["rnn_s"], name="squeeze")  # [T, 1, 1, H] -> [T, H]
    if squeeze_axes:
        squeeze.attribute.append(helper.make_attribute("axes", [1, 2]))
    inits["rnn_W"] = rng.standard_normal((1, 4 * HIDDEN, features)).astype(np.float32) * 0.2
    inits["rnn_R"] = rng.standard_normal((1, 4 * HIDDEN, HIDDEN)).astype(np.float32) * 0.2
    inits["rnn_B"] = rng.standard_normal((1, 8 * HIDDEN)).astype(np.float32) * 0.1
    inits["head_W"] = rng.standard_normal((HIDDEN, 11)).astype(np.float32)
    inits["head_b"] = rng.standard_normal(11).astype(np.float32)
    inits["sequence"] = np.array([0, 1, features], np.int64)
    nodes += [
        helper.make_node("Transpose", [x], ["steps"], name="to_steps", perm=[3, 0, 1, 2]),
        helper.make_node("Reshape", ["steps", "sequence"], ["seq"], name="to_sequence"),
        helper.make_node("LSTM", ["seq", "rnn_W", "rnn_R", "rnn_B"], ["rnn_y", "rnn_h", "rnn_c"], name="rnn",
                         hidden_size=HIDDEN),
        squeeze,
        helper.make_node("MatMul", ["rnn_s", "head_W"], ["logits"], name="head"),
        helper.make_node("Add", ["logits", "head_b"], ["scores"], name="head_bias"),
        helper.make_node("ArgMax", ["scores"], ["ids"], name="argmax", axis=1, keepdims=0),
        helper.make_node("Unsqueeze", ["ids"], ["output"], name="to_batch", axes=[0]),
    ]
    graph = helper.make_graph(
        nodes, "ocr", [helper.make_tensor_value_info("input1", TensorProto.FLOAT, [1, 1, 32, "width"])],
        [helper.make_tensor_value_info("output", TensorProto.INT64, [1, "seqlen"])],
        [numpy_helper.from_array(value, name) for name, value in inits.items()],
    )
    if interface_in_value_info is not None:
        dtype = TensorProto.INT64 if interface_in_value_info == "output" else TensorProto.FLOAT
        shapeless = graph.value_info.add()
        shapeless.name = interface_in_value_info
        shapeless.type.tensor_type.elem_type = dtype
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 6
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("interface", ["input1", "output"])
def test_ocr_interface_listed_in_value_info_keeps_its_declared_shape(tmp_path, interface):
    source, optimized, pruned = tmp_path / "ocr.onnx", tmp_path / "optimized.onnx", tmp_path / "pruned.onnx"
    onnx.save(_ocr_model(interface, squeeze_axes=False), source)
    assert main(["optimize", str(source), str(optimized), "--input-shape", OCR_INPUT, "--runs", "0", "-q"]) == 0
    assert main(["prune", str(source), str(pruned), "--input-shape", OCR_INPUT, "--runs", "0", "-q"]) == 0
    for written in (optimized, pruned):
        onnx.checker.check_model(onnx.load(written), full_check=True)
    assert main(["check", str(source), str(optimized), "--input-shape", OCR_INPUT, "-q"]) == 0
    declared = {value.name: value for value in [*onnx.load(optimized).graph.input, *onnx.load(optimized).graph.output]}
    assert declared[interface].type.tensor_type.HasField("shape")


def _light_squeezenet() -> onnx.ModelProto:
    """SqueezeNet 1.0's structure as onnx's light model stores it: IR 3, opset 9, every weight a
    ConstantOfShape fill of a constant shape, the small biases initializers also listed as inputs.

    conv1 -> MaxPool -> Fire x2 (squeeze 1x1, expand 1x1 | 3x3, Concat) -> MaxPool -> Dropout ->
    conv10 -> GlobalAveragePool -> Softmax. Every weight has more than 64 elements until pruning.
    """
    nodes, inits = [], []

    def conv(x: str, cin: int, cout: int, kernel: int, name: str, stride: int = 1) -> str:
        inits.append(numpy_helper.from_array(np.array([cout, cin, kernel, kernel], np.int64), f"{name}_w_SHAPE"))
        inits.append(numpy_helper.from_array(np.full(cout, 0.01, np.float32), f"{name}_b"))
        fill = numpy_helper.from_array(np.array([0.02], np.float32))
        nodes.append(helper.make_node("ConstantOfShape", [f"{name}_w_SHAPE"], [f"{name}_w"], value=fill))
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_c"], strides=[stride] * 2,
                                      pads=[kernel // 2] * 4, kernel_shape=[kernel] * 2))
        nodes.append(helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"]))
        return f"{name}_r"

    x = conv("data_0", 3, 16, 3, "conv1", stride=2)
    nodes.append(helper.make_node("MaxPool", [x], ["pool1"], kernel_shape=[3, 3], strides=[2, 2]))
    x, cin = "pool1", 16
    for fire in ("fire2", "fire3"):
        squeezed = conv(x, cin, 8, 1, f"{fire}_squeeze")
        expanded = [conv(squeezed, 8, 16, 1, f"{fire}_e1"), conv(squeezed, 8, 16, 3, f"{fire}_e3")]
        nodes.append(helper.make_node("Concat", expanded, [fire], axis=1))
        x, cin = fire, 32
    nodes.append(helper.make_node("MaxPool", [x], ["pool3"], kernel_shape=[3, 3], strides=[2, 2]))
    nodes.append(helper.make_node("Dropout", ["pool3"], ["drop", "drop_mask"], ratio=0.5))
    x = conv("drop", cin, 10, 1, "conv10")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Softmax", ["gap"], ["softmaxout_1"]))
    inputs = [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 32, 32])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "squeezenet_light", inputs,
                              [helper.make_tensor_value_info("softmaxout_1", TensorProto.FLOAT, [1, 10, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    onnx.checker.check_model(model, full_check=True)
    return model


def test_light_squeezenet_with_constant_of_shape_weights_prunes(tmp_path):
    source, pruned, report = tmp_path / "squeezenet.onnx", tmp_path / "pruned.onnx", tmp_path / "r.json"
    onnx.save(_light_squeezenet(), source)
    args = ["prune", str(source), str(pruned), "--criterion", "l1", "--ratio", "0.5", "--round-to", "1", "--runs",
            "0", "-q"]
    assert main([*args, "--report", str(report)]) == 0
    onnx.checker.check_model(onnx.load(pruned), full_check=True)
    payload = json.loads(report.read_text())
    removed = 8 + 4 + 16 + 4 + 16  # conv1; fire2's squeeze and concat; fire3's squeeze and concat
    assert sum(group["removed"] for group in payload["groups"]) == removed
    assert payload["after"]["stats"]["params"] < 0.5 * payload["before"]["stats"]["params"]
    assert payload["before"]["stats"]["flops"] > payload["after"]["stats"]["flops"] > 0
    assert main(["check", str(source), str(pruned), "-q"]) == 0  # equal filters: every class stays at 1/10


def test_cnn_lstm_prune_says_which_parameters_no_group_can_cut(tmp_path, capsys):
    source, pruned, report = tmp_path / "ocr.onnx", tmp_path / "pruned.onnx", tmp_path / "r.json"
    onnx.save(_ocr_model(), source)
    args = ["prune", str(source), str(pruned), "--ratio", "0.5", "--round-to", "1", "--input-shape", OCR_INPUT,
            "--runs", "0"]
    assert main([*args, "--report", str(report)]) == 0
    onnx.checker.check_model(onnx.load(pruned), full_check=True)
    payload = json.loads(report.read_text())
    recurrent = 4 * HIDDEN * (32 + HIDDEN + 2) + HIDDEN * 11  # W, R, B and the head's weight behind it
    last_block = 16 * 5  # conv2's bias and bn2: only its output channels, which feed the LSTM
    assert payload["not_prunable_params"] == {"LSTM 'rnn' has no channel handler": recurrent + last_block,
                                              "ArgMax 'argmax' has no channel handler": 11}
    assert [group["channels"] for group in payload["groups"]] == [8, 16]  # conv0 and conv1 out, not conv2's
    text = capsys.readouterr().out
    assert f"LSTM 'rnn' has no channel handler: {recurrent + last_block} parameters not prunable" in text
    assert main(["groups", str(source)]) == 0
    listing = capsys.readouterr().out
    assert "rnn_W" in listing and "LSTM 'rnn' has no channel handler" in listing


def test_finetune_refuses_the_lstm_by_name(tmp_path, capsys):
    source, data = tmp_path / "ocr.onnx", tmp_path / "train.npz"
    onnx.save(_ocr_model(), source)
    np.savez(data, x_train=np.zeros((2, 1, 32, 64), np.float32), y_train=np.zeros(2, np.int64))
    assert main(["finetune", str(source), str(tmp_path / "out.onnx"), "--data", str(data), "--epochs", "1"]) == 2
    assert "does not support: LSTM" in capsys.readouterr().err
