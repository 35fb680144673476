"""Commands of structured channel pruning: prune, groups."""

from __future__ import annotations

import argparse

from onnxprune import api, channels
from onnxprune.channels import importance, policy
from onnxprune.cli import report
from onnxprune.cli.blocks import joint_text
from onnxprune.cli.options import common_options, cost_lines, data_source, emit, names
from onnxprune.core import data
from onnxprune.core import model as model_io
from onnxprune.core.errors import InputError


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
    parser.add_argument("--round-to", type=int, default=1, help="keep channel counts at multiples of N")
    parser.add_argument("--exclude", type=names, default=[], help="comma-separated regexes of layers to keep whole")
    parser.add_argument("--fuse", action="store_true", help="fuse removed channels into similar kept ones (APBM)")
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
        round_to=args.round_to, exclude=args.exclude,
    )
    if args.layers:
        return _prune_layers_too(args, config)
    outcome = api.prune_file(
        args.input, args.output, criterion=args.criterion, config=config, fuse=args.fuse,
        input_shapes=data.parse_input_shapes(args.input_shape), data_source=data_source(args), runs=args.runs,
        threads=args.threads, criterion_options=_criterion_options(args), keep_bn=args.keep_bn,
    )
    emit(args, outcome.to_dict(), lambda: _prune_text(outcome))
    return 0


def _prune_layers_too(args: argparse.Namespace, config: policy.PolicyConfig) -> int:
    if args.fuse:
        raise InputError("--fuse is not available with --layers")
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
        "",
        *measured,
        *_fusion_line(outcome),
        wrote,
    ])


def _fusion_line(outcome: api.PruneOutcome) -> list[str]:
    if outcome.unfused is None:
        return []
    before, after = outcome.unfused.cosine, outcome.fidelity.cosine
    return [f"information fusion: cosine {before:.4f} without -> {after:.4f} with ({after - before:+.4f})"]


def _groups(args: argparse.Namespace) -> int:
    model = model_io.load(args.model)
    graph = model_io.to_graph(model)
    api.prepare_for_pruning(graph)
    analysis = channels.analyse(graph)
    shown = [g for g in analysis.groups if args.all or g.constants]
    rows = [(g.id, g.size, int(g.prunable.sum()), _members(g), "yes" if g.is_prunable else "; ".join(g.reasons[:2]))
            for g in shown]
    payload = {"command": "groups", "model": args.model, "groups": [_group_dict(g) for g in shown]}
    text = report.table(("group", "channels", "prunable", "members", "prunable? (why not)"), rows)
    summary = f"{len(analysis.prunable)} prunable groups of {len(shown)} shown"
    emit(args, payload, lambda: f"{text}\n\n{summary}")
    return 0


def _members(group: channels.ChannelGroup, limit: int = 3) -> str:
    nodes = sorted({node for node, _, _ in group.roles.values()})
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
