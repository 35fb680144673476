"""What every pass shares: its report, and the driver that applies a rewrite node by node.

A pattern pass is two functions: ``match(graph, node)`` returns what the rewrite needs, or raises
``Skip`` with the reason a candidate cannot be proven legal (before touching anything), or
``NotCandidate`` when the node is not what the rewrite looks for (nothing worth reporting); ``apply(graph,
found)`` performs it and returns one line saying what it did. The pipeline owns cleanup,
topological sorting, shape inference and the fixed point.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import onnx_graphsurgeon as gs

from onnxprune.core.graph import NotCandidate, Skip

log = logging.getLogger(__name__)


@dataclass
class PassReport:
    name: str
    rewrites: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.rewrites)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rewrites": len(self.rewrites), "details": self.rewrites, "skipped": self.skipped}


Match = Callable[[gs.Graph, gs.Node], Any]
Apply = Callable[[gs.Graph, Any], str]


def rewrite_nodes(graph: gs.Graph, name: str, op_types: Iterable[str], match: Match, apply: Apply) -> PassReport:
    """Try ``match`` on every live node of ``op_types`` in order and ``apply`` where it holds."""
    report = PassReport(name)
    wanted = set(op_types)
    for node in list(graph.nodes):
        if node.op not in wanted or not node.outputs:
            continue
        try:
            found = match(graph, node)
            report.rewrites.append(apply(graph, found))
        except NotCandidate:
            continue
        except Skip as reason:
            report.skipped.append(f"{node.op} '{node.name}': {reason}")
    for line in report.rewrites:
        log.debug("%s: %s", name, line)
    return report
