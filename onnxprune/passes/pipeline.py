"""The pass registry and the runner that applies passes to a fixed point.

Between passes the runner removes dead nodes, sorts the graph and recomputes shapes, so every
pass sees a clean graph whose shapes were inferred, never taken from the file.

Per-pass options (``{"fold_constants": {"size_limit": 1 << 20}}``) are checked against each
pass's signature before any work: an unknown pass, an unknown option, or an option for a pass
that is not run is an InputError, never silently ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

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
from onnxprune.passes.base import PassReport, PassSpec

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
PASSES: dict[str, PassSpec] = {spec.name: spec for spec in map(PassSpec.of, EXACT_PASSES)}
REGISTRY: dict[str, Callable[..., PassReport]] = {name: spec.run for name, spec in PASSES.items()}

PassOptions = Mapping[str, Mapping[str, Any]]  # pass name -> keyword options of its run


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
    _check_known(set(chosen) | set(skip))
    return [name for name in chosen if name not in set(skip)]


def check_options(names: Sequence[str], options: PassOptions | None = None) -> None:
    """Raise InputError unless every pass named is known and every option is one its pass accepts.

    Options may be given only for passes in ``names`` (the ones that will run), so an option for
    a skipped or unselected pass is refused rather than dropped.
    """
    _check_known(set(names))
    for name, values in (options or {}).items():
        if name not in PASSES:
            raise InputError(f"options given for unknown pass '{name}'; known passes: {', '.join(PASSES)}")
        if not isinstance(values, Mapping):
            raise InputError(f"options of pass '{name}' must map option names to values, not {values!r}")
        if name not in names:
            given = ", ".join(f"'{option}'" for option in values) or "none"
            raise InputError(f"options given for pass '{name}' ({given}), which is not run (skipped or not selected)")
        PASSES[name].check(values)


def prepare(graph: gs.Graph) -> gs.Graph:
    """Remove dead nodes, sort, and recompute shapes: the state every pass expects."""
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return infer_shapes(graph)


def run_passes(
    graph: gs.Graph,
    names: Sequence[str],
    max_rounds: int = 8,
    progress: bool = False,
    *,
    options: PassOptions | None = None,
    prepared: bool = False,
) -> tuple[list[PassReport], int]:
    """Run ``names`` in order, repeatedly, until a whole round changes nothing.

    ``options`` maps a pass name to the keyword options of its ``run``; they are checked
    (``check_options``) before the graph is touched. ``prepared``: the graph is already in the
    state ``prepare`` gives (channel surgery leaves it so), which is then not recomputed first.
    """
    check_options(names, options)
    given = options or {}
    totals = {name: PassReport(name) for name in names}
    if not prepared:
        prepare(graph)
    rounds = 0
    with tqdm(total=len(names), desc="optimize", unit="pass", disable=None if progress else True, leave=False) as bar:
        for rounds in range(1, max_rounds + 1):
            changed = False
            bar.reset(total=len(names))
            bar.set_description(f"optimize round {rounds}")
            for name in names:
                bar.set_postfix_str(name)
                report = REGISTRY[name](graph, **given.get(name, {}))
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
    *,
    options: PassOptions | None = None,
) -> PipelineResult:
    """Apply the exact passes to a copy of ``model``; the caller's model is not modified.

    ``options`` are per-pass keyword options (see ``run_passes``), checked before the model is read.
    """
    names = resolve_passes(passes, skip)
    check_options(names, options)
    graph = to_graph(model)
    reports, rounds = run_passes(graph, names, max_rounds, progress, options=options)
    log.info("optimize: %d round(s), %d rewrite(s)", rounds, sum(len(r.rewrites) for r in reports))
    return PipelineResult(to_model(graph, model), reports, rounds)


def _check_known(names: set[str]) -> None:
    unknown = sorted(names - set(PASSES))
    if unknown:
        raise InputError(f"unknown pass {', '.join(unknown)}; known passes: {', '.join(PASSES)}")


def _merge(total: PassReport, report: PassReport) -> None:
    total.rewrites.extend(report.rewrites)
    total.skipped[:] = report.skipped
