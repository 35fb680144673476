"""``joint``: joint layer and channel pruning (Nanjing University patent CN 2021, on Zhuang et al.'s
polarization-trained BN scales).

Per BN layer an adaptive threshold δ_l on |γ| (first local minimum of its histogram); units
ranked by importance 1 − mean(s_l), s_l the share of γ below δ_l; the N least important bypassed;
then the channels with γ < δ_l removed (:func:`onnxprune.api.prune.prune_model` with the "bn"
criterion and the adaptive-threshold policy); then the exact passes fold BN. Fine-tuning is not
part of it: run ``onnxprune finetune`` on the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.api.bypass import bypassed, detect
from onnxprune.api.common import Cost, Inputs, PathLike, Shapes, fidelity_check, rewrite_file
from onnxprune.api.prune import prune_model
from onnxprune.channels import policy
from onnxprune.core import data
from onnxprune.core import model as model_io
from onnxprune.layers import scores as block_scores
from onnxprune.layers import surgery
from onnxprune.layers.policy import select_blocks
from onnxprune.layers.units import Block, model_macs
from onnxprune.measure import verify
from onnxprune.passes.base import PassReport


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
    """On a sparsely trained model: thresholds, rank units, bypass ``layers`` of them, prune channels.

    The channels go by the adaptive γ threshold unless another ``criterion``/``config`` is given.
    Each step adds one line to ``steps``. The caller's model is not modified.
    """
    graph, found, reports = detect(model, input_shapes)
    steps = [_threshold_line(graph, bin_width)]
    scores = block_scores.sparsity_scores(graph, found, bin_width)
    ranked = sorted(found, key=lambda b: (np.isnan(scores[b.name]), np.nan_to_num(scores[b.name])))
    steps.append(f"ranked {len(found)} units by importance 1 - mean(s): least important "
                 + (", ".join(f"{b.name} ({scores[b.name]:.3f})" for b in ranked[:3]) or "(none)"))
    macs = model_macs(graph, input_shapes)
    chosen = select_blocks(found, scores, count=layers, total_macs=macs)
    reports.append(surgery.run(graph, chosen))
    chosen = bypassed(graph, chosen)
    saved = sum(block.macs for block in chosen)
    steps.append(f"bypassed {len(chosen)} units ({', '.join(b.name for b in chosen) or 'none'}): "
                 f"-{100 * saved / macs if macs else 0:.1f} % of the FLOPs")
    config = config or policy.PolicyConfig(threshold=policy.ADAPTIVE, bin_width=bin_width, min_channels=min_channels)
    pruned = prune_model(model_io.to_model(graph, model), criterion, config, input_shapes=input_shapes,
                         criterion_options=criterion_options)
    reports.extend(pruned.reports)
    removed = sum(len(c) for c in pruned.removed.values())
    how = "with γ < δ" if config.threshold else f"by {criterion}"
    steps.append(f"removed {removed} channels {how} in {len(pruned.removed)} of "
                 f"{len(pruned.channel_graph.prunable)} prunable groups, then folded BN")
    steps.append("fine-tuning: not run here; recover accuracy with `onnxprune finetune`")
    return JointResult(pruned.model, chosen, pruned.removed, steps, reports)


def _threshold_line(graph: gs.Graph, bin_width: float) -> str:
    gammas = [np.abs(np.asarray(node.inputs[1].values)) for node in graph.nodes
              if node.op == "BatchNormalization" and isinstance(node.inputs[1], gs.Constant)]
    if not gammas:
        return "adaptive thresholds: the model has no BatchNormalization scale (no γ to read)"
    deltas = [policy.adaptive_threshold(g, bin_width) for g in gammas]
    sparsity = [block_scores.bn_sparsity(g, bin_width) for g in gammas]
    return (f"adaptive thresholds (bins {bin_width:g}) on {len(gammas)} BN layers: median δ {np.median(deltas):.3f}, "
            f"mean sparsity s {np.mean(sparsity):.3f}")


@dataclass
class JointOutcome:
    result: JointResult
    fidelity: verify.Fidelity
    cost: Cost

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "joint",
            **self.cost.to_dict(),
            "fidelity": self.fidelity.to_dict(),
            "steps": self.result.steps,
            "bypassed": [block.name for block in self.result.removed_blocks],
            "channels_removed": {str(g): len(c) for g, c in self.result.removed_channels.items()},
            "passes": [report.to_dict() for report in self.result.reports],
        }


def joint_prune_file(
    source: PathLike,
    destination: PathLike,
    layers: int,
    bin_width: float = 0.01,
    min_channels: int = 1,
    data_source: data.DataSource | None = None,
    input_shapes: Shapes = None,
    runs: int = 20,
    threads: int = 1,
    criterion: str = "bn",
    config: policy.PolicyConfig | None = None,
    criterion_options: Mapping[str, Any] | None = None,
) -> JointOutcome:
    """The joint pipeline from file to file, measured like ``prune``."""

    def rewrite(model: onnx.ModelProto, _: Inputs) -> JointResult:
        return joint_prune_model(model, layers, bin_width, min_channels, input_shapes, criterion, config,
                                 criterion_options)

    result, fidelity, cost = rewrite_file(source, destination, rewrite, fidelity_check, input_shapes, data_source,
                                          runs, threads)
    return JointOutcome(result, fidelity, cost)
