"""Layer pruning as a product: bypass residual units of a model or a file, and seed 001's joint pipeline.

Data flows as in :mod:`onnxprune.api`: load -> clean up (``api.prepare_for_pruning``, BN kept so γ
can be read) -> detect units -> score -> select -> bypass -> (fold) -> check, fidelity -> save
atomically. Nothing is written when a step fails.

Seed 001's joint pipeline (:func:`joint_prune_model`): per-layer adaptive thresholds δ_l on |γ|,
units ranked by 1 − mean(s_l), the N least important bypassed, then the channels below threshold
removed (``api.prune_model`` with the "bn" criterion and the adaptive-threshold policy), then the
exact passes fold BN. Fine-tuning is not part of it: run ``onnxprune finetune`` on the result.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune import api
from onnxprune.channels import policy
from onnxprune.core import data
from onnxprune.core import model as model_io
from onnxprune.layers import scores as block_importance
from onnxprune.layers import surgery as bypass_blocks
from onnxprune.layers.units import Block, find_blocks, model_macs
from onnxprune.passes import pipeline
from onnxprune.passes.base import PassReport

log = logging.getLogger(__name__)

Shapes = Mapping[str, Sequence[int]] | None
DataLike = data.DataSource | str | os.PathLike | None


@dataclass
class Selection:
    """Which units to bypass: exactly one of ``count``, ``names``, ``flops_target`` (see select_blocks)."""

    count: int | None = None
    names: Sequence[str] | None = None
    flops_target: float | None = None

    def describe(self) -> str:
        if self.names is not None:
            return "by name"
        return f"{self.count} lowest-scored" if self.count is not None else f"down to {self.flops_target:g} of the FLOPs"


@dataclass
class Bypassed:
    """A bypassed model and how it was chosen."""

    model: onnx.ModelProto
    blocks: list[Block]
    scores: dict[str, float]
    removed: list[Block]
    reports: list[PassReport]
    macs: int  # of the cleaned-up model the units were counted on

    def units(self) -> list[dict[str, Any]]:
        chosen = {block.name for block in self.removed}
        return [{**block.to_dict(), "score": self.scores.get(block.name), "bypassed": block.name in chosen}
                for block in self.blocks]


def detect(model: onnx.ModelProto, input_shapes: Shapes = None) -> tuple[gs.Graph, list[Block], list[PassReport]]:
    """The cleaned-up graph of ``model`` (BN kept), its layer-pruning units, and the clean-up reports."""
    graph = model_io.to_graph(model)
    reports = api.prepare_for_pruning(graph)
    return graph, find_blocks(graph, input_shapes), reports


def bypass_model(
    model: onnx.ModelProto,
    count: int | None = None,
    names: Sequence[str] | None = None,
    flops_target: float | None = None,
    score: str = "bn",
    data_source: DataLike = None,
    input_shapes: Shapes = None,
    optimize: bool = True,
) -> tuple[onnx.ModelProto, list[Block], list[PassReport]]:
    """Bypass the chosen units of ``model``: the new model, the units removed, the pass reports.

    Data scores use ``data_source``'s samples (a DataSource, or a path), or seeded random inputs. With ``optimize``
    the exact passes run afterwards (BN folded), as after channel pruning. The caller's model is
    not modified.
    """
    feeds = _feeds(model, score, data_source, input_shapes)
    result = bypass(model, Selection(count, names, flops_target), score, feeds, input_shapes, optimize)
    return result.model, result.removed, result.reports


def bypass(
    model: onnx.ModelProto,
    selection: Selection,
    score: str = "bn",
    feeds: api.Feeds | None = None,
    input_shapes: Shapes = None,
    optimize: bool = True,
    score_options: Mapping[str, Any] | None = None,
) -> Bypassed:
    """:func:`bypass_model` with the feeds given, returning the units and scores too."""
    block_importance.needs_data(score)  # an unknown score fails before any work
    graph, found, reports = detect(model, input_shapes)
    scores = {}
    if selection.names is None:
        scores = block_importance.score_blocks(graph, found, score, feeds, **dict(score_options or {}))
    macs = model_macs(graph, input_shapes)
    chosen = bypass_blocks.select_blocks(found, scores, selection.count, selection.flops_target, selection.names,
                                         macs)
    report = bypass_blocks.run(graph, chosen)
    removed = _bypassed(graph, chosen)
    if report.skipped:
        log.warning("%d unit(s) left alone: %s", len(report.skipped), "; ".join(report.skipped))
    reports.append(report)
    if optimize:
        folded, _ = pipeline.run_passes(graph, list(pipeline.REGISTRY))
        reports.extend(folded)
    return Bypassed(model_io.to_model(graph, model), found, scores, removed, reports, macs)


def _bypassed(graph: gs.Graph, chosen: Sequence[Block]) -> list[Block]:
    """The units of ``chosen`` whose Add is gone from ``graph``."""
    live = {node.name for node in graph.nodes}
    return [block for block in chosen if block.add not in live]


def _feeds(model: onnx.ModelProto, score: str, source: DataLike, input_shapes: Shapes) -> api.Feeds | None:
    if not block_importance.needs_data(score):
        return None
    return api.Inputs.for_model(model, input_shapes, as_source(source)).feeds


def as_source(source: DataLike) -> data.DataSource | None:
    """A DataSource from a DataSource or a bare path (no normalisation); None stays None."""
    if source is None or isinstance(source, data.DataSource):
        return source
    return data.DataSource(source)


# --- files ----------------------------------------------------------------------------------------


@dataclass
class BypassOutcome:
    score: str
    selection: Selection
    result: Bypassed
    cost: api.Cost

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "bypass",
            **self.cost.to_dict(),
            "score": self.score,
            "selection": self.selection.describe(),
            "units": self.result.units(),
            "bypassed": [block.name for block in self.result.removed],
            "passes": [report.to_dict() for report in self.result.reports],
        }


def bypass_file(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    count: int | None = None,
    names: Sequence[str] | None = None,
    flops_target: float | None = None,
    score: str = "bn",
    data_source: DataLike = None,
    input_shapes: Shapes = None,
    runs: int = 20,
    threads: int = 1,
    score_options: Mapping[str, Any] | None = None,
) -> BypassOutcome:
    """Bypass units of ``source`` into ``destination``; measure FLOPs, size, latency and fidelity.

    Data scores and the fidelity use ``data_source``'s samples, or seeded random inputs.
    """
    start = time.perf_counter()
    model_io.ensure_distinct(source, destination)
    original = model_io.load(source)
    inputs = api.Inputs.for_model(original, input_shapes, as_source(data_source))
    selection = Selection(count, names, flops_target)
    result = bypass(original, selection, score, inputs.feeds, input_shapes, True, score_options)
    cost = api.finish_lossy(source, destination, original, result.model, inputs, start, runs, threads)
    return BypassOutcome(score, selection, result, cost)


# --- seed 001: joint layer and channel pruning ----------------------------------------------------


@dataclass
class JointResult:
    model: onnx.ModelProto
    removed_blocks: list[Block]
    removed_channels: dict[int, np.ndarray]
    steps: list[str] = field(default_factory=list)
    reports: list[PassReport] = field(default_factory=list)


def joint_prune_model(
    model: onnx.ModelProto,
    layers: int,
    bin_width: float = 0.01,
    min_channels: int = 1,
    input_shapes: Shapes = None,
    criterion: str = "bn",
    config: policy.PolicyConfig | None = None,
    criterion_options: Mapping[str, Any] | None = None,
) -> JointResult:
    """Seed 001 on a sparsely trained model: thresholds, rank units, bypass ``layers``, prune channels.

    The channels go by seed 001's adaptive γ threshold unless another ``criterion``/``config`` is
    given. Each step adds one line to ``steps``. The caller's model is not modified.
    """
    graph, found, reports = detect(model, input_shapes)
    steps = [_threshold_line(graph, bin_width)]
    scores = block_importance.sparsity_scores(graph, found, bin_width)
    ranked = sorted(found, key=lambda b: (np.isnan(scores[b.name]), np.nan_to_num(scores[b.name])))
    steps.append(f"ranked {len(found)} units by importance 1 - mean(s): least important "
                 + (", ".join(f"{b.name} ({scores[b.name]:.3f})" for b in ranked[:3]) or "(none)"))
    macs = model_macs(graph, input_shapes)
    chosen = bypass_blocks.select_blocks(found, scores, count=layers, total_macs=macs)
    reports.append(bypass_blocks.run(graph, chosen))
    chosen = _bypassed(graph, chosen)
    saved = sum(block.macs for block in chosen)
    steps.append(f"bypassed {len(chosen)} units ({', '.join(b.name for b in chosen) or 'none'}): "
                 f"-{100 * saved / macs if macs else 0:.1f} % of the FLOPs")
    config = config or policy.PolicyConfig(threshold=policy.ADAPTIVE, bin_width=bin_width, min_channels=min_channels)
    bypassed = model_io.to_model(graph, model)
    pruned, remove, channel_graph, pruning = api.prune_model(
        bypassed, criterion, config, input_shapes=input_shapes, criterion_options=criterion_options
    )
    reports.extend(pruning)
    channels = sum(len(c) for c in remove.values())
    how = "with γ < δ" if config.threshold else f"by {criterion}"
    steps.append(f"removed {channels} channels {how} in {len(remove)} of {len(channel_graph.prunable)} "
                 "prunable groups, then folded BN")
    steps.append("fine-tuning: not run here; recover accuracy with `onnxprune finetune`")
    return JointResult(pruned, chosen, remove, steps, reports)


def _threshold_line(graph: gs.Graph, bin_width: float) -> str:
    gammas = [np.abs(np.asarray(node.inputs[1].values)) for node in graph.nodes
              if node.op == "BatchNormalization" and isinstance(node.inputs[1], gs.Constant)]
    if not gammas:
        return "adaptive thresholds: the model has no BatchNormalization scale (no γ to read)"
    deltas = [policy.adaptive_threshold(g, bin_width) for g in gammas]
    sparsity = [block_importance.bn_sparsity(g, bin_width) for g in gammas]
    return (f"adaptive thresholds (bins {bin_width:g}) on {len(gammas)} BN layers: median δ {np.median(deltas):.3f}, "
            f"mean sparsity s {np.mean(sparsity):.3f}")


@dataclass
class JointOutcome:
    result: JointResult
    cost: api.Cost

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "joint",
            **self.cost.to_dict(),
            "steps": self.result.steps,
            "bypassed": [block.name for block in self.result.removed_blocks],
            "channels_removed": {str(g): len(c) for g, c in self.result.removed_channels.items()},
            "passes": [report.to_dict() for report in self.result.reports],
        }


def joint_prune_file(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    layers: int,
    bin_width: float = 0.01,
    min_channels: int = 1,
    data_source: DataLike = None,
    input_shapes: Shapes = None,
    runs: int = 20,
    threads: int = 1,
    criterion: str = "bn",
    config: policy.PolicyConfig | None = None,
    criterion_options: Mapping[str, Any] | None = None,
) -> JointOutcome:
    """Seed 001's joint pipeline from file to file, measured like ``prune``."""
    start = time.perf_counter()
    model_io.ensure_distinct(source, destination)
    original = model_io.load(source)
    inputs = api.Inputs.for_model(original, input_shapes, as_source(data_source))
    result = joint_prune_model(original, layers, bin_width, min_channels, input_shapes, criterion, config,
                               criterion_options)
    cost = api.finish_lossy(source, destination, original, result.model, inputs, start, runs, threads)
    return JointOutcome(result, cost)
