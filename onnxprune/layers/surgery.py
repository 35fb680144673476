"""Bypass residual units (layer pruning): replace ``y = s + F(x)`` by ``y := s``.

Before (identity unit; projection units have ``s = P(x)``)::

    x --+--> F --> f --> Add --> y --> Relu --> ...
        +-----------------^
After::

    x --> Relu --> ...

The consumers of y read the shortcut s instead; a trailing activation stays where it was, now on the
shortcut (a ResNet's resulting Relu(Relu(x)) is left to the exact passes). When y is a graph output,
an ``Identity(s) -> y`` keeps the interface's name. F's nodes and the Add are then dead and removed;
P (a projection) stays.

Maths: exact when F(x) = 0 for every input (e.g. F's last BN has γ = β = 0); otherwise the output
changes by what F added, which is what block importance estimates.

Preconditions: the units come from :func:`onnxprune.layers.units.find_blocks` (on this graph or on a graph
with the same node names). Each is matched again on the current graph just before it is rewired
(earlier bypasses rename shortcuts, never bodies), and one that no longer proves legal — the Add
gone, the body changed, shapes that would differ — is left alone with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import onnx_graphsurgeon as gs

from onnxprune.core.graph import Skip, consumers, infer_shapes, is_graph_output, unique_name
from onnxprune.layers.units import Block, match_unit, node_order
from onnxprune.passes.base import PassReport

log = logging.getLogger(__name__)

NAME = "bypass_blocks"


def run(graph: gs.Graph, blocks: Sequence[Block]) -> PassReport:
    """Bypass every unit of ``blocks`` that still proves legal; the report says which and why not.

    Leaves the graph cleaned, sorted and shape-inferred (the state ``pipeline.prepare`` gives).
    """
    report = PassReport(NAME)
    for block in blocks:
        try:
            add, found = _match(graph, block)
            report.rewrites.append(_apply(graph, add, found, block))
        except Skip as reason:
            report.skipped.append(f"unit '{block.name}': {reason}")
            continue
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    infer_shapes(graph)
    for line in report.rewrites:
        log.debug("%s: %s", NAME, line)
    return report


def _match(graph: gs.Graph, block: Block) -> tuple[gs.Node, Block]:
    add = next((node for node in graph.nodes if node.name == block.add and node.outputs), None)
    if add is None:
        raise Skip(f"its Add '{block.add}' is not in the graph (bypassed already?)")
    try:
        found = match_unit(graph, add, node_order(graph))
    except Skip as reason:
        raise Skip(f"no longer a unit: {reason}") from None
    if found.kind != block.kind or set(found.body) != set(block.body):
        raise Skip(f"the graph's unit at '{block.add}' is a {found.kind} unit of {len(found.body)} nodes, "
                   f"not the {block.kind} unit of {len(block.body)} asked for")
    return add, found


def _apply(graph: gs.Graph, add: gs.Node, found: Block, block: Block) -> str:
    output = add.outputs[0]
    shortcut = next(t for t in add.inputs if t.name == found.shortcut)
    add.inputs.clear()
    add.outputs.clear()
    if is_graph_output(graph, output):
        graph.nodes.append(gs.Node("Identity", unique_name(graph, f"{add.name}_bypass"), inputs=[shortcut],
                                   outputs=[output]))
    else:
        for consumer in consumers(output):
            for index, tensor in enumerate(consumer.inputs):
                if tensor is output:
                    consumer.inputs[index] = shortcut
    return (f"{block.name}: {found.kind} unit of {len(found.body)} nodes bypassed, "
            f"'{output.name}' := '{shortcut.name}' (-{block.macs} MACs)")
