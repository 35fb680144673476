"""Commands of structured channel pruning: prune, groups."""

from __future__ import annotations

import argparse

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune import api, channels
from onnxprune.channels import importance, policy
from onnxprune.cli import report
from onnxprune.cli.blocks import joint_text
from onnxprune.cli.options import common_options, cost_lines, data_source, emit, names
from onnxprune.core import data
from onnxprune.core import model as model_io
from onnxprune.core.data import DataSource
from onnxprune.core.errors import InputError
from onnxprune.recover import bn_recalibration, fusion, least_squares

RECOVERY_PASSES = (fusion.NAME, bn_recalibration.NAME, least_squares.NAME)


def register(commands) -> None:
    _add_prune(commands)
    _add_groups(commands)


def _add_prune(commands) -> None:
    parser = commands.add_parser("prune", help="remove channels (structured pruning), then fold; report the cost")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--criterion", default="l1", choices=sorted(importance.CRITERIA),
                        help="channel importance (default l1)")
    parser.add_argument("--ratio", type=float, default=0.0, help="fraction of each group's channels to remove")
    parser.add_argument("--global", dest="global_ranking", action="store_true",
                        help="rank channels across groups (normalised scores) instead of per group")
    parser.add_argument("--flops-target", type=float, help="keep this fraction of the FLOPs (e.g. 0.5)")
    parser.add_argument("--params-target", type=float, help="keep this fraction of the parameters")
    parser.add_argument("--threshold", choices=["adaptive"],
                        help="per-group histogram threshold on BN scales (joint-pruning patent)")
    parser.add_argument("--min-channels", type=int, default=1, help="never keep fewer channels in a group")
    parser.add_argument("--latency-target", type=float,
                        help="keep this fraction of the model's latency (e.g. 0.5), removing the channels of least "
                             "importance per millisecond the layer table says they save")
    parser.add_argument("--latency-trials", type=int, default=3,
                        help="with --latency-target: build and time up to N prunings against the original, "
                             "correcting the layer table's estimate by what onnxruntime measures (0: trust the "
                             "table; default 3)")
    parser.add_argument("--round-to", type=int,
                        help="keep channel counts at multiples of N (1: exact counts); default: multiples of 8 "
                             "moved to the count the layer table times fastest")
    parser.add_argument("--no-latency-table", dest="latency_aware", action="store_false",
                        help="round to multiples of 8 without timing layers (the table is cached per machine in "
                             "$ONNXPRUNE_CACHE_DIR or ~/.cache/onnxprune)")
    parser.add_argument("--exclude", type=names, default=[], help="comma-separated regexes of layers to keep whole")
    parser.add_argument("--keep-residual", action="store_true",
                        help="keep channels that residual additions join whole; prune inside the blocks (PFEC)")
    parser.add_argument("--fuse", action="store_true",
                        help="fuse removed channels into similar kept ones (APBM); the same as --recover fuse")
    parser.add_argument("--recover", type=names, default=[], metavar="M[,M]",
                        help="recovery without training: fuse (data-free), bn (BN re-calibration), lsq (least-squares "
                             "reconstruction); bn and lsq calibrate on --calibration or --data")
    parser.add_argument("--calibration", metavar="FILE",
                        help="calibration .npz/.npy for --recover lsq,bn (default: the --data samples)")
    parser.add_argument("--keep-bn", action="store_true",
                        help="leave BatchNormalization unfolded, to fine-tune with batch statistics next "
                             "(fold it afterwards with `optimize`)")
    parser.add_argument("--layers", type=int, default=0,
                        help="joint pruning: first bypass the N least important residual units (BN sparsity), "
                             "then prune channels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random criterion")
    parser.add_argument("--runs", type=int, default=20, help="latency runs per model (0: no timing)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for timing")
    common_options(parser)
    parser.set_defaults(handler=_prune)


def _add_groups(commands) -> None:
    parser = commands.add_parser("groups", help="list channel groups: size, members, why (not) prunable")
    parser.add_argument("model")
    parser.add_argument("--all", action="store_true", help="also list groups that hold no parameter")
    common_options(parser, data_option=False)
    parser.set_defaults(handler=_groups)


def _prune(args: argparse.Namespace) -> int:
    config = policy.PolicyConfig(
        ratio=args.ratio, global_ranking=args.global_ranking, flops_target=args.flops_target,
        params_target=args.params_target, threshold=args.threshold, min_channels=args.min_channels,
        round_to=args.round_to, exclude=args.exclude, keep_residual=args.keep_residual,
        latency_aware=args.latency_aware, latency_target=args.latency_target, latency_threads=args.threads,
        latency_trials=args.latency_trials,
    )
    if args.layers:
        return _prune_layers_too(args, config)
    recover = [*args.recover, *(["fuse"] if args.fuse else [])]
    calibration = DataSource(args.calibration, args.mean, args.std) if args.calibration else None
    outcome = api.prune_file(
        args.input, args.output, criterion=args.criterion, config=config, recover=recover,
        calibration_source=calibration, progress=not args.quiet,
        input_shapes=data.parse_input_shapes(args.input_shape), data_source=data_source(args), runs=args.runs,
        threads=args.threads, criterion_options=_criterion_options(args), keep_bn=args.keep_bn,
    )
    selection = _selection(outcome)
    payload = {**outcome.to_dict(), "predicted_latency": selection.predicted_latency,
               "checked_latency": selection.measured_latency}
    emit(args, payload, lambda: report.with_phases(_prune_text(outcome), outcome.phases, args.verbose))
    return 0


