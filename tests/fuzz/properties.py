"""The fuzzed properties, shared by the CI tests and ``benchmarks/fuzz.py``.

- ``check_pass(model, name)``: one exact pass (or the whole pipeline) gives a model that passes
  the checker, runs in onnxruntime, keeps the output names and shapes and computes the same
  outputs (``verify.equivalent``'s noise rule); a pass reporting no rewrite leaves the ops alone.
- ``check_prune(model, ratio)``: L1 pruning at ``ratio`` gives a valid model with the same output
  shapes whose outputs equal those of the cleaned-up original with the removed channels zeroed
  (1e-5 of the output scale; groups flagged inexact are kept whole).

A property that does not hold raises PropertyFailure, whose ``kind`` is the same for the same bug
(an exception's type and the package function raising it, or which check failed), so a fuzzing
run can count each bug once and shrink each separately.
"""

from __future__ import annotations

import re
import traceback
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import onnx
from hypothesis import strategies as st

from onnxprune import api, channels
from onnxprune.channels import surgery
from onnxprune.channels.policy import PolicyConfig
from onnxprune.core.model import to_graph, to_model
from onnxprune.measure import verify
from onnxprune.passes import pipeline

PIPELINE = "pipeline"
PRUNE = "prune"
PASS_PROPERTIES = (*pipeline.REGISTRY, PIPELINE)
PRUNE_TOLERANCE = 1e-5  # of each output's scale; the passes are held to the noise rule instead
FEED_SEEDS = (0, 1)
DYNAMIC_BATCH = 2  # a symbolic batch runs with 2 samples, so batch-mixing rewrites show

T = TypeVar("T")


class PropertyFailure(AssertionError):
    """A property that does not hold; ``kind`` identifies the bug, ``detail`` says what happened."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


def ratios() -> st.SearchStrategy[float]:
    """Pruning ratios, shrinking towards 0 (nothing removed)."""
    return st.floats(0.0, 0.9)


def feeds(model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """Standard normal inputs, one feed per seed; symbolic dimensions get DYNAMIC_BATCH."""
    result = []
    for seed in FEED_SEEDS:
        rng = np.random.default_rng(seed)
        feed = {}
        for value in model.graph.input:
            dims = [d.dim_value if d.HasField("dim_value") else DYNAMIC_BATCH for d in value.type.tensor_type.shape.dim]
            feed[value.name] = rng.standard_normal(dims).astype(np.float32)
        result.append(feed)
    return result


def _raised_in(exc: BaseException) -> str:
    """``Type in module.function``: the innermost frame of the package, which names the bug stably."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/onnxprune/" in f.filename]
    where = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
    module = re.sub(r".*/(onnxprune/.*)\.py$", r"\1", where.filename).replace("/", ".")
    return f"{type(exc).__name__} in {module}.{where.name}"


def call(what: str, action: Callable[[], T]) -> T:
    """Run ``action``; any exception becomes a PropertyFailure naming where it was raised."""
    try:
        return action()
    except Exception as exc:  # every exception of the package is a finding here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PropertyFailure(f"{what} raises {_raised_in(exc)}", first) from exc


def _declared(model: onnx.ModelProto) -> list[tuple[str, list[int | None]]]:
    """Output names and static dims; a symbolic dim is None, since shape inference may rename it."""
    return [(o.name, [d.dim_value if d.HasField("dim_value") else None for d in o.type.tensor_type.shape.dim])
            for o in model.graph.output]


def check_valid(original: onnx.ModelProto, candidate: onnx.ModelProto) -> None:
    """The candidate passes the full checker and keeps the original's output names and declared shapes."""
    try:
        onnx.checker.check_model(candidate, full_check=True)
    except Exception as exc:  # checker and shape-inference errors alike
        raise PropertyFailure("checker rejects the result", str(exc).strip().splitlines()[0]) from exc
    if _declared(candidate) != _declared(original):
        raise PropertyFailure("outputs changed", f"{_declared(original)} -> {_declared(candidate)}")


def check_equal(reference: onnx.ModelProto, candidate: onnx.ModelProto, rel: float | None = None) -> None:
    """Both run in onnxruntime on the same feeds and agree: within ``rel`` of the output scale, else the noise rule."""
    runs = feeds(reference)
    call("onnxruntime on the original", lambda: verify.run(reference, runs[:1]))
    equivalence = call("onnxruntime on the result", lambda: verify.equivalent(reference, candidate, runs, rtol=rel))
    if not equivalence.passed:
        worst = [f"{o.name}: max |d| {o.max_abs:.3g} > atol {o.atol:.3g} ({o.mismatched}/{o.total})"
                 for o in equivalence.outputs if not o.passed]
        raise PropertyFailure("outputs differ", "; ".join(worst))


def check_pass(model: onnx.ModelProto, name: str) -> None:
    """The property of one exact pass, or of the whole pipeline for ``name == PIPELINE``."""
    passes = None if name == PIPELINE else [name]
    result = call(name, lambda: pipeline.optimize(model, passes=passes))
    check_valid(model, result.model)
    before, after = Counter(n.op_type for n in model.graph.node), Counter(n.op_type for n in result.model.graph.node)
    if not any(report.rewrites for report in result.reports) and before != after:
        raise PropertyFailure("ops changed without a rewrite reported", f"{dict(before)} -> {dict(after)}")
    check_equal(model, result.model)


def _inexact_patterns(analysis: channels.ChannelGraph) -> list[str]:
    """Exclude patterns that keep every group flagged inexact whole (the oracle cannot hold there)."""
    names = {name for group in analysis.groups if group.inexact for name, _ in group.members}
    return [f"^{re.escape(name)}$" for name in sorted(names)]


def check_prune(model: onnx.ModelProto, ratio: float) -> None:
    """Prune at ``ratio`` with L1; the result is valid and equals the cleaned-up original, removed channels zeroed."""
    graph = to_graph(model)
    call("prepare_for_pruning", lambda: api.prepare_for_pruning(graph))
    analysis = call("analyse", lambda: channels.analyse(graph))
    config = PolicyConfig(ratio=ratio, exclude=_inexact_patterns(analysis))
    pruned = call(PRUNE, lambda: api.prune_model(model, "l1", config))
    check_valid(model, pruned.model)
    if pruned.removed:
        sizes = {g.id: g.size for g in analysis.groups}
        if any(sizes.get(g.id) != g.size for g in pruned.channel_graph.groups):
            raise PropertyFailure("analysis differs between runs", "group sizes do not match")
        call("zero_channels", lambda: surgery.zero_channels(graph, analysis, pruned.removed))
    check_equal(to_model(graph, model), pruned.model, PRUNE_TOLERANCE)
