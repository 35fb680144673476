"""The Python API behind every CLI command: file in, verified file out, a report to show.

Data flows one way: load -> rewrite -> verify -> save. Nothing is written unless verification
passed, and the output is written atomically, so a failed run leaves no file behind.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune import channels
from onnxprune.channels import ChannelGraph, importance, policy
from onnxprune.channels import surgery as prune_channels
from onnxprune.core import data
from onnxprune.core import model as model_io
from onnxprune.core.errors import VerificationError
from onnxprune.core.graph import unshare_constants
from onnxprune.measure import latency, stats, verify
from onnxprune.passes import pipeline
from onnxprune.recover import fusion as compensate

log = logging.getLogger(__name__)

Feeds = list[dict[str, np.ndarray]]


@dataclass
class Inputs:
    """How to feed a model: concrete shapes, and the feeds used to verify and time it."""

    shapes: dict[str, tuple[int, ...]]
    feeds: Feeds
    source: str
    random: bool = False

    @classmethod
    def for_model(
        cls,
        model: onnx.ModelProto,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        source: data.DataSource | None = None,
        samples: int = 4,
        seed: int = 0,
    ) -> Inputs:
        shapes = data.resolve_input_shapes(model, input_shapes)
        if source is not None:
            return cls(shapes, source.feeds(model, shapes), str(source))
        return cls(shapes, data.random_feeds(model, shapes, seed=seed, count=samples), f"random (seed {seed})", True)


@dataclass
class Measurement:
    """Counts and latency of one model, the rows of a before/after table."""

    stats: stats.ModelStats
    latency: latency.Latency | None = None

    @property
    def median_ms(self) -> float | None:
        return self.latency.median_ms if self.latency else None

    def to_dict(self) -> dict[str, Any]:
        return {"stats": self.stats.to_dict(), "latency": self.latency.to_dict() if self.latency else None}


@dataclass
class OptimizeOutcome:
    source: Path
    destination: Path | None
    result: pipeline.PipelineResult
    equivalence: verify.Equivalence
    before: Measurement
    after: Measurement
    inputs: Inputs
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "optimize",
            "input": str(self.source),
            "output": str(self.destination) if self.destination else None,
            "inputs": self.inputs.source,
            "pipeline": self.result.to_dict(),
            "equivalence": self.equivalence.to_dict(),
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
        }


def check_equivalence(
    reference: onnx.ModelProto | str | os.PathLike,
    candidate: onnx.ModelProto | str | os.PathLike,
    feeds: Feeds,
    atol: float | None = None,
    rtol: float = 1e-5,
) -> verify.Equivalence:
    """Compare two models; ``atol=None`` means ``rtol`` times each output's largest magnitude."""
    if atol is None:
        return verify.compare_scaled(reference, candidate, feeds, rel=rtol)
    return verify.compare(reference, candidate, feeds, atol=atol, rtol=rtol)


def measure(
    model: onnx.ModelProto,
    inputs: Inputs,
    path: str | os.PathLike | None = None,
    runs: int = 0,
    threads: int = 1,
) -> Measurement:
    counted = stats.model_stats(model, inputs.shapes, path=str(path) if path else None)
    timed = latency.measure(model, inputs.feeds[0], runs=runs, threads=threads) if runs else None
    return Measurement(counted, timed)


def optimize_file(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    passes: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    data_source: data.DataSource | None = None,
    atol: float | None = None,
    rtol: float = 1e-5,
    runs: int = 20,
    threads: int = 1,
    external_data: bool | None = None,
    progress: bool = False,
) -> OptimizeOutcome:
    """Run the exact pipeline on ``source``, verify against it, then write ``destination``.

    Raises VerificationError (and writes nothing) when any output differs beyond tolerance.
    """
    model_io.ensure_distinct(source, destination)
    original = model_io.load(source)
    pipeline.resolve_passes(passes, skip)
    inputs = Inputs.for_model(original, input_shapes, data_source)
    result = pipeline.optimize(original, passes, skip, progress=progress)
    equivalence = check_equivalence(original, result.model, inputs.feeds, atol, rtol)
    if not equivalence.passed:
        raise VerificationError(f"optimized model differs from {source}: {_worst(equivalence)}; nothing written")
    model_io.check(result.model, destination)
    written = model_io.save(result.model, destination, external_data)
    before, after = _measure_pair(original, result.model, inputs, source, written, runs, threads)
    return OptimizeOutcome(Path(source), written, result, equivalence, before, after, inputs)


