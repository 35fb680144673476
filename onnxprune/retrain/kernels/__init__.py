"""Torch kernels for ONNX ops, registered by op type; one module per op family.

A kernel is ``run(node, inputs, training)``: ``inputs`` the node's input tensors (:class:`Inputs`),
``training`` the module's mode. Its :class:`OpSpec` also says which inputs may be trained and,
optionally, why a node's attribute form cannot be run. The interpreter
(:mod:`onnxprune.retrain.interpreter`) reads the table :func:`load_all` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

from torch import Tensor

if TYPE_CHECKING:
    from onnxprune.retrain.interpreter import Node

Value = Tensor | None
Result = Tensor | Sequence[Tensor]


class Inputs:
    """A node's input tensors in order. Indexing gives a required input (an omitted one is an
    error naming the node); :meth:`optional` gives ``None`` for an omitted or absent one."""

    def __init__(self, node: str, values: list[Value]) -> None:
        self.node = node
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> Tensor:
        value = self.values[index]
        if value is None:
            raise ValueError(f"{self.node}: input {index} is required but omitted")
        return value

    def __iter__(self) -> Iterator[Tensor]:
        return (self[index] for index in range(len(self.values)))

    def optional(self, index: int) -> Value:
        return self.values[index] if index < len(self.values) else None


Kernel = Callable[["Node", Inputs, bool], Result]
Check = Callable[["Node"], str | None]


@dataclass(frozen=True)
class OpSpec:
    """How to run an op: ``run(node, inputs, training)``; which inputs may be trained (a float
    initializer there becomes a Parameter if it has at least ``min_size`` elements); and an
    optional ``check(node)`` returning why a node's attribute form is not supported."""

    run: Kernel
    learnable: tuple[int, ...] = ()
    min_size: int = 1
    check: Check | None = None


OPS: dict[str, OpSpec] = {}


def register(*op_types: str, learnable: tuple[int, ...] = (), min_size: int = 1,
             check: Check | None = None) -> Callable[[Kernel], Kernel]:
    """Decorator: register ``fn(node, inputs, training)`` for the given op types."""

    def decorate(fn: Kernel) -> Kernel:
        for op_type in op_types:
            OPS[op_type] = OpSpec(fn, learnable, min_size, check)
        return fn

    return decorate


@overload
def ints(value: Tensor) -> list[int]: ...


@overload
def ints(value: None) -> None: ...


@overload
def ints(value: Value) -> list[int] | None: ...


def ints(value: Value) -> list[int] | None:
    """An int tensor (shape, axes, pads) as a Python list; None stays None."""
    return None if value is None else [int(v) for v in value.reshape(-1).tolist()]


def load_all() -> dict[str, OpSpec]:
    """Import every kernel module so that their registrations run."""
    from onnxprune.retrain.kernels import (  # noqa: F401
        activation,
        conv,
        elementwise,
        linear,
        normalization,
        pooling,
        reduce,
        resize,
        shape,
    )

    return OPS
