"""Latency of single layers under onnxruntime, timed once per machine and cached: the lookup table
of NetAdapt (Yang et al. 2018) and HALP (Shen et al. 2022).

A model's FLOPs say little about its speed on a CPU: onnxruntime runs a Conv in its blocked NCHWc
layout only when the channel counts suit the SIMD width, and an odd count can make a layer
several times slower than a larger aligned one. So the policy asks this table how long each
resized layer takes. Each :class:`LayerShape` is run as a one-node model with graph
optimizations on (NCHWc blocking applies), at the caller's thread count, under onnxruntime's
profiler, and the result is kept in a JSON file keyed by CPU model, onnxruntime version and
thread count, so a later run times nothing. Per node, the minimum of a few runs after a warm-up
is kept: on a shared machine interference only adds time, so the minimum is the steadiest
estimate of the layer's own cost.

What is kept is the layer's cost *inside a network*, not the one-node model's. Each run starts
with the caches evicted (:data:`EVICT_BYTES` written): run after run a one-node model finds its
weights in cache, which a network, reading every layer's weights once per inference, never does
(MobileNetV3's 960x1280 classifier Gemm: 0.18 ms warm, 0.47 ms cold, 0.58 ms in the network).
And a blocked conv
alone pays a ReorderInput and a ReorderOutput that a network of blocked convs does not (the
layout stays blocked from one conv to the next), while a conv onnxruntime cannot block (14
channels) runs without them alone but needs both at its borders in a blocked network. Timed
whole, a 16-channel 1x1 conv at 112x112 looked slower than a 14-channel one (0.27 vs 0.25 ms);
inside MobileNetV3 it is twice as fast. So a blocked layer counts its kernels without the
reorders, and an unblocked conv its kernels plus the reorders of its input and output at the
machine's measured cost per element (:data:`REORDER_KEY`).

Timing is bounded, so a huge model prunes in seconds, not hours: a layer of more than
``MAX_MACS`` multiply-adds (or ``MAX_WEIGHT`` weights) is not timed (its one run alone would
take longer than the rounding can save), and once a table has spent ``budget_s`` seconds timing,
the shapes still missing are answered None (untimed, not cached). The policy keeps its plain
rounding wherever the answer is None.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from onnxprune.core.errors import InputError
from onnxprune.measure.verify import session

log = logging.getLogger(__name__)

CACHE_ENV = "ONNXPRUNE_CACHE_DIR"
OPSET = 17
MAX_MACS = 2 * 10**9
MAX_WEIGHT = 2**25  # elements (128 MiB of float32)
BUDGET_SECONDS = 60.0
FORMAT = 3  # version of what an entry means (3: cold-cache kernels inside a blocked network), in the cache's name
EVICT_BYTES = 64 * 2**20  # more than the last-level cache of common CPUs
REORDERS = ("ReorderInput", "ReorderOutput")
REORDER_KEY = "reorder|ns per element"
REORDER_PROBE = (1, 64, 56, 56)  # a 1x1 conv of this input is blocked on every SIMD width: its reorders are timed
RUN_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.NotImplemented, ort_state.RuntimeException)


@dataclass(frozen=True)
class LayerShape:
    """One Conv or Gemm as onnxruntime sees it: data and weight shapes, and the attributes that change its cost.

    ``attrs`` holds sorted (name, value) pairs (strides, pads, dilations, group, transB ...).
    """

    op: str
    input: tuple[int, ...]
    weight: tuple[int, ...]
    attrs: tuple[tuple[str, tuple[int, ...] | int | str], ...] = ()

    @property
    def macs(self) -> int:
        """Multiply-adds, bounded above (the output's spatial size taken as the input's)."""
        spatial = int(np.prod(self.input[2:])) if self.op == "Conv" else int(self.input[0])
        return int(np.prod(self.weight)) * spatial

    @property
    def key(self) -> str:
        dims = "x".join
        attrs = ";".join(f"{name}={value}" for name, value in self.attrs)
        return f"{self.op}|{dims(map(str, self.input))}|{dims(map(str, self.weight))}|{attrs}"

    def model(self) -> onnx.ModelProto:
        """A one-node model of this layer (with bias), random weights."""
        rng = np.random.default_rng(0)
        weight = rng.random(self.weight, dtype=np.float32) - 0.5
        rows = self.weight[0] if self.op == "Conv" or dict(self.attrs).get("transB") else self.weight[1]
        bias = np.zeros(rows, dtype=np.float32)
        attrs: dict[str, Any] = dict(self.attrs)
        node = helper.make_node(self.op, ["x", "w", "b"], ["y"], **attrs)
        graph = helper.make_graph(
            [node], "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.input))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


class LayerTimer(Protocol):
    """Milliseconds per layer shape; None where a shape cannot be timed."""

    def __call__(self, shapes: Sequence[LayerShape]) -> list[float | None]: ...


class LatencyTable:
    """A :class:`LayerTimer` backed by a per-machine JSON cache; ``timed`` counts the shapes it had to time."""

    def __init__(self, threads: int = 1, cache_dir: str | os.PathLike | None = None, runs: int = 5,
                 warmup: int = 1, budget_s: float = BUDGET_SECONDS) -> None:
        self.threads, self.runs, self.warmup, self.budget_s = threads, runs, warmup, budget_s
        self.spent = 0.0
        self.path = Path(cache_dir or default_cache_dir()) / f"latency-v{FORMAT}-{machine_key(threads)}.json"
        self.entries: dict[str, float | None] = _read(self.path)
        self.timed = 0

    def __call__(self, shapes: Sequence[LayerShape]) -> list[float | None]:
        missing = list(dict.fromkeys(shape for shape in shapes if shape.key not in self.entries))
        start, new = time.perf_counter(), dict[str, float | None]()
        for shape in missing:
            if self.spent + time.perf_counter() - start > self.budget_s:
                log.info("layer timing budget of %g s spent: %d shapes left untimed", self.budget_s,
                         len(missing) - len(new))
                break
            new[shape.key] = self._time(shape)
        if new:
            self.spent += time.perf_counter() - start
            self.entries.update(new)
            self.timed += len(new)
            log.info("timed %d layer shapes in %.2f s", len(new), time.perf_counter() - start)
            self._save(new)
        return [self.entries.get(shape.key) for shape in shapes]

    def _time(self, shape: LayerShape) -> float | None:
        if shape.macs > MAX_MACS or np.prod(shape.weight) > MAX_WEIGHT:
            log.info("not timing %s: too large to be worth it", shape.key)
            return None
        try:
            kernels = _kernel_ms(shape, self.threads, self.runs, self.warmup)
        except (InputError, RuntimeError, *RUN_ERRORS) as exc:  # a shape onnxruntime refuses: the caller falls back
            log.info("cannot time %s: %s", shape.key, exc)
            return None
        own = sum(ms for op, ms in kernels if op not in REORDERS)
        if shape.op != "Conv" or any(op in REORDERS for op, _ in kernels):
            return own
        return own + self._reorder_ns() * float(np.prod(shape.input) + _output_elements(shape)) * 1e-6

    def _reorder_ns(self) -> float:
        """Nanoseconds a reorder between the plain and the blocked layout takes per element (cached)."""
        cost = self.entries.get(REORDER_KEY)
        if cost is None:
            probe = LayerShape("Conv", REORDER_PROBE, (REORDER_PROBE[1], REORDER_PROBE[1], 1, 1))
            kernels = _kernel_ms(probe, self.threads, self.runs, self.warmup)
            reorders = [ms for op, ms in kernels if op in REORDERS]
            cost = 1e6 * sum(reorders) / (len(reorders) * int(np.prod(REORDER_PROBE))) if reorders else 0.0
            self.entries[REORDER_KEY] = cost
            self._save({REORDER_KEY: cost})
        return cost

    def _save(self, new: dict[str, float | None]) -> None:
        """Merge into what is on disk now (another process may have added entries), atomically."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            merged = {**_read(self.path), **new}
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, prefix=".latency-", delete=False) as file:
                json.dump(merged, file, indent=0, sort_keys=True)
            os.replace(file.name, self.path)
        except OSError as exc:
            log.warning("cannot write the latency cache %s: %s", self.path, exc)


