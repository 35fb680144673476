"""``sparsify``: unstructured magnitude pruning with compact storage (seed 000, Xie et al. 2020).

Exact passes first (BN and affine folds, "stream merging": the weights pruned are the ones the
deployed graph multiplies by) -> zero the smallest weights of every Conv/Gemm/MatMul
(:mod:`onnxprune.sparsity.thresholds`) -> remove the filters and neurons left all-zero, exactly
(:mod:`onnxprune.sparsity.dead_channels`) -> exact passes again -> store the zeros compactly
(:mod:`onnxprune.sparsity.storage`; packed by default). A packed input is unpacked first, so a
model fine-tuned dense (``finetune`` keeps its zeros at zero) is re-stored by ``sparsify`` with
no threshold. The counts reported are of the dense equivalent: every float parameter and the
nonzero ones; the file size is the stored file's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxprune.api.common import Cost, Feeds, Inputs, PathLike, Shapes, fidelity_check, rewrite_file
from onnxprune.core import data
from onnxprune.core import model as model_io
from onnxprune.measure import verify
from onnxprune.passes import pipeline
from onnxprune.passes.base import PassReport
from onnxprune.retrain.evaluate import Accuracy, LabelledData, evaluate
from onnxprune.sparsity import dead_channels, masks, storage, thresholds


@dataclass
class Sparsified:
    """The stored model, its dense equivalent (what training reads), what was zeroed and removed."""

    model: onnx.ModelProto
    dense: onnx.ModelProto
    storage: str
    zeroed: dict[str, int]  # weight name -> weights this run set to zero
    counts: masks.Counts
    reports: list[PassReport] = field(default_factory=list)

    @property
    def removed_channels(self) -> int:
        return sum(len(report.rewrites) for report in self.reports if report.name == "prune_channels")


def sparsify_model(
    model: onnx.ModelProto,
    rule: thresholds.Threshold | None = None,
    storage_kind: str = storage.DEFAULT_STORAGE,
    value_type: str = "float16",
    min_elements: int = masks.MIN_ELEMENTS,
    input_shapes: Shapes = None,
    feeds: Feeds | None = None,
) -> Sparsified:
    """Prune ``model``'s weights by ``rule``, cut dead channels, fold, store. The caller's model is not modified.

    ``feeds`` check that cutting the channels whose filters went to zero is exact (random inputs
    by default).
    """
    rule = rule or thresholds.Threshold()
    storage.encode(onnx.ModelProto(opset_import=model.opset_import), storage_kind, value_type)  # bad options first
    source = storage.decode(model)
    feeds = feeds or data.random_feeds(source, data.resolve_input_shapes(source, input_shapes))
    graph = model_io.to_graph(source)
    reports, _ = pipeline.run_passes(graph, list(pipeline.REGISTRY))
    weights = masks.prunable_weights(graph, min_elements)
    keep = thresholds.keep_masks({name: constant.values for name, constant in weights.items()}, rule)
    before = {name: int((constant.values != 0).sum()) for name, constant in weights.items()}
    masks.apply(weights, keep)
    zeroed = {name: before[name] - int(keep[name].sum()) for name in weights}
    reports.append(dead_channels.run(graph, source, feeds))
    folded, _ = pipeline.run_passes(graph, list(pipeline.REGISTRY))
    dense = model_io.to_model(graph, source)
    return Sparsified(storage.encode(dense, storage_kind, value_type), dense, storage_kind, zeroed,
                      masks.count(dense), reports + folded)


@dataclass
class SparsifyOutcome:
    sparsified: Sparsified
    fidelity: verify.Fidelity
    cost: Cost
    counts_before: masks.Counts
    session_seconds: tuple[float, float]  # onnxruntime session creation, before and after
    accuracy: tuple[Accuracy, Accuracy] | None = None  # with labelled data: before and after

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "sparsify",
            **self.cost.to_dict(),
            "storage": self.sparsified.storage,
            "params": {"before": self.counts_before.to_dict(), "after": self.sparsified.counts.to_dict()},
            "zeroed": self.sparsified.zeroed,
            "removed_channel_groups": self.sparsified.removed_channels,
            "session_seconds": {"before": self.session_seconds[0], "after": self.session_seconds[1]},
            "fidelity": self.fidelity.to_dict(),
            "accuracy": None if self.accuracy is None else {
                "before": self.accuracy[0].to_dict(), "after": self.accuracy[1].to_dict()},
            "passes": [report.to_dict() for report in self.sparsified.reports],
        }


def sparsify_file(
    source: PathLike,
    destination: PathLike,
    rule: thresholds.Threshold | None = None,
    storage_kind: str = storage.DEFAULT_STORAGE,
    value_type: str = "float16",
    min_elements: int = masks.MIN_ELEMENTS,
    input_shapes: Shapes = None,
    data_source: data.DataSource | None = None,
    labelled: LabelledData | None = None,
    runs: int = 20,
    threads: int = 1,
) -> SparsifyOutcome:
    """Sparsify ``source`` into ``destination``; measure size, parameters, latency, fidelity (accuracy with labels)."""

    def rewrite(model: onnx.ModelProto, inputs: Inputs) -> Sparsified:
        return sparsify_model(model, rule, storage_kind, value_type, min_elements, input_shapes, inputs.feeds)

    sparsified, fidelity, cost = rewrite_file(source, destination, rewrite, fidelity_check, input_shapes,
                                              data_source, runs, threads)
    original = model_io.load(source)
    seconds = (storage.session_seconds(original, threads=threads), storage.session_seconds(sparsified.model,
                                                                                           threads=threads))
    accuracy = None if labelled is None else (evaluate(original, labelled), evaluate(sparsified.model, labelled))
    return SparsifyOutcome(sparsified, fidelity, cost, masks.count(storage.decode(original)), seconds, accuracy)
