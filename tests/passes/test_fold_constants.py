"""fold_constants: constant subgraphs become initializers; inexact or oversized folds are refused."""

from __future__ import annotations

import io
from functools import partial

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from tests.util import (
    assert_equivalent,
    assert_unchanged,
    make_model,
    op_counts,
    outputs,
    run_pass,
    tensor,
)

NAME = "fold_constants"


def folded(model, rewrites, remaining, rel=1e-6):
    """Run the pass, check the rewrite count and the ops left, compare with onnxruntime."""
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == rewrites, (report.rewrites, report.skipped)
    assert op_counts(result) == remaining
    assert_equivalent(model, result, rel=rel)
    return result, report


def nodes(model):
    return [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node]


assert_kept = partial(assert_unchanged, pass_name=NAME)


class ConvBN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)).flatten(1)


@pytest.mark.parametrize("opset", [11, 13])
def test_torch_batchnorm_statistics_behind_identity(opset):
    module = ConvBN().eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        (torch.randn(1, 3, 8, 8),),
        buffer,
        dynamo=False,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
        opset_version=opset,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
    )
    model = onnx.load_from_string(buffer.getvalue())
    assert op_counts(model)["Identity"] == 2
    result, report = folded(model, 2, {"Conv": 1, "BatchNormalization": 1, "Flatten": 1})
    assert all(line.startswith("folded Identity") for line in report.rewrites)
    assert [o.name for o in result.graph.output] == ["y"]
    assert result.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_constant_node_becomes_initializer():
    value = helper.make_tensor("v", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    nodes_ = [helper.make_node("Constant", [], ["c"], value=value), helper.make_node("Add", ["x", "c"], ["y"])]
    model = make_model(nodes_, [tensor("x", ["N", 3])], [tensor("y", ["N", 3])])
    result, report = folded(model, 1, {"Add": 1})
    assert report.rewrites == ["folded Constant ''"]
    assert result.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert [init.name for init in result.graph.initializer] == ["c"]


@pytest.mark.parametrize("opset", [9, 13])
def test_constant_of_shape_weights(opset):
    nodes_ = [
        helper.make_node(
            "ConstantOfShape", ["s"], ["ones"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [2.0])
        ),
        helper.make_node("Mul", ["x", "ones"], ["y"]),
    ]
    model = make_model(nodes_, [tensor("x", ["N", 3])], [tensor("y", ["N", 3])], {"s": np.array([3])}, opset)
    folded(model, 1, {"Mul": 1})


def shape_model(x_shape, opset):
    """y = Reshape(Reshape(x, [shape(x)[0], shape(x)[1], -1]), [-1, 3, 4]): torch-style shape arithmetic.

    The outer Reshape gives the output a shape that onnx's shape inference can compute.
    """
    nodes_ = [helper.make_node("Shape", ["x"], ["s"])]
    for axis in (0, 1):
        unsqueeze = ([f"d{axis}"], {"axes": [0]}) if opset < 13 else ([f"d{axis}", "zero"], {})
        nodes_ += [
            helper.make_node("Gather", ["s", f"index{axis}"], [f"d{axis}"], axis=0),
            helper.make_node("Unsqueeze", unsqueeze[0], [f"u{axis}"], **unsqueeze[1]),
        ]
    nodes_ += [
        helper.make_node("Concat", ["u0", "u1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Reshape", ["r", "back"], ["y"]),
    ]
    inits = {"index0": np.array(0), "index1": np.array(1), "minus_one": np.array([-1]), "back": np.array([-1, 3, 4])}
    if opset >= 13:
        inits["zero"] = np.array([0])
    return make_model(nodes_, [tensor("x", x_shape)], [tensor("y", x_shape)], inits, opset)


@pytest.mark.parametrize("opset", [11, 13])
def test_static_shape_arithmetic(opset):
    folded(shape_model([2, 3, 4], opset), 6, {"Reshape": 2})


@pytest.mark.parametrize("opset", [11, 13])
def test_dynamic_batch_folds_only_static_dimensions(opset):
    """shape(x)[1] is 3 whatever the batch; shape(x)[0] depends on the input and stays computed."""
    remaining = {"Shape": 1, "Gather": 1, "Unsqueeze": 1, "Concat": 1, "Reshape": 2}
    _, report = folded(shape_model(["N", 3, 4], opset), 2, remaining)
    assert sorted(report.rewrites) == ["folded Gather ''", "folded Unsqueeze ''"]


def test_expand_into_large_tensor_is_not_materialised():
    nodes_ = [helper.make_node("Expand", ["k", "s"], ["big"]), helper.make_node("Add", ["x", "big"], ["y"])]
    inits = {"k": np.array(1.0, np.float32), "s": np.array([1024, 1024, 8])}
    model = make_model(nodes_, [tensor("x", [1024, 1024, 8])], [tensor("y", [1024, 1024, 8])], inits)
    assert_kept(model, "result over")


def test_cast_elision_is_refused():
    """gs would turn Cast(int->float) -> Mul(0.5) -> Cast(->int) into an integer Mul by 0."""
    nodes_ = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xf", "half"], ["m"]),
        helper.make_node("Cast", ["m"], ["y"], to=TensorProto.INT64),
    ]
    model = make_model(
        nodes_, [tensor("x", [3], TensorProto.INT64)], [tensor("y", [3], TensorProto.INT64)], {"half": np.float32(0.5)}
    )
    result = assert_kept(model, "cast elision")
    feeds = {"x": np.array([4, 6, -8])}
    np.testing.assert_array_equal(outputs(result, feeds)[0], [2, 3, -4])


def test_shape_start_attribute_is_not_ignored():
    nodes_ = [helper.make_node("Shape", ["x"], ["s"], start=1), helper.make_node("Cast", ["s"], ["y"], to=1)]
    model = make_model(nodes_, [tensor("x", [2, 3, 4])], [tensor("y", [2])], opset=15)
    result = assert_kept(model, "start/end")
    np.testing.assert_array_equal(outputs(result, {"x": np.zeros((2, 3, 4), np.float32)})[0], [3, 4])


def test_unevaluable_part_does_not_block_the_rest():
    """onnxruntime has no Erf for doubles: that part stays, the Identity beside it still folds."""
    nodes_ = [
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Cast", ["e"], ["ef"], to=TensorProto.FLOAT),
        helper.make_node("Identity", ["w"], ["wi"]),
        helper.make_node("Mul", ["x", "wi"], ["m"]),
        helper.make_node("Add", ["m", "ef"], ["y"]),
    ]
    inits = {"d": np.ones(3), "w": np.full(3, 2.0, np.float32)}
    model = make_model(nodes_, [tensor("x", [3])], [tensor("y", [3])], inits)
    result, report = run_pass(model, NAME)
    assert report.rewrites == ["folded Identity ''"]
    assert op_counts(result) == {"Erf": 1, "Cast": 1, "Mul": 1, "Add": 1}
    assert any("Erf" in line and "not evaluable" in line for line in report.skipped), report.skipped


def test_random_op_is_never_folded():
    nodes_ = [helper.make_node("RandomUniformLike", ["k"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"])]
    model = make_model(nodes_, [tensor("x", [3])], [tensor("y", [3])], {"k": np.zeros(3, np.float32)})
    assert_kept(model, "nondeterministic")


def test_graph_output_stays_computed():
    nodes_ = [helper.make_node("Add", ["a", "b"], ["y"]), helper.make_node("Relu", ["x"], ["z"])]
    inits = {"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)}
    model = make_model(nodes_, [tensor("x", [3])], [tensor("y", [3]), tensor("z", [3])], inits)
    result = assert_kept(model, "graph output")
    assert [o.name for o in result.graph.output] == ["y", "z"]
    assert_equivalent(model, result)