def _kernel_ms(shape: LayerShape, threads: int, runs: int, warmup: int) -> list[tuple[str, float]]:
    """(op, ms) of each node of the optimized one-node model: its least time over ``runs`` profiled runs."""
    feed = {"x": np.full(shape.input, 0.5, dtype=np.float32)}  # values do not change a conv's speed
    with tempfile.TemporaryDirectory(prefix="onnxprune-profile-") as folder:
        sess = session(shape.model(), threads=threads, profile_prefix=str(Path(folder) / "layer"))
        for _ in range(warmup + runs):
            _evict_caches()
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    times: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            times.setdefault(event["name"], []).append(event["dur"] * 1e-3)
            ops[event["name"]] = event.get("args", {}).get("op_name", "")
    return [(ops[name], min(durations[warmup:] or durations)) for name, durations in times.items()]


@functools.cache
def _eviction_buffer() -> np.ndarray:
    return np.zeros(EVICT_BYTES // 4, dtype=np.float32)


def _evict_caches() -> None:
    """Write more than the CPU's caches hold, so the next run reads its weights from memory."""
    buffer = _eviction_buffer()
    buffer += 1.0


def _output_elements(shape: LayerShape) -> int:
    """Elements of a Conv's output (the spatial size divided by the strides, rounded up)."""
    strides = dict(shape.attrs).get("strides")
    steps = strides if isinstance(strides, tuple) else (1,) * (len(shape.input) - 2)
    spatial = [-(-size // stride) for size, stride in zip(shape.input[2:], steps)]
    return int(shape.weight[0] * np.prod(spatial))


def _read(path: Path) -> dict[str, float | None]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def default_cache_dir() -> Path:
    """$ONNXPRUNE_CACHE_DIR, else $XDG_CACHE_HOME/onnxprune, else ~/.cache/onnxprune."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "onnxprune"


def machine_key(threads: int) -> str:
    """CPU model, onnxruntime version and thread count: what a layer's latency depends on besides its shape."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", f"{cpu_model()}-ort{ort.__version__}-t{threads}").strip("-")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"
