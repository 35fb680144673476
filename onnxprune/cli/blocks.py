"""Commands of layer pruning: blocks (list units and scores), bypass (remove units), joint (layers, then channels)."""

from __future__ import annotations

import argparse

from onnxprune import api
from onnxprune.cli import report
from onnxprune.cli.options import common_options, cost_lines, data_source, emit, names
from onnxprune.core import data
from onnxprune.core import model as model_io
from onnxprune.layers import scores as block_importance
from onnxprune.layers.units import model_macs


def register(commands) -> None:
    _add_blocks(commands)
    _add_bypass(commands)
    _add_joint(commands)


def _score_options(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--score", default=default, choices=block_importance.SCORES,
                        help=f"unit importance (default {default}); data scores use --data, or random inputs")
    parser.add_argument("--metric", default="kl", choices=block_importance.METRICS,
                        help="data-e2e: output change measured as KL of softmax (default), 1 - top-1 agreement, or L2")


def _timing_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=20, help="latency runs per model (0: no timing)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for timing")


def _add_blocks(commands) -> None:
    parser = commands.add_parser("blocks", help="list layer-pruning units (residual blocks): cost and importance")
    parser.add_argument("model")
    _score_options(parser, "bn")
    common_options(parser)
    parser.set_defaults(handler=_blocks)


def _add_bypass(commands) -> None:
    parser = commands.add_parser("bypass", help="remove residual units (layer pruning); report the cost")
    parser.add_argument("input")
    parser.add_argument("output")
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--blocks", type=int, metavar="N", help="bypass the N least important units")
    chosen.add_argument("--names", type=names, metavar="A,B", help="bypass these units (names from `blocks`)")
    chosen.add_argument("--flops-target", type=float, metavar="F",
                        help="bypass the least important units until at most F of the FLOPs remain")
    _score_options(parser, "bn")
    _timing_options(parser)
    common_options(parser)
    parser.set_defaults(handler=_bypass)


def _add_joint(commands) -> None:
    parser = commands.add_parser("joint",
                                 help="joint pruning: bypass N units by BN sparsity, then prune channels below δ")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--layers", type=int, required=True, metavar="N", help="units to bypass")
    parser.add_argument("--bin-width", type=float, default=0.01, help="γ histogram bin width (default 0.01)")
    parser.add_argument("--min-channels", type=int, default=1, help="never keep fewer channels in a group")
    _timing_options(parser)
    common_options(parser)
    parser.set_defaults(handler=_joint)


def _blocks(args: argparse.Namespace) -> int:
    model = model_io.load(args.model)
    shapes = data.parse_input_shapes(args.input_shape)
    graph, found, _ = api.detect(model, shapes)
    feeds, source = None, None
    if block_importance.needs_data(args.score):
        inputs = api.Inputs.for_model(model, shapes, data_source(args))
        feeds, source = inputs.feeds, inputs.source
    scores = block_importance.score_blocks(graph, found, args.score, feeds, metric=args.metric)
    total = model_macs(graph, shapes)
    rows = [(b.name, b.kind, len(b.body), 2 * b.macs, b.params, _share(b.macs, total), scores.get(b.name))
            for b in found]
    payload = {"command": "blocks", "model": args.model, "score": args.score, "inputs": source, "flops": 2 * total,
               "units": [{**b.to_dict(), "score": scores.get(b.name)} for b in found]}
    emit(args, payload, lambda: _blocks_text(found, rows, total, args.score, source))
    return 0


def _blocks_text(found, rows, total: int, score: str, source: str | None) -> str:
    if not found:
        return "no layer-pruning units (residual blocks that can be bypassed) found"
    identity = sum(b.kind == "identity" for b in found)
    held = sum(b.macs for b in found)
    on = f" on {source}" if source else ""
    return "\n".join([
        report.table(("unit", "kind", "nodes", "FLOPs", "params", "share", f"score ({score})"), rows),
        "",
        (f"{len(found)} units ({identity} identity, {len(found) - identity} projection) hold "
         f"{_share(held, total)} of the FLOPs; scores{on}, higher = more important"),
    ])


def _share(macs: int, total: int) -> str:
    return f"{100 * macs / total:.1f} %" if total else "-"


def _bypass(args: argparse.Namespace) -> int:
    selection = api.Selection(count=args.blocks, names=args.names, flops_target=args.flops_target)
    outcome = api.bypass_file(
        args.input, args.output, selection, score=args.score, data_source=data_source(args),
        input_shapes=data.parse_input_shapes(args.input_shape),
        runs=args.runs, threads=args.threads, score_options={"metric": args.metric},
    )
    emit(args, outcome.to_dict(), lambda: _bypass_text(outcome))
    return 0


def _bypass_text(outcome: api.BypassOutcome) -> str:
    removed = outcome.result.removed
    how = "" if outcome.selection.names is not None else f" by {outcome.score} score"
    lines = [f"bypassed {len(removed)} of {len(outcome.result.blocks)} units{how}: "
             + (", ".join(block.name for block in removed) or "none")]
    return "\n".join([*lines, "", *cost_lines(outcome.cost, outcome.fidelity)])


def _joint(args: argparse.Namespace) -> int:
    outcome = api.joint_prune_file(
        args.input, args.output, layers=args.layers, bin_width=args.bin_width, min_channels=args.min_channels,
        data_source=data_source(args), input_shapes=data.parse_input_shapes(args.input_shape), runs=args.runs,
        threads=args.threads,
    )
    emit(args, outcome.to_dict(), lambda: joint_text(outcome))
    return 0


def joint_text(outcome: api.JointOutcome) -> str:
    steps = [f"{index}. {step}" for index, step in enumerate(outcome.result.steps, 1)]
    return "\n".join([*steps, "", *cost_lines(outcome.cost, outcome.fidelity)])
