"""What every pass shares: its report, its description, and the driver that applies a rewrite node by node.

A pattern pass is two functions: ``match(graph, node)`` returns what the rewrite needs, or raises
``Skip`` with the reason a candidate cannot be proven legal (before touching anything), or
``NotCandidate`` when the node is not what the rewrite looks for (nothing worth reporting); ``apply(graph,
found)`` performs it and returns one line saying what it did. The pipeline owns cleanup,
topological sorting, shape inference and the fixed point.

A pass module defines ``NAME`` and ``run(graph, *, option=default, ...) -> PassReport``; its
options are keyword-only with defaults, so ``PassSpec`` reads them from the signature and a
misspelt option is refused before any work instead of being ignored.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import onnx_graphsurgeon as gs

from onnxprune.core.errors import InputError
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


@dataclass(frozen=True)
class PassSpec:
    """A pass as a registry sees it: its name, its module, and the keyword options its ``run`` accepts."""

    name: str
    module: ModuleType
    options: tuple[str, ...]

    @classmethod
    def of(cls, module: ModuleType) -> PassSpec:
        """Read the spec from ``module.NAME`` and the signature of ``module.run``.

        Raises TypeError when ``run`` takes anything but the graph and keyword-only options with
        defaults (a ``**options`` would swallow misspelt names again).
        """
        params = list(inspect.signature(module.run).parameters.values())[1:]
        loose = [p.name for p in params if p.kind is not p.KEYWORD_ONLY or p.default is p.empty]
        if loose:
            raise TypeError(f"{module.__name__}.run: options must be keyword-only with defaults, not {loose}")
        return cls(module.NAME, module, tuple(p.name for p in params))

    @property
    def run(self) -> Callable[..., PassReport]:
        return self.module.run

    def check(self, options: Mapping[str, Any]) -> None:
        """Raise InputError naming the options ``run`` does not accept, and those it does."""
        unknown = [name for name in options if name not in self.options]
        if not unknown:
            return
        close = difflib.get_close_matches(unknown[0], self.options, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        accepts = f"accepts: {', '.join(self.options)}" if self.options else "takes no options"
        bad = ", ".join(f"'{name}'" for name in unknown)
        raise InputError(f"pass '{self.name}' has no option {bad}{hint}; it {accepts}")


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