def _measure_pair(original, optimized, inputs, source, written, runs, threads) -> tuple[Measurement, Measurement]:
    before = measure(original, inputs, source)
    after = measure(optimized, inputs, written)
    if runs:
        before.latency, after.latency, _ = latency.compare_latency(
            original, optimized, inputs.feeds[0], runs=runs, warmup=max(2, runs // 10), threads=threads
        )
    return before, after


def _worst(equivalence: verify.Equivalence) -> str:
    failed = [diff for diff in equivalence.outputs if not diff.passed]
    return ", ".join(f"output '{d.name}' max abs error {d.max_abs:.3g} (max rel {d.max_rel:.3g})" for d in failed)


@dataclass
class Cost:
    """What a lossy rewrite cost, measured alike for prune, bypass and joint."""

    source: Path
    destination: Path
    fidelity: verify.Fidelity
    before: Measurement
    after: Measurement
    inputs: Inputs
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": str(self.source),
            "output": str(self.destination),
            "inputs": self.inputs.source,
            "fidelity": self.fidelity.to_dict(),
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "seconds": self.seconds,
        }


def finish_lossy(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    inputs: Inputs,
    start: float,
    runs: int,
    threads: int,
) -> Cost:
    """The tail of every lossy command: check, fidelity, atomic write, before/after measurements."""
    model_io.check(rewritten, destination)
    fidelity = verify.fidelity(original, rewritten, inputs.feeds)
    seconds = time.perf_counter() - start
    written = model_io.save(rewritten, destination)
    before, after = _measure_pair(original, rewritten, inputs, source, written, runs, threads)
    return Cost(Path(source), written, fidelity, before, after, inputs, seconds)


PRE_PRUNE_PASSES = ("fold_constants", "canonicalize_reshape", "eliminate", "merge_slices", "fuse_pad")
"""Exact clean-ups run before pruning; BN folding waits until after, so a BN criterion can read γ."""


@dataclass
class PruneOutcome:
    criterion: str
    removed: dict[int, int]
    group_sizes: dict[int, int]
    reports: list
    cost: Cost
    unfused: verify.Fidelity | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "prune",
            **self.cost.to_dict(),
            "criterion": self.criterion,
            "groups": [{"group": g, "channels": self.group_sizes[g], "removed": n} for g, n in self.removed.items()],
            "passes": [report.to_dict() for report in self.reports],
            "fidelity_without_fusion": self.unfused.to_dict() if self.unfused else None,
        }


def prepare_for_pruning(graph: gs.Graph) -> list:
    """Exact clean-ups, then one copy of each shared constant per reader, so groups stay apart."""
    reports, _ = pipeline.run_passes(graph, PRE_PRUNE_PASSES)
    if unshare_constants(graph):
        pipeline.prepare(graph)
    return reports


def prune_model(
    model: onnx.ModelProto,
    criterion: str = "l1",
    config: policy.PolicyConfig | None = None,
    fuse: bool = False,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    criterion_options: Mapping[str, Any] | None = None,
) -> tuple[onnx.ModelProto, dict[int, np.ndarray], ChannelGraph, list]:
    """Clean up, score channels, choose, (fuse,) cut, then fold: the pruned model and what went.

    The caller's model is not modified.
    """
    config = config or policy.PolicyConfig()
    scorer = importance.make(criterion, **dict(criterion_options or {}))
    graph = model_io.to_graph(model)
    reports = prepare_for_pruning(graph)
    channel_graph = channels.analyse(graph)
    scores = {group.id: scorer(group, graph) for group in channel_graph.prunable}
    counted = stats.model_stats(model_io.to_model(graph, model), data.resolve_input_shapes(model, input_shapes))
    remove = policy.select(channel_graph, scores, config, counted)
    if fuse:
        reports.append(compensate.run(graph, channel_graph, remove))
    reports.append(prune_channels.run(graph, channel_graph, remove))
    folded, _ = pipeline.run_passes(graph, list(pipeline.REGISTRY))
    reports.extend(folded)
    return model_io.to_model(graph, model), remove, channel_graph, reports


def prune_file(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    criterion: str = "l1",
    config: policy.PolicyConfig | None = None,
    fuse: bool = False,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    data_source: data.DataSource | None = None,
    runs: int = 20,
    threads: int = 1,
    criterion_options: Mapping[str, Any] | None = None,
) -> PruneOutcome:
    """Prune ``source`` into ``destination`` and measure what it cost (size, FLOPs, latency, fidelity)."""
    start = time.perf_counter()
    model_io.ensure_distinct(source, destination)
    original = model_io.load(source)
    inputs = Inputs.for_model(original, input_shapes, data_source)
    pruned, remove, channel_graph, reports = prune_model(
        original, criterion, config, fuse, input_shapes, criterion_options
    )
    cost = finish_lossy(source, destination, original, pruned, inputs, start, runs, threads)
    unfused = None
    if fuse:
        plain, *_ = prune_model(original, criterion, config, False, input_shapes, criterion_options)
        unfused = verify.fidelity(original, plain, inputs.feeds)
    sizes = {group.id: group.size for group in channel_graph.groups}
    removed = {group: len(channels_) for group, channels_ in remove.items() if len(channels_)}
    return PruneOutcome(criterion, removed, sizes, reports, cost, unfused)
