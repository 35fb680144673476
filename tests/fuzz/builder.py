"""A small graph builder for the fuzzer: unique names, constants, nodes, and the model around them.

The op-family builders (``layers``) only decide shapes and attributes; this module owns naming,
the opset and IR version, and the declared input/output shapes the checker verifies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import helper, numpy_helper

BATCH = "N"  # the symbolic batch dimension of a dynamic-batch graph

Draw = Callable[[st.SearchStrategy], Any]  # hypothesis's draw, as st.composite passes it


@dataclass(frozen=True)
class Feature:
    """An NCHW tensor the builders pass along: its name and its channel and spatial sizes."""

    name: str
    c: int
    h: int
    w: int


@dataclass(frozen=True)
class Vector:
    """A 2-D ``[batch, features]`` tensor, what a classifier head works on."""

    name: str
    features: int


@dataclass
class GraphBuilder:
    """Collects nodes and initializers; every name is unique, so builders compose freely."""

    opset: int
    rng: np.random.Generator
    dynamic_batch: bool = False
    constant_nodes: bool = False  # some constants become Constant nodes, as exporters write them
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    counter: int = 0

    @property
    def batch(self) -> int | str:
        return BATCH if self.dynamic_batch else 1

    @property
    def batch_target(self) -> int:
        """The batch entry of a Reshape target: 0 (copy) when the batch is dynamic."""
        return 0 if self.dynamic_batch else 1

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}_{self.counter}"

    def const(self, values, base: str = "c", dtype=np.float32) -> str:
        name = self.fresh(base)
        tensor = numpy_helper.from_array(np.asarray(values, dtype=dtype), name)
        if self.constant_nodes and self.rng.random() < 0.3:
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.fresh("n_constant"), value=tensor))
        else:
            self.initializers.append(tensor)
        return name

    def ints(self, values, base: str = "i") -> str:
        return self.const(values, base, np.int64)

    def normal(self, shape, scale: float = 1.0, base: str = "w") -> str:
        return self.const(self.rng.standard_normal(shape) * scale, base)

    def uniform(self, shape, low: float, high: float, base: str = "p") -> str:
        return self.const(self.rng.uniform(low, high, shape), base)

    def node(self, op: str, inputs: list[str], outputs: int = 1, **attrs) -> list[str]:
        names = [self.fresh(op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=self.fresh(f"n_{op.lower()}"), **attrs))
        return names

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        return self.node(op, inputs, **attrs)[0]

    def shape_of(self, tensor: Feature | Vector) -> list[int | str]:
        if isinstance(tensor, Vector):
            return [self.batch, tensor.features]
        return [self.batch, tensor.c, tensor.h, tensor.w]

    def model(self, source: Feature, outputs: list[Feature | Vector]) -> onnx.ModelProto:
        """The checked model reading ``source`` and writing ``outputs`` (declared with their shapes)."""
        value = helper.make_tensor_value_info
        graph = helper.make_graph(
            self.nodes, "fuzz", [value(source.name, onnx.TensorProto.FLOAT, self.shape_of(source))],
            [value(t.name, onnx.TensorProto.FLOAT, self.shape_of(t)) for t in outputs], self.initializers)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="onnxprune-fuzz")
        model.ir_version = helper.find_min_ir_version_for(opsets)
        onnx.checker.check_model(model, full_check=True)
        self._check_live(model)
        return model

    @staticmethod
    def _check_live(model: onnx.ModelProto) -> None:
        """Every node feeds something: a dead node would be removed by any clean-up, unreported."""
        read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
        dead = [node.name for node in model.graph.node if not read.intersection(node.output)]
        assert not dead, f"the generator left dead nodes {dead}"
