"""Parameter, MAC and size counts on small models with hand-computed numbers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core.errors import InputError
from onnxprune.measure.stats import model_stats


def make_model(nodes, inputs, outputs, weights=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.zeros(s, np.float32), n) for n, s in weights],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def conv_model(cin=3, cout=8, group=1, batch="N") -> onnx.ModelProto:
    """Conv k3 pad 1 on 8x8, with bias."""
    conv = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1] * 4, group=group
    )
    weights = [("w", (cout, cin // group, 3, 3)), ("b", (cout,))]
    return make_model([conv], [("x", [batch, cin, 8, 8])], ["y"], weights)


def test_conv_macs_and_params():
    stats = model_stats(conv_model(), {"x": (1, 3, 8, 8)})
    assert stats.macs == 8 * 8 * 8 * 3 * 9
    assert stats.flops == 2 * stats.macs
    assert stats.params == 8 * 3 * 9 + 8
    (node,) = stats.per_node
    assert (node.op_type, node.output_shape, node.params) == ("Conv", (1, 8, 8, 8), stats.params)


def test_grouped_conv_macs():
    stats = model_stats(conv_model(cin=8, cout=8, group=4), {"x": (1, 8, 8, 8)})
    assert stats.macs == 8 * 8 * 8 * (8 // 4) * 9


def test_batch_from_input_shapes_scales_macs():
    assert model_stats(conv_model(), {"x": (2, 3, 8, 8)}).macs == 2 * 8 * 8 * 8 * 3 * 9


def test_unknown_shapes_count_zero_and_caller_model_untouched():
    model = conv_model()
    before = model.SerializeToString()
    stats = model_stats(model)  # dynamic batch, no shapes given
    assert stats.macs == 0 and stats.params == 8 * 3 * 9 + 8
    model_stats(model, {"x": (1, 3, 8, 8)})
    assert model.SerializeToString() == before


def test_gemm_matmul_and_elementwise():
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "m"], ["y"]),
    ]
    model = make_model(nodes, [("x", [2, 16])], ["y"], [("w", (10, 16)), ("m", (10, 4))])
    stats = model_stats(model)
    assert [c.macs for c in stats.per_node] == [2 * 10 * 16, 2 * 10, 2 * 4 * 10]
    assert stats.op_histogram == {"Gemm": 1, "MatMul": 1, "Relu": 1}
    assert stats.params == 160 + 40


def test_batchnorm_pool_and_global_pool():
    nodes = [
        helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"]),
        helper.make_node("MaxPool", ["n"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["y"]),
    ]
    weights = [(n, (4,)) for n in "sbmv"]
    stats = model_stats(make_model(nodes, [("x", [1, 4, 8, 8])], ["y"], weights))
    assert [c.macs for c in stats.per_node] == [4 * 64, 4 * 16 * 4, 4 * 16]
    assert stats.params == 16


def test_conv_transpose_macs():
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[2, 2], strides=[2, 2])
    model = make_model([node], [("x", [1, 4, 3, 3])], ["y"], [("w", (4, 6, 2, 2))])
    assert model_stats(model).macs == 4 * 3 * 3 * 6 * 2 * 2


def test_constant_node_float_tensors_count_as_params():
    value = numpy_helper.from_array(np.ones((2, 3), np.float32))
    shape = numpy_helper.from_array(np.array([3, 2], np.int64))
    nodes = [
        helper.make_node("Constant", [], ["c"], value=value),
        helper.make_node("Constant", [], ["s"], value=shape),
        helper.make_node("Add", ["x", "c"], ["a"]),
        helper.make_node("Reshape", ["a", "s"], ["y"]),
    ]
    stats = model_stats(make_model(nodes, [("x", [2, 3])], ["y"]))
    assert stats.params == 6
    assert stats.macs == 6  # the Add; Constant and Reshape cost nothing


def test_folded_constant_subgraph_keeps_later_shapes_known():
    """Pad amounts computed by Constant -> Reshape -> Transpose (as torch exports) still resolve."""
    pads = numpy_helper.from_array(np.array([[0, 0], [0, 0], [1, 1], [1, 1]], np.int64))
    nodes = [
        helper.make_node("Constant", [], ["p2"], value=pads),
        helper.make_node("Transpose", ["p2"], ["pt"], perm=[1, 0]),
        helper.make_node("Reshape", ["pt", "flat"], ["pads"]),
        helper.make_node("Pad", ["x", "pads"], ["padded"]),
        helper.make_node("Relu", ["padded"], ["y"]),
    ]
    model = make_model(nodes, [("x", [1, 2, 4, 4])], ["y"])
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "flat"))
    stats = model_stats(model)
    assert stats.per_node[-1].output_shape == (1, 2, 6, 6) and stats.macs == 2 * 6 * 6


def test_size_bytes_from_proto_file_and_external_data(tmp_path):
    model = conv_model(cin=16, cout=16)
    assert model_stats(model).size_bytes == model.ByteSize()
    path = tmp_path / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, location="m.data", size_threshold=0)
    total = path.stat().st_size + (tmp_path / "m.data").stat().st_size
    assert model_stats(onnx.load(path), path=path).size_bytes == total
    with pytest.raises(InputError, match="not found"):
        model_stats(model, path=tmp_path / "missing.onnx")


def test_bad_input_shape_name_is_input_error():
    with pytest.raises(InputError, match="inputs are: x"):
        model_stats(conv_model(), {"nope": (1, 3, 8, 8)})


def test_to_dict_round_trips_numbers():
    data = model_stats(conv_model(), {"x": (1, 3, 8, 8)}).to_dict()
    assert data["macs"] == 8 * 8 * 8 * 3 * 9 and data["per_node"][0]["op_type"] == "Conv"
