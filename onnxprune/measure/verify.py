"""Equivalence and fidelity checks with onnxruntime.

Exact passes must not change outputs, and pruning must say how much it changed them, so
both are measured the same way: run the reference and the candidate on the same feeds
with onnxruntime's CPU provider and compare outputs by name. :func:`equivalent` is the one
entry point: the noise-aware rule of :mod:`onnxprune.measure.noise` unless the user gives a
tolerance.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TypeAlias

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from onnxprune.core.errors import InputError, VerificationError
from onnxprune.measure import noise

logger = logging.getLogger(__name__)

ModelLike: TypeAlias = onnx.ModelProto | str | os.PathLike
SessionLike: TypeAlias = ModelLike | ort.InferenceSession
Feed: TypeAlias = Mapping[str, np.ndarray]

#: Added to |ref| in the relative error so exact zeros give a large, finite number.
REL_EPS = 1e-12

_ORT_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
    RuntimeError,
    ValueError,
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def session(
    model: ModelLike | bytes, threads: int | None = None, optimize: bool = True, profile_prefix: str | None = None
) -> ort.InferenceSession:
    """CPU inference session; a path is passed as a path so external data next to it loads, and
    serialized bytes as they are, so several sessions of one model serialize it once. With
    ``profile_prefix``, onnxruntime's profiler writes its trace there (``end_profiling`` names it)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if isinstance(model, onnx.ModelProto):
        source: str | bytes = model.SerializeToString()
    else:
        source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except _ORT_ERRORS as exc:
        raise InputError(f"onnxruntime cannot load the model: {_first_line(exc)}") from exc


def as_session(model: SessionLike) -> ort.InferenceSession:
    """The given session, or a new default one for a model or path."""
    return model if isinstance(model, ort.InferenceSession) else session(model)


def select_inputs(sess: ort.InferenceSession, feed: Feed) -> dict[str, np.ndarray]:
    """The part of ``feed`` the session takes: a pass may drop an input nothing reads."""
    names = {i.name for i in sess.get_inputs()}
    return {k: v for k, v in feed.items() if k in names}


def run(model_or_session: SessionLike, feeds: Sequence[Feed]) -> list[dict[str, np.ndarray]]:
    """Outputs by name, one dict per feed."""
    sess = as_session(model_or_session)
    names = [o.name for o in sess.get_outputs()]
    results = []
    for feed in feeds:
        try:
            values = sess.run(names, select_inputs(sess, feed))
        except _ORT_ERRORS as exc:
            raise InputError(f"onnxruntime cannot run the model: {_first_line(exc)}") from exc
        results.append(dict(zip(names, values)))
    return results


@dataclass
class OutputDiff:
    """How one output differs over all feeds: ``max_abs`` is the deviation, ``atol`` the absolute
    tolerance applied (under the noise rule, the whole bound) and ``noise_floor`` the reference's
    own rounding that bound came from (None under the other rules)."""

    name: str
    max_abs: float
    max_rel: float
    mismatched: int
    total: int
    passed: bool
    atol: float
    noise_floor: float | None = None

    @property
    def margin(self) -> float:
        """``atol / max_abs``: how many times the deviation fits in the bound (inf when exact)."""
        if self.max_abs == 0.0:
            return float("inf")
        return self.atol / self.max_abs


@dataclass
class Equivalence:
    """Per-output differences under one rule.

    ``rule`` "tolerance": every output uses ``atol`` and ``rtol`` (Polygraphy semantics);
    "scaled": each output's atol is ``rtol * max|ref|``; "noise": each output's atol is
    ``max(noise_multiple * noise_floor, rtol * max|ref|)``, applied alone. ``atol`` is None
    when it is per output.
    """

    outputs: list[OutputDiff]
    atol: float | None
    rtol: float
    rule: str = "tolerance"
    noise_multiple: float | None = None

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def to_dict(self) -> dict:
        outputs = [asdict(o) | {"margin": o.margin} for o in self.outputs]
        settings = {"rule": self.rule, "atol": self.atol, "rtol": self.rtol, "noise_multiple": self.noise_multiple}
        return {"passed": self.passed, **settings, "outputs": outputs}


