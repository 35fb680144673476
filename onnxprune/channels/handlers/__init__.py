"""Per-op channel handlers, registered by op type and shared by the analysis and the surgery.

A handler says how its node's tensors map channels (``relate``) and what the node needs beyond
slicing its constant inputs when channels go (``update``: a ``group`` attribute, a Reshape
target, Split sizes, Pad amounts ...). An op without a handler blocks every axis it touches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.relations import Dim, Relations

Removed = Mapping[Dim, np.ndarray]


class Handler:
    """Base: relates nothing and needs no update. Subclasses override one or both."""

    def relate(self, rel: Relations, node: gs.Node) -> None:
        """Link the elements of this node's dims and accept the dims it lets shrink."""

    def update(self, graph: gs.Graph, node: gs.Node, removed: Removed) -> None:
        """Adjust attributes or shape constants after ``removed`` positions were deleted."""


HANDLERS: dict[str, Handler] = {}


def register(*op_types: str) -> Callable[[type[Handler]], type[Handler]]:
    def decorate(cls: type[Handler]) -> type[Handler]:
        instance = cls()
        for op_type in op_types:
            HANDLERS[op_type] = instance
        return cls

    return decorate


def load_all() -> dict[str, Handler]:
    """Import every handler module so that their registrations run."""
    from onnxprune.channels.handlers import (  # noqa: F401
        broadcast,
        elementwise,
        linear,
        normalization,
        pooling,
        segments,
        views,
    )

    return HANDLERS