def _prune_layers_too(args: argparse.Namespace, config: policy.PolicyConfig) -> int:
    if args.fuse or args.recover:
        raise InputError("--fuse and --recover are not available with --layers")
    outcome = api.joint_prune_file(
        args.input, args.output, layers=args.layers, min_channels=args.min_channels, data_source=data_source(args),
        input_shapes=data.parse_input_shapes(args.input_shape), runs=args.runs, threads=args.threads,
        criterion=args.criterion, config=config, criterion_options=_criterion_options(args),
    )
    emit(args, outcome.to_dict(), lambda: joint_text(outcome))
    return 0


def _criterion_options(args: argparse.Namespace) -> dict:
    if args.criterion == "random":
        return {"seed": args.seed}
    if importance.needs_data(args.criterion):
        return {"data": args.data, "mean": args.mean, "std": args.std}
    return {}


def _prune_text(outcome: api.PruneOutcome) -> str:
    removed = sum(outcome.removed.values())
    total = sum(outcome.group_sizes[g] for g in outcome.removed) if outcome.removed else 0
    *measured, wrote = cost_lines(outcome.cost, outcome.fidelity)
    return "\n".join([
        f"criterion {outcome.criterion}: removed {removed} channels in {len(outcome.removed)} groups "
        f"({removed}/{total} of their channels) in {outcome.cost.seconds:.2f} s",
        *blocked_lines(outcome.blocked_params, outcome.cost.before.stats.params),
        "",
        *measured,
        *_latency_line(outcome),
        *_recovery_line(outcome),
        wrote,
    ])


def _selection(outcome: api.PruneOutcome) -> policy.Selection:
    removed = outcome.pruned.removed
    return removed if isinstance(removed, policy.Selection) else policy.Selection(removed)


def _latency_line(outcome: api.PruneOutcome) -> list[str]:
    """With ``--latency-target``: the layer table's prediction, the policy's check, the report's measurement."""
    selection = _selection(outcome)
    if selection.predicted_latency is None:
        return []
    parts = [f"predicted {selection.predicted_latency:.2f} of the original by the layer table"]
    if selection.measured_latency is not None:
        parts.append(f"{selection.measured_latency:.2f} when the pruning was checked")
    before, after = outcome.cost.before.median_ms, outcome.cost.after.median_ms
    if before and after is not None:
        parts.append(f"measured {after / before:.2f}")
    return ["latency: " + ", ".join(parts)]


def blocked_lines(blocked: dict[str, int], total: int) -> list[str]:
    """Where the parameters that no pruning can reduce sit, so a small reduction is explained."""
    if not blocked:
        return []
    count = sum(blocked.values())
    share = f" ({100 * count / total:.1f} % of {report.human(total)})" if total else ""
    return [f"not prunable: {report.human(count)} parameters{share}",
            *(f"  {reason}: {report.human(n)} parameters not prunable" for reason, n in blocked.items())]


def _recovery_line(outcome: api.PruneOutcome) -> list[str]:
    if outcome.unrecovered is None:
        return []
    before, after = outcome.unrecovered, outcome.fidelity
    methods = ", ".join(step.name for step in outcome.pruned.reports if step.name in RECOVERY_PASSES)
    agreement = ""
    if before.top1_agreement is not None and after.top1_agreement is not None:
        agreement = (f", top-1 agreement {100 * before.top1_agreement:.1f} % -> "
                     f"{100 * after.top1_agreement:.1f} %")
    return [f"recovery ({methods}): cosine {before.cosine:.4f} without -> {after.cosine:.4f} with "
            f"({after.cosine - before.cosine:+.4f}){agreement}"]


def _groups(args: argparse.Namespace) -> int:
    model = model_io.load(args.model)
    graph = model_io.to_graph(model)
    api.prepare_for_pruning(graph)
    analysis = channels.analyse(graph)
    shown = [g for g in analysis.groups if args.all or g.constants]
    rows = [(g.id, g.size, int(g.prunable.sum()), _members(g), "yes" if g.is_prunable else "; ".join(g.reasons[:2]))
            for g in shown]
    payload = {"command": "groups", "model": args.model, "groups": [_group_dict(g) for g in shown],
               "not_prunable_params": analysis.blocked_params}
    text = report.table(("group", "channels", "prunable", "members", "prunable? (why not)"), rows)
    total = sum(int(np.prod(t.shape)) for t in graph.tensors().values() if _is_float_constant(t))
    summary = "\n".join([f"{len(analysis.prunable)} prunable groups of {len(shown)} shown",
                         *blocked_lines(analysis.blocked_params, total)])
    emit(args, payload, lambda: f"{text}\n\n{summary}")
    return 0


def _is_float_constant(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant) and np.issubdtype(np.dtype(tensor.dtype), np.floating)


def _members(group: channels.ChannelGroup, limit: int = 3) -> str:
    """The nodes whose parameters the group cuts; the constants themselves where no handler named a node."""
    nodes = sorted({node for node, _, _ in group.roles.values()}) or sorted({name for name, _ in group.constants})
    more = f" +{len(nodes) - limit}" if len(nodes) > limit else ""
    return ", ".join(nodes[:limit]) + more


def _group_dict(group: channels.ChannelGroup) -> dict:
    return {
        "group": group.id,
        "channels": group.size,
        "prunable_channels": int(group.prunable.sum()),
        "members": sorted(f"{name}[axis {axis}]" for name, axis in group.members),
        "roles": {f"{name}[axis {axis}]": role for (name, axis), role in group.roles.items()},
        "reasons": group.reasons,
        "inexact": group.inexact,
    }
