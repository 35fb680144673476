"""What every file-level workflow shares: the inputs a model is fed, its measurements, and the one
load -> rewrite -> check -> save path.

Nothing is written unless the check passed, and the output is written atomically, so a failed run
leaves no file behind; the input file is never modified.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import onnx

from onnxprune.core import data
from onnxprune.core import model as model_io
from onnxprune.measure import latency, stats, verify
from onnxprune.measure.phases import Phases

Feeds = list[dict[str, np.ndarray]]
Shapes = Mapping[str, Sequence[int]] | None
PathLike = str | os.PathLike


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
        input_shapes: Shapes = None,
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


def measure(model: onnx.ModelProto, inputs: Inputs, path: PathLike | None = None, runs: int = 0,
            threads: int = 1) -> Measurement:
    counted = stats.model_stats(model, inputs.shapes, path=str(path) if path else None)
    timed = latency.measure(model, inputs.feeds[0], runs=runs, threads=threads) if runs else None
    return Measurement(counted, timed)


@dataclass
class Cost:
    """What a rewrite cost, measured alike by every command: counts and latency before/after, time taken."""

    source: Path
    destination: Path
    inputs: Inputs
    before: Measurement
    after: Measurement
    seconds: float
    phases: Phases = field(default_factory=Phases)  # load, rewrite, measurement, verification, save, latency timing

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": str(self.source),
            "output": str(self.destination),
            "inputs": self.inputs.source,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "seconds": self.seconds,
            "phases": self.phases.to_dict(),
        }


class Rewritten(Protocol):
    """The result of a workflow's rewrite step: at least the new model (settable: see rewrite_file)."""

    model: onnx.ModelProto


R = TypeVar("R", bound=Rewritten)
V = TypeVar("V")


def rewrite_file(
    source: PathLike,
    destination: PathLike,
    rewrite: Callable[[onnx.ModelProto, Inputs], R],
    check: Callable[[verify.ModelLike, verify.ModelLike, Inputs], V],
    input_shapes: Shapes = None,
    data_source: data.DataSource | None = None,
    runs: int = 20,
    threads: int = 1,
    external_data: bool | None = None,
) -> tuple[R, V, Cost]:
    """Load ``source``, ``rewrite`` it, ``check`` the result, save ``destination`` atomically, measure both.

    ``check(original, rewritten, inputs)`` returns its verdict (an equivalence, a fidelity), or
    raises to stop before anything is written. It is given the models, or, for one over the
    protobuf limit (which onnxruntime can only open from a file), its path: ``source``, or the
    staged output, written, checked by onnx's checker and renamed to ``destination`` only once
    the verdict is in. Such an output leaves memory while it is checked (onnxruntime then holds
    its own copy) and ``result.model`` is read back from ``destination``. ``external_data``
    None: external data when the output must (over the limit) or the input had it. ``runs``
    latency runs per model (0: no timing) with ``threads`` onnxruntime threads, interleaved.
    ``Cost.seconds`` runs from loading to the written output, the measurements left out.
    """
    phases = Phases()
    start = time.perf_counter()
    with phases.time("load"):
        model_io.ensure_distinct(source, destination)
        original = model_io.load(source)
        if external_data is None and model_io.stored_externally(original, source):
            external_data = True
        inputs = Inputs.for_model(original, input_shapes, data_source)
    with phases.time("rewrite"):
        result = rewrite(original, inputs)
    paused = time.perf_counter()
    with phases.time("measurement"):
        before = measure(original, inputs, source)
    reference: verify.ModelLike = original
    if model_io.serialized_size(original) >= model_io.PROTOBUF_LIMIT:
        reference = Path(source)
        del original  # freed unless the result still reads its weights: onnxruntime needs the room
        gc.collect()  # graphsurgeon's graphs are cycles; the last one may still hold the original's tensors
    big = model_io.serialized_size(result.model) >= model_io.PROTOBUF_LIMIT
    resumed = time.perf_counter()
    if not big:
        with phases.time("verification"):
            verdict = check(reference, result.model, inputs)
    with model_io.staged(result.model, destination, external_data) as staged:
        model_io.check_file(staged, destination)
        if big:
            result.model = onnx.ModelProto()  # on disk now: onnxruntime gets its room, the model is read back below
            gc.collect()
            with phases.time("verification"):
                verdict = check(reference, staged, inputs)
    seconds = paused - start + time.perf_counter() - resumed
    phases.add("save", time.perf_counter() - resumed - phases.seconds["verification"])
    written = Path(destination)
    if big:
        result.model = model_io.load(written)
    with phases.time("measurement"):
        after = measure(result.model, inputs, written)
    if runs:
        with phases.time("latency timing"):
            before.latency, after.latency, _ = latency.compare_latency(
                reference, written if big else result.model, inputs.feeds[0], runs=runs, warmup=max(2, runs // 10),
                threads=threads,
            )
    return result, verdict, Cost(Path(source), written, inputs, before, after, seconds, phases)


def fidelity_check(original: verify.ModelLike, rewritten: verify.ModelLike, inputs: Inputs) -> verify.Fidelity:
    """The check of the lossy workflows: how close the rewritten outputs stay (never refuses)."""
    return verify.fidelity(original, rewritten, inputs.feeds)
