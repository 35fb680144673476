"""The pass registry and the runner that applies passes to a fixed point.

Between passes the runner removes dead nodes, sorts the graph and recomputes shapes, so every
pass sees a clean graph whose shapes were inferred, never taken from the file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType

import onnx
import onnx_graphsurgeon as gs
from tqdm import tqdm

from onnxprune.core.errors import InputError
from onnxprune.core.graph import infer_shapes
from onnxprune.core.model import to_graph, to_model
from onnxprune.passes import (
    cancel_reshapes,
    cancel_transposes,
    canonicalize_reshape,
    eliminate,
    fold_batchnorm,
    fold_constants,
    fuse_pad,
    matmul_to_gemm,
    merge_affine,
    merge_branches,
    merge_linear,
    merge_slices,
    sink_reshapes,
)
from onnxprune.passes.base import PassReport

log = logging.getLogger(__name__)

EXACT_PASSES: tuple[ModuleType, ...] = (
    fold_constants,
    canonicalize_reshape,
    eliminate,
    merge_slices,
    fuse_pad,
    fold_batchnorm,
    matmul_to_gemm,
    cancel_reshapes,
    cancel_transposes,
    sink_reshapes,
    merge_affine,
    merge_branches,
    merge_linear,
)
REGISTRY: dict[str, Callable[..., PassReport]] = {module.NAME: module.run for module in EXACT_PASSES}


@dataclass
class PipelineResult:
    model: onnx.ModelProto
    reports: list[PassReport] = field(default_factory=list)
    rounds: int = 0

    def to_dict(self) -> dict:
        return {"rounds": self.rounds, "passes": [report.to_dict() for report in self.reports]}


def resolve_passes(passes: Sequence[str] | None = None, skip: Sequence[str] = ()) -> list[str]:
    """The pass names to run, in registry order; unknown names are an InputError."""
    chosen = list(passes) if passes else list(REGISTRY)
    unknown = sorted((set(chosen) | set(skip)) - set(REGISTRY))
    if unknown:
        raise InputError(f"unknown pass {', '.join(unknown)}; known passes: {', '.join(REGISTRY)}")
    return [name for name in chosen if name not in set(skip)]


def prepare(graph: gs.Graph) -> gs.Graph:
    """Remove dead nodes, sort, and recompute shapes: the state every pass expects."""
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return infer_shapes(graph)


def run_passes(
    graph: gs.Graph, names: Sequence[str], max_rounds: int = 8, progress: bool = False
) -> tuple[list[PassReport], int]:
    """Run ``names`` in order, repeatedly, until a whole round changes nothing."""
    totals = {name: PassReport(name) for name in names}
    prepare(graph)
    rounds = 0
    with tqdm(total=len(names), desc="optimize", unit="pass", disable=None if progress else True, leave=False) as bar:
        for rounds in range(1, max_rounds + 1):
            changed = False
            bar.reset(total=len(names))
            bar.set_description(f"optimize round {rounds}")
            for name in names:
                bar.set_postfix_str(name)
                report = REGISTRY[name](graph)
                _merge(totals[name], report)
                if report.changed:
                    changed = True
                    prepare(graph)
                bar.update()
            if not changed:
                break
    return list(totals.values()), rounds


def optimize(
    model: onnx.ModelProto,
    passes: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    max_rounds: int = 8,
    progress: bool = False,
) -> PipelineResult:
    """Apply the exact passes to a copy of ``model``; the caller's model is not modified."""
    names = resolve_passes(passes, skip)
    graph = to_graph(model)
    reports, rounds = run_passes(graph, names, max_rounds, progress)
    log.info("optimize: %d round(s), %d rewrite(s)", rounds, sum(len(r.rewrites) for r in reports))
    return PipelineResult(to_model(graph, model), reports, rounds)


def _merge(total: PassReport, report: PassReport) -> None:
    total.rewrites.extend(report.rewrites)
    total.skipped[:] = report.skipped
