"""cancel_transposes: a Transpose and its inverse around elementwise ops and reductions both disappear."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from onnx import helper, numpy_helper

from tests.util import (
    assert_equivalent,
    assert_unchanged,
    make_model,
    op_counts,
    run_pass,
    tensor,
)

NAME = "cancel_transposes"
assert_kept = partial(assert_unchanged, pass_name=NAME)
TO_LAST, TO_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]


def reduce_mean(inits, source, target, axes, opset, keepdims=1):
    """ReduceMean with its axes as an attribute (opset < 18) or a constant input (>= 18)."""
    if opset < 18:
        return helper.make_node("ReduceMean", [source], [target], axes=axes, keepdims=keepdims)
    inits[f"{target}.axes"] = np.array(axes, np.int64)
    return helper.make_node("ReduceMean", [source, f"{target}.axes"], [target], keepdims=keepdims)


def layer_norm(inits, source, target, opset, channels=6, keepdims=1):
    """Channels-last LayerNorm as torch exports it, over the last axis, with gamma and beta."""
    rng = np.random.default_rng(0)
    inits.update(two=np.array(2.0, np.float32), eps=np.array(1e-6, np.float32))
    inits.update(gamma=rng.uniform(0.5, 1.5, channels).astype(np.float32))
    inits.update(beta=rng.standard_normal(channels).astype(np.float32))
    return [
        reduce_mean(inits, source, "mean", [-1], opset, keepdims),
        helper.make_node("Sub", [source, "mean"], ["centred"]),
        helper.make_node("Pow", ["centred", "two"], ["squared"]),
        reduce_mean(inits, "squared", "var", [-1], opset),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Div", ["centred", "std"], ["normed"]),
        helper.make_node("Mul", ["normed", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], [target]),
    ]


def sandwich(opset=13, region=layer_norm, first=TO_LAST, second=TO_FIRST, batch="N", extra_output=None, **options):
    """x[N, 6, 5, 7] -> Transpose(first) -> region -> Transpose(second) -> Relu -> z."""
    inits: dict = {}
    nodes = [helper.make_node("Transpose", ["x"], ["y"], perm=first, name="open")]
    if region is None:
        source = "y"
    else:
        nodes += region(inits, "y", "f", opset, **options)
        source = "f"
    nodes += [
        helper.make_node("Transpose", [source], ["z2"], perm=second, name="close"),
        helper.make_node("Relu", ["z2"], ["z"]),
    ]
    outputs = [tensor("z", [None] * 4)] + ([tensor(extra_output, [None] * 4)] if extra_output else [])
    return make_model(nodes, [tensor("x", [batch, 6, 5, 7])], outputs, inits, opset)


def reduce_axes(model, opset):
    inits = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type == "ReduceMean":
            attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
            found.append(list(attrs["axes"]) if opset < 18 else inits[node.input[1]].tolist())
    return found


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("batch", ["N", 2])
def test_channels_last_layer_norm_runs_in_place(opset, batch):
    model = sandwich(opset, batch=batch)
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == 1, report.skipped
    assert "Transpose" not in op_counts(result)
    assert reduce_axes(result, opset) == [[1], [1]]
    assert_equivalent(model, result)


def test_transposes_with_nothing_between_cancel():
    model = sandwich(region=None)
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == 1
    assert op_counts(result) == {"Relu": 1}
    assert_equivalent(model, result)


def test_other_perm_pairs_cancel():
    model = sandwich(region=None, first=[2, 0, 3, 1], second=[1, 3, 0, 2])
    result, report = run_pass(model, NAME)
    assert len(report.rewrites) == 1
    assert_equivalent(model, result)


def test_perms_that_do_not_undo_each_other_are_skipped():
    assert_kept(sandwich(second=TO_LAST), "does not undo perm")


def test_reduction_that_drops_axes_is_skipped():
    def dropping(inits, source, target, opset):
        """ReduceMean(keepdims=0) -> [N, 5, 7], then a rank-4 constant broadcasts it back to rank 4."""
        inits["zeros"] = np.zeros((1, 1, 1, 1), np.float32)
        mean = reduce_mean(inits, source, "mean", [-1], opset, keepdims=0)
        return [mean, helper.make_node("Add", ["mean", "zeros"], [target])]

    assert_kept(sandwich(region=dropping), "keepdims=0")


def test_tensor_read_outside_the_region_is_skipped():
    assert_kept(sandwich(extra_output="normed"), "is a graph output")


def test_non_admitted_op_is_not_a_candidate():
    def softmax(inits, source, target, opset):
        return [helper.make_node("Softmax", [source], [target], axis=-1)]

    assert_kept(sandwich(region=softmax), None)
