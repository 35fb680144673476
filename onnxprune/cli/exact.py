"""Commands of the exact tool-chain: optimize, check, bench, inspect."""

from __future__ import annotations

import argparse

from onnxprune import api
from onnxprune.cli import report
from onnxprune.cli.options import (
    common_options,
    data_source,
    emit,
    names,
    tolerance_options,
)
from onnxprune.core import data
from onnxprune.core import model as model_io
from onnxprune.measure import latency, stats
from onnxprune.passes.pipeline import REGISTRY


def register(commands) -> None:
    _add_optimize(commands)
    _add_check(commands)
    _add_bench(commands)
    _add_inspect(commands)


def _add_optimize(commands) -> None:
    parser = commands.add_parser("optimize", help="run the exact fold/merge passes, verify, write")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--passes", type=names,
                        help=f"comma-separated passes to run (default all: {','.join(REGISTRY)})")
    parser.add_argument("--skip", type=names, default=[], help="comma-separated passes to leave out")
    parser.add_argument("--runs", type=int, default=20, help="latency runs per model (0: no timing)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for timing")
    parser.add_argument("--external-data", action="store_true", help="store weights in OUTPUT.data")
    tolerance_options(parser)
    common_options(parser)
    parser.set_defaults(handler=_optimize)


def _add_check(commands) -> None:
    parser = commands.add_parser("check", help="compare the outputs of two models with onnxruntime")
    parser.add_argument("reference")
    parser.add_argument("candidate")
    parser.add_argument("--samples", type=int, default=4, help="random input samples (without --data)")
    parser.add_argument("--seed", type=int, default=0)
    tolerance_options(parser)
    common_options(parser)
    parser.set_defaults(handler=_check)


def _add_bench(commands) -> None:
    parser = commands.add_parser("bench", help="time one model, or two and their ratio, with onnxruntime")
    parser.add_argument("model")
    parser.add_argument("other", nargs="?")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-ort-optimization", action="store_true",
                        help="time the stored graph as it is (onnxruntime graph optimizations off)")
    common_options(parser)
    parser.set_defaults(handler=_bench)


def _add_inspect(commands) -> None:
    parser = commands.add_parser("inspect", help="op histogram, parameters, FLOPs and a per-layer table")
    parser.add_argument("model")
    parser.add_argument("--top", type=int, default=20, help="layers to list, most expensive first (0: all)")
    common_options(parser, data_option=False)
    parser.set_defaults(handler=_inspect)


def _optimize(args: argparse.Namespace) -> int:
    outcome = api.optimize_file(
        args.input, args.output, passes=args.passes, skip=args.skip,
        input_shapes=data.parse_input_shapes(args.input_shape), data_source=data_source(args),
        atol=args.atol, rtol=args.rtol, runs=args.runs, threads=args.threads,
        external_data=True if args.external_data else None, progress=not args.quiet,
    )
    emit(args, outcome.to_dict(),
         lambda: report.with_phases(_optimize_text(outcome), outcome.cost.phases, args.verbose))
    return 0


def _optimize_text(outcome: api.OptimizeOutcome) -> str:
    cost = outcome.cost
    before = report.summary_metrics(cost.before.stats, cost.before.median_ms)
    after = report.summary_metrics(cost.after.stats, cost.after.median_ms)
    worst = max((d.max_abs for d in outcome.equivalence.outputs), default=0.0)
    margin = min((d.margin for d in outcome.equivalence.outputs), default=float("inf"))
    return "\n".join([
        report.passes_table(outcome.result.reports), "",
        report.before_after(before, after), "",
        f"verified on {cost.inputs.source}: outputs match (max abs error {worst:.3g}, "
        f"{margin:.3g}x inside the {outcome.equivalence.rule} bound)",
        f"wrote {cost.destination}",
    ])


def _check(args: argparse.Namespace) -> int:
    # Both are validated, but neither is kept: onnxruntime reads the files, and a model held here
    # alongside its session would double the memory a large one needs.
    inputs = api.Inputs.for_model(
        model_io.load(args.reference), data.parse_input_shapes(args.input_shape), data_source(args),
        samples=args.samples, seed=args.seed,
    )
    model_io.load(args.candidate)
    equivalence = api.check_equivalence(args.reference, args.candidate, inputs.feeds, args.atol, args.rtol)
    rows = [(d.name, d.max_abs, d.atol, "-" if d.noise_floor is None else d.noise_floor, d.max_rel,
             f"{d.mismatched}/{d.total}", "ok" if d.passed else "FAIL") for d in equivalence.outputs]
    verdict = "PASS: outputs match" if equivalence.passed else "FAIL: outputs differ beyond tolerance"
    text = report.table(("output", "max abs", "allowed", "noise floor", "max rel", "mismatched", "result"), rows)
    emit(args, {"command": "check", "inputs": inputs.source, **equivalence.to_dict()},
          lambda: f"{text}\n\n{verdict} (on {inputs.source})")
    return 0 if equivalence.passed else 1


def _bench(args: argparse.Namespace) -> int:
    first = model_io.load(args.model)
    inputs = api.Inputs.for_model(first, data.parse_input_shapes(args.input_shape), data_source(args), samples=1)
    options = dict(runs=args.runs, warmup=args.warmup, threads=args.threads, optimize=not args.no_ort_optimization)
    if args.other is None:
        timed = latency.measure(args.model, inputs.feeds[0], progress=not args.quiet, **options)
        rows = [(args.model, timed.median_ms, timed.p90_ms)]
        payload: dict[str, object] = {"latency": [timed.to_dict()]}
    else:
        model_io.load(args.other)
        a, b, ratio = latency.compare_latency(args.model, args.other, inputs.feeds[0], **options)
        rows = [(args.model, a.median_ms, a.p90_ms), (args.other, b.median_ms, b.p90_ms)]
        payload = {"latency": [a.to_dict(), b.to_dict()], "ratio": ratio}
    text = report.table(("model", "median ms", "p90 ms"), rows)
    if args.other is not None:
        text += f"\n\n{args.other} / {args.model} median latency ratio: {payload['ratio']:.3f}"
    emit(args, {"command": "bench", **payload}, lambda: f"{text}\n({args.threads} thread(s), {args.runs} runs)")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    model = model_io.load(args.model)
    shapes = data.resolve_input_shapes(model, data.parse_input_shapes(args.input_shape))
    counted = stats.model_stats(model, shapes, path=args.model)
    emit(args, {"command": "inspect", "model": args.model, **counted.to_dict()},
         lambda: _inspect_text(counted, args.top))
    return 0


def _inspect_text(counted: stats.ModelStats, top: int) -> str:
    histogram = report.table(("op", "count"), sorted(counted.op_histogram.items(), key=lambda kv: -kv[1]))
    layers = sorted(counted.per_node, key=lambda cost: -cost.macs)
    layers = layers[:top] if top else layers
    total = max(counted.macs, 1)
    rows = [(c.name, c.op_type, "x".join(map(str, c.output_shape or ())), c.params, c.macs,
             f"{100 * c.macs / total:.1f} %") for c in layers]
    totals = (f"nodes {counted.nodes}, parameters {counted.params:,}, MACs {counted.macs:,} "
              f"(FLOPs {counted.flops:,}), size {counted.size_bytes:,} bytes")
    return "\n\n".join([histogram, report.table(("layer", "op", "output", "params", "MACs", "share"), rows), totals])
