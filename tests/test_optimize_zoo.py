"""The exact pipeline on every architecture family: no foldable BN left, outputs unchanged."""

from __future__ import annotations

import functools

import onnx
import pytest

from models.architectures import ARCHITECTURES, export_onnx
from onnxprune.passes.pipeline import optimize
from tests.util import assert_equivalent, op_counts

LINEAR = {"Conv", "ConvTranspose", "Gemm"}


@functools.cache
def exported(name: str) -> onnx.ModelProto:
    return export_onnx(name, dynamic_batch=True)


def foldable_batchnorms(model: onnx.ModelProto) -> list[str]:
    """BNs right after a linear op whose output nothing else reads: what fold_batchnorm must take."""
    producers = {out: node for node in model.graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {value.name for value in model.graph.output}
    found = []
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        source = producers.get(node.input[0])
        if (source is not None and source.op_type in LINEAR and readers[node.input[0]] == 1
                and node.input[0] not in outputs):
            found.append(node.name)
    return found


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_optimize_architecture(name):
    model = exported(name)
    result = optimize(model)
    assert_equivalent(model, result.model, rel=1e-5)
    assert foldable_batchnorms(result.model) == []
    before, after = op_counts(model), op_counts(result.model)
    assert sum(after.values()) <= sum(before.values())
    if name != "densenet":
        assert after["BatchNormalization"] == 0, f"{name}: {after}"
    assert result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
