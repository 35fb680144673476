"""Exact optimization: onnxprune against onnxsim, onnxslim, onnxoptimizer and onnxruntime's own.

For every architecture of the zoo (and the shipped reference models) each tool optimizes the
same exported ONNX file; the table gives nodes after, the time the tool took, the latency with
onnxruntime's graph optimizations disabled (the stored graph is what runs) and enabled (what a
deployment runs: onnxruntime fuses further on top of each tool's graph), and the largest output
error against the original. Tools that are not installed are skipped (`pip install
onnxprune[compare]`).

Latency is noisy, so all graphs of a model are timed round-robin (drift hits them alike) in
``--repeats`` rounds, each with fresh sessions and the graphs in another order (a graph's place
in the rotation alone moved its median by up to 8 %). A cell is the median over rounds; ``±``
is half the range, across rounds, of the graph's ratio to the original. Below the table are
listed, per mode, the graphs (original or competitor) that onnxprune is slower than: by more
than the noise floor in the median of the ratios paired by round, and in most rounds.

    python benchmarks/exact.py [--models resnet_basic,convnext] [--runs 200] [--repeats 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.architectures import ARCHITECTURES, export_onnx  # noqa: E402
from onnxprune.cli.report import table  # noqa: E402
from onnxprune.core import data  # noqa: E402
from onnxprune.measure import latency, verify  # noqa: E402
from onnxprune.passes import pipeline  # noqa: E402

MODES = ("off", "on")  # onnxruntime graph optimizations disabled / enabled (ORT_ENABLE_ALL)
# Identical graphs timed together (fresh sessions and a new order each round, 200 runs) differed by
# up to 30 % in single rounds on a shared machine, by at most 0.5 % in the median over 16 rounds, and
# identical graphs of different tools by up to 1.7 % in the median over 10: a loss needs a median
# above NOISE_FLOOR and onnxprune slower in at least SLOWER_IN of the rounds (a sign test: 8 of 10
# by chance has p = 0.055).
NOISE_FLOOR = 0.01
SLOWER_IN = 0.8

REFERENCE_MODELS = {name: Path(__file__).resolve().parents[1] / "models" / f"{name}.onnx"
                    for name in ("resnet20_cifar10", "resnet56_cifar10", "lenet5_mnist")}


def onnxprune_tool(model: onnx.ModelProto) -> onnx.ModelProto:
    return pipeline.optimize(model).model


def onnxsim_tool(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim could not validate its result")
    return simplified


def onnxslim_tool(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


def onnxoptimizer_tool(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxoptimizer

    return onnxoptimizer.optimize(model, onnxoptimizer.get_fuse_and_elimination_passes())


def ort_basic_tool(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's offline basic-level optimization, saved back to ONNX."""
    with tempfile.TemporaryDirectory() as folder:
        target = os.path.join(folder, "ort.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = target
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(target)


TOOLS: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "onnxprune": onnxprune_tool,
    "onnxsim": onnxsim_tool,
    "onnxslim": onnxslim_tool,
    "onnxoptimizer": onnxoptimizer_tool,
    "ort-basic": ort_basic_tool,
}


def load_models(names: list[str]) -> dict[str, onnx.ModelProto]:
    models = {}
    for name in names:
        models[name] = onnx.load(REFERENCE_MODELS[name]) if name in REFERENCE_MODELS else export_onnx(name)
    return models


def run_tool(tool: Callable, model: onnx.ModelProto) -> tuple[onnx.ModelProto | None, float, str]:
    start = time.perf_counter()
    try:
        result = tool(model)
    except ImportError:
        return None, 0.0, "not installed"
    except Exception as error:  # a competitor failing is a result, not a crash of the benchmark
        return None, time.perf_counter() - start, f"failed: {type(error).__name__}"
    return result, time.perf_counter() - start, ""


@dataclass
class Timing:
    """Medians of one graph, one per round, and the original's medians from the same rounds."""

    medians: list[float]
    reference: list[float]

    @property
    def median_ms(self) -> float:
        return float(np.median(self.medians))

    def ratios(self, other: Timing) -> np.ndarray:
        """This graph's median over ``other``'s, per round (both were timed in the same rounds)."""
        return np.asarray(self.medians) / np.asarray(other.medians)

    def noise(self) -> str:
        """Half the range, across rounds, of the median relative to the original's (paired)."""
        ratios = np.asarray(self.medians) / np.asarray(self.reference)
        if len(ratios) < 2 or self.medians is self.reference:
            return "-"
        return f"{50.0 * (ratios.max() - ratios.min()) / ratios.mean():.1f}"


