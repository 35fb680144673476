"""``bypass``: layer pruning of a model or a file: residual units detected, scored, chosen, bypassed.

Clean up (BN kept so γ can be read) -> detect units -> score -> select -> bypass -> fold -> check.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from onnxprune.api.common import Cost, Feeds, Inputs, PathLike, Shapes, fidelity_check, rewrite_file
from onnxprune.api.prune import prepare_for_pruning
from onnxprune.core import data
from onnxprune.core import model as model_io
from onnxprune.layers import scores as block_scores
from onnxprune.layers import surgery
from onnxprune.layers.policy import select_blocks
from onnxprune.layers.units import Block, find_blocks, model_macs
from onnxprune.measure import verify
from onnxprune.passes import pipeline
from onnxprune.passes.base import PassReport

log = logging.getLogger(__name__)


@dataclass
class Selection:
    """Which units to bypass: exactly one of ``count``, ``names``, ``flops_target`` (see select_blocks)."""

    count: int | None = None
    names: Sequence[str] | None = None
    flops_target: float | None = None

    def describe(self) -> str:
        if self.names is not None:
            return "by name"
        if self.count is not None:
            return f"{self.count} lowest-scored"
        return f"down to {self.flops_target:g} of the FLOPs"


@dataclass
class Bypassed:
    """A bypassed model, the units found with their scores, those removed, and the pass reports."""

    model: onnx.ModelProto
    blocks: list[Block]
    scores: dict[str, float]
    removed: list[Block]
    reports: list[PassReport] = field(default_factory=list)
    macs: int = 0  # of the cleaned-up model the units were counted on

    def units(self) -> list[dict[str, Any]]:
        chosen = {block.name for block in self.removed}
        return [{**block.to_dict(), "score": self.scores.get(block.name), "bypassed": block.name in chosen}
                for block in self.blocks]


def detect(model: onnx.ModelProto, input_shapes: Shapes = None) -> tuple[gs.Graph, list[Block], list[PassReport]]:
    """The cleaned-up graph of ``model`` (BN kept), its layer-pruning units, and the clean-up reports."""
    graph = model_io.to_graph(model)
    reports = prepare_for_pruning(graph)
    return graph, find_blocks(graph, input_shapes), reports


def bypass_model(
    model: onnx.ModelProto,
    selection: Selection,
    score: str = "bn",
    feeds: Feeds | None = None,
    input_shapes: Shapes = None,
    optimize: bool = True,
    score_options: Mapping[str, Any] | None = None,
) -> Bypassed:
    """Bypass the ``selection`` of ``model``'s units. The caller's model is not modified.

    Data scores use ``feeds`` (see :meth:`Inputs.for_model`). With ``optimize`` the exact passes
    run afterwards (BN folded), as after channel pruning.
    """
    block_scores.needs_data(score)  # an unknown score fails before any work
    graph, found, reports = detect(model, input_shapes)
    scores = {}
    if selection.names is None:
        scores = block_scores.score_blocks(graph, found, score, feeds, **dict(score_options or {}))
    macs = model_macs(graph, input_shapes)
    chosen = select_blocks(found, scores, selection.count, selection.flops_target, selection.names, macs)
    report = surgery.run(graph, chosen)
    if report.skipped:
        log.warning("%d unit(s) left alone: %s", len(report.skipped), "; ".join(report.skipped))
    reports.append(report)
    if optimize:
        folded, _ = pipeline.run_passes(graph, list(pipeline.REGISTRY))
        reports.extend(folded)
    return Bypassed(model_io.to_model(graph, model), found, scores, bypassed(graph, chosen), reports, macs)


def bypassed(graph: gs.Graph, chosen: Sequence[Block]) -> list[Block]:
    """The units of ``chosen`` whose Add is gone from ``graph``."""
    live = {node.name for node in graph.nodes}
    return [block for block in chosen if block.add not in live]


@dataclass
class BypassOutcome:
    score: str
    selection: Selection
    result: Bypassed
    fidelity: verify.Fidelity
    cost: Cost

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "bypass",
            **self.cost.to_dict(),
            "fidelity": self.fidelity.to_dict(),
            "score": self.score,
            "selection": self.selection.describe(),
            "units": self.result.units(),
            "bypassed": [block.name for block in self.result.removed],
            "passes": [report.to_dict() for report in self.result.reports],
        }


def bypass_file(
    source: PathLike,
    destination: PathLike,
    selection: Selection,
    score: str = "bn",
    data_source: data.DataSource | None = None,
    input_shapes: Shapes = None,
    runs: int = 20,
    threads: int = 1,
    score_options: Mapping[str, Any] | None = None,
) -> BypassOutcome:
    """Bypass units of ``source`` into ``destination``; measure FLOPs, size, latency and fidelity.

    Data scores and the fidelity use ``data_source``'s samples, or seeded random inputs.
    """

    def rewrite(model: onnx.ModelProto, inputs: Inputs) -> Bypassed:
        return bypass_model(model, selection, score, inputs.feeds, input_shapes, True, score_options)

    result, fidelity, cost = rewrite_file(source, destination, rewrite, fidelity_check, input_shapes, data_source,
                                          runs, threads)
    return BypassOutcome(score, selection, result, fidelity, cost)
