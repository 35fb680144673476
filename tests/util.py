"""Shared test helpers: build tiny models, run one pass, assert onnxruntime equivalence."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxprune.core.model import to_graph, to_model
from onnxprune.passes.base import PassReport
from onnxprune.passes.pipeline import REGISTRY, prepare


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 13) -> onnx.ModelProto:
    """A checked model from helper-made nodes; ``initializers`` maps names to arrays."""
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(initializers).items()]
    graph = helper.make_graph(list(nodes), "test", list(inputs), list(outputs), inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8 if opset < 18 else 9)
    onnx.checker.check_model(model)
    return model


def tensor(name: str, shape, dtype=onnx.TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def run_pass(model: onnx.ModelProto, name: str, **options) -> tuple[onnx.ModelProto, PassReport]:
    """Apply one registered pass once, with the pipeline's preparation around it."""
    graph = prepare(to_graph(model))
    report = REGISTRY[name](graph, **options)
    prepare(graph)
    return to_model(graph, model), report


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def random_inputs(model: onnx.ModelProto, seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    initializers = {init.name for init in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in value.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feeds[value.name] = rng.standard_normal(dims).astype(dtype)
    return feeds


def outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_equivalent(reference: onnx.ModelProto, candidate: onnx.ModelProto, rel: float = 1e-5, seeds=(0, 1)) -> None:
    """Checker passes and outputs agree within ``rel`` times the largest reference output."""
    onnx.checker.check_model(candidate, full_check=True)
    for seed in seeds:
        feeds = random_inputs(reference, seed)
        for expected, actual in zip(outputs(reference, feeds), outputs(candidate, feeds), strict=True):
            assert expected.shape == actual.shape
            scale = max(float(np.abs(expected).max()), 1e-6)
            np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * scale)


def assert_unchanged(model: onnx.ModelProto, reason: str | None, pass_name: str) -> onnx.ModelProto:
    """The pass leaves the graph as it was and reports ``reason``; None: not a candidate, nothing reported."""
    result, report = run_pass(model, pass_name)
    assert report.rewrites == []
    assert [node.op_type for node in result.graph.node] == [node.op_type for node in model.graph.node]
    if reason is None:
        assert report.skipped == []
    else:
        assert any(reason in line for line in report.skipped), report.skipped
    return result


def assert_rewritten(model: onnx.ModelProto, pass_name: str, rewrites: int = 1,
                     ops: dict | None = None) -> onnx.ModelProto:
    """The pass made ``rewrites`` rewrites, left exactly ``ops`` (when given), and kept the outputs."""
    result, report = run_pass(model, pass_name)
    assert len(report.rewrites) == rewrites, report.skipped
    if ops is not None:
        assert op_counts(result) == ops
    assert_equivalent(model, result)
    return result
