"""``prune``: structured channel pruning of a model or a file, with what it cost.

Clean up (BN kept, so a BN criterion can read γ) -> analyse channel groups -> score -> choose ->
(fuse) -> cut every coupled tensor -> fold with the exact passes. With ``keep_bn`` the
BatchNormalization nodes stay unfolded, for fine-tuning with batch statistics (train with BN,
deploy without: ``optimize`` folds them afterwards).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune import channels
from onnxprune.api.common import Cost, Inputs, PathLike, Shapes, fidelity_check, rewrite_file
from onnxprune.channels import importance, policy, surgery
from onnxprune.core import data
from onnxprune.core import model as model_io
from onnxprune.core.graph import unshare_constants
from onnxprune.measure import stats, verify
from onnxprune.passes import pipeline
from onnxprune.passes.base import PassReport
from onnxprune.recover import fusion

PRE_PRUNE_PASSES = ("fold_constants", "canonicalize_reshape", "eliminate", "merge_slices", "fuse_pad")
"""Exact clean-ups run before pruning; BN folding waits until after, so a BN criterion can read γ."""


def post_prune_passes(keep_bn: bool = False) -> list[str]:
    """The exact passes run after the cut: all of them, or all but BN folding with ``keep_bn``."""
    return [name for name in pipeline.REGISTRY if not (keep_bn and name == "fold_batchnorm")]


def prepare_for_pruning(graph: gs.Graph) -> list[PassReport]:
    """Exact clean-ups, then one copy of each shared constant per reader, so groups stay apart."""
    reports, _ = pipeline.run_passes(graph, PRE_PRUNE_PASSES)
    if unshare_constants(graph):
        pipeline.prepare(graph)
    return reports


@dataclass
class Pruned:
    """A pruned model, the channels removed per group id, the analysis they came from, the pass reports."""

    model: onnx.ModelProto
    removed: dict[int, np.ndarray]
    channel_graph: channels.ChannelGraph
    reports: list[PassReport] = field(default_factory=list)

    def removed_counts(self) -> dict[int, int]:
        return {group: len(indices) for group, indices in self.removed.items() if len(indices)}


def prune_model(
    model: onnx.ModelProto,
    criterion: str = "l1",
    config: policy.PolicyConfig | None = None,
    fuse: bool = False,
    input_shapes: Shapes = None,
    criterion_options: Mapping[str, Any] | None = None,
    keep_bn: bool = False,
) -> Pruned:
    """Clean up, score channels, choose, (fuse,) cut, then fold. The caller's model is not modified."""
    config = config or policy.PolicyConfig()
    scorer = importance.make(criterion, **dict(criterion_options or {}))
    graph = model_io.to_graph(model)
    reports = prepare_for_pruning(graph)
    channel_graph = channels.analyse(graph)
    scores = {group.id: scorer(group, graph) for group in channel_graph.prunable}
    counted = stats.model_stats(model_io.to_model(graph, model), data.resolve_input_shapes(model, input_shapes))
    remove = policy.select(channel_graph, scores, config, counted)
    if fuse:
        reports.append(fusion.run(graph, channel_graph, remove))
    reports.append(surgery.run(graph, channel_graph, remove))
    folded, _ = pipeline.run_passes(graph, post_prune_passes(keep_bn))
    reports.extend(folded)
    return Pruned(model_io.to_model(graph, model), remove, channel_graph, reports)


@dataclass
class PruneOutcome:
    criterion: str
    pruned: Pruned
    fidelity: verify.Fidelity
    cost: Cost
    unfused: verify.Fidelity | None = None

    @property
    def removed(self) -> dict[int, int]:
        return self.pruned.removed_counts()

    @property
    def group_sizes(self) -> dict[int, int]:
        return {group.id: group.size for group in self.pruned.channel_graph.groups}

    def to_dict(self) -> dict[str, Any]:
        sizes = self.group_sizes
        return {
            "command": "prune",
            **self.cost.to_dict(),
            "fidelity": self.fidelity.to_dict(),
            "criterion": self.criterion,
            "groups": [{"group": g, "channels": sizes[g], "removed": n} for g, n in self.removed.items()],
            "passes": [report.to_dict() for report in self.pruned.reports],
            "fidelity_without_fusion": self.unfused.to_dict() if self.unfused else None,
        }


def prune_file(
    source: PathLike,
    destination: PathLike,
    criterion: str = "l1",
    config: policy.PolicyConfig | None = None,
    fuse: bool = False,
    input_shapes: Shapes = None,
    data_source: data.DataSource | None = None,
    runs: int = 20,
    threads: int = 1,
    criterion_options: Mapping[str, Any] | None = None,
    keep_bn: bool = False,
) -> PruneOutcome:
    """Prune ``source`` into ``destination`` and measure what it cost (size, FLOPs, latency, fidelity).

    With ``fuse`` the fidelity of the same pruning without fusion is reported too.
    """

    def rewrite(model: onnx.ModelProto, _: Inputs) -> Pruned:
        return prune_model(model, criterion, config, fuse, input_shapes, criterion_options, keep_bn)

    pruned, fidelity, cost = rewrite_file(source, destination, rewrite, fidelity_check, input_shapes, data_source,
                                          runs, threads)
    unfused = None
    if fuse:
        original = model_io.load(source)
        plain = prune_model(original, criterion, config, False, input_shapes, criterion_options, keep_bn)
        unfused = verify.fidelity(original, plain.model, cost.inputs.feeds)
    return PruneOutcome(criterion, pruned, fidelity, cost, unfused)