def _element_errors(ref: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|a-b| and the reference magnitude; inf where only one side is NaN/inf, 0 where equal."""
    if ref.dtype.kind not in "biuf" or cand.dtype.kind not in "biuf":
        diff = np.where(ref == cand, 0.0, np.inf)
        return diff, np.zeros_like(diff)
    a, b = ref.astype(np.float64), cand.astype(np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    equal = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore"):
        diff = np.where(finite, np.abs(a - b), np.inf)
    diff[equal] = 0.0
    return diff, np.where(finite, np.abs(a), 0.0)


def _diff_output(
    name: str, refs: list[np.ndarray], cands: list[np.ndarray | None], atol: float, rtol: float
) -> OutputDiff:
    """Polygraphy semantics: an element fails only if |a-b| > atol and |a-b| > rtol * |ref|."""
    max_abs = max_rel = 0.0
    mismatched = total = 0
    shapes_match = True
    for ref, cand in zip(refs, cands):
        total += ref.size
        if cand is None or cand.shape != ref.shape:
            got = "missing" if cand is None else f"shape {list(cand.shape)}"
            logger.info("output '%s': expected shape %s, got %s", name, list(ref.shape), got)
            shapes_match = False
            max_abs = max_rel = float("inf")
            mismatched += ref.size
            continue
        diff, magnitude = _element_errors(ref, cand)
        mismatched += int(np.count_nonzero((diff > atol) & (diff > rtol * magnitude)))
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / (magnitude + REL_EPS)).max()))
    passed = shapes_match and mismatched == 0
    return OutputDiff(name, max_abs, max_rel, mismatched, total, passed, atol)


def _run_pair(
    reference: SessionLike, candidate: SessionLike, feeds: Sequence[Feed]
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Both models' outputs; a model or path gets a session that is gone before the next one opens."""
    _check_feeds(feeds)
    return run(reference, feeds), run(candidate, feeds)


def _check_feeds(feeds: Sequence[Feed]) -> None:
    if not feeds:
        raise InputError("no feeds to compare the models on")


def _diffs(
    ref_outs: list[dict], cand_outs: list[dict], atols: Mapping[str, float], rtol: float
) -> list[OutputDiff]:
    """One diff per reference output, plus a failed one per output only the candidate has."""
    diffs = [
        _diff_output(
            name, [r[name] for r in ref_outs], [c.get(name) for c in cand_outs], atols[name], rtol
        )
        for name in ref_outs[0]
    ]
    extra = [n for n in cand_outs[0] if n not in ref_outs[0]]
    diffs += [OutputDiff(n, float("inf"), float("inf"), 0, 0, False, 0.0) for n in extra]
    return diffs


def compare(
    reference: SessionLike,
    candidate: SessionLike,
    feeds: Sequence[Feed],
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> Equivalence:
    """Run both models on the same feeds; a missing, extra or reshaped output fails, not raises."""
    ref_outs, cand_outs = _run_pair(reference, candidate, feeds)
    atols = dict.fromkeys(ref_outs[0], atol)
    return Equivalence(_diffs(ref_outs, cand_outs, atols, rtol), atol, rtol)


def output_peak(ref_outputs: Iterable[np.ndarray]) -> float:
    """``max|ref|`` over finite values: the scale a tolerance follows."""
    finite = [a[np.isfinite(a)] for a in map(np.asarray, ref_outputs)]
    return max((float(np.abs(a).max()) for a in finite if a.size), default=0.0)


def output_scaled_atol(ref_outputs: Iterable[np.ndarray], rel: float) -> float:
    """``rel * max|ref|`` over finite values: "exact" means within ``rel`` of the output's scale."""
    return rel * output_peak(ref_outputs)


def compare_scaled(
    reference: SessionLike, candidate: SessionLike, feeds: Sequence[Feed], rel: float = 1e-5
) -> Equivalence:
    """:func:`compare` with ``atol = rel * max|ref|`` per output: tolerance follows output scale."""
    ref_outs, cand_outs = _run_pair(reference, candidate, feeds)
    atols = {name: output_scaled_atol((r[name] for r in ref_outs), rel) for name in ref_outs[0]}
    return Equivalence(_diffs(ref_outs, cand_outs, atols, rel), None, rel, "scaled")


def compare_noise(reference: ModelLike, candidate: SessionLike, feeds: Sequence[Feed]) -> Equivalence:
    """Pass each output within ``noise.bound`` of the reference, its floor measured on ``feeds``.

    The reference must be a model, not a session: the floor needs it run unoptimized too. Each
    session is released before the next opens, so a large model's sessions never coexist.
    """
    _check_feeds(feeds)
    source = reference.SerializeToString() if isinstance(reference, onnx.ModelProto) else reference
    ref_outs = run(session(source), feeds)
    plain_outs = run(session(source, optimize=False), feeds)
    del source  # a serialized reference: the candidate gets its room
    cand_outs = run(candidate, feeds)
    floors, atols = {}, {}
    for name in ref_outs[0]:
        refs = [r[name] for r in ref_outs]
        floors[name] = noise.floor(refs, [p[name] for p in plain_outs])
        atols[name] = noise.bound(floors[name], output_peak(refs))
    diffs = _diffs(ref_outs, cand_outs, atols, 0.0)
    for diff in diffs:
        diff.noise_floor = floors.get(diff.name)
    return Equivalence(diffs, None, noise.SCALE_FLOOR, "noise", noise.NOISE_MULTIPLE)


def equivalent(
    reference: ModelLike,
    candidate: SessionLike,
    feeds: Sequence[Feed],
    atol: float | None = None,
    rtol: float | None = None,
) -> Equivalence:
    """Whether ``candidate`` computes what ``reference`` does: the noise rule unless a tolerance is given.

    Neither given: :func:`compare_noise`. Only ``rtol``: :func:`compare_scaled` (atol follows each
    output's scale). ``atol``: :func:`compare` with it, and ``rtol`` (0 when not given).
    """
    if atol is not None:
        return compare(reference, candidate, feeds, atol=atol, rtol=rtol or 0.0)
    if rtol is not None:
        return compare_scaled(reference, candidate, feeds, rel=rtol)
    return compare_noise(reference, candidate, feeds)


@dataclass
class Fidelity:
    """How close a changed (e.g. pruned) model stays to the original, on the first output.

    ``top1_agreement`` is None unless that output is 2-D ``[N, classes]``.
    """

    cosine: float
    top1_agreement: float | None
    max_abs: float

    def to_dict(self) -> dict:
        return asdict(self)


def _cosines(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Cosine per sample (row along axis 0); two zero vectors agree, one zero vector does not."""
    a = ref.reshape(len(ref) if ref.ndim else 1, -1).astype(np.float64)
    b = cand.reshape(a.shape).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * nb)
    return np.where((na == 0) & (nb == 0), 1.0, np.where((na == 0) | (nb == 0), 0.0, cos))


def fidelity(reference: SessionLike, candidate: SessionLike, feeds: Sequence[Feed]) -> Fidelity:
    """Mean per-sample cosine, top-1 agreement and max |a-b| of the first output."""
    ref_outs, cand_outs = _run_pair(reference, candidate, feeds)
    name = next(iter(ref_outs[0]))
    cosines, agree, max_abs = [], [], 0.0
    for r, c in zip(ref_outs, cand_outs):
        ref, cand = r[name], c.get(name)
        if cand is None or cand.shape != ref.shape:
            got = "missing" if cand is None else list(cand.shape)
            raise VerificationError(f"output '{name}': expected shape {list(ref.shape)}, got {got}")
        cosines.append(_cosines(ref, cand))
        if ref.ndim == 2:
            agree.append(ref.argmax(axis=-1) == cand.argmax(axis=-1))
        if ref.size:
            max_abs = max(max_abs, float(np.abs(ref.astype(np.float64) - cand).max()))
    top1 = float(np.concatenate(agree).mean()) if agree else None
    return Fidelity(float(np.concatenate(cosines).mean()), top1, max_abs)
