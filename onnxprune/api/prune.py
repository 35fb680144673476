"""``prune``: structured channel pruning of a model or a file, with what it cost.

Clean up (BN kept, so a BN criterion can read γ) -> analyse channel groups -> score -> choose ->
(fuse) -> cut every coupled tensor -> (recover on calibration data) -> fold with the exact passes.
Recovery without training (``recover``): information fusion of each removed channel into the kept
one most like it (data-free, before the cut), least-squares reconstruction of the layers after
the cut, and BN re-calibration (both on calibration activations through onnxruntime, with BN still
unfolded). BN re-calibration runs first: least squares targets the original layers' outputs after
their BN and maps them back through the pruned graph's (re-calibrated) BN, so it sees the final
statistics; measured on ResNet-20/56, the refit after re-calibration matches the refit alone, and
re-calibrating after it lowers the agreement with the original. With ``keep_bn`` the
BatchNormalization nodes stay unfolded, for fine-tuning with batch statistics (train with BN,
deploy without: ``optimize`` folds them afterwards).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune import channels
from onnxprune.api.common import Cost, Feeds, Inputs, PathLike, Shapes, fidelity_check, rewrite_file
from onnxprune.api.latency_target import meet_latency_target
from onnxprune.channels import importance, policy, surgery
from onnxprune.core import data
from onnxprune.core import model as model_io
from onnxprune.core.errors import OptionError
from onnxprune.core.graph import unshare_constants
from onnxprune.measure import stats, verify
from onnxprune.measure.phases import Phases
from onnxprune.passes import pipeline
from onnxprune.passes.base import PassReport
from onnxprune.recover import bn_recalibration, fusion, least_squares

PRE_PRUNE_PASSES = ("fold_constants", "canonicalize_reshape", "eliminate", "merge_slices", "fuse_pad")
"""Exact clean-ups run before pruning; BN folding waits until after, so a BN criterion can read γ."""


RECOVERY = ("fuse", "bn", "lsq")
"""Recovery methods, in the order they run."""
NEEDS_CALIBRATION = ("bn", "lsq")


def check_recovery(recover: Sequence[str], calibration: Feeds | None) -> tuple[str, ...]:
    """The recovery methods to run, in their order; unknown ones or missing calibration data are refused."""
    unknown = sorted(set(recover) - set(RECOVERY))
    if unknown:
        raise OptionError(f"{{}} {', '.join(unknown)} is unknown; known: {', '.join(RECOVERY)}", "recover")
    if not calibration and set(recover) & set(NEEDS_CALIBRATION):
        raise OptionError(f"{{}} {' and '.join(NEEDS_CALIBRATION)} need calibration data ({{}})", "recover", "data")
    return tuple(method for method in RECOVERY if method in recover)


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
class ChannelSummary:
    """What a pruning's outcome keeps of its channel analysis: the groups and the parameters none can cut.

    Not the analysed graph: its untouched constants still read the original model's weights, which
    would then stay in memory while the output is verified (a large model's second copy).
    """

    groups: list[channels.ChannelGroup]
    blocked_params: dict[str, int]

    @classmethod
    def of(cls, channel_graph: channels.ChannelGraph) -> ChannelSummary:
        return cls(channel_graph.groups, channel_graph.blocked_params)

    @property
    def prunable(self) -> list[channels.ChannelGroup]:
        return [group for group in self.groups if group.is_prunable]


@dataclass
class Pruned:
    """A pruned model, the channels removed per group id, the analysis they came from, the pass reports."""

    model: onnx.ModelProto
    removed: dict[int, np.ndarray]
    channel_graph: ChannelSummary
    reports: list[PassReport] = field(default_factory=list)
    phases: Phases = field(default_factory=Phases)  # seconds of clean-up, analysis, scoring ... export

    def removed_counts(self) -> dict[int, int]:
        return {group: len(indices) for group, indices in self.removed.items() if len(indices)}


def prune_model(
    model: onnx.ModelProto,
    criterion: str = "l1",
    config: policy.PolicyConfig | None = None,
    input_shapes: Shapes = None,
    criterion_options: Mapping[str, Any] | None = None,
    keep_bn: bool = False,
    recover: Sequence[str] = (),
    calibration: Feeds | None = None,
    progress: bool = False,
) -> Pruned:
    """Clean up, score channels, choose, (fuse,) cut, (recover,) then fold. The caller's model is not modified.

    ``recover`` names methods of :data:`RECOVERY`; "lsq" and "bn" use the ``calibration`` feeds.
    """
    methods = check_recovery(recover, calibration)
    config = config or policy.PolicyConfig()
    scorer = importance.make(criterion, **dict(criterion_options or {}))
    phases = Phases()
    with phases.time("clean-up"):
        graph = model_io.to_graph(model)
        reports = prepare_for_pruning(graph)
    with phases.time("analysis"):
        channel_graph = channels.analyse(graph)
    with phases.time("scoring"):
        scores = {group.id: scorer(group, graph) for group in channel_graph.prunable}
    shapes = data.resolve_input_shapes(model, input_shapes)
    with phases.time("counting"):
        counted = stats.model_stats(model_io.export_graph(graph, hollow_above=stats.SHAPE_VALUE_LIMIT),  # no weights
                                    shapes)
    with phases.time("selection"):
        remove = policy.select(channel_graph, scores, config, counted)
    if config.latency_target is not None and config.latency_trials:
        with phases.time("latency check"):
            feed = data.random_feeds(model, shapes)[0]
            remove = meet_latency_target(model, model_io.to_model(graph, model), channel_graph, scores, config,
                                         counted, feed, remove)
    original, kept = None, {}
    if "lsq" in methods:
        with phases.time("recovery"):
            original, kept = model_io.to_model(graph, model), surgery.kept_channels(channel_graph, remove)
    if "fuse" in methods:
        with phases.time("recovery"):
            reports.append(fusion.run(graph, channel_graph, remove))
    with phases.time("surgery"):
        reports.append(surgery.run(graph, channel_graph, remove))
    if calibration and "bn" in methods:
        with phases.time("recovery"):
            pipeline.prepare(graph)
            reports.append(bn_recalibration.run(graph, calibration, progress=progress))
    if calibration and original is not None:
        with phases.time("recovery"):
            pipeline.prepare(graph)
            reports.append(least_squares.run(graph, original, calibration, kept, progress=progress))
    with phases.time("folding"):
        recovered = calibration and {"bn", "lsq"} & set(methods)  # recovery may leave shapes to recompute
        folded, _ = pipeline.run_passes(graph, post_prune_passes(keep_bn), prepared=not recovered)
        reports.extend(folded)
    with phases.time("export"):
        pruned = model_io.to_model(graph, model)
    return Pruned(pruned, remove, ChannelSummary.of(channel_graph), reports, phases)


@dataclass
class PruneOutcome:
    criterion: str
    pruned: Pruned
    fidelity: verify.Fidelity
    cost: Cost
    unrecovered: verify.Fidelity | None = None  # the same pruning without recovery

    @property
    def removed(self) -> dict[int, int]:
        return self.pruned.removed_counts()

    @property
    def group_sizes(self) -> dict[int, int]:
        return {group.id: group.size for group in self.pruned.channel_graph.groups}

    @property
    def blocked_params(self) -> dict[str, int]:
        """Parameters no prunable group can cut, by reason (an LSTM without a channel handler ...)."""
        return self.pruned.channel_graph.blocked_params

    @property
    def phases(self) -> Phases:
        """Seconds per phase, the rewrite broken down into pruning's own phases."""
        return self.cost.phases.replace("rewrite", self.pruned.phases)

    def to_dict(self) -> dict[str, Any]:
        sizes = self.group_sizes
        return {
            "command": "prune",
            **self.cost.to_dict(),
            "phases": self.phases.to_dict(),
            "fidelity": self.fidelity.to_dict(),
            "criterion": self.criterion,
            "groups": [{"group": g, "channels": sizes[g], "removed": n} for g, n in self.removed.items()],
            "not_prunable_params": self.blocked_params,
            "passes": [report.to_dict() for report in self.pruned.reports],
            "fidelity_without_recovery": self.unrecovered.to_dict() if self.unrecovered else None,
        }


def prune_file(
    source: PathLike,
    destination: PathLike,
    criterion: str = "l1",
    config: policy.PolicyConfig | None = None,
    input_shapes: Shapes = None,
    data_source: data.DataSource | None = None,
    runs: int = 20,
    threads: int = 1,
    criterion_options: Mapping[str, Any] | None = None,
    keep_bn: bool = False,
    recover: Sequence[str] = (),
    calibration_source: data.DataSource | None = None,
    progress: bool = False,
) -> PruneOutcome:
    """Prune ``source`` into ``destination`` and measure what it cost (size, FLOPs, latency, fidelity).

    Recovery calibrates on ``calibration_source`` (default: the ``data_source`` samples, which the
    fidelity is then measured on too); with ``recover`` the fidelity of the same pruning without
    recovery is reported beside.
    """

    def rewrite(model: onnx.ModelProto, inputs: Inputs) -> Pruned:
        calibration = _calibration(model, inputs, calibration_source)
        return prune_model(model, criterion, config, input_shapes, criterion_options, keep_bn, recover, calibration,
                           progress)

    pruned, fidelity, cost = rewrite_file(source, destination, rewrite, fidelity_check, input_shapes, data_source,
                                          runs, threads)
    unrecovered = None
    if recover:
        with cost.phases.time("pruning without recovery"):
            original = model_io.load(source)
            plain = prune_model(original, criterion, config, input_shapes, criterion_options, keep_bn)
            unrecovered = verify.fidelity(original, plain.model, cost.inputs.feeds)
    return PruneOutcome(criterion, pruned, fidelity, cost, unrecovered)


def _calibration(model: onnx.ModelProto, inputs: Inputs, source: data.DataSource | None) -> Feeds | None:
    if source is not None:
        return source.feeds(model, inputs.shapes)
    return None if inputs.random else inputs.feeds
