"""The torch executor matches onnxruntime on every zoo family, the shipped models and each op
form across opsets; parameters are the graph's initializers by name; unknown ops are refused."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from models.architectures import ARCHITECTURES, export_onnx
from onnxprune.core.errors import UnsupportedModelError
from onnxprune.retrain.interpreter import OnnxModule
from tests.util import make_model, outputs, random_inputs, tensor

REL = 1e-5
MODELS = Path(__file__).resolve().parents[2] / "models"
SHIPPED = ("lenet5_mnist.onnx", "resnet20_cifar10.onnx", "resnet56_cifar10.onnx")


def max_relative_error(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    """max |torch - onnxruntime| / max |onnxruntime| over all outputs (eval mode)."""
    module = OnnxModule(model).eval()
    with torch.no_grad():
        got = module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    got = got if isinstance(got, tuple) else (got,)
    worst = 0.0
    for expected, actual in zip(outputs(model, feeds), got, strict=True):
        actual = actual.numpy()
        assert actual.shape == expected.shape and actual.dtype == expected.dtype
        if expected.dtype.kind in "biu":
            np.testing.assert_array_equal(actual, expected)
            continue
        scale = max(float(np.abs(expected).max(initial=0)), 1e-6)
        worst = max(worst, float(np.abs(actual - expected).max(initial=0)) / scale)
    return worst


@functools.cache
def zoo(name: str) -> onnx.ModelProto:
    return export_onnx(name, dynamic_batch=True)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_zoo_matches_onnxruntime(name):
    model = zoo(name)
    assert max_relative_error(model, random_inputs(model, seed=1, batch=2)) < REL


@pytest.mark.parametrize("filename", SHIPPED)
def test_shipped_models_match_onnxruntime(filename):
    model = onnx.load(MODELS / filename)
    assert max_relative_error(model, random_inputs(model, seed=1, batch=2)) < REL


# --- op forms across opsets: (nodes, inputs {name: shape}, initializers, opset) ------------------

rng = np.random.default_rng(0)


def w(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def i64(*values):
    return np.array(values, dtype=np.int64)


def f32(*values):
    return np.array(values, dtype=np.float32)


N = helper.make_node
CASES = {
    "conv_same_upper_stride2": (
        [N("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])],
        {"x": (1, 2, 7, 7)}, {"w": w(4, 2, 3, 3)}, 13),
    "conv_asym_grouped_dilated": (
        [N("Conv", ["x", "w", "b"], ["y"], pads=[0, 1, 2, 1], group=2, dilations=[2, 1])],
        {"x": (2, 2, 9, 9)}, {"w": w(4, 1, 3, 3), "b": w(4)}, 13),
    "conv1d": (
        [N("Conv", ["x", "w"], ["y"], pads=[1, 1])],
        {"x": (2, 3, 10)}, {"w": w(4, 3, 3)}, 11),
    "conv_transpose_asym": (
        [N("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[0, 1, 1, 0], output_padding=[1, 1])],
        {"x": (1, 3, 5, 5)}, {"w": w(3, 2, 3, 3), "b": w(2)}, 13),
    "conv_transpose_output_shape": (
        [N("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], group=2, output_shape=[10, 10])],
        {"x": (1, 4, 5, 5)}, {"w": w(4, 1, 3, 3)}, 13),
    "conv_transpose_symmetric": (
        [N("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])],
        {"x": (2, 3, 4, 4)}, {"w": w(3, 5, 3, 3), "b": w(5)}, 11),
    "maxpool_asym_ceil": (
        [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1], ceil_mode=1)],
        {"x": (1, 2, 8, 8)}, {}, 13),
    "maxpool_same_lower": (
        [N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], auto_pad="SAME_LOWER")],
        {"x": (1, 2, 7, 7)}, {}, 12),
    "maxpool_dilated": (
        [N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1])],
        {"x": (1, 2, 7, 7)}, {}, 12),
    "avgpool_exclude_pad": (
        [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        {"x": (1, 2, 6, 6)}, {}, 11),
    "avgpool_include_pad": (
        [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)],
        {"x": (1, 2, 7, 7)}, {}, 13),
    "avgpool_asym": (
        [N("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 0, 0])],
        {"x": (1, 2, 5, 5)}, {}, 13),
    "global_max_pool": (
        [N("GlobalMaxPool", ["x"], ["y"])],
        {"x": (2, 3, 4, 5)}, {}, 13),
    "gemm_transA_alpha_beta": (
        [N("Gemm", ["x", "b", "c"], ["y"], transA=1, alpha=0.5, beta=2.0)],
        {"x": (4, 3)}, {"b": w(4, 5), "c": w(5)}, 13),
    "matmul_batched": (
        [N("MatMul", ["x", "m"], ["y"])],
        {"x": (2, 3, 4)}, {"m": w(4, 5)}, 13),
    "split_attr": (
        [N("Split", ["x"], ["y", "z"], axis=1, split=[1, 3])],
        {"x": (2, 4, 3)}, {}, 11),
    "split_input": (
        [N("Split", ["x", "s"], ["y", "z"], axis=-1)],
        {"x": (2, 4, 5)}, {"s": i64(2, 3)}, 13),
    "split_num_outputs": (
        [N("Split", ["x"], ["y", "z", "v"], axis=1, num_outputs=3)],
        {"x": (2, 5)}, {}, 18),
    "slice_attr": (
        [N("Slice", ["x"], ["y"], starts=[1, -3], ends=[100, -1], axes=[1, 2])],
        {"x": (2, 4, 6)}, {}, 9),
    "slice_negative_step": (
        [N("Slice", ["x", "s", "e", "a", "t"], ["y"])],
        {"x": (2, 4, 6)}, {"s": i64(-1, 4), "e": i64(-100, 0), "a": i64(2, 1), "t": i64(-2, -1)}, 13),
    "pad_reflect_attr": (
        [N("Pad", ["x"], ["y"], pads=[0, 0, 1, 2, 0, 0, 2, 1], mode="reflect")],
        {"x": (1, 2, 5, 5)}, {}, 10),
    "pad_constant_value": (
        [N("Pad", ["x", "p", "v"], ["y"])],
        {"x": (1, 2, 3, 3)}, {"p": i64(0, 1, 0, -1, 0, 2, 1, 1), "v": f32(1.5)}, 13),
    "pad_edge_axes": (
        [N("Pad", ["x", "p", "", "a"], ["y"], mode="edge")],
        {"x": (1, 2, 4, 4)}, {"p": i64(1, 0, 2, 3), "a": i64(-1, 2)}, 18),
    "clip_attr": (
        [N("Clip", ["x"], ["y"], min=-0.5, max=0.25)],
        {"x": (2, 6)}, {}, 7),
    "clip_min_only": (
        [N("Clip", ["x", "lo"], ["y"])],
        {"x": (2, 6)}, {"lo": f32(-0.1).reshape(())}, 13),
    "squeeze_unsqueeze_attr": (
        [N("Unsqueeze", ["x"], ["u"], axes=[0, -1]), N("Squeeze", ["u"], ["y"], axes=[0])],
        {"x": (2, 3)}, {}, 11),
    "squeeze_unsqueeze_input": (
        [N("Unsqueeze", ["x", "a"], ["u"]), N("Squeeze", ["u", "b"], ["y"])],
        {"x": (2, 3)}, {"a": i64(1, 3), "b": i64(-1)}, 13),
    "reduce_mean_attr": (
        [N("ReduceMean", ["x"], ["y"], axes=[1, 3], keepdims=0)],
        {"x": (2, 3, 4, 5)}, {}, 13),
    "reduce_mean_input": (
        [N("ReduceMean", ["x", "a"], ["y"])],
        {"x": (2, 3, 4)}, {"a": i64(-1)}, 18),
    "reduce_sum_max": (
        [N("ReduceSum", ["x", "a"], ["s"]), N("ReduceMax", ["s"], ["y"], axes=[0], keepdims=0)],
        {"x": (2, 3, 4)}, {"a": i64(1)}, 13),
    "softmax_flattening": (
        [N("Softmax", ["x"], ["y"], axis=1)],
        {"x": (2, 3, 2, 2)}, {}, 11),
    "softmax_axis": (
        [N("Softmax", ["x"], ["s"], axis=1), N("LogSoftmax", ["s"], ["y"])],
        {"x": (2, 3, 2, 2)}, {}, 13),
    "resize_nearest_floor": (
        [N("Resize", ["x", "", "s"], ["y"], mode="nearest", coordinate_transformation_mode="asymmetric",
           nearest_mode="floor")],
        {"x": (1, 2, 3, 4)}, {"s": f32(1, 1, 2, 2)}, 13),
    "resize_nearest_half_pixel": (
        [N("Resize", ["x", "", "s"], ["y"], mode="nearest", nearest_mode="round_prefer_ceil")],
        {"x": (1, 2, 3, 4)}, {"s": f32(1, 1, 3, 2)}, 13),
    "resize_linear_sizes": (
        [N("Resize", ["x", "", "", "z"], ["y"], mode="linear")],
        {"x": (1, 2, 3, 4)}, {"z": i64(1, 2, 7, 5)}, 13),
    "resize_linear_align_corners": (
        [N("Resize", ["x", "r", "s"], ["y"], mode="linear", coordinate_transformation_mode="align_corners")],
        {"x": (1, 2, 3, 4)}, {"r": f32(), "s": f32(1, 1, 2, 2)}, 11),
    "resize_cubic": (
        [N("Resize", ["x", "", "s"], ["y"], mode="cubic")],
        {"x": (1, 2, 4, 4)}, {"s": f32(1, 1, 2, 2)}, 13),
    "resize_opset10": (
        [N("Resize", ["x", "s"], ["y"], mode="nearest")],
        {"x": (1, 2, 3, 3)}, {"s": f32(1, 1, 2, 2)}, 10),
    "upsample_opset9": (
        [N("Upsample", ["x", "s"], ["y"], mode="nearest")],
        {"x": (1, 2, 3, 3)}, {"s": f32(1, 1, 2, 3)}, 9),
    "layer_norm_gelu": (
        [N("LayerNormalization", ["x", "g", "b"], ["n"], axis=-1), N("Gelu", ["n"], ["y"], approximate="tanh")],
        {"x": (2, 3, 8)}, {"g": w(8), "b": w(8)}, 20),
    "activations": (
        [N("HardSwish", ["x"], ["a"]), N("PRelu", ["a", "p"], ["b"]), N("LeakyRelu", ["b"], ["c"], alpha=0.2),
         N("Elu", ["c"], ["d"], alpha=0.7), N("Selu", ["d"], ["e"]), N("Celu", ["e"], ["f"]),
         N("HardSigmoid", ["f"], ["g"]), N("Softplus", ["g"], ["h"]), N("Mish", ["h"], ["i"]), N("Tanh", ["i"], ["y"])],
        {"x": (2, 3, 4, 4)}, {"p": w(3, 1, 1)}, 18),
    "instance_norm_dropout": (
        [N("InstanceNormalization", ["x", "g", "b"], ["n"]), N("Dropout", ["n", "r"], ["y"])],
        {"x": (2, 3, 4, 4)}, {"g": w(3), "b": w(3), "r": f32(0.3).reshape(())}, 13),
    "batchnorm_opset15": (
        [N("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], epsilon=1e-3, training_mode=0)],
        {"x": (2, 3, 4)}, {"g": w(3), "b": w(3), "m": w(3), "v": np.abs(w(3)) + 0.5}, 15),
    "shape_gather_reshape": (
        [N("Shape", ["x"], ["s"]), N("Gather", ["s", "i"], ["d"], axis=0), N("Div", ["d", "two"], ["h"]),
         N("Concat", ["h", "minus"], ["t"], axis=0), N("Reshape", ["x", "t"], ["y"])],
        {"x": (4, 3, 2)}, {"i": i64(-3), "two": i64(2), "minus": i64(-1)}, 13),
    "shape_range_expand": (
        [N("Shape", ["x"], ["s"], start=1, end=2),
         N("ConstantOfShape", ["s"], ["o"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [2.0])),
         N("Expand", ["o", "e"], ["big"]), N("Mul", ["big", "x"], ["y"])],
        {"x": (2, 3)}, {"e": i64(2, 1)}, 15),
    "where_equal_cast": (
        [N("Cast", ["x"], ["r"], to=TensorProto.INT64), N("Equal", ["r", "zero"], ["c"]),
         N("Where", ["c", "x", "alt"], ["m"]), N("CastLike", ["m", "x"], ["y"])],
        {"x": (3, 4)}, {"zero": i64(0), "alt": f32(9.0)}, 15),
    "variadic_einsum_tile": (
        [N("Sum", ["x", "x", "x"], ["a"]), N("Max", ["a", "x"], ["b"]), N("Min", ["b", "a"], ["c"]),
         N("Mean", ["c", "x"], ["d"]), N("Einsum", ["d", "m"], ["e"], equation="ij,jk->ik"),
         N("Tile", ["e", "t"], ["f"]), N("Sqrt", ["f"], ["g"]), N("Abs", ["g"], ["y"])],
        {"x": (2, 3)}, {"m": w(3, 4), "t": i64(2, 1)}, 13),
    "range_argmax_constant": (
        [N("Constant", [], ["k"], value_int=3), N("Constant", [], ["z"], value_int=0),
         N("Constant", [], ["one"], value_int=1), N("Range", ["z", "k", "one"], ["r"]),
         N("Unsqueeze", ["r", "ax"], ["ru"]), N("ArgMax", ["x"], ["a"], axis=1), N("Add", ["a", "ru"], ["y"])],
        {"x": (3, 5)}, {"ax": i64(1)}, 13),
    "lp_pool_asym_p3": (
        [N("LpPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 0, 1], p=3)],
        {"x": (1, 2, 7, 7)}, {}, 11),
    "lp_pool_same_upper_p1": (
        [N("LpPool", ["x"], ["y"], kernel_shape=[3], strides=[2], auto_pad="SAME_UPPER", p=1)],
        {"x": (2, 3, 9)}, {}, 11),
    "lp_pool_dilated_ceil": (
        [N("LpPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 1], ceil_mode=1)],
        {"x": (1, 2, 8, 7)}, {}, 18),
    "lp_pool_ceil_drops_padding_window": (
        [N("LpPool", ["x"], ["y"], kernel_shape=[2], strides=[2], pads=[0, 1], ceil_mode=1)],
        {"x": (1, 2, 4)}, {}, 18),
    "global_lp_pool": (
        [N("GlobalLpPool", ["x"], ["y"], p=3)],
        {"x": (2, 3, 4, 5)}, {}, 13),
    "reduce_l1_l2_attr": (
        [N("ReduceL1", ["x"], ["a"], axes=[1]), N("ReduceL2", ["a"], ["y"], axes=[-1], keepdims=0)],
        {"x": (2, 3, 4, 5)}, {}, 13),
    "reduce_sum_square_log_sum_exp_input": (
        [N("ReduceSumSquare", ["x", "a"], ["s"]), N("ReduceLogSumExp", ["s", "b"], ["y"], keepdims=0)],
        {"x": (2, 3, 4)}, {"a": i64(1), "b": i64(0, -1)}, 18),
    "reduce_prod_attr": (
        [N("ReduceProd", ["x"], ["y"], axes=[0, 2], keepdims=0)],
        {"x": (2, 3, 4)}, {}, 13),
    "reduce_prod_all": (
        [N("ReduceProd", ["x"], ["y"])],
        {"x": (2, 3, 2)}, {}, 18),
    "shrink_thresholded_relu": (
        [N("Shrink", ["x"], ["a"], bias=0.3, lambd=0.6), N("ThresholdedRelu", ["a"], ["y"], alpha=0.2)],
        {"x": (3, 8)}, {}, 13),
    "mod_fmod": (
        [N("Mod", ["x", "d"], ["y"], fmod=1)],
        {"x": (2, 3)}, {"d": f32(0.7, -0.3, 1.1)}, 13),
    "mod_integer": (
        [N("Mul", ["x", "ten"], ["m"]), N("Cast", ["m"], ["a"], to=TensorProto.INT64), N("Mod", ["a", "d"], ["y"])],
        {"x": (4, 3)}, {"ten": f32(10.0), "d": i64(3, -4, 5)}, 13),
    "bit_shift_uint8": (
        [N("Abs", ["x"], ["a"]), N("Mul", ["a", "ten"], ["m"]), N("Cast", ["m"], ["u"], to=TensorProto.UINT8),
         N("BitShift", ["u", "s"], ["l"], direction="LEFT"), N("BitShift", ["l", "t"], ["y"], direction="RIGHT")],
        {"x": (2, 3)}, {"ten": f32(10.0), "s": np.array([1, 3, 5], np.uint8), "t": np.array([[0], [2]], np.uint8)}, 13),
    "bit_shift_uint64_top_bit": (
        [N("BitShift", ["big", "s"], ["r"], direction="RIGHT"), N("BitShift", ["r", "s"], ["y"], direction="LEFT")],
        {}, {"big": np.array([2**63 + 12345, 2**64 - 1, 7], np.uint64), "s": np.array([0, 1, 63], np.uint64)}, 13),
    "is_inf_nan_xor": (
        [N("Div", ["x", "d"], ["q"]), N("Log", ["x"], ["l"]), N("IsInf", ["q"], ["a"]),
         N("IsInf", ["q"], ["b"], detect_negative=0), N("IsInf", ["q"], ["c"], detect_positive=0),
         N("IsNaN", ["l"], ["n"]), N("Xor", ["b", "n"], ["t"]), N("Concat", ["a", "b", "c", "n", "t"], ["y"], axis=0)],
        {"x": (2, 3)}, {"d": f32(0, 1, 0, 1, 0, 1).reshape(2, 3)}, 13),
    "unary_maths": (
        [N("Sin", ["x"], ["a"]), N("Cos", ["a"], ["b"]), N("Exp", ["b"], ["c"]), N("Neg", ["c"], ["d"]),
         N("Reciprocal", ["d"], ["e"]), N("Softsign", ["e"], ["f"]), N("Sigmoid", ["f"], ["g"]), N("Erf", ["g"], ["h"]),
         N("Sub", ["h", "x"], ["i"]), N("Relu", ["i"], ["j"]), N("Identity", ["j"], ["k"]),
         N("Mul", ["x", "ten"], ["m"]), N("Floor", ["m"], ["fl"]), N("Ceil", ["m"], ["ce"]), N("Round", ["m"], ["r"]),
         N("Sign", ["m"], ["sg"]), N("Pow", ["c", "two"], ["pw"]), N("Sum", ["k", "fl", "ce", "r", "sg", "pw"], ["s"]),
         N("Transpose", ["s"], ["t"], perm=[2, 0, 1]), N("Flatten", ["t"], ["fla"], axis=1),
         N("ReduceMin", ["fla"], ["y"], axes=[1])],
        {"x": (2, 3, 4)}, {"ten": f32(10.0), "two": f32(2.0)}, 13),
    "comparisons_logic": (
        [N("Greater", ["x", "zero"], ["a"]), N("Less", ["x", "half"], ["b"]), N("GreaterOrEqual", ["x", "half"], ["c"]),
         N("LessOrEqual", ["x", "zero"], ["d"]), N("And", ["a", "b"], ["e"]), N("Or", ["c", "d"], ["f"]),
         N("Not", ["e"], ["g"]), N("Concat", ["a", "b", "c", "d", "e", "f", "g"], ["y"], axis=0)],
        {"x": (2, 5)}, {"zero": f32(0.0), "half": f32(0.5)}, 13),
    "size_global_average_pool": (
        [N("GlobalAveragePool", ["x"], ["p"]), N("Size", ["x"], ["s"]), N("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
         N("Mul", ["p", "sf"], ["y"])],
        {"x": (2, 3, 4, 5)}, {}, 13),
}

OUTPUT_TYPES = {  # cases whose output is not float
    "range_argmax_constant": TensorProto.INT64, "mod_integer": TensorProto.INT64,
    "bit_shift_uint8": TensorProto.UINT8, "bit_shift_uint64_top_bit": TensorProto.UINT64,
    "is_inf_nan_xor": TensorProto.BOOL, "comparisons_logic": TensorProto.BOOL,
}


def case_model(name: str) -> onnx.ModelProto:
    nodes, inputs, inits, opset = CASES[name]
    outputs_ = [tensor(out, None, OUTPUT_TYPES.get(name, TensorProto.FLOAT)) for out in nodes[-1].output]
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()]
    graph = helper.make_graph(nodes, name, [tensor(k, list(v)) for k, v in inputs.items()], outputs_, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 18 else 9
    return model  # outputs without shapes: onnxruntime's loading is the check


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_forms_match_onnxruntime(name):
    model = case_model(name)
    assert max_relative_error(model, random_inputs(model, seed=2)) < REL


# --- parameters, buffers, modes -------------------------------------------------------------------


def conv_bn_model() -> onnx.ModelProto:
    nodes = [N("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             N("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["n"], momentum=0.8),
             N("Add", ["n", "eps"], ["y"])]
    inits = {"w": w(4, 3, 3, 3), "b": w(4), "g": w(4), "beta": w(4), "mean": w(4), "var": np.abs(w(4)) + 0.5,
             "eps": f32(0.5)}
    return make_model(nodes, [tensor("x", ["N", 3, 5, 5])], [tensor("y", ["N", 4, 5, 5])], inits)


def test_parameters_are_the_initializers_by_name():
    model = conv_bn_model()
    module = OnnxModule(model)
    assert sorted(module.onnx_parameters()) == ["b", "beta", "g", "w"]
    buffers = {name for name in module.initializer_names if name not in module.onnx_parameters()}
    assert buffers == {"mean", "var", "eps"}  # running stats and scalar constants are not trained
    for tensor_ in model.graph.initializer:
        expected = onnx.numpy_helper.to_array(tensor_)
        np.testing.assert_array_equal(module.initializer(tensor_.name).detach().numpy(), expected)


def test_batchnorm_train_mode_uses_batch_statistics_and_updates_running_ones():
    model = conv_bn_model()
    module = OnnxModule(model).train()
    x = torch.from_numpy(w(6, 3, 5, 5))
    old_mean = module.initializer("mean").clone()
    with torch.no_grad():
        y = module(x) - 0.5
        conv = torch.nn.functional.conv2d(x, module.initializer("w"), module.initializer("b"), padding=1)
    mean, var = conv.mean((0, 2, 3)), conv.var((0, 2, 3), unbiased=False)
    expected = (conv - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
    expected = expected * module.initializer("g")[:, None, None] + module.initializer("beta")[:, None, None]
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
    # ONNX momentum 0.8: running = 0.8 * running + 0.2 * batch
    torch.testing.assert_close(module.initializer("mean"), 0.8 * old_mean + 0.2 * mean, rtol=1e-5, atol=1e-6)
    module.eval()
    with torch.no_grad():
        assert torch.equal(module(x), module(x))  # eval mode changes nothing


def test_gradients_reach_every_parameter():
    module = OnnxModule(zoo("resnet_cifar_option_a")).train()
    module(torch.from_numpy(w(2, 3, 32, 32))).square().mean().backward()
    missing = [name for name, p in module.onnx_parameters().items() if p.grad is None]
    assert missing == []


def test_unsupported_ops_are_refused_by_name_before_running():
    nodes = [N("Relu", ["x"], ["a"]), N("TopK", ["a", "k"], ["v", "i"], axis=1),
             N("DepthToSpace", ["v"], ["y"], blocksize=1)]
    model = make_model(nodes, [tensor("x", [1, 4, 2, 2])], [tensor("y", [1, 2, 2, 2])], {"k": i64(2)})
    with pytest.raises(UnsupportedModelError, match=r"DepthToSpace, TopK"):
        OnnxModule(model)


def test_unsupported_attribute_form_and_domain_are_named():
    resize = N("Resize", ["x", "", "s"], ["r"], mode="linear", coordinate_transformation_mode="asymmetric")
    custom = N("Fancy", ["r"], ["y"], domain="com.example")
    graph = helper.make_graph([resize, custom], "g", [tensor("x", [1, 1, 2, 2])], [tensor("y", None)],
                              [onnx.numpy_helper.from_array(f32(1, 1, 2, 2), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])
    with pytest.raises(UnsupportedModelError) as error:
        OnnxModule(model)
    assert "com.example::Fancy" in str(error.value)
    assert "Resize (mode=linear coordinate_transformation_mode=asymmetric)" in str(error.value)
