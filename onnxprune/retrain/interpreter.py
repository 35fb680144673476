"""ONNX graph -> torch ``nn.Module`` whose parameters *are* the graph's initializers, by name.

The graph stays the source of truth: :class:`OnnxModule` does not translate the model into torch
layers, it executes the ONNX nodes in their (topological) order with one small kernel per op type
(:mod:`onnxprune.retrain.kernels`). Float initializers read at a learnable position (a Conv's weight
and bias, a BatchNormalization's scale and bias, a Gemm/MatMul operand, a non-scalar Add/Mul
constant, ...) become ``nn.Parameter``s; every other initializer (BN running statistics, shapes,
Clip bounds, Pow exponents, scalars) and every Constant node's value becomes a buffer. Both keep
their ONNX name (:meth:`OnnxModule.initializer`), so writing trained values back is exact.

Kernels that depend on the mode (BatchNormalization, Dropout) follow ``module.training``.

Preconditions: a model onnx's checker accepts, default-domain ops only. :func:`check_supported`
(run by the constructor) refuses an unknown op or an unsupported attribute form, naming every one,
before anything runs.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import Tensor, nn

from onnxprune.core.errors import UnsupportedModelError
from onnxprune.core.model import opset as model_opset
from onnxprune.retrain.kernels import Inputs, load_all

log = logging.getLogger(__name__)

OPS = load_all()
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
FOLDED = "Constant"  # folded into buffers when the module is built, never run
PREPROCESSING = ("Add", "Sub", "Mul", "Div")  # their constants stay buffers when they read a graph input


@dataclass(frozen=True)
class Node:
    """One ONNX node, attributes decoded once; ``""`` marks an omitted optional input."""

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 13
    domain: str = ""

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """Attribute values as Python: strings decoded, tensors as NumPy arrays."""
    attrs = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, list):
            value = [v.decode() if isinstance(v, bytes) else v for v in value]
        attrs[attribute.name] = value
    return attrs


def _constant_value(node: Node) -> np.ndarray:
    for key, dtype in (("value", None), ("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in node.attrs:
            return np.array(node.attrs[key], dtype=dtype)
    raise UnsupportedModelError(f"Constant '{node.name}': only numeric values are supported, not {sorted(node.attrs)}")


def compile_nodes(model: onnx.ModelProto) -> list[Node]:
    version = model_opset(model)
    return [
        Node(n.op_type, n.name, tuple(n.input), tuple(n.output), _attributes(n), version,
             "" if n.domain == "ai.onnx" else n.domain)
        for n in model.graph.node
    ]


def _problem(node: Node) -> str | None:
    """Why ``node`` cannot be run (the op, or its attribute form), or None."""
    if node.domain:
        return f"{node.domain}::{node.op_type}"
    if node.op_type == FOLDED:
        return None
    spec = OPS.get(node.op_type)
    if spec is None:
        return node.op_type
    reason = spec.check(node) if spec.check is not None else None
    return f"{node.op_type} ({reason})" if reason else None


def check_supported(model: onnx.ModelProto) -> None:
    """Raise UnsupportedModelError naming every op (or attribute form) the interpreter cannot run."""
    problems: dict[str, int] = defaultdict(int)
    for node in compile_nodes(model):
        if (problem := _problem(node)) is not None:
            problems[problem] += 1
    if problems:
        listed = ", ".join(f"{op} x{count}" if count > 1 else op for op, count in sorted(problems.items()))
        raise UnsupportedModelError(f"the torch executor does not support: {listed}")


def separate_constant_copies(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every Identity of an initializer replaced by an initializer of its own (a copy).

    Exporters deduplicate equal tensors and hand the duplicates out through Identity nodes: in a
    freshly initialised VGG every BN of a width reads the one all-ones tensor as its scale *and*
    as its running variance. Trained as exported, those scales would be frozen buffers that the
    other layers' running-statistics updates overwrite in place, and the written-back graph
    would feed one layer's scale to another's variance. Copies train as the separate tensors they
    stand for. An Identity whose output is a graph output stays.
    """
    inputs = {v.name for v in model.graph.input}  # an initializer that is also an input can be overridden
    inits = {t.name: t for t in model.graph.initializer if t.name not in inputs}
    outputs = {v.name for v in model.graph.output}
    kept, copies = [], []
    for node in model.graph.node:  # topological order: a copy of a copy finds its source made
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            inits[copy.name] = copy
            copies.append(copy)
        else:
            kept.append(node)
    if not copies:
        return model
    separated = onnx.ModelProto()
    separated.CopyFrom(model)
    del separated.graph.node[:]
    separated.graph.node.extend(kept)
    separated.graph.initializer.extend(copies)
    return separated


