"""``optimize``: the exact passes, proven equivalent with onnxruntime before anything is written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from onnxprune.api.common import Cost, Feeds, Inputs, PathLike, Shapes, rewrite_file
from onnxprune.core import data
from onnxprune.core.errors import VerificationError
from onnxprune.measure import verify
from onnxprune.passes import pipeline


@dataclass
class OptimizeOutcome:
    result: pipeline.PipelineResult
    equivalence: verify.Equivalence
    cost: Cost

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "optimize",
            **self.cost.to_dict(),
            "pipeline": self.result.to_dict(),
            "equivalence": self.equivalence.to_dict(),
        }


def check_equivalence(
    reference: verify.ModelLike,
    candidate: verify.ModelLike,
    feeds: Feeds,
    atol: float | None = None,
    rtol: float = 1e-5,
) -> verify.Equivalence:
    """Compare two models; ``atol=None`` means ``rtol`` times each output's largest magnitude."""
    if atol is None:
        return verify.compare_scaled(reference, candidate, feeds, rel=rtol)
    return verify.compare(reference, candidate, feeds, atol=atol, rtol=rtol)


def optimize_file(
    source: PathLike,
    destination: PathLike,
    passes: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    input_shapes: Shapes = None,
    data_source: data.DataSource | None = None,
    atol: float | None = None,
    rtol: float = 1e-5,
    runs: int = 20,
    threads: int = 1,
    external_data: bool | None = None,
    progress: bool = False,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> OptimizeOutcome:
    """Run the exact pipeline on ``source``, verify against it, then write ``destination``.

    Raises VerificationError (and writes nothing) when any output differs beyond tolerance.
    ``options`` are per-pass options (``{"fold_constants": {"size_limit": ...}}``).
    """
    pipeline.check_options(pipeline.resolve_passes(passes, skip), options)

    def rewrite(model: onnx.ModelProto, _: Inputs) -> pipeline.PipelineResult:
        return pipeline.optimize(model, passes, skip, progress=progress, options=options)

    def check(original: onnx.ModelProto, optimized: onnx.ModelProto, inputs: Inputs) -> verify.Equivalence:
        equivalence = check_equivalence(original, optimized, inputs.feeds, atol, rtol)
        if not equivalence.passed:
            raise VerificationError(f"optimized model differs from {source}: {_worst(equivalence)}; nothing written")
        return equivalence

    result, equivalence, cost = rewrite_file(source, destination, rewrite, check, input_shapes, data_source, runs,
                                             threads, external_data)
    return OptimizeOutcome(result, equivalence, cost)


def _worst(equivalence: verify.Equivalence) -> str:
    failed = [diff for diff in equivalence.outputs if not diff.passed]
    return ", ".join(f"output '{d.name}' max abs error {d.max_abs:.3g} (max rel {d.max_rel:.3g})" for d in failed)
