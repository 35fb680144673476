"""Exact optimization: onnxprune against onnxsim, onnxslim, onnxoptimizer and onnxruntime's own.

For every architecture of the zoo (and the shipped reference models) each tool optimizes the
same exported ONNX file; the table gives nodes after, the time the tool took, the latency of the
stored graph with onnxruntime's graph optimizations disabled (so the stored graph is what runs),
and the largest output error against the original. Tools that are not installed are skipped
(`pip install onnxprune[compare]`).

    python benchmarks/exact.py [--models resnet_basic,convnext] [--runs 50] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.architectures import ARCHITECTURES, export_onnx  # noqa: E402
from onnxprune import data, latency, pipeline, verify  # noqa: E402
from onnxprune.report import table  # noqa: E402

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


def benchmark(name: str, model: onnx.ModelProto, runs: int) -> list[tuple]:
    """One row per tool; all stored graphs are timed together, round-robin, for a fair median."""
    shapes = data.resolve_input_shapes(model)
    feeds = data.random_feeds(model, shapes, seed=0, count=2)
    rows, timed_models = [[name, "original", len(model.graph.node), "-", None, "-"]], [model]
    for tool_name, tool in TOOLS.items():
        result, seconds, problem = run_tool(tool, model)
        if result is None:
            rows.append([name, tool_name, problem, "-", "-", "-"])
            continue
        equivalence = verify.compare_scaled(model, result, feeds, rel=1e-5)
        error = max(diff.max_abs for diff in equivalence.outputs)
        verdict = f"{error:.2e}" + ("" if equivalence.passed else " FAIL")
        rows.append([name, tool_name, len(result.graph.node), f"{seconds:.2f}", None, verdict])
        timed_models.append(result)
    timings = iter(latency.measure_many(timed_models, feeds[0], runs=runs, warmup=5, threads=1, optimize=False))
    for row in rows:
        if row[4] is None:
            row[4] = f"{next(timings).median_ms:.3f}"
    return [tuple(row) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join([*ARCHITECTURES, *REFERENCE_MODELS]))
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    rows = []
    for name, model in load_models(args.models.split(",")).items():
        rows.extend(benchmark(name, model, args.runs))
        print(f"done {name}", file=sys.stderr)
    headers = ("model", "tool", "nodes", "time (s)", "latency ms (ORT opt. off, 1 thread)", "max abs error")
    print(table(headers, rows))


if __name__ == "__main__":
    main()