def learnable_initializers(model: onnx.ModelProto) -> set[str]:
    """Float initializers that every reader takes at a learnable position (see ``OpSpec``)."""
    floats = {t.name: math.prod(t.dims) for t in model.graph.initializer if t.data_type in FLOAT_TYPES}
    graph_inputs = {v.name for v in model.graph.input} - set(floats)
    verdicts: dict[str, list[bool]] = defaultdict(list)
    for node in model.graph.node:
        spec = OPS.get(node.op_type)
        # x - mean, x / std, ... applied to a graph input is preprocessing, not a layer: keep it fixed
        preprocessing = node.op_type in PREPROCESSING and any(name in graph_inputs for name in node.input)
        for position, name in enumerate(node.input):
            if name in floats:
                verdicts[name].append(spec is not None and position in spec.learnable and floats[name] >= spec.min_size
                                      and not preprocessing)
    return {name for name, flags in verdicts.items() if all(flags)}


def _attribute_key(name: str, taken: set[str]) -> str:
    base = "t_" + re.sub(r"\W", "_", name)
    key, suffix = base, 1
    while key in taken:
        key, suffix = f"{base}_{suffix}", suffix + 1
    return key


def _to_torch(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(array, copy=True))


class OnnxModule(nn.Module):
    """An ONNX model as a differentiable torch module; parameters keep their initializer names.

    ``module(x)`` (positional in graph-input order, or by input name) returns the graph's output,
    or a tuple when it has several. ``tensor_hooks`` maps a tensor name to a function applied to
    that tensor as soon as it is computed (used to insert virtual channel scales).
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        check_supported(model)
        graph = model.graph
        initializer_names = {t.name for t in graph.initializer}
        self.input_names = [v.name for v in graph.input if v.name not in initializer_names]
        self.output_names = [v.name for v in graph.output]
        self.keys: dict[str, str] = {}
        self.initializer_names: list[str] = [t.name for t in graph.initializer]
        self.tensor_hooks: dict[str, Callable[[Tensor], Tensor]] = {}
        learnable = learnable_initializers(model)
        for tensor in graph.initializer:
            self._add(tensor.name, numpy_helper.to_array(tensor), tensor.name in learnable)
        self.nodes: list[Node] = []
        for node in compile_nodes(model):
            if node.op_type == FOLDED:
                self._add(node.outputs[0], _constant_value(node), False)
            else:
                self.nodes.append(node)
        self._release = _release_plan(self.nodes, set(self.output_names))

    def _add(self, name: str, array: np.ndarray, learnable: bool) -> None:
        key = _attribute_key(name, set(self.keys.values()))
        self.keys[name] = key
        if learnable:
            self.register_parameter(key, nn.Parameter(_to_torch(array)))
        else:
            self.register_buffer(key, _to_torch(array))

    def initializer(self, name: str) -> Tensor:
        """The parameter or buffer holding the ONNX initializer (or Constant output) ``name``."""
        return getattr(self, self.keys[name])

    def onnx_parameters(self) -> dict[str, nn.Parameter]:
        """Trainable tensors by ONNX initializer name."""
        return {name: t for name in self.initializer_names if isinstance(t := self.initializer(name), nn.Parameter)}

    def initializer_arrays(self) -> dict[str, np.ndarray]:
        """Current values of every initializer (parameters and buffers), as NumPy, by name."""
        return {name: self.initializer(name).detach().cpu().numpy() for name in self.initializer_names}

    def forward(self, *args: Tensor, **named: Tensor) -> Tensor | tuple[Tensor, ...]:
        env: dict[str, Tensor] = {name: self.initializer(name) for name in self.keys}
        env.update(zip(self.input_names, args))
        env.update(named)
        missing = [name for name in self.input_names if name not in env]
        if missing:
            raise ValueError(f"missing model input(s): {', '.join(missing)}")
        for index, node in enumerate(self.nodes):
            self._run(node, env)
            for name in self._release[index]:
                env.pop(name, None)
        results = tuple(env[name] for name in self.output_names)
        return results[0] if len(results) == 1 else results

    def _run(self, node: Node, env: dict[str, Tensor]) -> None:
        inputs = Inputs(f"{node.op_type} '{node.name}'", [env[name] if name else None for name in node.inputs])
        result = OPS[node.op_type].run(node, inputs, self.training)
        values = (result,) if isinstance(result, Tensor) else tuple(result)
        for name, value in zip(node.outputs, values):
            if name:
                hook = self.tensor_hooks.get(name)
                env[name] = hook(value) if hook is not None else value


def _release_plan(nodes: list[Node], keep: set[str]) -> list[list[str]]:
    """For each node, the intermediate tensors no later node reads (freed to save memory)."""
    last_use: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.inputs:
            last_use[name] = index
    plan: list[list[str]] = [[] for _ in nodes]
    produced = {name for node in nodes for name in node.outputs}
    for name, index in last_use.items():
        if name in produced and name not in keep:
            plan[index].append(name)
    return plan
