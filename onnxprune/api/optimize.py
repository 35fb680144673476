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
    rtol: float | None = None,
) -> verify.Equivalence:
    """Compare two models: the noise-aware rule by default, a given tolerance overrides it.

    Default (see :mod:`onnxprune.measure.noise`): every element within 3x the reference's own
    float32 noise floor (onnxruntime with graph optimizations off vs on), and never less than 1e-5
    of the output's scale. ``rtol`` alone: that fraction of each output's largest magnitude;
    ``atol``: polygraphy's rule with ``atol`` and ``rtol``.
    """
    return verify.equivalent(reference, candidate, feeds, atol, rtol)


def optimize_file(
    source: PathLike,
    destination: PathLike,
    passes: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    input_shapes: Shapes = None,
    data_source: data.DataSource | None = None,
    atol: float | None = None,
    rtol: float | None = None,
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

    def check(original: verify.ModelLike, optimized: verify.ModelLike, inputs: Inputs) -> verify.Equivalence:
        equivalence = check_equivalence(original, optimized, inputs.feeds, atol, rtol)
        if not equivalence.passed:
            raise VerificationError(f"optimized model differs from {source}: {_worst(equivalence)}; nothing written")
        return equivalence

    result, equivalence, cost = rewrite_file(source, destination, rewrite, check, input_shapes, data_source, runs,
                                             threads, external_data)
    return OptimizeOutcome(result, equivalence, cost)


def _worst(equivalence: verify.Equivalence) -> str:
    failed = [diff for diff in equivalence.outputs if not diff.passed]
    return ", ".join(f"output '{d.name}' max abs error {d.max_abs:.3g} > allowed {d.atol:.3g}"
                     + (f" (noise floor {d.noise_floor:.3g})" if d.noise_floor is not None else "")
                     for d in failed)
