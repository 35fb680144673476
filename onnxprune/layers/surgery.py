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
import math
from collections.abc import Mapping, Sequence

import onnx_graphsurgeon as gs

from onnxprune.core.errors import InputError
from onnxprune.core.graph import Skip, consumers, infer_shapes, is_graph_output, unique_name
from onnxprune.layers.units import Block, match_unit, node_order
from onnxprune.passes.base import PassReport

log = logging.getLogger(__name__)

NAME = "bypass_blocks"


def run(graph: gs.Graph, blocks: Sequence[Block], **options) -> PassReport:
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



# --- selection --------------------------------------------------------------------------------


def select_blocks(
    blocks: Sequence[Block],
    scores: Mapping[str, float] | None = None,
    count: int | None = None,
    flops_target: float | None = None,
    names: Sequence[str] | None = None,
    total_macs: int | None = None,
) -> list[Block]:
    """The units to bypass, in topological order; exactly one of ``count``, ``flops_target``, ``names``.

    ``count`` N: the N lowest-scored units (higher score = more important; unscored (NaN) units go
    last). ``flops_target`` F: the lowest-scored units until the model keeps at most F of
    ``total_macs`` (each unit saves its ``macs``). ``names``: those units, by name or Add name.
    Impossible requests are an InputError.
    """
    given = [option for option, value in (("--blocks", count), ("--flops-target", flops_target),
                                          ("--names", names)) if value is not None]
    if len(given) != 1:
        raise InputError(f"give exactly one of --blocks, --flops-target, --names (got {', '.join(given) or 'none'})")
    if names is not None:
        return _by_name(blocks, names)
    ranked = _ranked(blocks, scores or {})
    if count is not None:
        if not 0 <= count <= len(blocks):
            raise InputError(f"--blocks {count}: the model has {len(blocks)} layer-pruning units")
        chosen = ranked[:count]
    else:
        chosen = _to_target(ranked, flops_target, total_macs)
    keep = {block.name for block in chosen}
    return [block for block in blocks if block.name in keep]


def _ranked(blocks: Sequence[Block], scores: Mapping[str, float]) -> list[Block]:
    def key(item: tuple[int, Block]) -> tuple[bool, float, int]:
        index, block = item
        score = scores.get(block.name, math.nan)
        return (math.isnan(score), 0.0 if math.isnan(score) else score, index)
    return [block for _, block in sorted(enumerate(blocks), key=key)]


def _to_target(ranked: Sequence[Block], target: float, total_macs: int | None) -> list[Block]:
    if not 0 < target <= 1:
        raise InputError(f"--flops-target {target:g} must be in (0, 1]: the fraction of the model to keep")
    if not total_macs:
        raise InputError("--flops-target needs the model's FLOPs, which could not be counted (input shapes unknown?)")
    budget = total_macs * (1 - target)
    chosen, saved = [], 0
    for block in ranked:
        if saved >= budget - 1e-9 * total_macs:
            return chosen
        chosen.append(block)
        saved += block.macs
    if saved < budget - 1e-9 * total_macs:
        raise InputError(f"--flops-target {target:g} is unreachable: bypassing all {len(ranked)} units keeps "
                         f"{1 - saved / total_macs:.3f} of the FLOPs")
    return chosen


def _by_name(blocks: Sequence[Block], names: Sequence[str]) -> list[Block]:
    known = {block.name: block for block in blocks} | {block.add: block for block in blocks}
    unknown = [name for name in names if name not in known]
    if unknown:
        shown = ", ".join(block.name for block in blocks[:6]) + (", ..." if len(blocks) > 6 else "")
        raise InputError(f"no layer-pruning unit named {', '.join(unknown)}; units are: {shown or '(none)'}")
    wanted = {known[name].name for name in names}
    return [block for block in blocks if block.name in wanted]