def time_all(
    models: list[onnx.ModelProto], feed: dict, runs: int, repeats: int, threads: int, optimize: bool
) -> list[Timing]:
    """Every model timed round-robin in ``repeats`` rounds of fresh sessions; index 0 is the original.

    ``measure_many`` always runs a model right after the same neighbour and creates sessions in
    list order, which alone made the first graphs 1-8 % slower than identical copies; each round
    therefore takes the models in another (seeded) order.
    """
    medians: list[list[float]] = [[] for _ in models]
    for round_index in range(repeats):
        order = np.random.default_rng(round_index).permutation(len(models))
        stats = latency.measure_many(
            [models[i] for i in order], feed, runs=runs, warmup=10, threads=threads, optimize=optimize
        )
        for index, stat in zip(order, stats):
            medians[index].append(stat.median_ms)
    return [Timing(column, medians[0]) for column in medians]


def benchmark(
    name: str, model: onnx.ModelProto, runs: int, repeats: int, threads: int
) -> tuple[list[tuple], list[str]]:
    """One row per tool, and a line for each mode and graph that onnxprune is slower than.

    All stored graphs are timed together, round-robin, ``repeats`` times, with onnxruntime's
    graph optimizations off (the stored graph runs as is) and on (what a deployment runs).
    """
    shapes = data.resolve_input_shapes(model)
    feeds = data.random_feeds(model, shapes, seed=0, count=2)
    rows, timed = [[name, "original", len(model.graph.node), "-", "-"]], {"original": model}
    for tool_name, tool in TOOLS.items():
        result, seconds, problem = run_tool(tool, model)
        if result is None:
            rows.append([name, tool_name, problem, "-", "-"])
            continue
        equivalence = verify.compare_scaled(model, result, feeds, rel=1e-5)
        error = max(diff.max_abs for diff in equivalence.outputs)
        verdict = f"{error:.2e}" + ("" if equivalence.passed else " FAIL")
        rows.append([name, tool_name, len(result.graph.node), f"{seconds:.2f}", verdict])
        timed[tool_name] = result
    timings = {
        mode: dict(zip(timed, time_all(list(timed.values()), feeds[0], runs, repeats, threads, mode == "on")))
        for mode in MODES
    }
    for row in rows:
        cells = []
        for mode in MODES:
            timing = timings[mode].get(row[1])
            cells += [f"{timing.median_ms:.3f}", timing.noise()] if timing else ["-", "-"]
        row[4:4] = cells
    return [tuple(row) for row in rows], _losses(name, timings)


def _losses(name: str, timings: dict[str, dict[str, Timing]]) -> list[str]:
    """Graphs that onnxprune is slower than: paired-by-round ratios above the floor in median and most rounds."""
    lines = []
    for mode, by_tool in timings.items():
        ours = by_tool.get("onnxprune")
        if ours is None:
            continue
        for tool, theirs in by_tool.items():
            ratios = ours.ratios(theirs)
            if tool != "onnxprune" and np.median(ratios) > 1 + NOISE_FLOOR and np.mean(ratios > 1) >= SLOWER_IN:
                lines.append(
                    f"{name}: ORT opt. {mode}: onnxprune {ours.median_ms:.3f} ms is slower than {tool} "
                    f"{theirs.median_ms:.3f} ms by {100 * (np.median(ratios) - 1):.1f} % "
                    f"(slower in {np.sum(ratios > 1)}/{len(ratios)} rounds, "
                    f"{100 * (ratios.min() - 1):+.1f} to {100 * (ratios.max() - 1):+.1f} %)"
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join([*ARCHITECTURES, *REFERENCE_MODELS]))
    parser.add_argument("--runs", type=int, default=200, help="timed runs of every graph per round")
    parser.add_argument("--repeats", type=int, default=10, help="independent interleaved rounds per mode")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    rows, losses = [], []
    for name, model in load_models(args.models.split(",")).items():
        model_rows, model_losses = benchmark(name, model, args.runs, args.repeats, args.threads)
        rows.extend(model_rows)
        losses.extend(model_losses)
        print(f"done {name}", file=sys.stderr)
    threads = f"{args.threads} thread{'s' if args.threads > 1 else ''}"
    headers = (
        "model",
        "tool",
        "nodes",
        "time (s)",
        f"ms, ORT opt. off ({threads})",
        "± %",
        f"ms, ORT opt. on ({threads})",
        "± %",
        "max abs error",
    )
    print(table(headers, rows))
    print(
        f"\nms: median of {args.runs} interleaved runs, median over {args.repeats} rounds of fresh sessions; "
        "± %: half the range across rounds of the ratio to the original timed in the same round."
    )
    print(
        f"onnxprune slower than the original or a competitor by > {100 * NOISE_FLOOR:.0f} % "
        f"(median of the ratios paired by round) and in >= {100 * SLOWER_IN:.0f} % of the rounds:"
    )
    print("\n".join(losses) if losses else "none")


if __name__ == "__main__":
    main()
