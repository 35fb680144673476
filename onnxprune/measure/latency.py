"""Latency of a model under onnxruntime's CPU provider, alone or against another model.

Speed-ups are the point of optimizing, and a single run is noise, so we report robust
statistics (median, p90) and, when comparing, alternate the two models run by run so that
machine noise hits both equally.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from onnxprune.core.errors import InputError
from onnxprune.measure.verify import SessionLike, select_inputs, session


@dataclass
class Latency:
    """Wall-clock statistics of ``runs`` timed runs, in milliseconds."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    runs: int
    threads: int

    def to_dict(self) -> dict:
        return asdict(self)


def _session(model: SessionLike, threads: int, optimize: bool) -> ort.InferenceSession:
    if isinstance(model, ort.InferenceSession):
        return model
    return session(model, threads=threads, optimize=optimize)


def _check_counts(runs: int, warmup: int) -> None:
    if runs < 1 or warmup < 0:
        raise InputError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")


def _timed(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
    start = time.perf_counter()
    sess.run(None, feed)
    return (time.perf_counter() - start) * 1e3


def _summary(times_ms: list[float], threads: int) -> Latency:
    t = np.asarray(times_ms)
    return Latency(
        median_ms=float(np.median(t)),
        p90_ms=float(np.percentile(t, 90)),
        mean_ms=float(t.mean()),
        min_ms=float(t.min()),
        runs=len(t),
        threads=threads,
    )


def _bar(runs: int, progress: bool, desc: str) -> tqdm:
    return tqdm(range(runs), desc=desc, disable=None if progress else True, file=sys.stderr, leave=False)


def measure(
    model: SessionLike,
    feeds: Mapping[str, np.ndarray],
    runs: int = 50,
    warmup: int = 5,
    threads: int = 1,
    optimize: bool = True,
    progress: bool = False,
) -> Latency:
    """Time ``runs`` runs of one feed after ``warmup`` untimed ones.

    A given session is used as is (its own threads and optimization level).
    """
    return measure_many([model], feeds, runs, warmup, threads, optimize, progress)[0]


def measure_many(
    models: list[SessionLike],
    feeds: Mapping[str, np.ndarray],
    runs: int = 50,
    warmup: int = 5,
    threads: int = 1,
    optimize: bool = True,
    progress: bool = False,
    seed: int = 0,
) -> list[Latency]:
    """Latency of several models timed run by run, in a fresh random order every run.

    Interleaving makes drift fall on every model alike; a random (seeded) order, and sessions
    created in shuffled order, keep any model from always running after the same neighbour,
    which alone biases identical graphs by several per cent.
    """
    _check_counts(runs, warmup)
    rng = np.random.default_rng(seed)
    sessions: list = [None] * len(models)
    for k in rng.permutation(len(models)):
        sessions[k] = _session(models[k], threads, optimize)
    inputs = [select_inputs(s, feeds) for s in sessions]
    for _ in range(warmup):
        for sess, feed in zip(sessions, inputs):
            sess.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in _bar(runs, progress, "latency"):
        for k in rng.permutation(len(sessions)):
            times[k].append(_timed(sessions[k], inputs[k]))
    return [_summary(t, threads) for t in times]


def compare_latency(
    a: SessionLike,
    b: SessionLike,
    feeds: Mapping[str, np.ndarray],
    runs: int = 50,
    warmup: int = 5,
    threads: int = 1,
    optimize: bool = True,
    progress: bool = False,
) -> tuple[Latency, Latency, float]:
    """Latency of ``a`` and ``b`` (interleaved) and the ratio ``b.median / a.median`` (< 1: b is faster)."""
    lat_a, lat_b = measure_many([a, b], feeds, runs, warmup, threads, optimize, progress)
    ratio = lat_b.median_ms / lat_a.median_ms if lat_a.median_ms > 0 else float("inf")
    return lat_a, lat_b, ratio
